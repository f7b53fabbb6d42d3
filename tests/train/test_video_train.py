"""Training on video samples: a short run of the built-in model on the synthetic video world runs, saves and resumes
to the same weights; the frozen-vision cache keys video frames by the video, the sampling policy and each frame's
timestamp, and gives the same loss as encoding the frames."""

import json

import pytest
import torch
from helpers import tiny_run_cfg
from safetensors.torch import load_file

from vlmtune.config import RunCfg, VideoCfg
from vlmtune.data.dataset import synthesize
from vlmtune.data.store import read_samples
from vlmtune.models import FAMILIES, get_family
from vlmtune.train import vision_cache
from vlmtune.train.loop import fit, setup


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    synthesize(root, "video", 40, seed=2, size=32)
    return root


def _cfg(tmp_path, data, name, **train):
    return RunCfg.from_dict(tiny_run_cfg(tmp_path, data, name=name, data={"max_length": 256, "video": {"fps": 2.0}},
                                         train={"max_steps": 4, "save_every": 2, "eval_every": 4,
                                                "schedule": "constant", **train}))  # lr independent of max_steps


def test_a_run_on_video_samples_trains_and_resumes_to_the_same_weights(tmp_path, video_dir):
    straight = setup(_cfg(tmp_path, video_dir, "straight"))
    assert straight.videos.policy == VideoCfg(fps=2.0)
    first = straight.mixture.sources[0].samples[0]
    assert first.videos and not first.images
    result = fit(straight)
    assert result["n"] == 4 and set(result["by_question_type"]) <= {"direction", "first_appeared", "blink_count"}
    rows = [json.loads(x) for x in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]

    fit(setup(_cfg(tmp_path, video_dir, "cut", max_steps=2)))  # stopped after step 2 (its checkpoint saved)
    resumed = setup(_cfg(tmp_path, video_dir, "cut"))  # the same run, now to step 4: resumes from step 2
    assert resumed.step == 2
    fit(resumed)
    a = load_file(straight.run_dir / "checkpoints/step-4/model.safetensors")
    b = load_file(resumed.run_dir / "checkpoints/step-4/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_vision_cache_keys_video_frames_by_video_policy_and_timestamp(tmp_path, video_dir):
    family = get_family("llava")
    loaded = family.tiny()
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(False)
    cache = vision_cache.VisionCache(model, family, loaded.processor, tmp_path / "vc")
    samples = read_samples(video_dir, "train")[0][:3]
    items = [(0, s) for s in samples]
    roots = [video_dir]
    six = cache.unit_keys(items, roots)
    assert len(set(six)) == 3 and cache.unit_keys(items, roots) == six, "one key per clip, the same each time"
    assert [cache.image_count(video_dir, s) for s in samples] == [6, 6, 6]

    from vlmtune.data.video import VideoLoader

    cache.videos = VideoLoader(VideoCfg(fps=2.0, max_frames=3))
    three = cache.unit_keys(items, roots)
    assert [cache.image_count(video_dir, s) for s in samples] == [3, 3, 3]
    assert not set(three) & set(six), "another sampling policy: other frames, other keys"

    from vlmtune.data.video import encode_with_videos, sample_inputs

    def encode():
        inputs = [sample_inputs(video_dir, s, family, video=cache.videos.load) for s in samples]
        return encode_with_videos(family, loaded.processor, *([x[k] for x in inputs] for k in range(3)), "train",
                                  512)

    plain = encode()
    with torch.no_grad():
        want = model(**plain.inputs).loss
        cached = cache.batch(model, items, roots, encode)  # computes and stores the frames' features
        again = cache.batch(model, items, roots, encode)  # every sample seen: from the stored rows and features
        assert "pixel_values" not in again.inputs and "mm_encoder_outputs" in again.inputs
        assert torch.allclose(model(**cached.inputs).loss, want, atol=1e-5)
        assert torch.allclose(model(**again.inputs).loss, want, atol=1e-5)
    assert cache.hits == 9, "3 clips of 3 frames each, seen the second time"


def test_plan_measures_video_positions_as_frames_times_image_tokens(tmp_path, video_dir):
    from vlmtune.data.video import encode_with_videos, sample_inputs
    from vlmtune.train.plan.lengths import measure_lengths

    family = get_family("llava")
    loaded = family.tiny()
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, video_dir, data={"video": {"fps": 2.0, "max_frames": 4}}))
    samples = read_samples(video_dir, "train")[0][:2]
    lengths = measure_lengths(cfg, family, loaded.processor, 8, [(video_dir, s) for s in samples])
    per_image = family.image_tokens(loaded.processor, 32, 32)
    assert lengths.image_tokens == [4 * per_image, 4 * per_image], "4 of the 6 frames, each one image"
    s, ims, vids = sample_inputs(video_dir, samples[0], family, policy=cfg.data.video)
    batch = encode_with_videos(family, loaded.processor, [s], [ims], [vids], "train", 1 << 30)
    assert lengths.tokens[0] == int(batch.inputs["attention_mask"].sum())


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.video_tokens is not None))
def test_plan_measures_a_native_video_familys_positions_with_its_video_tokens(tmp_path, video_dir, name):
    """A family with native video (Qwen2-VL, SmolVLM2, InternVL, ...): `vlmtune plan` measures each video sample as
    training encodes it (`videos=`), its vision positions being `video_tokens`; InternVL's frames are tiles to the
    vision tower (each 32x32 frame 4x4 patches of 8 in the tiny model)."""
    from vlmtune.data.video import encode_with_videos, sample_inputs
    from vlmtune.train.plan.lengths import measure_lengths

    family = FAMILIES[name]
    loaded = family.tiny()
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, video_dir, data={"video": {"fps": 2.0, "max_frames": 4}}))
    samples = read_samples(video_dir, "train")[0][:2]
    lengths = measure_lengths(cfg, family, loaded.processor, 8, [(video_dir, s) for s in samples])
    for k, sample in enumerate(samples):
        s, ims, vids = sample_inputs(video_dir, sample, family, policy=cfg.data.video)
        assert not ims and [len(v.frames) for v in vids] == [4]
        batch = encode_with_videos(family, loaded.processor, [s], [ims], [vids], "train", 1 << 30)
        assert lengths.tokens[k] == int(batch.inputs["attention_mask"].sum())
        assert lengths.image_tokens[k] == family.video_tokens(loaded.processor, vids[0]) > 0
        if name == "internvl":
            assert lengths.patches[k] == 4 * 4 * 4


def test_internvl_trains_and_evaluates_on_native_video(tmp_path, video_dir):
    """A short run of a saved tiny InternVL on the synthetic video world: videos reach it natively (each frame a
    tile between "Frame<i>:" text), the loss falls, and eval generates on video samples."""
    family = FAMILIES["internvl"]
    torch.manual_seed(0)
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, video_dir, name="internvl",
                                        model={"family": "internvl", "path": str(tmp_path / "base")},
                                        data={"max_length": 512, "video": {"fps": 2.0, "max_frames": 3}},
                                        train={"max_steps": 6, "save_every": 0, "eval_every": 6, "lr": 1e-2}))
    run = setup(cfg)
    result = fit(run)
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert result["n"] > 0 and set(result["by_question_type"]) <= {"direction", "first_appeared", "blink_count"}


def test_llava_onevision_trains_on_native_videos_and_plan_counts_their_video_tokens(tmp_path, video_dir):
    """LLaVA-OneVision takes each clip natively (`pixel_values_videos`, 6 frames x 4 pooled features + 1 newline for
    its tiny 32 px tile): a saved tiny model trains, evaluates (generation on the clips) and saves, and `plan`
    measures each sample's positions as `encode` makes them, the video's counted by `video_tokens`."""
    from vlmtune.data.video import encode_with_videos, sample_inputs
    from vlmtune.train.plan.lengths import measure_lengths

    family = get_family("llava_onevision")
    torch.manual_seed(0)
    tiny = family.tiny()
    base = tmp_path / "base"
    tiny.model.save_pretrained(base)
    tiny.processor.save_pretrained(base)
    cfg = tiny_run_cfg(tmp_path, video_dir, name="ov", data={"max_length": 512, "video": {"fps": 2.0}},
                       train={"max_steps": 2, "save_every": 2, "eval_every": 2, "schedule": "constant"})
    cfg["model"] = {"family": "llava_onevision", "path": str(base)}
    cfg = RunCfg.from_dict(cfg)
    state = setup(cfg)
    assert state.family.name == "llava_onevision" and state.family.video_tokens is not None
    result = fit(state)
    assert result["n"] > 0
    rows = [json.loads(x) for x in (state.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(x == x and x > 0 for x in losses)
    assert (state.run_dir / "checkpoints/step-2").is_dir()

    samples = read_samples(video_dir, "train")[0][:2]
    lengths = measure_lengths(cfg, family, tiny.processor, 8, [(video_dir, s) for s in samples])
    assert lengths.image_tokens == [6 * 4 + 1] * 2, "6 frames a clip at 2 fps, natively: no image tokens"
    for s, n in zip(samples, lengths.tokens, strict=True):
        s, ims, vids = sample_inputs(video_dir, s, family, policy=cfg.data.video)
        batch = encode_with_videos(family, tiny.processor, [s], [ims], [vids], "train", 1 << 30)
        assert n == int(batch.inputs["attention_mask"].sum())
        assert "pixel_values_videos" in batch.inputs and "pixel_values" not in batch.inputs


@pytest.mark.parametrize("name", ["qwen2_vl", "smolvlm"])
def test_training_native_video_with_the_vision_cache_decodes_each_video_once_with_the_same_losses(
        name, tmp_path, video_dir, capsys, monkeypatch):
    """A LoRA run of a tiny native-video family on the video world, twice over its clips: with the frozen-vision
    cache on (said at start-up) each clip is decoded once, its features computed once (`get_video_features` per
    video, or SmolVLM2's frames among the images'), and the losses equal those of the run without it."""
    from vlmtune.data import video as video_module
    from vlmtune.models import FAMILIES

    tiny = FAMILIES[name].tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    decoded = []
    real = video_module.load_video
    monkeypatch.setattr(video_module, "load_video",
                        lambda root, e, policy: decoded.append(json.dumps(e, sort_keys=True)) or real(root, e, policy))
    monkeypatch.setattr("vlmtune.train.loop.plan_for_train", lambda cfg, run_dir, samples=None: None)
    losses, fit_decoded = {}, {}
    for mode in ("off", "auto"):
        cfg = RunCfg.from_dict(tiny_run_cfg(
            tmp_path / mode, video_dir, model={"family": name, "path": str(tmp_path / "base")},
            lora={"enabled": True, "r": 4, "dropout": 0.0},
            data={"max_length": 1024, "video": {"fps": 2.0, "max_frames": 3}, "val_split": None},
            train={"max_steps": 8, "eval_every": 0, "save_every": 0, "lr": 1e-2, "micro_batch_size": 4,
                   "freeze_projector": True, "vision_cache": mode, "image_cache_mb": 0}))
        state = setup(cfg)
        n_train = len(state.mixture.sources[0].samples)
        decoded.clear()
        fit(state)
        fit_decoded[mode] = list(decoded)
        losses[mode] = [r["loss"] for r in map(json.loads, (state.run_dir / "metrics.jsonl").read_text().splitlines())
                        if "loss" in r]
    err = capsys.readouterr().err
    assert "vision cache: off (train.vision_cache is off)" in err and "vision cache: on, " in err
    assert "not cacheable" not in err
    assert 8 * 8 > n_train, "every clip is trained on more than once"
    assert len(fit_decoded["off"]) == 64 and len(set(fit_decoded["off"])) == n_train
    assert sorted(fit_decoded["auto"]) == sorted(set(fit_decoded["off"])), "with the cache, each clip decoded once"
    assert len(losses["off"]) == 8 and list((state.run_dir / "vision_cache").glob("*/*/*.safetensors"))
    torch.testing.assert_close(torch.tensor(losses["auto"]), torch.tensor(losses["off"]), rtol=1e-5, atol=1e-5)


def test_a_corrupt_video_stops_a_cached_run_with_one_line_naming_the_file_and_the_sample(tmp_path, video_dir):
    import shutil

    from vlmtune.models import FAMILIES

    tiny = FAMILIES["qwen2_vl"].tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    data = tmp_path / "data"
    shutil.copytree(video_dir, data)
    sample = read_samples(data, "train")[0][0]
    frame = data / sample.videos[0]["path"] / "01.png"
    frame.write_bytes(b"not a png" * 10)
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, data, model={"family": "qwen2_vl", "path": str(tmp_path / "base")},
                                        lora={"enabled": True, "r": 4}, data={"max_length": 1024},
                                        train={"max_steps": 2, "freeze_projector": True, "vision_cache": "auto"}))
    with pytest.raises(ValueError) as raised:
        setup(cfg)
    message = str(raised.value)
    assert "\n" not in message and str(frame) in message and repr(sample.id) in message.replace('"', "'"), message


def test_a_family_whose_native_video_is_not_cacheable_says_so_at_start_up(tmp_path, video_dir, capsys, monkeypatch):
    """A native-video family without `ModelFamily.video_cache` (the Qwen2-VL family with it removed): the cache is
    on for images and the start-up line says, once, that batches with a video run uncached."""
    import dataclasses

    from vlmtune.models import FAMILIES

    family = dataclasses.replace(FAMILIES["qwen2_vl"], video_cache=None)
    monkeypatch.setattr("vlmtune.train.loop.get_family", lambda name: family)
    monkeypatch.setattr("vlmtune.train.loop.plan_for_train", lambda cfg, run_dir, samples=None: None)
    tiny = family.tiny()
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.processor.save_pretrained(tmp_path / "base")
    model = {"family": "qwen2_vl", "path": str(tmp_path / "base")}
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, video_dir, model=model, lora={"enabled": True, "r": 4},
                                        data={"max_length": 1024}, train={"max_steps": 1, "freeze_projector": True}))
    state = setup(cfg)
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("vision cache: "))
    assert line.startswith("vision cache: on, ") and line.endswith(
        "; the qwen2_vl family's native video features are not cacheable yet (ModelFamily.video_cache): batches "
        "with a video run uncached"), line
    assert state.vision_cache.video_off is not None
