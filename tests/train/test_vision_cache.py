"""The frozen-vision feature cache: the same loss as without it, for every family that supports it; computed once
per image; invalidated by any change of weights or processor settings; off (with the reason) when inexact."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import tiny_run_cfg
from PIL import Image

from vlmtune.config import RunCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models import FAMILIES
from vlmtune.models.loss import forward_losses
from vlmtune.train.vision_cache import IMAGE_INPUTS, VisionCache, fingerprint, why_not


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_training_with_the_cache_gives_the_same_losses_and_evaluations(tmp_path, fashion_dir, capsys):
    from vlmtune.train.loop import train

    runs = {}
    for mode in ("off", "auto"):
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / mode, fashion_dir, lora={"enabled": True, "r": 4},
                                            train={"max_steps": 12, "eval_every": 6, "save_every": 0, "lr": 1e-2,
                                                   "freeze_projector": True, "vision_cache": mode}))
        train(cfg)
        runs[mode] = cfg.run_dir
    err = capsys.readouterr().err
    assert "vision cache: off (train.vision_cache is off)" in err and "vision cache: on, " in err
    assert "trainable " in err and "language/lora" in err and "projector/" not in err  # printed at start-up
    assert "mixed precision no, device cpu" in err  # not Accelerate's bare "NO"
    trained = re.search(r"trained tokens of sample '[^']+': (\[.*\])", err)
    assert trained and trained.group(1).endswith("'</s>']"), err[-2000:]
    off, on = _losses(runs["off"]), _losses(runs["auto"])
    assert len(off) == 12  # 12 steps x 8 = 96 samples: every one of the 38 train images is seen 2-3 times
    torch.testing.assert_close(torch.tensor(on), torch.tensor(off), rtol=1e-5, atol=1e-5)
    for step in (0, 6, 12):  # validation generates the same answers from cached features
        files = sorted((runs["off"] / "predictions" / f"step-{step}").rglob("*.jsonl"))
        assert files
        for f in files:
            assert (runs["auto"] / f.relative_to(runs["off"])).read_text() == f.read_text(), f
    cached = list((runs["auto"] / "vision_cache").glob("*/*/*.safetensors"))
    rows = list(map(json.loads, (fashion_dir / "manifest.jsonl").read_text().splitlines()))
    train_images = {s["images"][0] for s in rows if s["split"] == "train"}
    val_images = {s["images"][0] for s in rows if s["split"] == "val"}
    assert len(cached) == len(train_images) + len(val_images)  # each computed once, over 3 evaluations


def test_under_bf16_autocast_the_cache_gives_the_same_losses_and_adapter(tmp_path, fashion_dir):
    """The cached features are computed under the same autocast as the uncached forward (train.mixed_precision:
    bf16 on a float32 model): the same losses and adapter weights. Before, the cached path ran outside autocast
    (loss off by 1e-4, adapter weights by 7e-3 after 8 steps)."""
    from safetensors.torch import load_file

    from vlmtune.train.loop import train

    runs = {}
    for mode in ("off", "auto"):
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / mode, fashion_dir, lora={"enabled": True, "r": 4},
                                            train={"max_steps": 8, "eval_every": 0, "save_every": 8, "lr": 1e-2,
                                                   "freeze_projector": True, "vision_cache": mode,
                                                   "mixed_precision": "bf16"}))
        train(cfg)
        runs[mode] = cfg.run_dir
    assert list((runs["auto"] / "vision_cache").glob("*/*/*.safetensors")), "the cache was used"
    torch.testing.assert_close(torch.tensor(_losses(runs["auto"])), torch.tensor(_losses(runs["off"])),
                               rtol=0, atol=0)
    a, b = (load_file(runs[m] / "checkpoints" / "step-8" / "adapter_model.safetensors") for m in ("auto", "off"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_stays_off_and_says_why(tmp_path, fashion_dir):
    from vlmtune.models.builtin import build_builtin

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True}))
    loaded = build_builtin(cfg.model.builtin)
    family = FAMILIES["llava"]
    assert why_not(cfg, family, loaded.model).startswith("the vision tower or projector is trained")
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    assert why_not(cfg, family, loaded.model) is None
    cfg.train.hflip = True
    assert why_not(cfg, family, loaded.model) == "images are augmented (train.hflip)"
    cfg.train.hflip = False
    assert "does not take precomputed image features" in why_not(cfg, FAMILIES["blip2"], FAMILIES["blip2"].tiny().model)


def test_any_change_of_weights_or_processor_settings_changes_the_fingerprint():
    tiny = FAMILIES["llava"].tiny()
    family = FAMILIES["llava"]
    first = fingerprint(tiny.model, family, tiny.processor)
    assert fingerprint(tiny.model, family, tiny.processor) == first
    tiny.processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    second = fingerprint(tiny.model, family, tiny.processor)
    assert second != first
    with torch.no_grad():
        next(p for n, p in tiny.model.named_parameters() if "vision_tower" in n).add_(1e-3)
    assert fingerprint(tiny.model, family, tiny.processor) != second
    with torch.no_grad():  # the language model is not part of the key
        next(p for n, p in tiny.model.named_parameters() if "language_model" in n).add_(1.0)
    third = fingerprint(tiny.model, family, tiny.processor)
    assert fingerprint(tiny.model, family, tiny.processor) == third
    # what changes the features without changing a weight: the layer the features come from, the autocast, the dtype
    assert fingerprint(tiny.model, family, tiny.processor, "bf16") != third
    tiny.model.config.vision_feature_layer = -2 if tiny.model.config.vision_feature_layer == -1 else -1
    assert fingerprint(tiny.model, family, tiny.processor) != third
    assert fingerprint(tiny.model.to(torch.bfloat16), family, tiny.processor) != third


def _mixed_batch(family, root):
    """Items of one batch: single-image samples of two sizes, plus a two-image and a text-only sample where the
    family allows them; the images are written under `root`."""
    colours = {"a.png": ((40, 40), "red"), "b.png": ((48, 32), "blue"), "c.png": ((64, 20), "green")}
    for name, (size, colour) in colours.items():
        Image.new("RGB", size, colour).save(root / name)
    samples = [Sample(id="a", messages=[user("What colour?"), assistant("red")], images=["a.png"]),
               Sample(id="b", messages=[user("And this longer one?"), assistant("blue")], images=["b.png"])]
    if family.multi_image:
        samples.append(Sample(id="ab", messages=[user("Both?", 2), assistant("red and green, the second one wider")],
                              images=["a.png", "c.png"]))
    if family.text_only:
        samples.append(Sample(id="t", messages=[user("No image here", 0), assistant("fine")], images=[]))
    return [(0, s) for s in samples]


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.vision_cache))
def test_cached_features_give_the_same_loss_for_every_family_that_supports_it(name, tmp_path):
    family = FAMILIES[name]
    tiny = family.tiny()
    model = tiny.model.eval()
    items = _mixed_batch(family, tmp_path)
    encoded = []

    def encode():
        samples = [s for _, s in items]
        images = [[Image.open(tmp_path / f).convert("RGB") for f in s.images] for s in samples]
        encoded.append(family.encode(tiny.processor, samples, images, "train", 512))
        return encoded[-1]

    batch = encode()
    inputs = dict(batch.inputs)
    labels = inputs.pop("labels")

    def loss(b):
        rest = dict(b.inputs)
        return forward_losses(model, family, rest, rest.pop("labels"), False)[0]

    with torch.no_grad():
        plain, _ = forward_losses(model, family, inputs, labels, False)
        cache = VisionCache(model, family, tiny.processor, tmp_path / "cache")
        miss = loss(cache.batch(model, items, [tmp_path], encode))
        assert len(encoded) == 2 and cache.misses == sum(len(s.images) for _, s in items)
        again = cache.batch(model, items, [tmp_path], encode)  # seen before: built from the stored rows
        assert len(encoded) == 2 and "pixel_values" not in again.inputs
        for k, v in batch.inputs.items():  # the same tensors as encode's, without the pixels
            if k not in IMAGE_INPUTS:
                assert torch.equal(again.inputs[k], v), k
        assert again.n_target_tokens == batch.n_target_tokens
        hit = loss(again)
        fresh = VisionCache(model, family, tiny.processor, tmp_path / "cache")  # a new process: read from disk
        from_disk = fresh.batch(model, items, [tmp_path], encode)
        assert fresh.misses == 0 and fresh.hits == cache.misses
        disk = loss(from_disk)
    for got in (miss, hit, disk):
        torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.vision_cache))
def test_generation_from_cached_features_gives_the_same_answers(name, tmp_path):
    from vlmtune.infer import Predictor

    family = FAMILIES[name]
    tiny = family.tiny()
    samples = [s for _, s in _mixed_batch(family, tmp_path)]
    images = [[Image.open(tmp_path / f).convert("RGB") for f in s.images] for s in samples]
    plain = Predictor(tiny, family, max_new_tokens=6).generate(samples, images)
    cache = VisionCache(tiny.model, family, tiny.processor, tmp_path / "cache")
    cached = Predictor(tiny, family, max_new_tokens=6, vision_cache=cache)
    assert cached.generate(samples, images) == plain and cache.misses == sum(len(s.images) for s in samples)
    assert cached.generate(samples, images) == plain and cache.hits == cache.misses


def test_memory_holds_a_bounded_number_of_bytes_and_rereads_the_rest(tmp_path, monkeypatch):
    from vlmtune.train import vision_cache

    family = FAMILIES["llava"]
    tiny = family.tiny()
    cache = VisionCache(tiny.model, family, tiny.processor, tmp_path)
    one = torch.ones(4, 8)  # 128 bytes
    monkeypatch.setattr(vision_cache, "MEMORY_BUDGET", 300)
    for key in ("k1", "k2", "k3"):
        cache._put(key, [one * int(key[1])])
    assert list(cache.memory) == ["k2", "k3"] and cache.memory_bytes == 256
    assert torch.equal(cache._get("k1")[0], one)  # read back from its file
    assert list(cache.memory) == ["k3", "k1"]


NOT_WIRED = {"internvl": "one feature row per tile", "lfm2_vl": "one feature row per tile"}
"""Families whose model takes `mm_encoder_outputs` but whose features the cache does not key yet: the cache keeps one
entry per image (or per sample), their `get_image_features` lists one per tile."""


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if not f.vision_cache))
def test_families_without_the_cache_say_so(name):
    import inspect

    model = FAMILIES[name].tiny().model
    takes = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    needs_pixels = inspect.signature(model.forward).parameters.get("pixel_values")
    if name in NOT_WIRED:
        assert takes, f"{name} no longer takes mm_encoder_outputs: drop it from NOT_WIRED"
        return
    assert not takes or needs_pixels.default is inspect.Parameter.empty  # BLIP-2 / InstructBLIP: pixels required


def test_a_trained_vision_tower_reuses_decoded_images_across_epochs(tmp_path, fashion_dir, monkeypatch, capsys):
    """No feature cache (the vision side trains): each training image is read and decoded once while it fits
    `train.image_cache_mb`, and the losses equal those of decoding every time."""
    from vlmtune.data import images as images_module
    from vlmtune.train.loop import train

    decoded = []
    real = images_module.load_image
    monkeypatch.setattr(images_module, "load_image", lambda path, *a: decoded.append(str(path)) or real(path, *a))
    # the start-up plan (train/plan) reads each image once more to measure its tokens: not what is counted here
    monkeypatch.setattr("vlmtune.train.loop.plan_for_train", lambda cfg, run_dir, samples=None: None)
    runs = {}
    for mb in (0, 64):
        decoded.clear()
        cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path / str(mb), fashion_dir, lora={"enabled": True, "r": 4},
                                            data={"val_split": None},
                                            train={"max_steps": 12, "eval_every": 0, "save_every": 0,
                                                   "image_cache_mb": mb, "freeze_projector": False}))
        train(cfg)
        runs[mb] = (cfg.run_dir, list(decoded))
    assert "vision cache: off (the vision tower or projector is trained" in capsys.readouterr().err
    plain, cached = runs[0][1], runs[64][1]
    # 12 steps x 8 samples, each decoded every time; plus, before step 0, the length check (each image once) and the
    # start-up print of one sample's trained tokens
    assert len(plain) == 96 + len(set(plain)) + 1
    assert len(cached) == len(set(cached)) == len(set(plain))  # each distinct image once
    torch.testing.assert_close(torch.tensor(_losses(runs[64][0])), torch.tensor(_losses(runs[0][0])),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("lora", "freeze", "trained"), [(True, None, False), (True, False, True), (False, None, True),
                                                          (False, True, False)])
def test_the_projector_default_frozen_under_lora_trained_in_full(tmp_path, fashion_dir, capsys, lora, freeze, trained):
    """train.freeze_projector None (the default): the projector is frozen under LoRA (the vision cache stays on) and
    trained in a full fine-tune; true/false say it outright."""
    from vlmtune.models.family import freeze_group_of
    from vlmtune.train.loop import setup

    train = {"max_steps": 1, "eval_every": 0, "save_every": 0, "freeze_vision": True}
    if freeze is not None:
        train["freeze_projector"] = freeze
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": lora, "r": 4}, train=train,
                                        data={"val_split": None}))
    assert cfg.train.freeze_projector is freeze
    state = setup(cfg)
    model = state.accelerator.unwrap_model(state.model)
    projector = [p.requires_grad for n, p in model.named_parameters()
                 if freeze_group_of(state.family, n) == "projector"]
    assert projector and any(projector) is trained  # (under LoRA peft keeps a frozen original beside the copy)
    err = capsys.readouterr().err
    assert ("vision cache: on" in err) is not trained
    assert ("projector/full" in err) is trained


def _video_items(family, root, colours=("red", "blue", "green")):
    """A video sample (a directory of frames, `clip/`), an image sample and a text-only one, written under `root`."""
    from vlmtune.data.video import write_video

    Image.new("RGB", (40, 40), "red").save(root / "a.png")
    write_video(root, "clip", [Image.new("RGB", (40, 32), c) for c in colours])
    samples = [Sample(id="v", images=[], videos=["clip"], messages=[
                   {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]},
                   assistant("red")]),
               Sample(id="a", messages=[user("What colour?"), assistant("red")], images=["a.png"]),
               Sample(id="t", messages=[user("No image here", 0), assistant("fine")], images=[])]
    return [(0, s) for s in samples]


def _video_encoder(family, tiny, root, items, loader):
    from vlmtune.data.images import load_image
    from vlmtune.data.video import encode_with_videos, sample_inputs

    def encode():
        inputs = [sample_inputs(root, s, family, load_image, loader.load) for _, s in items]
        return encode_with_videos(family, tiny.processor, *([x[k] for x in inputs] for k in range(3)), "train", 512)

    return encode


VIDEO_CACHED = sorted(n for n, f in FAMILIES.items() if f.vision_cache and f.video_cache)


@pytest.mark.parametrize("name", VIDEO_CACHED)
def test_native_video_features_are_cached_with_the_same_loss(name, tmp_path, monkeypatch):
    """A batch of a video, an image and a text-only sample: the first time its video's features are computed once
    (`get_video_features`, or SmolVLM2's frames among the images'), the second time the batch comes from the stored
    rows and features without decoding the video; a new cache reads them from disk. Each gives the uncached loss."""
    from vlmtune.config import VideoCfg
    from vlmtune.data import video as video_module

    family = FAMILIES[name]
    tiny = family.tiny()
    model = tiny.model.eval()
    items = _video_items(family, tmp_path)
    decoded = []
    real = video_module.load_video
    monkeypatch.setattr(video_module, "load_video", lambda root, e, policy: decoded.append(e) or real(root, e, policy))

    def loss(b):
        rest = dict(b.inputs)
        return forward_losses(model, family, rest, rest.pop("labels"), False)[0]

    cache = VisionCache(model, family, tiny.processor, tmp_path / "cache")
    cache.videos = video_module.VideoLoader(VideoCfg(fps=2.0))  # budget 0: no video kept decoded
    encode = _video_encoder(family, tiny, tmp_path, items, cache.videos)
    plain = encode()
    with torch.no_grad():
        reference = loss(plain)
        decoded.clear()
        first = cache.batch(model, items, [tmp_path], encode)
        assert decoded == ["clip"], "decoded once, to encode it: the cache keys its frames without decoding again"
        outputs = first.inputs["mm_encoder_outputs"]
        assert not set(first.inputs) & {"pixel_values", "pixel_values_videos"}
        assert set(outputs) == ({"image", "video"} if family.video_cache == "videos" else {"image"})
        assert cache.misses == (2 if family.video_cache == "videos" else 1 + 3)  # a video or its 3 frames, an image
        again = cache.batch(model, items, [tmp_path], encode)  # the second epoch
        assert decoded == ["clip"], "the second epoch does not decode the video"
        assert cache.hits == cache.misses and again.n_target_tokens == plain.n_target_tokens
        for k, v in plain.inputs.items():  # the same tensors as encode's, without the pixels
            if k not in IMAGE_INPUTS + ("pixel_values_videos",):
                assert (torch.equal(again.inputs[k], v) if isinstance(v, torch.Tensor) else again.inputs[k] == v), k
        fresh = VisionCache(model, family, tiny.processor, tmp_path / "cache")  # a new process: read from disk
        fresh.videos = video_module.VideoLoader(VideoCfg(fps=2.0))
        from_disk = fresh.batch(model, items, [tmp_path], _video_encoder(family, tiny, tmp_path, items, fresh.videos))
        assert fresh.misses == 0 and fresh.hits == cache.misses
        for got in (first, again, from_disk):
            torch.testing.assert_close(loss(got), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", VIDEO_CACHED)
def test_a_video_key_changes_with_the_sampling_policy_and_the_video_file(name, tmp_path):
    import os

    from vlmtune.config import VideoCfg
    from vlmtune.data.video import VideoLoader

    family = FAMILIES[name]
    tiny = family.tiny()
    items = _video_items(family, tmp_path)[:1]
    cache = VisionCache(tiny.model, family, tiny.processor, tmp_path / "cache")

    def key(policy):
        cache.videos = VideoLoader(policy)
        return cache.unit_keys(items, [tmp_path]), cache.video_keys(items, [tmp_path])

    base = key(VideoCfg(fps=2.0))
    assert key(VideoCfg(fps=2.0)) == base and any(base[0]) + any(base[1]) == 1  # frames among images, or a video
    seen = {json.dumps(base)}
    for policy in (VideoCfg(fps=1.0), VideoCfg(fps=2.0, max_frames=2), VideoCfg(fps=2.0, max_pixels=600)):
        seen.add(json.dumps(key(policy)))
    assert len(seen) == 4, "each sampling policy its own key"
    frame = tmp_path / "clip" / "01.png"
    Image.new("RGB", (40, 32), "yellow").save(frame)
    os.utime(frame, ns=(1, 1))  # another file: another size or time
    assert json.dumps(key(VideoCfg(fps=2.0))) not in seen


@pytest.mark.parametrize("name", VIDEO_CACHED)
def test_the_fingerprint_has_the_processors_video_settings(name):
    family = FAMILIES[name]
    tiny = family.tiny()
    before = fingerprint(tiny.model, family, tiny.processor)
    if family.video_cache == "videos":  # Qwen's video pixel bounds (video_preprocessor_config.json)
        tiny.processor.video_size = {"shortest_edge": 64, "longest_edge": 4096}
    else:  # SmolVLM2's frame size
        tiny.processor.image_processor.video_sampling = {"video_size": {"longest_edge": 48}}
    assert fingerprint(tiny.model, family, tiny.processor) != before


@pytest.mark.parametrize("name", VIDEO_CACHED)
def test_generation_with_a_video_and_the_cache_gives_the_same_answers(name, tmp_path):
    """Evaluation's Predictor with a cache, on a batch with a video (the way validation runs in training): its
    `videos` reach the cache, which leaves the batch as encoded; the images of a batch without video are cached."""
    from vlmtune.config import VideoCfg
    from vlmtune.data.video import load_video
    from vlmtune.infer import Predictor

    family = FAMILIES[name]
    tiny = family.tiny()
    samples = [s for _, s in _video_items(family, tmp_path)]
    images = [[], [Image.open(tmp_path / "a.png").convert("RGB")], []]
    videos = [[load_video(tmp_path, "clip", VideoCfg(fps=2.0))], [], []]
    plain = [c.text for c in Predictor(tiny, family, max_new_tokens=6).complete(samples, images, videos=videos)]
    cache = VisionCache(tiny.model, family, tiny.processor, tmp_path / "cache")
    cached = Predictor(tiny, family, max_new_tokens=6, vision_cache=cache)
    assert [c.text for c in cached.complete(samples, images, videos=videos)] == plain
    assert cached.generate(samples[1:], images[1:]) == plain[1:] and cache.misses == 1


@pytest.mark.parametrize("name", ["llava", *(n for n in VIDEO_CACHED if FAMILIES[n].video_cache == "frames")])
def test_frames_among_images_are_keyed_in_slot_order(name, tmp_path):
    """A sample's image and video in one order or the other: their pixels (and features) come in slot order, so
    the two get different keys."""
    family = FAMILIES[name]
    tiny = family.tiny()
    (video_sample,) = [s for _, s in _video_items(family, tmp_path)[:1]]
    parts = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Same?"}]
    first, second = (Sample(id=i, images=["a.png"], videos=["clip"], messages=[
        {"role": "user", "content": p}, assistant("yes")]) for i, p in (("iv", parts), ("vi", [parts[1], parts[0],
                                                                                                 parts[2]])))
    cache = VisionCache(tiny.model, family, tiny.processor, tmp_path / "cache")
    a, b = cache.unit_keys([(0, first), (0, second)], [tmp_path])
    assert a != b and None not in (a, b) and video_sample.videos == ["clip"]
    assert cache.image_count(tmp_path, first) == 1 + 3


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.vision_cache and f.video_tokens))
def test_a_batch_with_a_video_of_an_undeclared_family_is_run_live_with_the_same_loss(name, tmp_path, monkeypatch):
    """A native-video family without `video_cache` (as a family whose video features are not wired yet; here the
    family with it removed): a batch with a video sample reaches the model as encoded (its pixels, no
    `mm_encoder_outputs`, which the model refuses next to video pixels), every time, with the uncached loss; a batch
    without video still uses the cache. Evaluation's entry point leaves a video batch as it is for every family."""
    import dataclasses

    from vlmtune.data.video import Video

    family = dataclasses.replace(FAMILIES[name], video_cache=None)
    tiny = family.tiny()
    model = tiny.model.eval()
    img = Image.new("RGB", (40, 40), "red")
    img.save(tmp_path / "a.png")
    clip = Video([Image.new("RGB", (40, 32), c) for c in ("red", "blue", "green")], [0.0, 0.5, 1.0], fps=2.0)
    samples = [Sample(id="v", images=[], videos=["clip.mp4"], messages=[
                   {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]},
                   assistant("red")]),
               Sample(id="a", messages=[user("What colour?"), assistant("red")], images=["a.png"])]
    items = [(0, s) for s in samples]

    def encode():
        return family.encode(tiny.processor, samples, [[], [img]], "train", 512, videos=[[clip], []])

    with torch.no_grad():
        reference = model(**encode().inputs).loss
    cache = VisionCache(model, family, tiny.processor, tmp_path / "cache")
    assert cache.video_off.startswith(f"the {name} family's native video features are not cacheable yet")
    from vlmtune.models import support_table

    monkeypatch.setitem(FAMILIES, name, family)  # `vlmtune models` says the cache leaves its videos out
    row = next(r for r in support_table().splitlines() if r.startswith(f"| `{name}`"))
    assert "| yes, not its native video |" in row
    for _ in range(2):  # the second time too: no stored row stands in for the video's pixels
        batch = cache.batch(model, items, [tmp_path], encode)
        assert batch.inputs.keys() == encode().inputs.keys() and "mm_encoder_outputs" not in batch.inputs
        with torch.no_grad():
            assert torch.equal(model(**batch.inputs).loss, reference)
    assert cache.rows == {} and cache.misses == cache.hits == 0
    # evaluation's entry point leaves a video batch as it is: told by its videos (SmolVLM's frames are among the
    # images' pixel_values), or seeing Qwen's pixel_values_videos; the family's own cache too
    cache = VisionCache(model, FAMILIES[name], tiny.processor, tmp_path / "cache")
    videos = [[clip], []]
    inputs = family.encode(tiny.processor, samples, [[], [img]], "generate", 512, videos=videos).inputs
    assert cache.with_features(model, inputs, [0, 1], cache.image_unit_keys([[], [img]]), videos) is inputs
    if "pixel_values_videos" in inputs:
        assert cache.with_features(model, inputs, [0, 1], cache.image_unit_keys([[], [img]])) is inputs
    image_only = cache.batch(model, items[1:], [tmp_path], lambda: family.encode(
        tiny.processor, samples[1:], [[img]], "train", 512))
    assert "mm_encoder_outputs" in image_only.inputs and cache.misses == 1 and "pixel_values" not in image_only.inputs
