"""GLM-4.1V: the chat template in glm4v.py is the checkpoint's; the checkpoint's older flat config.json is converted
(its partial rotary and M-RoPE sections kept), by `load` too; the stop tokens after each assistant turn."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.real.conftest import real_path
from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import glm4v
from vlmtune.models.labels import trained_tokens


def test_the_chat_template_is_the_checkpoints():
    path = real_path("glm4v")
    with open(f"{path}/chat_template.jinja") as f:
        assert glm4v.CHAT_TEMPLATE == f.read()


def test_the_flat_config_keeps_the_partial_multimodal_rotary():
    from transformers import AutoConfig

    path = real_path("glm4v")
    config = glm4v.load_config(path)
    text = config.text_config
    assert text.rope_parameters["partial_rotary_factor"] == 0.5
    assert text.rope_parameters["mrope_section"] == [8, 12, 12]
    assert (text.max_position_embeddings, text.pad_token_id, text.eos_token_id) == (
        65536, 151329, [151329, 151336, 151338, 151348])
    assert config.vision_config.out_hidden_size == text.hidden_size == 4096
    # what transformers alone makes of it: the decoder's defaults (a model of it fails in its first forward)
    plain = AutoConfig.from_pretrained(path).text_config
    assert "partial_rotary_factor" not in plain.rope_parameters and plain.max_position_embeddings != 65536


def _flat(nested: dict) -> dict:
    """A nested GLM-4.1V config.json in the checkpoint's older layout: text keys at the top, RoPE as rope_scaling."""
    text = dict(nested.pop("text_config"))
    rope = text.pop("rope_parameters")
    text["rope_scaling"] = {"type": rope["rope_type"], "mrope_section": rope["mrope_section"]}
    text["rope_theta"], text["partial_rotary_factor"] = rope["rope_theta"], rope["partial_rotary_factor"]
    text.pop("model_type", None)
    return {**nested, **text}


def test_load_reads_a_checkpoint_with_the_flat_config(tmp_path):
    tiny = glm4v.tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_flat(json.loads(config.read_text())), indent=2))
    assert "text_config" not in json.loads(config.read_text())
    loaded = glm4v.load(ModelCfg(family="glm4v", path=str(tmp_path), dtype="float32"))
    sample = Sample(id="a", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"])
    batch = glm4v.encode(loaded.processor, [sample], [[Image.new("RGB", (40, 40), "red")]], "train", 512)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(**batch.inputs).logits, tiny.model.eval()(**batch.inputs).logits)
    assert loaded.model.config.text_config.rope_parameters["partial_rotary_factor"] == 0.5


def test_each_answer_ends_with_the_token_after_it():
    """Multi-turn: `<|user|>` (what the template writes next) closes an earlier answer, `<|endoftext|>` the last."""
    tiny = glm4v.tiny()
    sample = Sample(id="turns", messages=[user("What colour is the top?"), assistant("red"),
                                          {"role": "user", "content": [{"type": "text", "text": "And?"}]},
                                          assistant("blue")], images=["a.png"])
    batch = glm4v.encode(tiny.processor, [sample], [[Image.new("RGB", (40, 40))]], "train", 512)
    tok = tiny.processor.tokenizer
    trained = trained_tokens(tok, batch.inputs["input_ids"][0].tolist(), batch.inputs["labels"][0].tolist())
    assert tok.convert_tokens_to_string(trained) == "red<|user|>blue<|endoftext|>"
    system_last = Sample(id="odd", messages=[user("What colour?"), assistant("red"),
                                             {"role": "system", "content": "Be brief."}], images=["a.png"])
    with pytest.raises(ValueError, match="sample 'odd': an assistant turn is not followed by"):
        glm4v.encode(tiny.processor, [system_last], [[Image.new("RGB", (40, 40))]], "train", 512)
