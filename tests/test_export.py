"""`vlmtune export`: a standalone HF directory whose outputs equal the run's Predictor, for full and LoRA runs."""

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_run_cfg

from vlmtune.cli import main
from vlmtune.config import RunCfg
from vlmtune.data.images import load_images
from vlmtune.data.store import read_samples
from vlmtune.export import export
from vlmtune.infer import Predictor
from vlmtune.models import FAMILIES
from vlmtune.train.loop import train


def _standalone_answers(out, samples, images, max_new_tokens=4):
    """Answers from the exported directory through the plain Auto classes (no vlmtune loading code)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.models import FAMILIES
    from vlmtune.models.family import Loaded

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    family = FAMILIES[json.loads((out / "vlmtune.json").read_text())["family"]]
    p = Predictor(loaded=Loaded(model, processor, family.name), family=family, max_new_tokens=max_new_tokens)
    return p.generate(samples, images), model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-merged"])
def test_export_gives_the_same_answers_as_the_run(tmp_path, fashion_dir, capsys, lora):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": lora, "r": 4},
                                        train={"lr": 1e-2}))
    train(cfg)
    out = tmp_path / "exported"
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(out)] + (["--merge"] if lora else [])) == 0
    files = set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"])
    assert {"config.json", "generation_config.json", "model.safetensors", "chat_template.jinja",
            "tokenizer.json", "processor_config.json"} <= files, files
    assert not any(f.startswith("adapter_") for f in files)
    samples, _ = read_samples(fashion_dir, split="val")
    images = [load_images(fashion_dir, s) for s in samples]
    ours = Predictor.from_path(cfg.run_dir, max_new_tokens=4).generate(samples, images)
    exported, model = _standalone_answers(out, samples, images)
    assert exported == ours
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_export_refuses_an_unmerged_adapter_and_an_existing_directory(tmp_path, fashion_dir, capsys):
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4},
                                        train={"max_steps": 2, "eval_every": 0, "save_every": 2}))
    train(cfg)
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(tmp_path / "x")]) != 0
    assert "pass --merge" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    assert main(["export", "--model", str(cfg.run_dir), "--out", str(tmp_path / "taken"), "--merge"]) != 0
    assert "already exists" in capsys.readouterr().err


def test_merged_weights_equal_base_plus_scaled_lora_product(tmp_path, fashion_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4, "alpha": 8},
                                        train={"lr": 1e-2, "max_steps": 3, "eval_every": 0, "save_every": 3}))
    train(cfg)
    export(cfg.run_dir, tmp_path / "m", merge=True)
    merged = dict(AutoModelForImageTextToText.from_pretrained(tmp_path / "m").named_parameters())
    base = dict(AutoModelForImageTextToText.from_pretrained(cfg.run_dir / "base").named_parameters())
    adapter = load_file(next((cfg.run_dir / "checkpoints").iterdir()) / "adapter_model.safetensors")
    a_key = next(k for k in adapter if k.endswith("q_proj.lora_A.weight"))
    w_key = a_key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
    b = adapter[a_key.replace("lora_A", "lora_B")]
    expected = base[w_key].detach() + (8 / 4) * b @ adapter[a_key]
    torch.testing.assert_close(merged[w_key].detach(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged[w_key], base[w_key])


@pytest.mark.parametrize("family_name", ["llava", "llava_next", "paligemma", "gemma3", "lfm2_vl"])
def test_export_writes_the_hub_layout_of_flat_vision_towers(family_name, tmp_path):
    """A model built in code (tiny, built-in, composed) saves its CLIP/SigLIP tower flat (`vision_tower.embeddings`;
    LFM2-VL's SigLIP2, always: `model.vision_tower.embeddings`); the export writes the hub's
    `vision_tower.vision_model.` keys that vLLM and older transformers load, and transformers 5 reads them back to
    the same weights and logits."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from vlmtune.models import get_family

    tiny = get_family(family_name).tiny()
    src = tmp_path / "src"
    tiny.model.save_pretrained(src)
    tiny.processor.save_pretrained(src)
    prefix = "model.vision_tower." if family_name == "lfm2_vl" else "vision_tower."
    with safe_open(src / "model.safetensors", "pt") as f:
        assert any(k.startswith(prefix + "embeddings") for k in f.keys())
    out = export(src, tmp_path / "out")["out"]
    with safe_open(f"{out}/model.safetensors", "pt") as f:
        keys = list(f.keys())
    tower = [k for k in keys if k.startswith(prefix)]
    assert tower and all(k.startswith(prefix + "vision_model.") for k in tower)
    back = AutoModelForImageTextToText.from_pretrained(out).eval()
    mine = tiny.model.eval().state_dict()
    assert back.state_dict().keys() == mine.keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in mine.items())
    from vlmtune.export import hub_layout

    assert hub_layout(tmp_path / "out") == 0  # already in the hub's layout: nothing renamed twice


def _exported_tiny(family_name: str, tmp_path):
    """A tiny model of `family_name`, saved and exported; returns (tiny Loaded, export directory)."""
    tiny = FAMILIES[family_name].tiny()
    tiny.model.save_pretrained(tmp_path / "src")
    tiny.processor.save_pretrained(tmp_path / "src")
    return tiny, Path(export(tmp_path / "src", tmp_path / "out")["out"])


def _question():
    from PIL import Image

    from vlmtune.data.sample import Sample, assistant, user

    sample = Sample(id="q", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"], task="vqa")
    return sample, Image.new("RGB", (40, 40), "red")


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_the_exported_chat_template_gives_the_prompt_training_used(family_name, tmp_path):
    """Serving renders the export's chat template and tokenizes it as the processor does; training and the Predictor
    use `encode`. The two prompts are the same ids, or the family says why it has no chat prompt (and the export has
    no template that would build another one)."""
    family = FAMILIES[family_name]
    tiny, out = _exported_tiny(family_name, tmp_path)
    # the family's loader reads the export's own files (AutoProcessor would build Qwen2-VL's video processor, which
    # needs torchvision); the template rendered is the one in the directory
    processor = family.load_processor(out)
    if family.no_chat_prompt:
        assert processor.chat_template is None and not (out / "chat_template.jinja").exists()
        return
    assert (out / "chat_template.jinja").is_file()
    sample, image = _question()
    # Blip2Processor and InstructBlipProcessor drop their `chat_template` argument (transformers 5.25): the template
    # file reaches their tokenizer only, where vLLM also finds it
    template = processor.chat_template or processor.tokenizer.chat_template
    text = processor.apply_chat_template(sample.prompt_messages, add_generation_prompt=True, tokenize=False,
                                         chat_template=template)
    # transformers' own rule for a rendered prompt: no special tokens added when it already starts with BOS (vLLM
    # never adds them)
    bos = processor.tokenizer.bos_token
    served = processor(text=[text], images=[[image]], add_special_tokens=not (bos and text.startswith(bos)),
                       return_tensors="pt")
    trained = family.encode(tiny.processor, [sample], [[image]], "generate", 512).inputs
    print(family_name, repr(text))
    for key in ("input_ids", "qformer_input_ids"):
        if key in trained:
            assert served[key].tolist() == trained[key].tolist(), key


def test_the_blip_templates_equal_render_on_conversations():
    """BLIP-2's and InstructBLIP's templates equal their `render` on conversations with a system turn, several turns,
    list contents and an empty (captioning) user turn, with and without the generation prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from vlmtune.data.sample import assistant, user
    from vlmtune.models import blip2, instructblip

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    conversations = [
        [user("What colour is the top?"), assistant("red")],
        [{"role": "system", "content": "Be brief."}, user(" Which one? "), assistant("a"), user("And?"),
         assistant("b")],
        [user(""), assistant("a red top")],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "two"},
                                      {"type": "text", "text": "parts"}]}],
    ]
    for messages in conversations:
        got = env.from_string(blip2.CHAT_TEMPLATE).render(messages=messages, bos_token="<s>")
        assert got == "<s>" + blip2.render(messages), messages
        got = env.from_string(instructblip.CHAT_TEMPLATE).render(messages=messages, eos_token="</s>")
        assert got == instructblip.render_with("</s>")(messages), messages


@pytest.mark.vllm
def test_a_smolvlm_export_loads_as_smolvlm_processor_in_the_vllm_venv(tmp_path):
    """vLLM builds SmolVLMProcessor, which needs a video processor config the Idefics3Processor vlmtune saves lacks:
    the export writes one from the image processor's settings and names SmolVLMProcessor. In .venv-vllm (torchvision,
    transformers 5.19) AutoProcessor builds SmolVLMProcessor with the same image settings; here vlmtune's loader and
    AutoModelForImageTextToText still load the export."""
    import subprocess

    from transformers import AutoModelForImageTextToText

    from vlmtune.runs import load_for_inference
    from vlmtune.serve.vllm import find_vllm_python

    python = find_vllm_python()  # FileNotFoundError, saying how to build it, when there is no .venv-vllm
    tiny, out = _exported_tiny("smolvlm", tmp_path)
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "SmolVLMVideoProcessor" and video["do_sample_frames"] is False
    script = ("import json, sys; from transformers import AutoProcessor; "
              "p = AutoProcessor.from_pretrained(sys.argv[1]);"
              "print(json.dumps({'class': type(p).__name__, 'video': type(p.video_processor).__name__,"
              " 'image': p.image_processor.to_dict()}, default=str))")
    run = subprocess.run([str(python), "-c", script, str(out)], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    assert (built["class"], built["video"]) == ("SmolVLMProcessor", "SmolVLMVideoProcessor")
    ours = json.loads(json.dumps(tiny.processor.image_processor.to_dict(), default=str))  # tuples as JSON lists
    for key in ("size", "max_image_size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                "do_pad", "do_convert_rgb", "do_image_splitting", "image_mean", "image_std"):
        assert built["image"][key] == ours[key], key
    loaded = load_for_inference(out)
    assert type(loaded.processor).__name__ == "Idefics3Processor"
    assert type(AutoModelForImageTextToText.from_pretrained(out)).__name__ == "SmolVLMForConditionalGeneration"



VIDEO_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoProcessor
sys.path.insert(0, sys.argv[2])
from make_qwen_video_golden import frames
p = AutoProcessor.from_pretrained(sys.argv[1])
text = p.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]}],
                             add_generation_prompt=True, tokenize=False)
out = p(text=[text], videos=[frames(3, 40, 24)], return_tensors="np")
np.save(sys.argv[3], out["pixel_values_videos"])
print(json.dumps({"class": type(p).__name__, "video": type(p.video_processor).__name__, "text": text,
                  "ids": out["input_ids"][0].tolist()}))
"""


@pytest.mark.vllm
def test_a_llava_onevision_export_encodes_a_video_as_upstream_in_the_vllm_venv(tmp_path):
    """In .venv-vllm (torchvision, transformers 5.19) AutoProcessor builds the export as LlavaOnevisionProcessor with
    its torchvision LlavaOnevisionVideoProcessor (from preprocessor_config.json: the export writes no video config),
    and a video conversation gives the ids `encode` gives, and its pixels within one 8-bit level (resized frames)."""
    import subprocess
    import sys

    import numpy as np

    from vlmtune.data.sample import Sample, assistant
    from vlmtune.data.video import Video
    from vlmtune.serve.vllm import find_vllm_python

    python = find_vllm_python()  # FileNotFoundError, saying how to build it, when there is no .venv-vllm
    tiny, out = _exported_tiny("llava_onevision", tmp_path)
    golden = Path(__file__).parent / "golden"
    run = subprocess.run([str(python), "-c", VIDEO_SCRIPT, str(out), str(golden), str(tmp_path / "pixels.npy")],
                         capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    assert (built["class"], built["video"]) == ("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor")
    sys.path.insert(0, str(golden))
    from make_qwen_video_golden import frames

    sample = Sample(id="v", videos=["clip.mp4"], messages=[
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]}, assistant("left")])
    processor = FAMILIES["llava_onevision"].load_processor(out)
    batch = FAMILIES["llava_onevision"].encode(processor, [sample], [[]], "generate", 4096,
                                               videos=[[Video(frames(3, 40, 24), [0.0, 0.5, 1.0], fps=2.0)]])
    assert batch.inputs["input_ids"][0].tolist() == built["ids"]
    pixels = torch.from_numpy(np.load(tmp_path / "pixels.npy"))
    torch.testing.assert_close(batch.inputs["pixel_values_videos"], pixels, atol=0.015, rtol=0)
