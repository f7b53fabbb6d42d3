"""Gemma 4 beyond the contract test: exact soft-token counts of the variable-resolution processor for several sizes,
aspect ratios and budgets; `model.max_pixels` as a lower soft-token budget; `mm_token_type_ids` reaching the model
(bidirectional attention over an image's tokens); the audio tower frozen; the copied chat template rendering as the
checkpoint's own."""

from __future__ import annotations

import pytest
import torch
from helpers import SHARED
from PIL import Image

from vlmtune.config import ModelCfg
from vlmtune.data.resize import limit_pixels, resized_size
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import apply_max_pixels, gemma4, get_family

SIZES = [(40, 60), (640, 480), (1280, 720), (600, 1800), (2000, 300), (3000, 40), (48, 48)]
REAL = SHARED / "real-models" / "google__gemma-4-E2B-it"


def _processor(**image_settings):
    """The family's processor with the checkpoint's image settings (16 px patches, 3x3 pooling) unless overridden."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    ip = Gemma4ImageProcessorPil(**{"patch_size": 16, "pooling_kernel_size": 3, "max_soft_tokens": 280,
                                    **image_settings})
    return gemma4.image_only_processor()(image_processor=ip, tokenizer=gemma4.build_tokenizer(),
                                         chat_template=gemma4.CHAT_TEMPLATE)


def _encoded(processor, size, mode="generate"):
    sample = Sample(id="a", messages=[user("What colour?"), assistant("green")], images=["a.png"])
    return gemma4.encode(processor, [sample], [[Image.new("RGB", size, (10, 200, 30))]], mode, 1 << 20).inputs


@pytest.mark.parametrize("budget", [70, 280, 1120])
def test_image_tokens_are_the_processors_for_every_size_and_budget(budget):
    processor = _processor(max_soft_tokens=budget)
    counts = []
    for size in SIZES:
        inputs = _encoded(processor, size)
        n = int((inputs["input_ids"] == processor.image_token_id).sum())
        assert n == gemma4.image_tokens(processor, *size), size
        assert n == int((inputs["mm_token_type_ids"] == 1).sum())  # exactly the soft tokens are marked
        patches = int((inputs["image_position_ids"][0] != -1).all(-1).sum())
        w, h = resized_size(*size, processor.image_processor)  # what the shape checks budget
        assert patches == (w // 16) * (h // 16) and n == patches // 9, size
        counts.append(n)
    assert max(counts) <= budget and len(set(counts)) > 1, counts  # the aspect ratio changes the count


def test_max_pixels_picks_the_largest_soft_token_budget_that_fits():
    processor = _processor(max_soft_tokens=1120)
    said = apply_max_pixels(processor, ModelCfg(family="gemma4", path="x", max_pixels=400_000))
    assert said.startswith("max_soft_tokens 140") and processor.image_processor.max_soft_tokens == 140
    for size in SIZES:
        w, h = resized_size(*size, processor.image_processor)
        n = int((_encoded(processor, size)["input_ids"] == processor.image_token_id).sum())
        assert w * h <= 400_000 and n == gemma4.image_tokens(processor, *size) <= 140
    assert limit_pixels(processor.image_processor, 10**9, "gemma4") == \
        "max_soft_tokens 140 (at most 140 image tokens per image)"  # never raised above what it was
    with pytest.raises(ValueError, match=r"below gemma4's smallest soft-token budget \(161280 pixels\)"):
        limit_pixels(processor.image_processor, 161_279, "gemma4")


def test_mm_token_type_ids_reach_the_model_and_make_image_tokens_attend_both_ways():
    tiny = get_family("gemma4").tiny()
    assert tiny.model.config.text_config.use_bidirectional_attention == "vision"
    model = tiny.model.eval()
    train = _encoded(tiny.processor, (40, 60), "train")
    assert "mm_token_type_ids" in _encoded(tiny.processor, (40, 60)) and "mm_token_type_ids" in train
    with torch.no_grad():
        loss = model(**train).loss
        causal = model(**{k: v for k, v in train.items() if k != "mm_token_type_ids"}).loss
    assert not torch.allclose(loss, causal), "without mm_token_type_ids the image tokens would be causal"


def test_the_audio_tower_is_frozen_and_never_adapted():
    family = get_family("gemma4")
    model = family.tiny().model
    audio = [(n, p) for n, p in model.named_parameters() if n.startswith(family.freeze_groups["audio"])]
    assert audio and not any(p.requires_grad for _, p in audio)
    import re

    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    targets = {n for n in linears if re.fullmatch(family.lora_targets[0], n)}
    assert targets and all(n.startswith("model.language_model.") for n in targets)
    assert any(".per_layer_input_gate" in n for n in targets)  # the per-layer-embedding gates are adapted too


needs = pytest.mark.skipif(not (REAL / "chat_template.jinja").is_file(), reason="no ../shared/real-models")


@needs
def test_the_copied_chat_template_renders_as_the_checkpoints():
    """gemma4.CHAT_TEMPLATE is the checkpoint's template without its tool parts: the same text for every kind of
    conversation vlmtune renders (system turn, several turns and images, thinking in an answer, generation prompt)."""
    real = (REAL / "chat_template.jinja").read_text()
    processor = _processor()
    conversations = [
        [user("What colour is the top?"), assistant("red")],
        [{"role": "system", "content": "Be brief. "}, user(" Which one? ", 2), assistant(" a "), user("And?", 0),
         assistant("b")],
        [user("Think first."), assistant("<|channel>thought\nhmm<channel|>blue")],
        [{"role": "user", "content": "plain text"}, {"role": "assistant", "content": "plain answer"}],
    ]
    for messages in conversations:
        for prompt in (False, True):
            for extra in ({}, {"enable_thinking": True}):
                ours, theirs = (processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                              chat_template=t, **extra) for t in (gemma4.CHAT_TEMPLATE,
                                                                                                  real))
                assert ours == theirs, (messages, prompt, extra)


def test_a_system_turn_given_as_parts_is_rendered_as_its_text():
    """The checkpoint's template prints a system turn's content as is: `encode` hands it the text, never a list."""
    processor = _processor()
    system = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    sample = Sample(id="s", messages=[system, user("What colour?"), assistant("green")], images=["a.png"])
    batch = gemma4.encode(processor, [sample], [[Image.new("RGB", (64, 64))]], "train", 4096)
    text = processor.tokenizer.decode(batch.inputs["input_ids"][0])
    assert text.startswith("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\n<|image>"), text[:80]
    labelled = batch.inputs["labels"][0][batch.inputs["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == "green<turn|>"


def test_merging_the_adapter_is_exact_in_float32():
    """Every LoRA target (the per-layer-embedding gates and projections included) merges into its weight exactly:
    in float32 the merged model's logits are the adapter's at run time (the real-width bf16 test can only bound
    the rounding)."""
    from peft import LoraConfig, get_peft_model

    family = get_family("gemma4")
    tiny = family.tiny()
    torch.manual_seed(0)
    model = get_peft_model(tiny.model, LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_targets[0]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    inputs = _encoded(tiny.processor, (40, 60), "train")
    model.eval()
    with torch.no_grad():
        adapted = model(**inputs).logits
        with model.disable_adapter():
            plain = model(**inputs).logits
        merged = model.merge_and_unload()(**inputs).logits
    assert (adapted - plain).abs().mean() > 1e-2  # the adapter matters
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
