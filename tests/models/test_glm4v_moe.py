"""GLM-4.5V and GLM-4.6V: the templates' non-thinking mode (the trained target behind the empty think block, the
processor's template defaulting to it, once), the stop tokens; GLM-4.5V's LoRA on the attention linears only."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES, glm4v_moe
from vlmtune.models.labels import trained_tokens


@pytest.fixture(scope="module", params=["glm4v_moe", "glm46v"])
def tiny(request):
    return FAMILIES[request.param].tiny()


def _turns(last: str = "blue") -> Sample:
    return Sample(id="turns", messages=[user("What colour is the top?"), assistant("red"),
                                        {"role": "user", "content": [{"type": "text", "text": "And?"}]},
                                        assistant(last)], images=["a.png"])


def test_answers_are_trained_behind_the_empty_think_block(tiny):
    """Non-thinking mode: `/nothink` after each question, `<think></think>` closing each prompt; the trained tokens
    are (GLM-4.5V: `\\n` +) the answer + `<|user|>` (an earlier turn) or `<|endoftext|>` (the last). GLM-4.6V's
    generation prompt takes the newline after the think block in."""
    tok = tiny.processor.tokenizer
    image = [[Image.new("RGB", (40, 40))]]
    encode = FAMILIES[tiny.family].encode
    batch = encode(tiny.processor, [_turns()], image, "train", 512)
    ids = batch.inputs["input_ids"][0].tolist()
    nl = "\n" if tiny.family == "glm4v_moe" else ""
    assert tok.convert_tokens_to_string(trained_tokens(tok, ids, batch.inputs["labels"][0].tolist())) == (
        f"{nl}red<|user|>{nl}blue<|endoftext|>")
    text = tok.decode(ids)
    assert text.count("/nothink<|assistant|>\n<think></think>\n") == 2 and text.endswith("blue<|endoftext|>")
    prompt = encode(tiny.processor, [_turns()], image, "generate", 512).inputs["input_ids"][0].tolist()
    assert tok.decode(prompt).endswith("And?/nothink<|assistant|>\n<think></think>" + ("\n" if not nl else ""))
    assert prompt == ids[: len(prompt)]  # the generation prompt is the training prefix of the last answer


def test_an_answer_with_its_own_reasoning_is_refused_naming_the_sample(tiny):
    with pytest.raises(ValueError, match="sample 'turns': the chat template does not render turn 3 as a prefix"):
        FAMILIES[tiny.family].encode(tiny.processor, [_turns("<think>it is blue</think>blue")],
                                     [[Image.new("RGB", (40, 40))]], "train", 512)


def test_the_processor_template_defaults_to_non_thinking_once(tiny, tmp_path):
    """Saved and reloaded, the template has THINKING_OFF in front once; rendered without `enable_thinking` it gives
    the training prompt (what a server of the export renders), with `enable_thinking=True` the thinking prompt."""
    from vlmtune.models import glm46v

    tiny.processor.save_pretrained(tmp_path)
    again = FAMILIES[tiny.family].load_processor(tmp_path)
    template = glm4v_moe.CHAT_TEMPLATE if tiny.family == "glm4v_moe" else glm46v.CHAT_TEMPLATE
    assert again.chat_template == glm4v_moe.THINKING_OFF + template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    plain = again.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert plain.startswith("[gMASK]<sop><|user|>") and "Colour?/nothink<|assistant|>\n<think></think>" in plain
    thinking = again.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking.removesuffix("\n").endswith("Colour?<|assistant|>")


def test_lora_adapts_the_attention_linears_only():
    """The family's targets give LoRA on q/k/v/o_proj of every decoder layer and nothing else. The trap they avoid:
    naming the MLP projections, peft converts them into LoRA on the fused routed experts (not the dense or shared
    linears), which the second model shows."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(glm4v_moe.tiny().model, LoraConfig(r=4, target_modules=glm4v_moe.FAMILY.lora_targets[0]))
    adapted = {n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith("lora_A")}
    layers = "base_model.model.model.language_model.layers"
    assert adapted == {f"{layers}.{k}.self_attn.{p}" for k in (0, 1) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "self_attn" in n for n in trainable)
    moe = model.get_base_model().model.language_model.layers[1].mlp
    assert moe.experts.gate_up_proj.ndim == 3 and not isinstance(moe.gate, torch.nn.Linear)  # why none can be adapted

    mlp_names = get_peft_model(glm4v_moe.tiny().model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|"
                                                                                        r"gate_proj|up_proj|down_proj)"))
    adapted = {n.removesuffix(".lora_A") for n, _ in mlp_names.named_modules() if n.endswith("lora_A")}
    assert f"{layers}.1.mlp.experts" in adapted and f"{layers}.0.mlp.gate_proj" not in adapted
    assert f"{layers}.1.mlp.shared_experts.gate_proj" not in adapted


def test_glm46v_image_processor_budgets_two_frames_as_glm4v_does():
    """`Glm46VImageProcessorPil` is a copy of GLM-4.1V's, not a subclass: the resize model (data/resize.py, what
    model.max_pixels and the plan use) counts its pixel limits as two frames too, and the limit gives the same sizes
    and image tokens as for GLM-4.1V."""
    from vlmtune.config import ModelCfg
    from vlmtune.data.resize import resized_size
    from vlmtune.models import apply_max_pixels

    ours, theirs = FAMILIES["glm46v"].tiny().processor, FAMILIES["glm4v"].tiny().processor
    sizes = [(200, 150), (40, 40), (300, 20)]
    for limit in (None, 40 * 40):
        for processor, name in ((ours, "glm46v"), (theirs, "glm4v")):
            apply_max_pixels(processor, ModelCfg(family=name, path="x", max_pixels=limit))
        for size in sizes:
            w, h = resized_size(*size, ours.image_processor)
            assert (w, h) == resized_size(*size, theirs.image_processor)
            assert FAMILIES["glm46v"].image_tokens(ours, *size) == w * h // (16 * 16)


def test_load_reads_a_saved_checkpoint_with_its_template_non_thinking_once(tiny, tmp_path):
    from vlmtune.config import ModelCfg

    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = FAMILIES[tiny.family].load(ModelCfg(family=tiny.family, path=str(tmp_path), dtype="float32"))
    assert type(loaded.model) is type(tiny.model) and loaded.family == tiny.family
    assert loaded.processor.chat_template == tiny.processor.chat_template
    assert loaded.processor.chat_template.count(glm4v_moe.THINKING_OFF) == 1
    batch = FAMILIES[tiny.family].encode(loaded.processor, [_turns()], [[Image.new("RGB", (40, 40))]], "train", 512)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(**batch.inputs).logits, tiny.model.eval()(**batch.inputs).logits)
