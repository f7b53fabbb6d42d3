"""`vlmtune compose`: a CLIP/SigLIP vision tower + a causal LM + a new projector -> an ordinary HF LLaVA model that
keeps both parts' weights, loads with the Auto classes, and trains and generates through the llava family."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_causal_lm as _lm
from helpers import tiny_clip as _clip
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user


@pytest.mark.parametrize("projector", ["mlp2x", "linear"])
def test_composed_model_keeps_both_parts_and_trains_through_the_llava_family(tmp_path, projector):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, CLIPVisionModel

    from vlmtune.models import FAMILIES
    from vlmtune.models.compose import compose
    from vlmtune.models.loss import forward_losses

    vision, lm = _clip(tmp_path / "clip"), _lm(tmp_path / "lm")
    summary = compose(str(vision), str(lm), tmp_path / "out", projector=projector)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == summary["image_token_id"] == \
        model.config.image_token_id

    pixels = torch.rand(1, 3, 32, 32)
    clip = CLIPVisionModel.from_pretrained(vision).eval()
    with torch.no_grad():  # the vision tower is CLIP's, feature for feature
        ours = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
        theirs = clip(pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(ours, theirs)
    original = AutoModelForCausalLM.from_pretrained(lm).eval()
    ids = processor.tokenizer("a person wearing a red top", return_tensors="pt").input_ids
    with torch.no_grad():  # text-only, the language model is the LM's (the added <image> row aside)
        torch.testing.assert_close(model(input_ids=ids).logits[..., : original.config.vocab_size],
                                   original(input_ids=ids).logits)
    projector_module = model.model.multi_modal_projector
    if projector == "linear":
        assert torch.equal(projector_module.linear_2.weight, torch.eye(48))
        features = torch.randn(3, 32)
        with torch.no_grad():
            torch.testing.assert_close(projector_module(features), projector_module.linear_1(features))

    family = FAMILIES["llava"]
    sample = Sample(id="s", messages=[user("What colour is the top?"), assistant("red")], images=["x.png"])
    batch = family.encode(processor, [sample], [[Image.new("RGB", (40, 30), "red")]], "train", 256)
    assert (batch.inputs["input_ids"] == model.config.image_token_id).sum() == 16  # (32/8)^2 patches, CLS dropped
    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")
    sums, counts = forward_losses(model.train(), family, inputs, labels, True)
    (sums.sum() / counts.sum()).backward()
    assert projector_module.linear_1.weight.grad.abs().sum() > 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vision_config"]["model_type"] == \
        "clip_vision_model"


def test_siglip_keeps_every_patch_and_bad_inputs_are_refused(tmp_path):
    from transformers import AutoProcessor

    from vlmtune.models import FAMILIES
    from vlmtune.models.compose import compose

    vision, lm = _clip(tmp_path / "siglip", siglip=True), _lm(tmp_path / "lm")
    compose(str(vision), str(lm), tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    sample = Sample(id="s", messages=[user("Colour?"), assistant("red")], images=["x.png"])
    batch = FAMILIES["llava"].encode(processor, [sample], [[Image.new("RGB", (32, 32), "red")]], "train", 256)
    assert (batch.inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum() == 16
    with pytest.raises(FileExistsError, match="already exists"):
        compose(str(vision), str(lm), tmp_path / "out")
    from vlmtune.cli import main

    assert main(["compose", "--vision", str(vision), "--lm", str(lm), "--out", str(tmp_path / "out")]) == 2
    assert main(["compose", "--vision", str(vision), "--lm", str(lm), "--projector", "linear",
                 "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "config.json").is_file() and (tmp_path / "cli" / "processor_config.json").is_file()
    with pytest.raises(ValueError, match="CLIP or SigLIP checkpoint"):
        compose(str(lm), str(lm), tmp_path / "out2")
    with pytest.raises(ValueError, match="linear or mlp2x"):
        compose(str(vision), str(lm), tmp_path / "out3", projector="qformer")


def test_a_gpt2_style_language_model_is_joined_untied_and_trains_with_lora(tmp_path):
    """ruGPT-3 (the meme project's LM) is GPT-2: its tied embedding is called `wte`, which LLaVA cannot tie to by
    name. The composed model keeps the LM's outputs exactly and LoRA finds its Conv1D projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    from vlmtune.data.tokenizer import train_byte_bpe
    from vlmtune.models import FAMILIES
    from vlmtune.models.builtin import _corpus
    from vlmtune.models.compose import compose
    from vlmtune.models.loss import forward_losses

    tok = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(_corpus(), ["<|endoftext|>"], 400),
                                  bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(3)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    compose(str(_clip(tmp_path / "clip")), str(tmp_path / "gpt2"), tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2").eval()
    assert original.config.tie_word_embeddings and not model.config.text_config.tie_word_embeddings
    ids = processor.tokenizer("a person wearing a red top", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[..., : original.config.vocab_size],
                                   original(input_ids=ids).logits)

    family = FAMILIES["llava"]
    lora = get_peft_model(model.train(), LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_targets[0]))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lora.named_parameters() if "lora_A" in n}
    assert adapted == {"c_attn", "c_proj", "c_fc"}
    sample = Sample(id="s", messages=[user("Опиши мем."), assistant("надпись «КОФЕ»")], images=["x.png"])
    batch = family.encode(processor, [sample], [[Image.new("RGB", (40, 30), "red")]], "train", 256)
    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")
    sums, counts = forward_losses(lora, family, inputs, labels, True)
    (sums.sum() / counts.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
