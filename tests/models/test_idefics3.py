"""The idefics3 and smolvlm families: processor equivalence, size-dependent image tokens, multi-turn and multi-image
labels, mixed text-only batches, and loading a SmolVLM checkpoint without torchvision."""

import importlib.util
import json

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.labels import IGNORE_INDEX, trained_tokens

NAMES = ["idefics3", "smolvlm"]


@pytest.fixture(scope="module", params=NAMES)
def fam(request):
    torch.manual_seed(0)
    return FAMILIES[request.param], FAMILIES[request.param].tiny()


def _img(size=(40, 40), colour="red"):
    return Image.new("RGB", size, colour)


def _vqa(i=0, answer="red"):
    return Sample(id=f"q{i}", messages=[user("What colour is the top?"), assistant(answer)], images=["a.png"])


def test_encode_gives_exactly_the_processors_inputs(fam):
    family, tiny = fam
    samples = [_vqa(0), _vqa(1, "blue")]
    images = [[_img()], [_img((64, 32), "blue")]]
    b = family.encode(tiny.processor, samples, images, "train", 512)
    texts = [tiny.processor.apply_chat_template(s.messages, tokenize=False) for s in samples]
    ref = tiny.processor(text=texts, images=images, padding=True, return_tensors="pt")
    assert set(b.inputs) == set(ref) | {"labels"}
    for k in ref:
        assert torch.equal(b.inputs[k], ref[k]), k


@pytest.mark.parametrize("size", [(40, 40), (64, 32), (32, 64), (33, 100), (100, 33), (17, 90), (20, 20), (500, 70)])
def test_image_tokens_follow_image_splitting(fam, size):
    family, tiny = fam
    n = family.image_tokens(tiny.processor, *size)
    b = family.encode(tiny.processor, [_vqa()], [[_img(size)]], "generate", 512)
    assert int((b.inputs["input_ids"][0] == tiny.processor.image_token_id).sum()) == n
    assert n % tiny.processor.image_seq_len == 0


def test_image_tokens_match_the_processing_at_the_checkpoints_sizes():
    """Idefics3-8B (longest edge 4x364, tiles of 364) and SmolVLM-256M (2048, tiles of 512): rows x cols as computed
    for the budget are what the image processor does."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    for longest, tile in [(4 * 364, 364), (2048, 512)]:
        ip = Idefics3ImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": tile})
        for w, h in [(640, 480), (480, 640), (1000, 1001), (300, 2000), (2000, 300), (100, 100), (1457, 700)]:
            out = ip([[Image.new("RGB", (w, h))]], return_row_col_info=True)
            assert ip.get_number_of_image_patches(h, w)[1:] == (out["rows"][0][0], out["cols"][0][0]), (w, h)


def test_multi_turn_and_multi_image_train_every_answer_and_nothing_else(fam):
    family, tiny = fam
    tok = tiny.processor.tokenizer
    s = Sample(id="mt", images=["a.png", "b.png", "c.png"], messages=[
        user("What colour is the top?", n_images=2), assistant("red"),
        user("And the trousers?", n_images=1), assistant("blue trousers")])
    b = family.encode(tiny.processor, [s], [[_img(), _img((64, 32)), _img((20, 20))]], "train", 512)
    ids, labels = b.inputs["input_ids"][0], b.inputs["labels"][0]
    got = trained_tokens(tok, ids, labels)
    print(family.name, "multi-turn trained tokens:", got)
    assert got == ["Ġred", "<end_of_utterance>", "Ġblue", "Ġtrousers", "<end_of_utterance>"]
    # every image is first scaled to a longest edge of 64: 2x2 tiles + global, 2x1 + global, 2x2 + global
    assert b.inputs["pixel_values"].shape[1] == 5 + 3 + 5
    assert not ((labels != IGNORE_INDEX) & (ids == tiny.processor.image_token_id)).any()


def test_text_only_and_image_samples_share_a_batch_and_generate_pads_left(fam):
    family, tiny = fam
    text_only = Sample(id="t", messages=[user("Say yes.", n_images=0), assistant("yes")])
    b = family.encode(tiny.processor, [text_only, _vqa()], [[], [_img()]], "train", 512)
    assert trained_tokens(tiny.processor.tokenizer, b.inputs["input_ids"][0], b.inputs["labels"][0])[-1] == (
        "<end_of_utterance>")
    assert torch.isfinite(tiny.model(**b.inputs).loss)
    g = family.encode(tiny.processor, [text_only, _vqa()], [[], [_img()]], "generate", 512)
    assert g.inputs["attention_mask"][:, -1].all() and not g.inputs["attention_mask"][0, 0]
    text = tiny.processor.tokenizer.decode(g.inputs["input_ids"][1])
    assert text.endswith("<end_of_utterance>\nAssistant:")


def test_smolvlm_checkpoint_loads_without_torchvision(tmp_path):
    """Real SmolVLM checkpoints name SmolVLMProcessor, which AutoProcessor cannot build here (video processor)."""
    from transformers import AutoProcessor

    from vlmtune.config import ModelCfg

    tiny = FAMILIES["smolvlm"].tiny()
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    for name in ["processor_config.json", "tokenizer_config.json"]:  # as on the hub
        cfg = json.loads((tmp_path / name).read_text())
        (tmp_path / name).write_text(json.dumps({**cfg, "processor_class": "SmolVLMProcessor"}))
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(OSError, match="video processor"):
            AutoProcessor.from_pretrained(tmp_path)
    loaded = FAMILIES["smolvlm"].load(ModelCfg(family="smolvlm", path=str(tmp_path), dtype="float32"))
    assert loaded.processor.image_seq_len == tiny.processor.image_seq_len
    samples, images = [_vqa()], [[_img((64, 32))]]
    b = FAMILIES["smolvlm"].encode(loaded.processor, samples, images, "train", 512)
    b0 = FAMILIES["smolvlm"].encode(tiny.processor, samples, images, "train", 512)
    for k in b0.inputs:
        assert torch.equal(b.inputs[k], b0.inputs[k]), k
