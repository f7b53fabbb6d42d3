"""Phi-4-multimodal: the torchvision-free port of Phi4MultimodalImageProcessor gives what transformers' own gives
(tests/golden/phi4mm_image.npz, made by tests/golden/make_phi4mm_golden.py), `image_tokens` is the number of
`<|image|>` tokens the processor writes, the checkpoint's vision LoRA adapter is merged on load, the audio encoder
stays frozen, and the processor vlmtune saves names the upstream classes and loads with plain AutoProcessor (in
vLLM's environment, which has torchvision)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmtune.config import ModelCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES, phi4_multimodal

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from make_phi4mm_golden import REAL, REAL_CASES, STEP, TINY, TINY_CASES, image  # noqa: E402

FAMILY = FAMILIES["phi4_multimodal"]
SAMPLE = Sample(id="q", messages=[user("What colour is the top?"), assistant("red")], images=["a.png"], task="vqa")


@pytest.mark.parametrize("name", sorted(TINY_CASES) + sorted(REAL_CASES))
def test_the_port_gives_upstreams_crops_masks_sizes_and_tokens(name):
    """Pixels within 1e-6 (float rounding; the uint8 resize is torchvision's kernel), masks, sizes and (at the
    checkpoint's 448/14 crops) token counts exactly. Upstream's count is written for 448/14 crops (256 + 16 + 1 +
    ...): at the tiny 28/14 crops its global crop is 1x1 + 1 separator, not 16x16 + 16, so the counts differ by
    that, and the port's count is the one the tiny model fills (the contract test runs it)."""
    golden = np.load(GOLDEN / "phi4mm_image.npz")
    real = name in REAL_CASES
    width, height = (REAL_CASES if real else TINY_CASES)[name]
    processor = phi4_multimodal.image_processor_class()(**(REAL if real else TINY))
    got = processor(images=[image(width, height)], return_tensors="pt")
    step = STEP if real else 1
    np.testing.assert_allclose(got["image_pixel_values"][..., ::step, ::step].numpy(), golden[f"{name}/pixels"],
                               rtol=0, atol=1e-6)
    assert got["image_attention_mask"].numpy().astype(np.uint8).tolist() == golden[f"{name}/mask"].tolist()
    assert got["image_sizes"].tolist() == golden[f"{name}/sizes"].tolist()
    upstream = int(golden[f"{name}/tokens"][0])
    assert got["num_img_tokens"].tolist() == [upstream if real else upstream - (256 + 16) + (1 + 1)]
    assert processor.get_number_of_image_tokens(height, width) == got["num_img_tokens"][0]


@pytest.mark.parametrize("size", [(40, 40), (40, 60), (90, 30), (17, 23), (200, 20)])
def test_image_tokens_are_the_image_placeholders_encode_writes(size):
    tiny = FAMILY.tiny()
    batch = FAMILY.encode(tiny.processor, [SAMPLE], [[image(*size)]], "train", 512)
    n = int((batch.inputs["input_ids"] == tiny.processor.image_token_id).sum())
    assert n == FAMILY.image_tokens(tiny.processor, *size)
    with torch.no_grad():  # the model fills exactly those positions (it raises on a count mismatch)
        tiny.model(**batch.inputs)


def test_an_extreme_aspect_ratio_is_refused_in_one_line():
    tiny = FAMILY.tiny()
    with pytest.raises(ValueError, match="aspect ratio is too extreme"):
        FAMILY.image_tokens(tiny.processor, 2000, 5)


def _saved(tmp_path, adapter: bool):
    from peft import LoraConfig, get_peft_model

    tiny = FAMILY.tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    if adapter:  # the checkpoint's vision-lora/: a LoRA on the decoder, nonzero so merging shows
        torch.manual_seed(1)
        peft = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=list(FAMILY.lora_targets)[0],
                                                     init_lora_weights=False))
        peft.save_pretrained(tmp_path / phi4_multimodal.VISION_LORA)
        merged = {n: p.detach().clone() for n, p in peft.merge_and_unload().named_parameters()}
        return merged
    return {n: p.detach().clone() for n, p in tiny.model.named_parameters()}


@pytest.mark.parametrize("adapter", [True, False])
def test_load_merges_the_vision_lora_into_the_decoder_and_freezes_audio(tmp_path, adapter):
    expected = _saved(tmp_path, adapter)
    loaded = FAMILY.load(ModelCfg(family="phi4_multimodal", path=str(tmp_path), dtype="float32"))
    params = dict(loaded.model.named_parameters())
    assert not any("lora_" in n for n in params) and params.keys() == expected.keys()
    for n, p in params.items():
        torch.testing.assert_close(p, expected[n], rtol=0, atol=0)
        assert p.requires_grad == (not n.startswith(FAMILY.freeze_groups["audio"])), n
    assert type(loaded.model).__name__ == "Phi4MultimodalForCausalLM"
    loaded.model.save_pretrained(tmp_path / "again")  # a vlmtune checkpoint: merged weights, no vision-lora/
    assert not (tmp_path / "again" / phi4_multimodal.VISION_LORA).exists()


def test_a_saved_processor_names_the_upstream_classes_and_keeps_its_template(tmp_path):
    tiny = FAMILY.tiny()
    tiny.processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Phi4MultimodalProcessor"
    assert saved["image_processor"]["image_processor_type"] == "Phi4MultimodalImageProcessor"
    assert saved["audio_processor"]["feature_extractor_type"] == "Phi4MultimodalFeatureExtractor"
    again = FAMILY.load_processor(tmp_path)
    assert again.chat_template == phi4_multimodal.CHAT_TEMPLATE
    assert again.image_processor.to_dict() == tiny.processor.image_processor.to_dict()


PLAIN = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoProcessor
d = sys.argv[1]
p = AutoProcessor.from_pretrained(d)
text = open(d + "/prompt.txt").read()
img = Image.open(d + "/image.png")
out = p(text=[text], images=[img], return_tensors="pt")
np.save(d + "/pixels.npy", out["image_pixel_values"].numpy())
print(json.dumps({"class": type(p).__name__, "image": type(p.image_processor).__name__,
                  "audio": type(p.audio_processor).__name__, "ids": out["input_ids"][0].tolist(),
                  "mask": out["image_attention_mask"].tolist(), "sizes": out["image_sizes"].tolist()}))
"""


@pytest.mark.vllm
def test_plain_transformers_loads_the_saved_processor_and_writes_the_same_inputs(tmp_path):
    """In .venv-vllm (torchvision, transformers 5.19) AutoProcessor builds Phi4MultimodalProcessor with upstream's
    image processor from the saved files; on the prompt `encode` builds it gives the same ids and masks, and pixels
    within 1e-6."""
    from vlmtune.serve.vllm import find_vllm_python

    python = find_vllm_python()
    tiny = FAMILY.tiny()
    tiny.processor.save_pretrained(tmp_path)
    img = image(40, 60)
    img.save(tmp_path / "image.png")
    ours = FAMILY.encode(tiny.processor, [SAMPLE], [[img]], "generate", 512).inputs
    prompt = tiny.processor.apply_chat_template(SAMPLE.prompt_messages, tokenize=False, add_generation_prompt=True)
    (tmp_path / "prompt.txt").write_text(prompt)
    run = subprocess.run([str(python), "-c", PLAIN, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["class"], got["image"], got["audio"]) == ("Phi4MultimodalProcessor", "Phi4MultimodalImageProcessor",
                                                          "Phi4MultimodalFeatureExtractor")
    # upstream's count is written for 448/14 crops: at the tiny 28/14 crops it writes 270 more <|image|> tokens
    image_id = tiny.processor.image_token_id
    strip = [t for t in got["ids"] if t != image_id]
    assert strip == [t for t in ours["input_ids"][0].tolist() if t != image_id]
    assert got["ids"].count(image_id) == int((ours["input_ids"] == image_id).sum()) + 270
    assert got["mask"] == ours["image_attention_mask"].tolist() and got["sizes"] == ours["image_sizes"].tolist()
    np.testing.assert_allclose(np.load(tmp_path / "pixels.npy"), ours["image_pixel_values"].numpy(), rtol=0,
                               atol=1e-6)




def test_a_quantized_load_merges_the_vision_lora_too(tmp_path):
    """Under model.quantization the adapter is merged into the 4-bit decoder (peft dequantises, adds, requantises):
    its logits are nearer the full-precision merged model's than the unmerged base's. (Run with gradients on: under
    no_grad bitsandbytes' CPU inference path repacks 4-bit weights by 64-wide blocks, which the tiny 32-wide layers
    are not, and fails on their shape.)"""
    from transformers import AutoModelForCausalLM

    from vlmtune.config.model import QuantCfg

    _saved(tmp_path, adapter=True)
    q = QuantCfg(bits=4, compute_dtype="float32")
    model = FAMILY.load(ModelCfg(family="phi4_multimodal", path=str(tmp_path), quantization=q)).model.eval()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    full = FAMILY.load(ModelCfg(family="phi4_multimodal", path=str(tmp_path), dtype="float32")).model.eval()
    unmerged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers: the base alone
    batch = FAMILY.encode(FAMILY.load_processor(tmp_path), [SAMPLE], [[image(40, 60)]], "train", 512).inputs
    got, want, plain = (m(**batch).logits.detach() for m in (model, full, unmerged))
    assert (got - want).abs().mean() < (got - plain).abs().mean()


def test_plan_builds_the_meta_model_and_counts_every_tower(tmp_path):
    """`vlmtune plan` builds Phi4MultimodalForCausalLM (an AutoModelForMultimodalLM, not an
    AutoModelForImageTextToText) on the meta device, and every parameter falls in a freeze group."""
    from vlmtune.config import RunCfg
    from vlmtune.train.plan.params import build_meta_model, count_params

    tiny = FAMILY.tiny()
    tiny.model.save_pretrained(tmp_path)
    cfg = RunCfg.from_dict({"model": {"family": "phi4_multimodal", "path": str(tmp_path), "dtype": "bfloat16"},
                            "lora": {"enabled": True}, "train": {"mixed_precision": "bf16"}})
    model = build_meta_model(cfg)[0]
    assert type(model).__name__ == "Phi4MultimodalForCausalLM" and model.device.type == "meta"
    counts = count_params(cfg, FAMILY, model)
    assert counts["total"] == sum(p.numel() for p in tiny.model.parameters())
    assert counts["towers"].get("other", 0) == 0, counts["towers"]


@pytest.mark.parametrize("size,max_crops", [((300, 200), 36), ((700, 500), 36), ((896, 448), 36), ((1000, 1000), 4)])
def test_at_the_checkpoints_crop_geometry_the_model_fills_exactly_the_counted_tokens(size, max_crops):
    """The checkpoint's vision geometry (SigLIP at 448 px crops of 14 px patches, width 1152, 2 of its 27 layers; a
    narrow decoder) with the checkpoint's processor settings: the model's features for an image (global crop,
    separators, the unpadded part of the crop grid) are exactly the `<|image|>` tokens counted, for padded and
    capped grids too (a 3x3 grid capped to 2x2 by `dynamic_hd` 4; transformers' index_put raises on any other
    number)."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    processor = phi4_multimodal.build_processor(crop=448, patch=14, dynamic_hd=max_crops)
    tok = processor.tokenizer
    config = Phi4MultimodalConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vision_config=dict(num_hidden_layers=2, image_token_id=processor.image_token_id),
        audio_config=dict(hidden_size=16, intermediate_size=32, num_blocks=1, num_attention_heads=2,
                          ext_pw_out_channel=16, depthwise_separable_out_channel=16, nemo_conv_channels=16,
                          audio_token_id=processor.audio_token_id), pad_token_id=tok.pad_token_id)
    model = Phi4MultimodalForCausalLM(config).eval()
    batch = FAMILY.encode(processor, [SAMPLE], [[image(*size)]], "train", 8192).inputs
    n = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n == FAMILY.image_tokens(processor, *size)
    with torch.no_grad():
        features = model.model.embed_tokens_extend.image_embed(
            batch["input_ids"], model.model.embed_tokens(batch["input_ids"]), batch["image_pixel_values"],
            batch["image_sizes"], batch["image_attention_mask"])
    assert features.shape[1] == batch["input_ids"].shape[1]


FRESH = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
d = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(d).eval()
ids = torch.tensor(json.loads(open(d + "/../ids.json").read()))
with torch.no_grad():
    logits = model(input_ids=ids).logits
try:
    AutoModelForImageTextToText.from_pretrained(d)
    image_text = "loaded"
except ValueError:
    image_text = "refused"
print(json.dumps({"class": type(model).__name__, "logits": logits[0, -1, :8].tolist(), "image_text": image_text,
                  "tokens": len(AutoTokenizer.from_pretrained(d)), "vlmtune": "vlmtune" in sys.modules}))
"""


def test_an_export_loads_with_plain_transformers_as_a_causal_lm(tmp_path):
    """Without vlmtune (no registration) an export is an AutoModelForCausalLM with the same logits;
    AutoModelForImageTextToText refuses it there, as it refuses the checkpoint."""
    import os

    from vlmtune.export import export

    tiny = FAMILY.tiny()
    tiny.model.save_pretrained(tmp_path / "src")
    tiny.processor.save_pretrained(tmp_path / "src")
    out = Path(export(tmp_path / "src", tmp_path / "out")["out"])
    ids = tiny.processor.tokenizer(["<|user|>What colour is the top?<|end|><|assistant|>"]).input_ids
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    with torch.no_grad():
        want = tiny.model.eval()(input_ids=torch.tensor(ids)).logits[0, -1, :8]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", FRESH, str(out)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["class"], got["image_text"], got["vlmtune"]) == ("Phi4MultimodalForCausalLM", "refused", False)
    assert got["tokens"] == len(tiny.processor.tokenizer)
    torch.testing.assert_close(torch.tensor(got["logits"]), want, rtol=1e-5, atol=1e-5)
