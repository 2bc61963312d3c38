"""camcli.video: clips made here from sample_data's photographs, decoded frame by frame against
OpenCV's own reading, sampled, and the hostile clips (a text file, a FIFO, a frame size over the
budget, a count that lies, a file cut short) refused in one line, never a hang."""

from __future__ import annotations

import os
import struct
import threading

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
    with pytest.raises(CamcliError, match="decodes to no frame between 5 s and the end"):
        list(frames(clip, Sampling(start=5)))


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
