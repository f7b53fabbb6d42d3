"""DualEncoder: unit-length embeddings, independent of the batch they are computed in, for CLIP and SigLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmtune.retrieval.encoder import DualEncoder, fingerprint_mismatch, probe_image

TEXTS = ["a person wearing a red t-shirt and blue trousers", "skirt", "a person wearing a white dotted sweater and "
         "black shorts", "a person wearing a green tank top and a yellow skirt", "blue"]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_embeddings_are_unit_length_and_batch_size_invariant(models, caption_data, family):
    enc = DualEncoder.load(models[family], device="cpu")
    assert enc.family.name == family
    texts = enc.embed_texts(TEXTS, batch_size=64)
    assert texts.shape == (len(TEXTS), enc.dim) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.embed_texts(TEXTS, batch_size=2), texts, atol=1e-5)  # other padding, same vectors
    assert not np.allclose(texts[0], texts[2], atol=1e-3)  # different captions, different vectors

    paths = sorted((caption_data / "images").iterdir())[:5]
    images = enc.embed_images(paths, batch_size=5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.embed_images(paths, batch_size=2), images, atol=1e-5)
    np.testing.assert_allclose(enc.embed_images([probe_image(32)]), enc.embed_images([probe_image(32)]), atol=0)


def test_siglip_pads_to_its_fixed_length_without_mask_and_clip_masks(models):
    siglip = DualEncoder.load(models["siglip"], device="cpu").text_inputs(["blue", "a person wearing a red top"])
    assert set(siglip) == {"input_ids"} and siglip["input_ids"].shape[1] == 32  # max_position_embeddings
    clip = DualEncoder.load(models["clip"], device="cpu").text_inputs(["blue", "a person wearing a red top"])
    assert set(clip) == {"input_ids", "attention_mask"} and clip["input_ids"].shape[1] < 32


def test_fingerprint_tells_models_apart(models):
    clip = DualEncoder.load(models["clip"], device="cpu").fingerprint()
    again = DualEncoder.load(models["clip"], device="cpu").fingerprint()
    assert fingerprint_mismatch(clip, again) is None
    other = DualEncoder.load(models["clip_other"], device="cpu").fingerprint()
    assert other["config_sha256"] == clip["config_sha256"]  # same architecture ...
    assert "different weights" in fingerprint_mismatch(clip, other)  # ... told apart by the probes
    assert "dim differs" in fingerprint_mismatch(clip, DualEncoder.load(models["clip_dim32"], "cpu").fingerprint())
    assert "model_type" in fingerprint_mismatch(clip, DualEncoder.load(models["siglip"], "cpu").fingerprint())


def test_load_refuses_what_is_not_a_dual_encoder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="CLIP or SigLIP.*'bert'"):
        DualEncoder.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        DualEncoder.load(tmp_path / "missing")
