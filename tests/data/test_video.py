"""Video samples in the data layer: the manifest's `videos` field, reading (PyAV files, frame directories, frame lists),
the sampling policy (`data.video`), every bad input as one line naming the file and the sample, frames as images for
families without native video, counting in `data check`, the llava_video import format and the synthetic video world."""

import json

import pytest
from helpers import import_format
from PIL import Image, ImageDraw

from vlmtune.config import VideoCfg
from vlmtune.data import synthetic_video as sv
from vlmtune.data.formats import export_dataset, get_format
from vlmtune.data.lint import check_dataset
from vlmtune.data.sample import Sample, assistant
from vlmtune.data.store import MANIFEST, iter_lines, read_samples, write_dataset
from vlmtune.data.video import (
    VideoError,
    encode_with_videos,
    evenly,
    frames_as_images,
    load_video,
    sample_inputs,
    video_refusal,
    write_video,
)
from vlmtune.models import FAMILIES, get_family


def frames(n: int, size=(32, 32)) -> list[Image.Image]:
    """n frames of a red dot moving right, one step a frame (frame k: x = 2 + 4k)."""
    out = []
    for k in range(n):
        im = Image.new("RGB", size, "white")
        ImageDraw.Draw(im).rectangle([2 + 4 * k, 10, 8 + 4 * k, 16], fill="red")
        out.append(im)
    return out


def video_sample(sid: str, entry, question: str = "Which way?", answer: str = "right") -> Sample:
    return Sample(id=sid, videos=[entry], messages=[
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}, assistant(answer)])


def test_manifest_round_trip_of_every_video_form(tmp_path):
    samples = [video_sample("dir", "clips/a"), video_sample("file", {"path": "clips/b.mp4", "fps": 4.0}),
               video_sample("list", {"frames": ["clips/a/00.png", "clips/a/01.png"], "fps": 2.0}),
               Sample(id="img", images=["x.png"], messages=[
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}, assistant("A")])]
    items = [(samples[0], [], [frames(4)]), (samples[1], [], [frames(8)]),
             (samples[2], []),  # no frames given: its frames are clips/a's, written by the first
             (samples[3], [Image.new("RGB", (8, 8))])]
    write_dataset(tmp_path, items)
    back, bad = read_samples(tmp_path)
    assert not bad and back == samples
    assert "videos" not in json.loads((tmp_path / MANIFEST).read_text().splitlines()[3]), "no videos: no field"
    policy = VideoCfg(fps=None, max_frames=100, max_pixels=None)
    assert len(load_video(tmp_path, "clips/a", policy).frames) == 4
    decoded = load_video(tmp_path, {"path": "clips/b.mp4", "fps": 4.0}, policy)  # PyAV decodes the H.264 file
    assert len(decoded.frames) == 8 and decoded.timestamps == [k / 4 for k in range(8)] and decoded.size == (32, 32)
    red = [max(range(32), key=lambda x: decoded.frames[k].getpixel((x, 13))[0] - decoded.frames[k].getpixel((x, 13))[1])
           for k in (0, 7)]
    assert red[1] - red[0] > 20, "the decoded frames are the written ones, in order"
    assert load_video(tmp_path, samples[2].videos[0], policy).timestamps == [0.0, 0.5]


def test_the_policy_fps_max_frames_and_max_pixels(tmp_path):
    write_video(tmp_path, {"path": "v.mp4", "fps": 10}, frames(20, (64, 48)))  # 2 s at 10 fps
    every = load_video(tmp_path, "v.mp4", VideoCfg(fps=None, max_frames=1000, max_pixels=None))
    assert len(every.frames) == 20 and every.timestamps[:3] == pytest.approx([0.0, 0.1, 0.2])
    two = load_video(tmp_path, "v.mp4", VideoCfg(fps=2, max_frames=1000, max_pixels=None))
    assert two.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5]) and two.fps == 2
    capped = load_video(tmp_path, "v.mp4", VideoCfg(fps=None, max_frames=4, max_pixels=None))
    assert capped.timestamps == pytest.approx([0.0, 0.6, 1.3, 1.9]), "evenly spaced, first and last kept"
    small = load_video(tmp_path, "v.mp4", VideoCfg(fps=2, max_frames=8, max_pixels=64 * 48 // 4))
    assert small.size == (32, 24) and all(f.size == (32, 24) for f in small.frames)
    again = load_video(tmp_path, "v.mp4", VideoCfg(fps=2, max_frames=8, max_pixels=64 * 48 // 4))
    assert again.timestamps == small.timestamps and [f.tobytes() for f in again.frames] == [
        f.tobytes() for f in small.frames], "the same frames every time"
    assert evenly(6, 1) == [2] and evenly(3, 5) == [0, 1, 2] and evenly(10, 3) == [0, 4, 9]
    with pytest.raises(ValueError, match="data.video.max_frames: must be >= 1"):
        VideoCfg(max_frames=0)


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty_dir", "escapes", "sizes", "slots"])
def test_each_bad_video_is_one_line_naming_the_file_and_the_sample(tmp_path, case):
    root = tmp_path / "d"
    (root / "clips").mkdir(parents=True)
    entry = {"missing": "clips/none.mp4", "corrupt": "clips/bad.mp4", "empty_dir": "clips/empty",
             "escapes": "../outside.mp4", "sizes": "clips/mixed", "slots": "clips/bad.mp4"}[case]
    (root / "clips/bad.mp4").write_bytes(b"not a video at all" * 10)
    (root / "clips/empty").mkdir()
    (root / "clips/mixed").mkdir()
    Image.new("RGB", (16, 16)).save(root / "clips/mixed/0.png")
    Image.new("RGB", (16, 8)).save(root / "clips/mixed/1.png")
    row = video_sample("s1", entry).to_json()
    if case == "slots":
        row["videos"] = [entry, entry]
    (root / MANIFEST).write_text(json.dumps(row) + "\n")
    report = check_dataset(root, progress=False)  # no traceback: a report
    assert not report["ok"]
    (message,) = [e["message"] for kind in report["errors"].values() for e in kind]
    assert "\n" not in message
    expected = {"missing": f"{root / 'clips/none.mp4'}: video file not found",
                "corrupt": f"{root / 'clips/bad.mp4'}: cannot decode video",
                "empty_dir": f"{root / 'clips/empty'}: a video directory with no frame images",
                "escapes": "video path '../outside.mp4' escapes the dataset directory",
                "sizes": f"{root / 'clips/mixed/1.png'}: a frame of 16x8 pixels, but the video's first frame 0.png is "
                         "16x16",
                "slots": "sample 's1': 1 video slot(s) in messages but 2 video(s)"}[case]
    assert expected in message
    line = next(line for line in iter_lines(root, check_images=True))[1]
    if case in ("missing", "escapes", "empty_dir", "slots"):  # found when the manifest is read
        assert "sample 's1'" in str(line) and expected in str(line)
    else:  # found when decoded: training names the sample too
        with pytest.raises(VideoError, match="sample 's1'|bad.mp4|mixed"):
            sample_inputs(root, line, get_family("llava"))


def test_frames_become_image_slots_after_their_timestamps_for_the_builtin_llava(tmp_path):
    write_dataset(tmp_path, [(video_sample("v", "clip"), [], [frames(6)])])
    sample = read_samples(tmp_path)[0][0]
    family, loaded = get_family("llava"), get_family("llava").tiny()
    policy = VideoCfg(fps=0.5, max_frames=8)  # 1 fps frames at 0.5 fps: 0, 2 and 4 s
    expanded, images, videos = sample_inputs(tmp_path, sample, family, policy=policy)
    assert videos == [] and len(images) == 3 and expanded.videos == []
    assert expanded.messages[0]["content"] == [
        {"type": "text", "text": "0.0s:"}, {"type": "image"}, {"type": "text", "text": "2.0s:"}, {"type": "image"},
        {"type": "text", "text": "4.0s:"}, {"type": "image"}, {"type": "text", "text": "Which way?"}]
    assert expanded.images == ["clip@0.000s", "clip@2.000s", "clip@4.000s"]
    batch = encode_with_videos(family, loaded.processor, [expanded], [images], [[]], "train", 4096)
    ids = batch.inputs["input_ids"][0].tolist()
    per_image = family.image_tokens(loaded.processor, 32, 32)
    assert ids.count(loaded.model.config.image_token_id) == 3 * per_image, "frames x image_tokens, nothing cut"
    text = loaded.processor.tokenizer.decode(ids)
    assert all(t in text for t in ("0.0s:", "2.0s:", "4.0s:"))
    # the same from the Video objects directly (what a caller holding decoded videos passes)
    video = load_video(tmp_path, "clip", policy)
    direct = encode_with_videos(family, loaded.processor, [sample], [[]], [[video]], "train", 4096)
    assert direct.inputs["input_ids"].tolist() == batch.inputs["input_ids"].tolist()
    s2, ims2 = frames_as_images(sample, [], [video])
    assert s2 == expanded and [i.tobytes() for i in ims2] == [i.tobytes() for i in images]


def test_data_check_counts_video_positions_exactly_and_refuses_a_family_without_video(tmp_path):
    write_dataset(tmp_path, [(video_sample("v", "clip"), [], [frames(6)])])
    family, loaded = get_family("llava"), get_family("llava").tiny()
    policy = VideoCfg(fps=None, max_frames=4)
    report = check_dataset(tmp_path, family, loaded.processor, max_length=4096, progress=False, video=policy)
    assert report["ok"] and report["video_frames"] == {4: 1}
    expanded, images, _ = sample_inputs(tmp_path, read_samples(tmp_path)[0][0], family, policy=policy)
    n = int(family.encode(loaded.processor, [expanded], [images], "train", 4096).inputs["attention_mask"].sum())
    assert report["tokens"]["max"] == n and n > 4 * family.image_tokens(loaded.processor, 32, 32)
    short = check_dataset(tmp_path, family, loaded.processor, max_length=n - 1, progress=False, video=policy)
    assert short["counts"] == {"error:too_long": 1}, "never truncated: reported"
    one_image = get_family("blip2")
    assert one_image.video_tokens is None and not one_image.multi_image
    refused = check_dataset(tmp_path, one_image, progress=False)
    (error,) = refused["errors"]["family"]
    assert error["message"] == video_refusal(one_image) and "takes no video" in error["message"]


def test_llava_video_import_export_import(tmp_path):
    src = tmp_path / "src"
    write_video(src, "acad/a.mp4", frames(4))
    write_video(src, "acad/b", frames(3))
    rows = [{"id": "a", "video": "acad/a.mp4", "data_source": "academic",
             "conversations": [{"from": "human", "value": "<video>\nWhich way does it move?"},
                               {"from": "gpt", "value": "right"}]},
            {"id": "b", "video": "acad/b", "conversations": [{"from": "human", "value": "Count.\n<video>"},
                                                             {"from": "gpt", "value": "3"}]},
            {"id": "c", "video": "acad/none.mp4", "conversations": [{"from": "human", "value": "<video>Q"},
                                                                    {"from": "gpt", "value": "A"}]},
            {"id": "d", "video": "acad/a.mp4", "conversations": [{"from": "human", "value": "<video><video>Q"},
                                                                 {"from": "gpt", "value": "A"}]}]
    (src / "qa.json").write_text(json.dumps(rows))
    samples = import_format("llava_video", src / "qa.json", tmp_path / "d", skip_bad=True)
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[0].videos == ["videos/acad/a.mp4"] and samples[0].meta == {"data_source": "academic"}
    assert samples[0].messages[0]["content"] == [{"type": "video"}, {"type": "text", "text": "Which way does it move?"}]
    assert samples[1].messages[0]["content"] == [{"type": "text", "text": "Count."}, {"type": "video"}]
    rejected = [json.loads(x)["error"] for x in (tmp_path / "d/rejected.jsonl").read_text().splitlines()]
    assert "acad/none.mp4: video file not found" in rejected[0] and "sample 'c'" in rejected[0]
    assert "record 4 (id 'd'): 2 <video> placeholders but 1 video" in rejected[1]
    assert len(load_video(tmp_path / "d", samples[1].videos[0], VideoCfg(fps=None)).frames) == 3
    export_dataset(get_format("llava_video"), tmp_path / "d", tmp_path / "out")
    again = import_format("llava_video", tmp_path / "out/qa.json", tmp_path / "d2")
    assert again == samples
    with pytest.raises(ValueError, match="sample 'a': has a video; the llava format holds no videos"):
        export_dataset(get_format("llava"), tmp_path / "d", tmp_path / "out2")


def test_the_video_worlds_answers_follow_from_the_drawing_and_no_single_frame_holds_them():
    samples = list(sv.video(90, seed=1, size=32))
    kinds = {s.meta["question_type"] for s, _ in samples}
    assert kinds == set(sv.QUESTIONS)
    for s, clip in samples:
        m, answer = s.meta, s.target
        assert len(clip) == sv.FRAMES and s.videos == [{"path": f"videos/{s.id}", "fps": sv.FPS}]
        if m["question_type"] == "direction":
            assert answer == sv.direction_of(m["positions"])
            xs = [p[0] for p in m["positions"]]
            assert len(set(xs)) == (1 if answer in ("up", "down") else sv.FRAMES)
        elif m["question_type"] == "first_appeared":
            assert answer == min(m["appear"], key=m["appear"].get)
            assert all(k <= sv.MIDDLE for k in m["appear"].values()), "all three are in the middle frame"
            # pixels: the first frame holds exactly the colour of the answer's shape
            colours = {c for c in clip[0].get_flattened_data() if c != (235, 235, 225)}
            assert colours == {sv.COLOURS[answer]}
        else:
            assert answer == str(sv.runs(m["visible"]))
            shown = [any(c != (235, 235, 225) for c in f.get_flattened_data()) for f in clip]
            assert shown == m["visible"]
    assert [s.to_json() for s, _ in sv.video(5, seed=1, size=32)] == [s.to_json() for s, _ in samples[:5]]
    assert evenly(sv.FRAMES, 1) == [sv.MIDDLE], "the single-frame baseline sees the middle frame"


def test_the_video_worlds_caption_turn_describes_the_clip_in_training_samples_only(tmp_path):
    from vlmtune.data.dataset import synthesize
    synthesize(tmp_path / "d", "video", 30, seed=2, size=32, val=0.2, test=0.2, caption_turn=True)
    samples, _ = read_samples(tmp_path / "d")
    for s in samples:
        m = s.meta
        if s.split != "train":  # held-out clips keep the single question they are scored on
            assert s.task == "vqa" and len(s.messages) == 2 and s.target == s.answers[0]
            continue
        qtype, answer = m["first_question_type"], s.messages[1]["content"][0]["text"]
        assert s.videos == [{"path": f"videos/{s.id}", "fps": sv.FPS}], "the caption turn keeps the clip"
        assert s.messages[2]["content"] == [{"type": "text", "text": sv.CAPTION_PROMPT}]
        assert s.target == m["caption"] == sv.describe(qtype, answer, m)
        if qtype == "direction":
            assert m["caption"].endswith(f"moves {sv.direction_of(m['positions'])}")
        elif qtype == "first_appeared":
            assert m["caption"].split()[1] == answer == min(m["appear"], key=m["appear"].get)
        else:
            seen = m["caption"].split("frames ")[1].split(":")[0].split()
            assert [str(k + 1) for k, v in enumerate(m["visible"]) if v] == seen
            assert m["caption"].endswith(f"{sv.runs(m['visible'])} flashes")
    assert {s.split for s in samples} == {"train", "val", "test"}


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.video_tokens is not None))
def test_data_check_counts_a_native_video_familys_positions_exactly(tmp_path, name):
    """A family with native video (Qwen2-VL, SmolVLM2, InternVL, ...): `data check` encodes the video sample as
    training will (`videos=`, not frames as images) and reports its length; one token shorter, it is reported."""
    write_dataset(tmp_path, [(video_sample("v", "clip"), [], [frames(6)])])
    family = get_family(name)
    loaded = family.tiny()
    policy = VideoCfg(fps=None, max_frames=4)
    report = check_dataset(tmp_path, family, loaded.processor, max_length=4096, progress=False, video=policy)
    assert report["ok"] and report["video_frames"] == {4: 1}
    sample = read_samples(tmp_path)[0][0]
    clip = load_video(tmp_path, "clip", policy)
    batch = family.encode(loaded.processor, [sample], [[]], "train", 4096, videos=[[clip]])
    n = int(batch.inputs["attention_mask"].sum())
    assert report["tokens"]["max"] == n and n > family.video_tokens(loaded.processor, clip) > 0
    short = check_dataset(tmp_path, family, loaded.processor, max_length=n - 1, progress=False, video=policy)
    assert short["counts"] == {"error:too_long": 1}


def test_data_check_counts_a_native_video_with_the_familys_video_tokens(tmp_path, capsys):
    """LLaVA-OneVision takes a video natively (`video_tokens`: frames x 4 pooled features + 1 newline for its tiny
    tile): `vlmtune data check --model` on a saved model counts the positions encode makes, and a shorter
    max_length reports the sample, never cuts it."""
    from vlmtune.cli import main
    from vlmtune.data.store import read_samples

    family = get_family("llava_onevision")
    loaded = family.tiny()
    model = tmp_path / "model"
    loaded.model.save_pretrained(model)
    loaded.processor.save_pretrained(model)
    data = tmp_path / "data"
    write_dataset(data, [(video_sample("v", "clip"), [], [frames(6)])])
    s, ims, vids = sample_inputs(data, read_samples(data)[0][0], family, policy=VideoCfg())  # the CLI's: 2 fps, <= 8
    assert [len(v.frames) for v in vids] == [6]
    n = int(encode_with_videos(family, loaded.processor, [s], [ims], [vids], "train", 4096).inputs["attention_mask"]
            .sum())
    assert family.video_tokens(loaded.processor, vids[0]) == 6 * 4 + 1 < n
    assert main(["data", "check", str(data), "--model", str(model), "--max-length", "4096"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] and report["video_frames"] == {"6": 1} and report["tokens"]["max"] == n
    short = check_dataset(data, family, loaded.processor, max_length=n - 1, progress=False, video=VideoCfg())
    assert short["counts"] == {"error:too_long": 1}, "never truncated: reported"
