"""camcli.video: clips made here from sample_data's photographs, decoded frame by frame against
OpenCV's own reading, sampled, and the hostile clips (a text file, a FIFO, a frame size over the
budget, a count that lies, a file cut short) refused in one line, never a hang."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from camcli.errors import CamcliError
from camcli.video import ClipInfo, Sampling, frames, is_video, open_clip, sampled
from conftest import SAMPLE_DATA

SCENE = SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"


def make_clip(path, count: int = 30, fps: float = 30.0, size=(160, 120), fourcc: str = "MJPG"):
    """A clip of ``count`` frames panning over a sample photograph (a different view each frame)."""
    photo = cv2.resize(cv2.imread(str(SCENE)), (size[0] * 2, size[1]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(count):
        x = (i * 5) % size[0]
        writer.write(np.ascontiguousarray(photo[:, x : x + size[0]]))
    writer.release()
    return path


def opencv_frames(path) -> list[np.ndarray]:
    """Every frame as OpenCV's VideoCapture reads it, RGB: the reference."""
    capture, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_every_frame_is_opencvs_with_its_index_and_time(tmp_path):
    clip = make_clip(tmp_path / "pan.avi")
    got = list(frames(clip))
    reference = opencv_frames(clip)
    assert len(got) == len(reference) == 30
    for i, (frame, ref) in enumerate(zip(got, reference)):
        assert frame.index == i and frame.time == pytest.approx(i / 30) and frame.rgb.dtype == np.uint8
        np.testing.assert_array_equal(frame.rgb, ref)
    _, info = open_clip(clip, 10**8)
    assert info == ClipInfo(clip, 160, 120, 30.0, 30)


@pytest.mark.parametrize("sampling, indices", [
    (Sampling(every=4), list(range(0, 30, 4))),
    (Sampling(fps=10), list(range(0, 30, 3))),
    (Sampling(fps=7), [0, 5, 9, 13, 18, 22, 26]),  # the first frame at or after each 1/7 s
    (Sampling(start=0.5, end=0.75), list(range(15, 23))),
    (Sampling(every=2, start=0.2), list(range(6, 30, 2))),
    (Sampling(fps=1000), list(range(30))),  # faster than the clip: every frame once
])
def test_sampling_takes_the_frames_it_says_and_the_hint_counts_them(tmp_path, sampling, indices):
    clip = make_clip(tmp_path / "pan.avi")
    got = list(frames(clip, sampling))
    assert [f.index for f in got] == indices
    _, info = open_clip(clip, 10**8)
    assert sampled(info, sampling) == len(indices)
    reference = opencv_frames(clip)
    for frame in got:
        np.testing.assert_array_equal(frame.rgb, reference[frame.index])


@pytest.mark.parametrize("sampling, words", [
    (Sampling(every=0), "`every` must be 1 or more"),
    (Sampling(fps=0), "`fps` must be above 0"),
    (Sampling(fps=float("nan")), "`fps` must be above 0"),
    (Sampling(fps=5, every=2), "not both"),
    (Sampling(start=-1), "`start` must be 0 or more"),
    (Sampling(start=2, end=1), "`end` must be a number of seconds after `start`"),
])
def test_bad_sampling_is_one_line(sampling, words):
    with pytest.raises(CamcliError, match=words):
        sampling.validate()


def test_a_text_file_named_mp4_and_a_missing_clip_are_one_line(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n" * 100)
    with pytest.raises(CamcliError, match="not a readable video"):
        list(frames(fake))
    with pytest.raises(CamcliError, match="video not found"):
        list(frames(tmp_path / "absent.mp4"))
    assert is_video(fake) and is_video(tmp_path / "A.MKV") and not is_video(tmp_path / ".hidden.mp4")


def test_a_fifo_named_like_a_clip_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt():
        try:
            list(frames(fifo))
        except CamcliError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "opening a FIFO hung"
    assert outcome == [f"video {fifo} is not a regular file"]


def test_a_frame_size_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    clip = make_clip(tmp_path / "pan.avi")
    with pytest.raises(CamcliError, match=r"160x120 = 19,200 pixels, over the limit of 10,000"):
        list(frames(clip, max_pixels=10_000))


def _declare_frames(clip, count: int) -> None:
    """Rewrite an AVI's declared frame counts (the main header's and the stream's) in place."""
    data = bytearray(clip.read_bytes())
    main = data.index(b"avih") + 8
    data[main + 16 : main + 20] = struct.pack("<I", count)  # dwTotalFrames
    stream = data.index(b"strh") + 8
    data[stream + 32 : stream + 36] = struct.pack("<I", count)  # dwLength
    clip.write_bytes(bytes(data))


def test_a_declared_count_is_a_hint_a_lie_is_said_after_the_frames_and_an_absurd_one_ignored(tmp_path):
    clip = make_clip(tmp_path / "pan.avi")
    _declare_frames(clip, 1000)
    _, info = open_clip(clip, 10**8)
    assert info.frames == 1000  # FFmpeg believes the header: camcli must not
    got = []
    with pytest.raises(CamcliError, match="ends after 30 frames of the 1,000 it declares"):
        for frame in frames(clip):
            got.append(frame.index)
    assert got == list(range(30))
    _declare_frames(clip, 3_000_000_000)  # a count no clip holds: no hint at all
    _, info = open_clip(clip, 10**8)
    assert info.frames is None and len(list(frames(clip))) == 30


def test_a_truncated_avi_gives_its_frames_up_to_the_cut_then_one_line_and_a_truncated_mp4_cannot_open(tmp_path):
    clip = make_clip(tmp_path / "pan.avi", count=60)
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(CamcliError, match="cut short or damaged"):
        for frame in frames(clip):
            got.append(frame.index)
    assert 10 < len(got) < 60 and got == list(range(len(got)))
    mp4 = make_clip(tmp_path / "pan.mp4", count=60, fourcc="mp4v")
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])  # OpenCV writes the index (moov) at the end
    with pytest.raises(CamcliError, match="not a readable video"):
        list(frames(mp4))


def test_a_clip_with_no_frame_in_the_range_is_one_line(tmp_path):
    clip = make_clip(tmp_path / "pan.avi")
    with pytest.raises(CamcliError, match=r"decodes to no frame between 5 s and its end \(30 frames\)"):
        list(frames(clip, Sampling(start=5)))
    with pytest.raises(CamcliError, match="decodes to no frame between 0.99 s and 1 s"):
        list(frames(clip, Sampling(start=0.99, end=1)))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(CamcliError, match="empty.avi: an empty file"):
        list(frames(empty))


def test_model_video_rows_equal_predict_on_the_same_frames_as_png(sample_run, tmp_path):
    import camcli

    clip = make_clip(tmp_path / "pan.avi", count=12)
    model = camcli.load(sample_run / "best.safetensors")
    rows = list(model.video(clip, every=2, top_k=5, batch_size=4))
    pngs = []
    for i, rgb in enumerate(opencv_frames(clip)[::2]):
        pngs.append(tmp_path / f"frame_{i:02d}.png")
        cv2.imwrite(str(pngs[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # lossless
    reference = model.predict(pngs, top_k=5)
    assert [(r["frame"], r["time"]) for r in rows] == [(i, pytest.approx(i / 30)) for i in range(0, 12, 2)]
    for row, ref in zip(rows, reference, strict=True):
        assert row["path"] == str(clip) and [p["label"] for p in row["predictions"]] == [p["label"] for p in ref["predictions"]]
        np.testing.assert_allclose([p["prob"] for p in row["predictions"]], [p["prob"] for p in ref["predictions"]], atol=1e-5)
    with pytest.raises(CamcliError, match="`fps` must be above 0"):
        next(model.video(clip, fps=-1))


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".mkv", ".mov"])
def test_a_written_clip_keeps_its_frames_rate_and_size_and_appears_only_when_complete(tmp_path, suffix):
    from camcli.video import ClipWriter

    source = list(frames(make_clip(tmp_path / "pan.avi", count=10, fps=12.5)))
    target = tmp_path / f"out{suffix}"
    with ClipWriter(target, 12.5, (160, 120)) as writer:
        for frame in source:
            writer.write(frame.rgb)
            assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pan.avi", target.name])  # no temporary folder left
    _, info = open_clip(target, 10**8)
    assert (info.width, info.height, info.fps) == (160, 120, 12.5)
    written = list(frames(target))
    assert len(written) == 10
    assert np.abs(written[5].rgb.astype(int) - source[5].rgb.astype(int)).mean() < 12  # a lossy codec, the same picture


def test_a_run_that_stops_leaves_no_file_at_the_final_name(tmp_path):
    """An exception drops the partial clip; a killed process leaves it only in its private folder."""
    import subprocess
    import sys
    import time

    from camcli.video import ClipWriter

    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), ClipWriter(target, 25, (64, 48)) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
        raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    script = (f"import numpy as np, time\nfrom camcli.video import ClipWriter\nw = ClipWriter({str(target)!r}, 25, (64, 48))\n"
              "print('writing', flush=True)\nwhile True:\n    w.write(np.zeros((48, 64, 3), np.uint8)); time.sleep(0.01)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    child.kill()
    child.wait()
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".camcli-video-") and leftovers[0].stat().st_mode & 0o077 == 0


def predict(*args):
    from typer.testing import CliRunner

    from camcli.cli import app

    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_predict_gives_each_frame_the_row_of_the_same_frame_as_png_then_the_clips_own(sample_run, tmp_path):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    clip = make_clip(folder / "pan.avi", count=9)
    photo = folder / "a.jpg"
    photo.write_bytes(SCENE.read_bytes())
    ckpt = sample_run / "best.safetensors"
    result = predict(folder, "--checkpoint", ckpt, "--every", "2", "--top-k", "5", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    alone = predict(photo, "--checkpoint", ckpt, "--top-k", "5", "--format", "jsonl")
    assert result.stdout.splitlines()[0] == alone.stdout.strip()  # an image's row is what it always was
    frame_rows = [r for r in rows if r.get("kind") == "frame"]
    assert [(r["frame"], r["time"]) for r in frame_rows] == [(i, round(i / 30, 6)) for i in range(0, 9, 2)]
    pngs = []
    for i, rgb in enumerate(opencv_frames(clip)[::2]):
        pngs.append(tmp_path / f"f{i}.png")
        cv2.imwrite(str(pngs[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    reference = predict(*pngs, "--checkpoint", ckpt, "--top-k", "5", "--format", "jsonl")
    for row, line in zip(frame_rows, reference.stdout.splitlines(), strict=True):
        ref = json.loads(line)
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in ref["predictions"]]
        np.testing.assert_allclose([p["prob"] for p in row["predictions"]], [p["prob"] for p in ref["predictions"]], atol=1e-5)
    (summary,) = [r for r in rows if r.get("kind") == "clip"]
    assert rows[-1] == summary and summary["frames"] == 5 and "error" not in summary
    probs = {}
    for row in frame_rows:
        for p in row["predictions"]:
            probs.setdefault(p["label"], []).append(p["prob"])
    firsts = [row["predictions"][0]["label"] for row in frame_rows]
    for p in summary["predictions"]:
        assert p["prob"] == pytest.approx(np.mean(probs[p["label"]]), abs=1e-9)
        assert p["top1_share"] == firsts.count(p["label"]) / 5
    assert [p["prob"] for p in summary["predictions"]] == sorted((p["prob"] for p in summary["predictions"]), reverse=True)


def test_predict_csv_gains_frame_columns_only_with_clips_and_the_table_shows_the_clip(sample_run, tmp_path):
    import csv

    from camcli.results import CSV_COLUMNS, VIDEO_CSV_COLUMNS

    clip = make_clip(tmp_path / "pan.mkv", count=6)
    ckpt = sample_run / "best.safetensors"
    images_only = predict(SCENE, "--checkpoint", ckpt, "--format", "csv")
    assert tuple(next(csv.reader(images_only.stdout.splitlines()))) == CSV_COLUMNS
    result = predict(SCENE, clip, "--checkpoint", ckpt, "--format", "csv", "--top-k", "1", "--start", "0.1")
    records = list(csv.DictReader(result.stdout.splitlines()))
    assert tuple(records[0]) == VIDEO_CSV_COLUMNS
    assert [(r["kind"], r["frame"]) for r in records] == [("image", ""), *(("frame", str(i)) for i in range(3, 6)), ("clip", "")]
    assert records[-1]["top1_share"] != "" and records[1]["top1_share"] == ""
    table = predict(SCENE, clip, "--checkpoint", ckpt, "--format", "table", "--every", "3")
    assert table.exit_code == 0 and "pan.mkv (2 frames)" in table.stdout
    assert sum(line.startswith("│") for line in table.stdout.splitlines()) == 2  # the image and the clip, not its frames


def test_predict_on_hostile_clips_fails_those_inputs_in_one_line_each_and_goes_on(sample_run, tmp_path):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_notes.mp4").write_text("not a video\n")
    cut = make_clip(folder / "b_cut.avi", count=60)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    os.mkfifo(folder / "c_pipe.webm")
    make_clip(folder / "d_good.avi", count=3)
    result = predict(folder, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--every", "4")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    clips = [r for r in rows if r.get("kind") == "clip"]
    assert [r["path"].rsplit("/", 1)[-1] for r in clips] == ["a_notes.mp4", "b_cut.avi", "c_pipe.webm", "d_good.avi"]
    assert "not a readable video" in clips[0]["error"] and clips[0]["frames"] == 0
    assert "cut short" in clips[1]["error"] and clips[1]["frames"] > 2 and clips[1]["predictions"]  # its frames, then the line
    assert "not a regular file" in clips[2]["error"] and "error" not in clips[3]
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 3 and "3 of 4 inputs failed" in result.stderr  # inputs, not rows


def test_bad_sampling_on_the_command_line_is_exit_2_in_one_line(sample_run, tmp_path):
    result = predict(SCENE, "--checkpoint", sample_run / "best.safetensors", "--every", "0")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: --every must be 1 or more, got 0")
    result = predict(tmp_path / "x.mov", "--checkpoint", sample_run / "best.safetensors")
    assert result.exit_code == 2 and "input not found" in result.output


def overlay(*args):
    from typer.testing import CliRunner

    from camcli.cli import app

    return CliRunner().invoke(app, ["overlay", *map(str, args)])


@pytest.mark.parametrize("suffix, every", [(".mp4", 2), (".webm", 1), (".avi", 3)])
def test_overlay_writes_a_video_of_the_sampled_stream_with_a_row_per_frame(sample_run, tmp_path, suffix, every):
    import json

    clip = make_clip(tmp_path / f"pan{suffix}", count=12, fps=24.0, fourcc={".mp4": "mp4v", ".webm": "VP80"}.get(suffix, "MJPG"))
    result = overlay(clip, "--checkpoint", sample_run / "best.safetensors", "--every", every, "--out-dir", tmp_path / "out",
                     "--format", "jsonl", "--draw-box")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    target = tmp_path / "out" / f"pan_cam{suffix}"
    assert rows[-1]["kind"] == "clip" and rows[-1]["outputs"] == [str(target)] and rows[-1]["frames"] == len(range(0, 12, every))
    assert [r["frame"] for r in rows[:-1]] == list(range(0, 12, every)) and all(r["box"] for r in rows[:-1])
    _, info = open_clip(target, 10**8)
    assert (info.width, info.height) == (160, 120) and info.fps == pytest.approx(24.0 / every)
    written = list(frames(target))
    assert len(written) == len(range(0, 12, every))
    assert "1 file written for 1 input" in result.stderr
    n = len(range(0, 12, every))
    assert result.stderr.count(f"overlay: {n}/{n} (100%) frames") == 1  # progress counts frames, and says the end once


def test_clip_options_without_a_clip_say_they_do_nothing(sample_run, tmp_path):
    (tmp_path / "a.jpg").write_bytes(SCENE.read_bytes())
    ckpt = sample_run / "best.safetensors"
    result = overlay(tmp_path / "a.jpg", "--checkpoint", ckpt, "--fps", "2", "--frame-images", "--format", "jsonl")
    assert result.exit_code == 0 and "note: no clip among the inputs: --fps, --frame-images apply only to clips" in result.stderr
    plain = predict(tmp_path / "a.jpg", "--checkpoint", ckpt, "--format", "jsonl")
    assert plain.exit_code == 0 and "no clip" not in plain.stderr


def test_a_clip_and_options_it_cannot_take_and_skip_existing(sample_run, tmp_path):
    clip = make_clip(tmp_path / "pan.avi", count=4)
    ckpt = sample_run / "best.safetensors"
    refused = overlay(clip, "--checkpoint", ckpt, "--maps", "2")
    assert refused.exit_code == 2 and "leave out --maps and --save-raw" in refused.output and not (tmp_path / "pan_cam.avi").exists()
    first = overlay(clip, "--checkpoint", ckpt, "--format", "jsonl", "-q")
    assert first.exit_code == 0 and (tmp_path / "pan_cam.avi").is_file()
    again = overlay(clip, "--checkpoint", ckpt, "--format", "jsonl", "--skip-existing")
    assert again.exit_code == 0 and again.stdout == "" and "1 inputs skipped" in again.stderr


def test_a_killed_overlay_leaves_no_video_at_the_final_name(sample_run, tmp_path):
    import signal
    import subprocess
    import sys

    clip = make_clip(tmp_path / "long.avi", count=600)
    child = subprocess.Popen([sys.executable, "-m", "camcli", "overlay", str(clip), "--checkpoint", str(sample_run / "best.safetensors"),
                              "--format", "jsonl", "--batch-size", "4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for _ in range(12):  # some frames are written
        assert child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "long_cam.avi").exists()
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".camcli-video-")]
    assert len(hidden) == 1  # the private folder of the partial clip: never at a name a user reads


def test_temporal_smoothing_averages_the_normalized_maps_of_the_same_class():
    from collections import deque

    from camcli.cam import normalize_maps
    from camcli.jobs import OverlayJob

    job = OverlayJob(temporal_smooth=3)
    recent: deque = deque(maxlen=2)
    rng = np.random.default_rng(0)
    maps = [rng.random((7, 7)).astype(np.float32) * (i + 1) for i in range(4)]
    out = [job._smoothed(recent, c, m) for c, m in zip([0, 0, 1, 0], maps)]
    np.testing.assert_array_equal(out[0], normalize_maps(maps[0]))  # nothing before it: on the same scale as the others
    np.testing.assert_allclose(out[1], (normalize_maps(maps[0]) + normalize_maps(maps[1])) / 2)
    np.testing.assert_array_equal(out[2], normalize_maps(maps[2]))  # another class: its own
    np.testing.assert_allclose(out[3], (normalize_maps(maps[3]) + normalize_maps(maps[1])) / 2)  # window of 2 before: 1, 2


def _declare_rate(clip, rate: int, scale: int = 1) -> None:
    """Rewrite an AVI stream's frame rate (dwRate / dwScale) and the main header's frame time."""
    data = bytearray(clip.read_bytes())
    stream = data.index(b"strh") + 8
    data[stream + 20 : stream + 28] = struct.pack("<II", scale, rate)
    main = data.index(b"avih") + 8
    data[main : main + 4] = struct.pack("<I", 0 if rate == 0 else max(1, round(1e6 * scale / rate)))
    clip.write_bytes(bytes(data))


def test_an_absurd_frame_rate_in_a_header_is_one_line(tmp_path):
    clip = make_clip(tmp_path / "pan.avi")
    _declare_rate(clip, 2_000_000_000)
    with pytest.raises(CamcliError, match="frames per second, not a rate between 0 and 1000") as caught:
        list(frames(clip))
    assert "\n" not in str(caught.value)
    _declare_rate(clip, 0)  # FFmpeg reads a zero rate as its default 25 frames/s: decodable, with that rate
    _, info = open_clip(clip, 10**8)
    assert info.fps == 25.0 and len(list(frames(clip))) == 30


@pytest.mark.parametrize("fps", [0.0, -5.0, float("nan"), float("inf"), 1e6])
def test_any_frame_rate_outside_0_to_1000_that_reaches_camcli_is_one_line(tmp_path, monkeypatch, fps):
    import camcli.video as video

    class Declared:  # a capture whose header says what a hostile file could make FFmpeg report
        def get(self, prop):
            return {cv2.CAP_PROP_FRAME_WIDTH: 160, cv2.CAP_PROP_FRAME_HEIGHT: 120, cv2.CAP_PROP_FPS: fps,
                    cv2.CAP_PROP_FRAME_COUNT: 30}[prop]

        def release(self):
            pass

    monkeypatch.setattr(video, "_capture", lambda path: Declared())
    with pytest.raises(CamcliError, match="frames per second, not a rate between 0 and 1000"):
        open_clip(tmp_path / "hostile.mp4", 10**8)


def test_the_ray_engine_gives_clips_a_task_each_and_the_rows_of_the_local_engine(sample_run, tmp_path):
    from camcli.data import ImageInput
    from camcli.scaleout import slice_bounds

    work = [ImageInput(tmp_path / name, Path(name)) for name in ["a.jpg", "b.png", "c.mp4", "d.jpg", "e.webm", "f.MKV", "g.jpg", "h.jpg",
                                                                  "i.jpg"]]
    assert slice_bounds(work, 2) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 9)]
    first, second = make_clip(tmp_path / "pan.avi", count=8), make_clip(tmp_path / "pan2.avi", count=5)
    args = (first, SCENE, second, "--checkpoint", sample_run / "best.safetensors", "--every", "3", "--format", "jsonl", "-q")
    local = predict(*args)
    ray = predict(*args, "--engine", "ray", "--ray-workers", "2")
    assert local.exit_code == ray.exit_code == 0, ray.output
    assert ray.stdout == local.stdout and len(local.stdout.splitlines()) == 8  # 3 frames, the clip, the image, 2 frames, the clip


def test_a_resumed_overlay_keeps_every_row_of_a_finished_clip(sample_run, tmp_path):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "pan.avi", count=9)
    (folder / "a.jpg").write_bytes(SCENE.read_bytes())
    args = (folder, "--checkpoint", sample_run / "best.safetensors", "--every", "4", "--top-k", "2", "--output", tmp_path / "res.jsonl",
            "-q")
    assert overlay(*args).exit_code == 0
    before = (tmp_path / "res.jsonl").read_text().splitlines()
    assert len(before) == 5  # the image, 3 frames, the clip
    (folder / "b.jpg").write_bytes((SAMPLE_DATA / "val" / "cat" / "cat_01.jpg").read_bytes())
    again = overlay(*args, "--skip-existing")
    assert again.exit_code == 0, again.output
    after = (tmp_path / "res.jsonl").read_text().splitlines()
    assert after[:5] == before and json.loads(after[5])["path"].endswith("b.jpg") and len(after) == 6


def test_frames_decoded_ahead_come_in_order_with_the_producers_error_after_them():
    from camcli.video import ahead

    made = []

    def items():
        for i in range(5):
            made.append(i)
            yield i
        raise CamcliError("cut short")

    got = []
    with pytest.raises(CamcliError, match="cut short"):
        for item in ahead(items(), depth=2):
            got.append(item)
            assert len(made) <= item + 1 + 3  # never more than depth ahead, and one being made
    assert got == [0, 1, 2, 3, 4]


def test_closing_the_consumer_stops_the_reader_and_closes_its_source_in_its_thread():
    from camcli.video import ahead

    closed, threads = threading.Event(), []

    def items():
        try:
            for i in range(10**9):
                yield i
        finally:
            threads.append(threading.current_thread().name)
            closed.set()

    stream = ahead(items(), depth=1)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.is_set() and threads == ["camcli-clip-reader"]
    assert not [t for t in threading.enumerate() if t.name == "camcli-clip-reader"]  # joined, not left running


def test_a_frame_size_change_midway_fails_the_clip_in_one_line_and_keeps_the_frames_before(sample_run, tmp_path, monkeypatch):
    import json

    import camcli.jobs as jobs
    from camcli.video import Frame

    clip = make_clip(tmp_path / "pan.avi", count=8)
    real = jobs.frames

    def changing(*args, **kwargs):  # what a stream whose frame size changes midway decodes to
        for frame in real(*args, **kwargs):
            yield frame if frame.index < 5 else Frame(frame.index, frame.time, cv2.resize(frame.rgb, (80, 60)))

    monkeypatch.setattr(jobs, "frames", changing)
    result = overlay(clip, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--batch-size", "3")
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in rows[:-1]] == [0, 1, 2, 3, 4]
    assert rows[-1]["kind"] == "clip" and "frame 5 is 80x60, the frames before it 160x120" in rows[-1]["error"]
    assert len(list(frames(tmp_path / "pan_cam.avi"))) == 5  # the frames before the change, as a clip cut short keeps them
    assert "1 file written for 1 clip stopped partway next to the inputs" in result.stderr  # not "for 0 inputs"
    assert "1 of 1 input failed" in result.stderr
    assert "Traceback" not in result.output and not [p for p in tmp_path.iterdir() if p.name.startswith(".camcli-video-")]


def test_ctrl_c_mid_clip_keeps_the_rows_of_the_frames_encoded_and_no_video(sample_run, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    clip = make_clip(tmp_path / "long.avi", count=900)
    rows = tmp_path / "rows.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "camcli", "overlay", str(clip), "--checkpoint", str(sample_run / "best.safetensors"),
                              "--batch-size", "4", "--output", str(rows)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".camcli-video-")] and time.monotonic() < deadline:
        time.sleep(0.05)  # the first frames are encoded
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    kept = [json.loads(line) for line in rows.read_text().splitlines()]
    assert kept and [r["frame"] for r in kept] == list(range(len(kept))) and len(kept) < 900  # every frame in order, no gap
    assert all(r["kind"] == "frame" for r in kept)  # the clip did not finish: no clip row
    assert not (tmp_path / "long_cam.avi").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".camcli-video-")]  # the partial clip removed
    assert "Traceback" not in stderr and "interrupted during overlay" in stderr


def test_frame_images_writes_a_jpeg_per_sampled_frame_and_an_index_last(sample_run, tmp_path):
    import csv
    import json

    clip = make_clip(tmp_path / "pan.avi", count=10)
    ckpt = sample_run / "best.safetensors"
    result = overlay(clip, "--checkpoint", ckpt, "--every", "3", "--frame-images", "--format", "jsonl", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "pan_cam"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["outputs"] for r in rows[:-1]] == [[str(folder / f"{i:06d}.jpg")] for i in (0, 3, 6, 9)]
    assert rows[-1]["kind"] == "clip" and rows[-1]["outputs"] == [str(folder / "index.csv")]
    assert not (tmp_path / "pan_cam.avi").exists()
    source = opencv_frames(clip)
    for i in (0, 3, 6, 9):
        written = cv2.imread(str(folder / f"{i:06d}.jpg"))
        assert written.shape == (120, 160, 3)
        assert np.abs(written.astype(int) - source[i][:, :, ::-1].astype(int)).mean() > 5  # a heatmap is blended in
    index = list(csv.DictReader((folder / "index.csv").open()))
    assert [(int(r["frame"]), float(r["time"]), r["file"]) for r in index] == [(i, pytest.approx(i / 30), f"{i:06d}.jpg")
                                                                           for i in (0, 3, 6, 9)]
    assert [r["label"] for r in index] == [r["box_label"] for r in rows[:-1]]
    assert [float(r["prob"]) for r in index] == pytest.approx([r["predictions"][0]["prob"] for r in rows[:-1]], abs=1e-6)
    assert "5 files written for 1 input" in result.stderr
    again = overlay(clip, "--checkpoint", ckpt, "--every", "3", "--frame-images", "--skip-existing", "--format", "jsonl")
    assert again.exit_code == 0 and again.stdout == "" and "1 inputs skipped" in again.stderr
    other = overlay(clip, "--checkpoint", ckpt, "--every", "5", "--frame-images", "--format", "jsonl", "-q")  # a new sampling
    assert other.exit_code == 0, other.output
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["000000.jpg", "000005.jpg", "index.csv"]


def test_frame_images_never_writes_through_a_link_or_over_a_users_frame(sample_run, tmp_path):
    clip = make_clip(tmp_path / "pan.avi", count=4)
    ckpt = sample_run / "best.safetensors"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "pan_cam").symlink_to(elsewhere)
    linked = overlay(clip, "--checkpoint", ckpt, "--frame-images")
    assert linked.exit_code == 2 and "is a link" in linked.output and list(elsewhere.iterdir()) == []
    (tmp_path / "pan_cam").unlink()
    (tmp_path / "pan_cam").mkdir()
    (tmp_path / "pan_cam" / "000002.jpg").write_bytes(b"the user's own")
    mine = overlay(clip, "--checkpoint", ckpt, "--frame-images")
    assert mine.exit_code == 2 and "was not written by camcli" in mine.output
    assert (tmp_path / "pan_cam" / "000002.jpg").read_bytes() == b"the user's own"


def moving_objects(path, frames: int):
    """sample_data's objects crossing its validation textures, losslessly written: (clip, per frame (class, box))."""
    import sys

    sys.path.insert(0, str(SAMPLE_DATA))
    try:
        from make_sample_data import moving_clip
    finally:
        sys.path.remove(str(SAMPLE_DATA))
    return path, moving_clip(path, frames=frames, per_object=10)


def peak_in(cam_map, shape, box) -> bool:
    """The pointing game: the map's maximum, upsampled to the frame, inside the box."""
    up = cv2.resize(np.asarray(cam_map, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    return bool(box[0] <= x < box[2] and box[1] <= y < box[3])


def test_moving_objects_rank_and_point_in_a_clip_as_its_frames_do_as_images(sample_run, tmp_path, monkeypatch):
    import json

    import camcli
    import camcli.jobs as jobs
    from camcli.data import find_images

    clip, truth = moving_objects(tmp_path / "moving.avi", frames=50)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, rgb in enumerate(opencv_frames(clip)):
        cv2.imwrite(str(pngs / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    ckpt = sample_run / "best.safetensors"

    # predict: each frame's row is the row of the same frame decoded by OpenCV and written as PNG
    rows = [json.loads(line) for line in predict(clip, "--checkpoint", ckpt, "--top-k", "5", "--format", "jsonl").stdout.splitlines()]
    reference = [json.loads(line) for line in predict(pngs, "--checkpoint", ckpt, "--top-k", "5", "--format", "jsonl").stdout.splitlines()]
    assert len(rows) == 51 and len(reference) == 50
    for row, ref in zip(rows[:-1], reference, strict=True):
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in ref["predictions"]]
        np.testing.assert_allclose([p["prob"] for p in row["predictions"]], [p["prob"] for p in ref["predictions"]], atol=1e-5)

    # overlay: the map each frame's overlay draws, through the clip's path and through the images' path
    drawn, written = {}, {}
    real_overlay, real_write = jobs.overlay_images, jobs.write_overlays

    def overlay_images(image_rgb, maps, *args, **kwargs):
        drawn[len(drawn)] = (image_rgb.shape[:2], np.array(maps[0]))
        return real_overlay(image_rgb, maps, *args, **kwargs)

    def write_overlays(image_rgb, maps, classes, probs, class_names, paths, *args, **kwargs):
        written[int(paths[0].name[:3])] = (image_rgb.shape[:2], np.array(maps[0]))
        return real_write(image_rgb, maps, classes, probs, class_names, paths, *args, **kwargs)

    monkeypatch.setattr(jobs, "overlay_images", overlay_images)
    monkeypatch.setattr(jobs, "write_overlays", write_overlays)
    model = camcli.load(ckpt)
    list(jobs.run_here(jobs.OverlayJob(out_dir=tmp_path / "clip_out"), model, find_images([str(clip)], videos=True)))
    list(jobs.run_here(jobs.OverlayJob(out_dir=tmp_path / "png_out"), model, find_images([str(pngs)])))
    assert sorted(drawn) == sorted(written) == list(range(50))
    in_clip = [peak_in(m, shape, truth[i][1]) for i, (shape, m) in sorted(drawn.items())]
    as_images = [peak_in(m, shape, truth[i][1]) for i, (shape, m) in sorted(written.items())]
    assert in_clip == as_images  # frame by frame, so as often
    assert sum(in_clip) >= 0.8 * 50  # and the maps find the moving objects (the centre: about half)


def test_a_clip_is_written_into_a_folder_whose_name_is_not_utf8(tmp_path):
    from camcli.video import ClipWriter

    folder = tmp_path / os.fsdecode(b"caf\xe9")  # Latin-1, not UTF-8: OpenCV itself would crash on the path
    target = folder / "out.avi"
    source = list(frames(make_clip(tmp_path / "pan.avi", count=4)))
    with ClipWriter(target, 10, (160, 120)) as writer:
        for frame in source:
            writer.write(frame.rgb)
    assert [p.name for p in folder.iterdir()] == ["out.avi"] and len(list(frames(target))) == 4


def test_frames_end_when_stopped_and_a_frame_larger_than_its_header_is_one_line(tmp_path, monkeypatch):
    import camcli.video as video

    clip = make_clip(tmp_path / "pan.avi", count=30)
    stop = threading.Event()
    stream = frames(clip, Sampling(every=10), stop=stop)
    assert next(stream).index == 0
    stop.set()
    assert list(stream) == []  # no waiting for frame 10, and no "cut short" either

    class Growing:  # a header that declares 16x16 and frames that come out 160x120
        def __init__(self):
            self.real = cv2.VideoCapture(str(clip))

        def get(self, prop):
            return {cv2.CAP_PROP_FRAME_WIDTH: 16, cv2.CAP_PROP_FRAME_HEIGHT: 16}.get(prop, self.real.get(prop))

        def grab(self):
            return self.real.grab()

        def retrieve(self):
            return self.real.retrieve()

        def release(self):
            self.real.release()

    monkeypatch.setattr(video, "_capture", lambda path: Growing())
    with pytest.raises(CamcliError, match=r"frame 0 is 160x120, over the limit of 1,000 pixels") as caught:
        list(frames(clip, max_pixels=1000))
    assert "\n" not in str(caught.value)


def test_chunks_are_cut_where_batches_are_so_no_batch_of_one_frame_follows(tmp_path, monkeypatch):
    import camcli.jobs as jobs

    clip = make_clip(tmp_path / "pan.avi", count=11)
    monkeypatch.setattr(jobs, "KEPT_PIXELS", int(160 * 120 * 2.5))  # room for two frames, not three

    class Model:
        max_pixels = None

    sizes = [len(chunk) for chunk in jobs.ClipTally(5).chunks(clip, Sampling(), 4, Model())]
    assert sizes == [2, 2, 2, 2, 2, 1]


def test_overwrite_replaces_a_users_index_and_frames_in_the_frame_folder(sample_run, tmp_path):
    clip = make_clip(tmp_path / "pan.avi", count=4)
    folder = tmp_path / "pan_cam"
    folder.mkdir()
    (folder / "index.csv").write_text("the user's own\n")
    (folder / "000002.jpg").write_bytes(b"the user's own")
    result = overlay(clip, "--checkpoint", sample_run / "best.safetensors", "--frame-images", "--overwrite", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert (folder / "index.csv").read_text().startswith("frame,time,file,label,prob")
    assert cv2.imread(str(folder / "000002.jpg")).shape == (120, 160, 3)
