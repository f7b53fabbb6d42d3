"""The family contract: every family in FAMILIES is held to the same checks, on a VQA and a caption sample.

Each family's `tiny()` model is random and 1-2 layers deep; everything here runs offline in seconds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.infer import prompt_length
from vlmtune.models import FAMILIES, SampleTooLong
from vlmtune.models.family import freeze_group_of
from vlmtune.models.labels import IGNORE_INDEX
from vlmtune.models.loss import accepts_logits_to_keep, forward_losses, logit_prefix_of

ANSWERS = {"vqa": "red", "caption": "a person wearing a red top and blue trousers"}


def _sample(kind: str, i: int = 0) -> Sample:
    if kind == "vqa":
        return Sample(id=f"vqa-{i}", messages=[user("What colour is the top?"), assistant(ANSWERS["vqa"])],
                      images=["a.png"], task="vqa", answers=[ANSWERS["vqa"]])
    return Sample(id=f"caption-{i}", messages=[user("Describe the image."), assistant(ANSWERS["caption"])],
                  images=["a.png"], task="caption", references=[ANSWERS["caption"]])


def _image(colour: str = "red", size: tuple[int, int] = (40, 40)) -> list[Image.Image]:
    img = Image.new("RGB", size, "white")
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (size[0] // 4, size[1] // 4))
    return [img]


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_and_tiny(request):
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    return family, family.tiny()


@pytest.mark.parametrize("kind", ["vqa", "caption"])
def test_trained_tokens_are_exactly_the_answer_and_the_end_token(family_and_tiny, kind):
    family, tiny = family_and_tiny
    tok = tiny.processor.tokenizer
    batch = family.encode(tiny.processor, [_sample(kind)], [_image()], "train", 512)
    labels = batch.inputs["labels"][0]
    trained = labels[labels != IGNORE_INDEX].tolist()
    print(f"{family.name} {kind} trained tokens:", tok.convert_ids_to_tokens(trained))
    assert trained[-1] in _eos_ids(tiny.model), "the end token is trained, so generation learns to stop"
    assert tok.decode(trained[:-1]).strip() == ANSWERS[kind]
    assert batch.n_target_tokens == len(trained)
    if family.shift_labels:  # decoder-only: labels sit on the very input tokens they name
        ids = batch.inputs["input_ids"][0]
        assert torch.equal(ids[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])


def test_the_loop_loss_equals_the_model_loss_and_falls(family_and_tiny):
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).eval()  # no dropout: the two forward passes below must agree
    samples = [_sample("vqa", 0), _sample("caption", 1)]
    batch = family.encode(tiny.processor, samples, [_image(), _image("blue")], "train", 512)
    labels = batch.inputs["labels"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    prefix = logit_prefix_of(family, model)
    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    losses = []
    for _ in range(8):
        with torch.no_grad():
            reference = model(**batch.inputs).loss  # the model's own loss on its labels
        # the loop's way: logits only where a target is predicted (when the model can), its own shift and prefix
        sums, counts = forward_losses(model, family, inputs, labels, accepts_logits_to_keep(model), prefix)
        ours = sums.sum() / counts.sum()
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
        assert torch.isfinite(ours)
        ours.backward()
        opt.step()
        opt.zero_grad()
        losses.append(ours.item())
    print(family.name, "losses:", [round(x, 3) for x in losses])
    assert losses[-1] < losses[0]


def test_lora_gives_gradients_to_adapters_only(family_and_tiny):
    from peft import LoraConfig, get_peft_model

    family, tiny = family_and_tiny
    targets = list(family.lora_targets)
    model = get_peft_model(copy.deepcopy(tiny.model),
                           LoraConfig(r=4, target_modules=targets[0] if len(targets) == 1 else targets))
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert adapted and all(freeze_group_of(family, n.removesuffix(".lora_A")) == "language" for n in adapted)
    batch = family.encode(tiny.processor, [_sample("vqa")], [_image()], "train", 512)
    model(**batch.inputs).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad), sorted(with_grad - {n for n in with_grad
                                                                                   if "lora_" in n})


def test_freeze_groups_cover_every_parameter_and_a_frozen_vision_tower_stays_put(family_and_tiny):
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).train()
    groups = {n: freeze_group_of(family, n) for n, _ in model.named_parameters()}
    assert None not in groups.values(), [n for n, g in groups.items() if g is None]
    assert {"vision", "language"} <= set(groups.values())
    for n, p in model.named_parameters():
        p.requires_grad_(groups[n] != "vision")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = family.encode(tiny.processor, [_sample("vqa")], [_image()], "train", 512)
    model(**batch.inputs).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(groups[n] != "vision" for n in changed)
    assert any(groups[n] == "language" for n in changed)


def test_save_and_load_through_auto_classes_gives_identical_logits(family_and_tiny, tmp_path):
    from transformers import AutoModelForImageTextToText

    family, tiny = family_and_tiny
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    # AutoProcessor, or the family's loader where the upstream processor class needs torchvision (Qwen's video half;
    # tests/models/test_processor_files.py loads those files with plain transformers in a fresh process)
    processor = family.load_processor(tmp_path)
    assert type(model) is type(tiny.model)
    samples = [_sample("vqa"), _sample("caption")]
    b = family.encode(processor, samples, [_image(), _image("blue")], "train", 512)
    b0 = family.encode(tiny.processor, samples, [_image(), _image("blue")], "train", 512)
    assert b.inputs.keys() == b0.inputs.keys()
    for k in b.inputs:
        assert torch.equal(b.inputs[k], b0.inputs[k]), k
    tiny.model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b.inputs).logits, tiny.model(**b0.inputs).logits)
    # the family's own `load` (what `model.path` in a config goes through) reads the same directory alike
    from vlmtune.config import ModelCfg

    loaded = family.load(ModelCfg(family=family.name, path=str(tmp_path)))
    assert loaded.family == family.name
    b1 = family.encode(loaded.processor, samples, [_image(), _image("blue")], "train", 512)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(**b1.inputs).logits, tiny.model(**b0.inputs).logits)


def test_generation_is_bounded_and_stops_at_the_end_token(family_and_tiny):
    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).train()
    sample = _sample("vqa")
    batch = family.encode(tiny.processor, [sample], [_image()], "train", 512)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):  # memorise one answer: "red" then the end token
        model(**batch.inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    prompt = family.encode(tiny.processor, [sample, sample], [_image(), _image()], "generate", 512)
    assert "labels" not in prompt.inputs
    n_prompt = prompt_length(family, prompt)
    with torch.no_grad():
        bounded = model.generate(**prompt.inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        out = model.generate(**prompt.inputs, max_new_tokens=8, do_sample=False)
    assert bounded.shape[1] - n_prompt == 2
    new = out[0, n_prompt:].tolist()
    text = tiny.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    print(family.name, "generated:", tiny.processor.tokenizer.convert_ids_to_tokens(new))
    assert text == ANSWERS["vqa"]
    assert any(t in _eos_ids(model) for t in new) and len(new) < 8, "stops at the end token"


def test_a_sample_that_does_not_fit_is_rejected_never_truncated(family_and_tiny):
    family, tiny = family_and_tiny
    n_image = family.image_tokens(tiny.processor, 40, 40)
    long = Sample(id="long-7", messages=[user("What colour is the top? " * 30), assistant("red")], images=["a.png"])
    with pytest.raises(SampleTooLong, match=rf"sample 'long-7': \d+ tokens \({n_image} image tokens"):
        family.encode(tiny.processor, [long], [_image()], "train", n_image + 20)


def test_the_modules_the_family_names_are_in_its_model(family_and_tiny):
    """`language_model` and `vision_tower` (where the vision dummy of sharded runs hooks, `train.distributed`) name
    modules of the model, and a family with a dummy has the `get_image_features` the dummy runs."""
    family, tiny = family_and_tiny
    for name in (family.language_model, family.vision_tower):
        if name is not None:
            assert list(tiny.model.get_submodule(name).parameters()), name
    assert family.language_model is None or hasattr(tiny.model, "get_image_features")


def test_image_token_budget_is_what_encode_produces(family_and_tiny):
    family, tiny = family_and_tiny
    # the ids the image features replace (Gemma 3: the soft tokens, not its one <start_of_image> placeholder)
    image_ids = getattr(tiny.processor, "image_token_ids", None) or [getattr(tiny.processor, "image_token_id", None)]
    for size in [(40, 40), (64, 32)]:
        n = family.image_tokens(tiny.processor, *size)
        assert n > 0
        batch = family.encode(tiny.processor, [_sample("vqa")], [_image(size=size)], "generate", 512)
        if image_ids != [None] and family.shift_labels:
            assert int(torch.isin(batch.inputs["input_ids"][0], torch.tensor(image_ids)).sum()) == n


def test_a_bf16_model_generates_and_trains_through_the_one_cast(family_and_tiny):
    """Every family in bf16 (what the recipes load): the Predictor and a training forward take their batches
    through `Batch.to(device, dtype)`, so float32 pixel values / patches never meet bf16 weights (DePlot's
    Pix2Struct crashed at the first evaluation with `float != BFloat16`)."""
    from vlmtune.infer import Predictor
    from vlmtune.models.family import Loaded, input_dtype

    family, tiny = family_and_tiny
    model = copy.deepcopy(tiny.model).to(torch.bfloat16).eval()
    assert input_dtype(model) == torch.bfloat16
    predictor = Predictor(loaded=Loaded(model, tiny.processor, family.name), family=family, max_new_tokens=3)
    done = predictor.complete([_sample("vqa"), _sample("caption", 1)], [_image(), _image("blue", (48, 32))])
    assert len(done) == 2 and all(c.completion_tokens <= 3 for c in done)
    batch = family.encode(tiny.processor, [_sample("vqa")], [_image()], "train", 512).to("cpu", torch.bfloat16)
    assert all(v.dtype in (torch.bfloat16, torch.int64, torch.int32, torch.bool) for v in batch.inputs.values()
               if isinstance(v, torch.Tensor))
    with torch.no_grad():
        assert torch.isfinite(model(**batch.inputs).loss)
