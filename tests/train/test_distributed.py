"""Two real processes on CPU (torchrun, gloo) give what one process gives: per-step losses, final weights, eval.

`accelerate launch --cpu --num_processes 2` would silently start ONE process, so the runs here use
`torchrun --standalone --nproc_per_node 2` (a free port: other test runs may be using 29500) with OMP_NUM_THREADS=1.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run_cfg
from safetensors.torch import load_file

from vlmtune.models import FAMILIES

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def test_two_processes_train_and_evaluate_like_one(tmp_path, fashion_dir):
    runs = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        # global batch 8 = micro 2 x 4 accumulation steps (one process) = micro 2 x 2 steps x 2 processes;
        # eval batch 2: the 5 val samples split 3 + 2, and rank 1 idles (a dummy generate) in the second round
        cfg = tiny_run_cfg(tmp_path, fashion_dir, name=name,
                           train={"max_steps": 6, "micro_batch_size": 2, "global_batch_size": 8, "eval_every": 0,
                                  "save_every": 0},
                           eval={"batch_size": 2})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        runs[name] = _run([*launcher, "-m", "vlmtune.cli", "train", "--config", str(path)])
    one, two = tmp_path / "runs/one", tmp_path / "runs/two"

    assert "vlmtune train: 1 process(es)" in runs["one"].stderr
    assert "vlmtune train: 2 process(es) (distributed: multi_cpu)" in runs["two"].stderr, "one process group"

    rows = {n: _rows(tmp_path / "runs" / n) for n in ("one", "two")}
    # rank 0 alone logs: one row per step, not one per process
    assert [r["step"] for r in rows["two"]] == [r["step"] for r in rows["one"]] == [0, 1, 2, 3, 4, 5, 6, 6]
    for key in ("loss", "grad_norm", "lr"):
        a = [r[key] for r in rows["one"] if "loss" in r]
        b = [r[key] for r in rows["two"] if "loss" in r]
        assert b == pytest.approx(a, abs=1e-5), key
    val = {n: [{k: v for k, v in r.items() if k.startswith("val/")} for r in rows[n] if "val/n" in r] for n in rows}
    assert val["two"] == val["one"] and val["one"][0]["val/n"] == 5

    a = load_file(one / "checkpoints/step-6/model.safetensors")
    b = load_file(two / "checkpoints/step-6/model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-5, worst

    # eval sharded over the two processes: the same predictions file (dataset order) and metrics as one process
    for step in (0, 6):
        for f in ("predictions.jsonl", "metrics.json"):
            here = f"predictions/step-{step}/{f}"
            assert (two / here).read_text() == (one / here).read_text(), here
    # only rank 0 writes: the run directories hold the same files (no per-rank leftovers, no torn temporaries)
    assert _files(two) == _files(one)
    result = [json.loads(x) for x in runs["two"].stdout.splitlines() if x.startswith("{")]
    expected = json.loads(runs["one"].stdout.strip().splitlines()[-1])
    assert len(result) == 1 and result[0]["vqa_accuracy"] == expected["vqa_accuracy"] and result[0]["n"] == 5

    # `vlmtune eval` started as two processes shards the samples like one run and prints its result once
    evals = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        evals[name] = _run([*launcher, "-m", "vlmtune.cli", "eval", "--model", str(one), "--data", str(fashion_dir),
                            "--split", "val", "--batch-size", "2", "--max-new-tokens", "4", "--no-report",
                            "--out", str(tmp_path / f"eval-{name}")])
    for f in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "eval-two" / f).read_text() == (tmp_path / "eval-one" / f).read_text(), f
    printed = [json.loads(x) for x in evals["two"].stdout.splitlines() if x.startswith("{")]
    assert printed == [json.loads(evals["one"].stdout.strip().splitlines()[-1])]
    assert _files(tmp_path / "eval-two") == _files(tmp_path / "eval-one")


WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import torch.distributed as dist

    sys.path.insert(0, sys.argv[3])
    from fake_predictor import FakePredictor, samples_of

    from vlmtune.eval.runner import evaluate
    from vlmtune.eval.tasks import get_task

    dist.init_process_group("gloo")
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    predictor = FakePredictor()
    metrics = evaluate(predictor, root, samples_of(root), get_task("vqa"), out)
    rank = dist.get_rank()
    seen = [None, None]
    dist.all_gather_object(seen, {"metrics": metrics, "asked": predictor.asked, "calls": predictor.calls})
    if rank == 0:
        (out / "ranks.json").write_text(json.dumps(seen))
    dist.destroy_process_group()
""")

FAKE = textwrap.dedent("""
    from vlmtune.data.dataset import load_split
    from vlmtune.infer import Completion


    def samples_of(root):
        return load_split(root, "val", False) + load_split(root, "test", False)


    class FakePredictor:
        \"\"\"Answers right for every other sample, so the metrics are neither 0 nor 1; records what it is asked.\"\"\"

        batch_size = 3

        def __init__(self):
            self.asked, self.calls = [], 0

        def fingerprint(self):
            return {"model": "fake", "settings": {}}

        def complete(self, samples, images):
            self.calls += 1
            self.asked.extend(s.id for s in samples)
            return [Completion(s.gold()[0] if int(s.id[-1]) % 2 == 0 else "no idea", 0, 1, "stop") for s in samples]
""")


def test_evaluate_shards_gathers_and_scores_on_rank_0(tmp_path, fashion_dir):
    """evaluate() under a 2-process group: rank r predicts every 2nd sample, rank 0 scores, both return the same
    metrics, files equal one process's; rows already in predictions.jsonl are not predicted again."""
    (tmp_path / "fake_predictor.py").write_text(FAKE)
    (tmp_path / "worker.py").write_text(WORKER)
    sys.path.insert(0, str(tmp_path))
    try:
        from fake_predictor import FakePredictor, samples_of
    finally:
        sys.path.remove(str(tmp_path))

    from vlmtune.eval.runner import evaluate
    from vlmtune.eval.tasks import get_task

    samples = samples_of(fashion_dir)
    assert len(samples) == 10
    single = evaluate(FakePredictor(), fashion_dir, samples, get_task("vqa"), tmp_path / "one")
    assert 0 < single["vqa_accuracy"] < 1

    kept = (tmp_path / "one/predictions.jsonl").read_text().splitlines()[:3]  # a killed run got this far
    (tmp_path / "two").mkdir()
    (tmp_path / "two/predictions.jsonl").write_text("".join(x + "\n" for x in kept) + '{"id": "torn')
    shutil.copy(tmp_path / "one/predictions.fingerprint.json", tmp_path / "two")  # written before the first row
    _run([*TORCHRUN, str(tmp_path / "worker.py"), str(fashion_dir), str(tmp_path / "two"), str(tmp_path)],
         timeout=120)
    seen = json.loads((tmp_path / "two/ranks.json").read_text())
    assert seen[0]["metrics"] == seen[1]["metrics"] == single
    for f in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "two" / f).read_text() == (tmp_path / "one" / f).read_text(), f
    todo = [s.id for s in samples[3:]]  # 7 left: rank 0 takes 4, rank 1 takes 3 (+ one dummy in round 2)
    assert seen[0]["asked"] == todo[0::2] and seen[1]["asked"] == todo[1::2] + todo[:1]
    assert seen[0]["calls"] == seen[1]["calls"] == 2, "every process runs the same number of generate calls"


# ---------------------------------------------------------------- configs/accelerate/*.yaml

ACCELERATE_CONFIGS = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _launch_env(name: str, *extra: str) -> dict:
    """What `accelerate launch --config_file configs/accelerate/NAME.yaml [extra] -m vlmtune.cli ...` would put in
    the environment of its processes (Accelerate's own argument handling, nothing launched, no GPU needed)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(CONFIG_DIR / f"{name}.yaml"), *extra, "-m", "vlmtune.cli", "train", "--config", "x"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_parses(name, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = CONFIG_DIR / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and (f"accelerate launch --config_file configs/accelerate/{name}.yaml -m vlmtune.cli "
                                     "train --config ") in text.split("\ncompute_environment")[0]
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == ACCELERATE_CONFIGS[name] and cfg.mixed_precision == "bf16"
    assert not cfg.use_cpu and cfg.num_processes > 1
    # every plugin key is an option `accelerate launch` knows (a typo would be silently ignored)
    known = set(vars(launch_command_parser().parse_args(["x.py"])))
    for key in cfg.fsdp_config:
        assert key in known, key
    for key in cfg.deepspeed_config:
        assert key in known, key

    env = _launch_env(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if name == "fsdp":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
        assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        assert env["FSDP_USE_ORIG_PARAMS"] == "true"
        # the layer classes exist in a LLaVA model (Accelerate refuses names it cannot find) ...
        from accelerate.utils.dataclasses import get_module_class_from_name
        from helpers import TINY_BUILTIN

        from vlmtune.config import BuiltinCfg
        from vlmtune.models.builtin import build_builtin

        llava = build_builtin(BuiltinCfg(**TINY_BUILTIN)).model
        for cls in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
            assert get_module_class_from_name(llava, cls) is not None, cls
        # ... and the Qwen2-VL override the file's header gives reaches the processes
        qwen = _launch_env(name, "--fsdp_transformer_layer_cls_to_wrap", "Qwen2VLDecoderLayer,Qwen2VLVisionBlock")
        assert qwen["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2VLDecoderLayer,Qwen2VLVisionBlock"
        from transformers.models.qwen2_vl import modeling_qwen2_vl

        assert hasattr(modeling_qwen2_vl, "Qwen2VLDecoderLayer") and hasattr(modeling_qwen2_vl, "Qwen2VLVisionBlock")
    if name.startswith("zero"):
        from accelerate.utils import DeepSpeedPlugin

        for k, v in env.items():
            if os.environ.get(k) != v:
                monkeypatch.setenv(k, v)
        ds = DeepSpeedPlugin().deepspeed_config  # the DeepSpeed config Accelerate will hand to deepspeed
        zero = ds["zero_optimization"]
        assert zero["stage"] == int(name[-1]) and ds["gradient_accumulation_steps"] == "auto"
        assert zero["stage3_gather_16bit_weights_on_model_save"] is (name == "zero3")
        assert ds["gradient_clipping"] == 1.0


# ---------------------------------------------------------------- ZeRO-3: text-only micro-batches run the vision tower


def _tiny_llava():
    from helpers import TINY_BUILTIN

    from vlmtune.config import BuiltinCfg
    from vlmtune.models.builtin import build_builtin

    return build_builtin(BuiltinCfg(**TINY_BUILTIN))


def _batch(processor, with_image: bool):
    from PIL import Image

    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.models import get_family

    n = int(with_image)
    samples = [Sample(id=f"s{i}", messages=[user(f"what is {i} plus one?", n_images=n), assistant(str(i + 1))],
                      images=["x.png"] * n) for i in range(2)]
    images = [[Image.new("RGB", (32, 32), (200, 30 * i, 0))] * n for i in range(2)]
    batch = get_family("llava").encode(processor, samples, images, "train", 128)
    inputs = dict(batch.inputs)
    return inputs, inputs.pop("labels")


def _loss_and_grads(model, inputs, labels, dummy_processor=None):
    import contextlib

    from vlmtune.models import get_family
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.distributed import add_dummy_vision

    model.zero_grad(set_to_none=True)
    with add_dummy_vision(model, get_family("llava"), dummy_processor) if dummy_processor else contextlib.nullcontext():
        sums, counts = forward_losses(model, get_family("llava"), inputs, labels, True)
    loss = sums.sum() / counts.sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_dummy_vision_keeps_the_loss_and_gives_the_vision_side_zero_gradients():
    loaded = _tiny_llava()
    model, processor = loaded.model, loaded.processor
    inputs, labels = _batch(processor, with_image=False)
    loss, grads = _loss_and_grads(model, inputs, labels)
    dummy_loss, dummy_grads = _loss_and_grads(model, inputs, labels, processor)

    assert torch.equal(dummy_loss, loss), "x + 0: the loss is bit-identical"
    vision = {n for n in dummy_grads if n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert vision and not vision & set(grads), "without the dummy a text-only batch leaves the vision side unused"
    assert all(not dummy_grads[n].any() for n in vision), "the vision side's gradients are exactly zero"
    assert set(dummy_grads) - vision == set(grads)
    assert all(torch.equal(dummy_grads[n], grads[n]) for n in grads), "language-model gradients are unchanged"
    # the dummy reaches exactly the parameters a real image reaches (LLaVA never uses CLIP's post_layernorm)
    _, image_grads = _loss_and_grads(model, *_batch(processor, with_image=True))
    assert set(dummy_grads) == set(image_grads)


def test_needs_vision_dummy_only_where_parameters_are_sharded():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from vlmtune.models import get_family
    from vlmtune.train.distributed import needs_vision_dummy

    llava = get_family("llava")
    loaded = _tiny_llava()
    text, _ = _batch(loaded.processor, with_image=False)
    image, _ = _batch(loaded.processor, with_image=True)

    def acc(kind, n=2, stage=None):
        return SimpleNamespace(distributed_type=kind, num_processes=n,
                               state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))

    zero3 = acc(DistributedType.DEEPSPEED, stage=3)
    assert needs_vision_dummy(llava, text, zero3)
    assert not needs_vision_dummy(llava, image, zero3), "the batch runs the vision tower itself"
    assert needs_vision_dummy(llava, text, acc(DistributedType.FSDP))
    assert not needs_vision_dummy(llava, text, acc(DistributedType.DEEPSPEED, stage=2))
    assert not needs_vision_dummy(llava, text, acc(DistributedType.MULTI_GPU)), "DDP: find_unused_parameters"
    assert not needs_vision_dummy(llava, text, acc(DistributedType.DEEPSPEED, n=1, stage=3))
    assert needs_vision_dummy(llava, text, acc(DistributedType.MULTI_CPU), always=True)
    assert not needs_vision_dummy(llava, text, acc(DistributedType.NO, n=1), always=True)
    assert not needs_vision_dummy(get_family("pix2struct"), {}, zero3), "no vision dummy: nothing to run"


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.language_model is not None and f.text_only))
def test_each_familys_dummy_keeps_a_text_only_loss_and_gives_its_vision_tower_zero_gradients(name):
    """Every family that names a `language_model` (the dummy's hook) and takes text-only samples: the same checks as
    on the built-in LLaVA above, on the family's tiny model, through the module names the family gives."""
    import contextlib

    from vlmtune.data.sample import Sample, assistant, user
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.distributed import add_dummy_vision, vision_tower

    family = FAMILIES[name]
    torch.manual_seed(0)
    tiny = family.tiny()
    model = tiny.model.eval()
    sample = Sample(id="t", messages=[user("what is 1 plus one?", n_images=0), assistant("2")])
    inputs = dict(family.encode(tiny.processor, [sample], [[]], "train", 256).inputs)
    labels = inputs.pop("labels")

    def loss_and_grads(dummy: bool):
        model.zero_grad(set_to_none=True)
        with add_dummy_vision(model, family, tiny.processor) if dummy else contextlib.nullcontext():
            sums, counts = forward_losses(model, family, inputs, labels, False)
        loss = sums.sum() / counts.sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    dummy_loss, dummy_grads = loss_and_grads(True)
    assert torch.equal(dummy_loss, loss), "x + 0: the loss is bit-identical"
    tower = {f"{family.vision_tower}.{n}" for n, _ in vision_tower(model, family).named_parameters()}
    reached = tower & set(dummy_grads)
    assert reached and not reached & set(grads), "the dummy, and only the dummy, runs the vision tower"
    assert all(not dummy_grads[n].any() for n in reached), "the vision tower's gradients are exactly zero"
    assert all(torch.equal(dummy_grads[n], grads[n]) for n in grads), "the other gradients are unchanged"


def test_blank_inputs_are_never_another_processors_after_its_id_is_reused():
    """The cache is keyed by id(processor), and ids are reused once an object is gone: a processor that lands on a
    dead one's id gets its own blank inputs (LLaVA-NeXT's image_sizes), not the dead one's (a flaky failure once)."""
    from vlmtune.train import distributed

    llava, llava_next = FAMILIES["llava"].tiny().processor, FAMILIES["llava_next"].tiny().processor
    own = distributed.blank_image_inputs(llava_next)
    assert "image_sizes" in own
    assert "image_sizes" not in distributed.blank_image_inputs(llava)
    # what a reused id looks like: the entry at llava_next's id was made for another processor
    distributed._BLANK[id(llava_next)] = distributed._BLANK[id(llava)]
    again = distributed.blank_image_inputs(llava_next)
    assert set(again) == set(own) and torch.equal(again["image_sizes"], own["image_sizes"])


DDP_WORKER = textwrap.dedent("""
    import contextlib, json, sys

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from test_distributed import _batch, _tiny_llava
    from vlmtune.models import get_family
    from vlmtune.models.loss import forward_losses
    from vlmtune.train.distributed import add_dummy_vision

    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    llava = get_family("llava")
    loaded = _tiny_llava()
    model = acc.prepare(loaded.model)
    rank = acc.process_index
    inputs, labels = _batch(loaded.processor, with_image=rank == 1)  # rank 0: text only, rank 1: images
    grads = []
    for dummy in (False, True):
        with add_dummy_vision(model, llava, loaded.processor) if dummy and rank == 0 else contextlib.nullcontext():
            sums, counts = forward_losses(model, llava, inputs, labels, True)
        acc.backward(sums.sum() / counts.sum())
        grads.append({n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    same = grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    if rank == 0:
        open(sys.argv[1], "w").write(json.dumps({"world": acc.num_processes, "same": same}))
""")


def test_dummy_vision_runs_inside_the_ddp_forward(tmp_path):
    """Under DDP (2 CPU processes) the dummy is part of the forward DDP sees: no "marked ready twice" error (which
    `loss + 0 * vision(blank)` after the forward raises), and the synchronised gradients are those without it."""
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    out = tmp_path / "ddp.json"
    here = Path(__file__).parent
    _run([*TORCHRUN, str(tmp_path / "worker.py"), str(out), str(here), str(here.parent)], timeout=120)
    assert json.loads(out.read_text()) == {"world": 2, "same": True}


def test_a_sharded_run_checkpoints_the_gathered_weights_and_each_ranks_optimizer_state(tmp_path):
    """FSDP / ZeRO-3 (not runnable here): the model's own parameters are shards, so the checkpoint must hold the
    state dict accelerate gathered, and the optimizer state saved by every rank (`save_state`) is what a resume
    reads back through `load_state`, not a rank-0 `optimizer.pt`."""
    from peft import LoraConfig, get_peft_model

    from vlmtune.train import checkpoint as ckpt

    loaded = _tiny_llava()
    model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    lora = next(k for k in gathered if "lora_B" in k)
    gathered[lora] = torch.full_like(gathered[lora], 0.5)  # what the other ranks' shards add up to
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    shards = tmp_path / "checkpoints" / ".sharded-step-3"
    shards.mkdir(parents=True)
    (shards / "optimizer.bin").write_text("rank shards")
    path = ckpt.save_checkpoint(tmp_path, 3, model, loaded.processor, {"family": "llava"}, optimizer, scheduler,
                                {}, gathered, shards)
    adapter = load_file(path / "adapter_model.safetensors")
    # the gathered weights, not the model's own (zeros)
    assert torch.equal(adapter[lora.replace(".default", "")], gathered[lora])
    assert torch.equal(load_file(path / "trainer" / "trainable.safetensors")[lora], gathered[lora])
    assert (path / "trainer" / "sharded" / "optimizer.bin").is_file() and not shards.exists()
    assert not (path / "trainer" / "optimizer.pt").exists()

    class Acc:
        loaded_from = None

        def load_state(self, where):
            Acc.loaded_from = where

    with pytest.raises(RuntimeError, match="same accelerate config"):
        ckpt.load_trainer_state(path, model, optimizer, scheduler)
    assert ckpt.load_trainer_state(path, model, optimizer, scheduler, Acc())["step"] == 3
    assert Acc.loaded_from == str(path / "trainer" / "sharded")
