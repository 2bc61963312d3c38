"""Video clips as a stream of frames: open with bounds, sample, decode one frame at a time.

OpenCV's bundled FFmpeg reads the clip (audio is ignored). Nothing about a clip is trusted before
it is decoded: its declared frame size must be within the pixel budget, its frame rate a number
between 0 and :data:`MAX_FPS`, and its declared frame count is a hint (a progress total), never a
bound for memory. Frames are decoded one at a time, so memory does not grow with the clip.

FFmpeg's and OpenCV's own logging is silenced before OpenCV is first imported (``camcli/__init__.py``
sets ``OPENCV_FFMPEG_LOGLEVEL`` and ``OPENCV_LOG_LEVEL``, keeping a value the user set), so a
damaged clip is camcli's one line, not FFmpeg's noise.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcli.errors import CamcliError
from camcli.files import stderr_quiet

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
MAX_FPS = 1000.0  # a declared frame rate above this is a damaged or hostile header
MAX_DECLARED_FRAMES = 100_000_000  # a count above this (over a month at 30 frames/s) is not believed, even as a hint
SHORT_BY = 0.01  # a clip that ends more than this share (and 2 frames) before its declared count is cut short


def is_video(path: Path) -> bool:
    """Whether ``path`` names a clip by its suffix (checked when decoded)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip to take.

    Attributes:
        every: every Nth frame (1: all).
        fps: or frames at this rate (the frame at or after each 1/fps step); None: ``every``.
        start: seconds into the clip where sampling starts.
        end: seconds where it stops (exclusive); None: the end of the clip.
    """

    every: int = 1
    fps: float | None = None
    start: float = 0.0
    end: float | None = None

    def validate(self) -> None:
        if self.every < 1:
            raise CamcliError(f"`every` must be 1 or more, got {self.every}")
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= MAX_FPS):
            raise CamcliError(f"`fps` must be above 0 and at most {MAX_FPS:g}, got {self.fps}")
        if self.fps is not None and self.every != 1:
            raise CamcliError("give `every` or `fps`, not both")
        if not (math.isfinite(self.start) and self.start >= 0):
            raise CamcliError(f"`start` must be 0 or more seconds, got {self.start}")
        if self.end is not None and not (math.isfinite(self.end) and self.end > self.start):
            raise CamcliError(f"`end` must be a number of seconds after `start` ({self.start:g}), got {self.end}")


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header declares (checked by :func:`open_clip`).

    Attributes:
        width, height: frame size in pixels.
        fps: frames per second.
        frames: the declared frame count, or None when absent or not believable (a hint only).
    """

    path: Path
    width: int
    height: int
    fps: float
    frames: int | None


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the clip, its time in seconds, and RGB uint8 pixels (H, W, 3)."""

    index: int
    time: float
    rgb: np.ndarray


def _capture(path: Path):
    """An open ``cv2.VideoCapture`` of ``path``, checked to be a regular file first (FFmpeg would
    wait forever on a FIFO). On Linux the clip is read through the checked file descriptor, so the
    file cannot be swapped between the check and the open."""
    import cv2

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CamcliError(f"video not found: {path}") from None
    except OSError as exc:
        raise CamcliError(f"cannot open video {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CamcliError(f"video {path} is not a regular file")
        empty = info.st_size == 0
        through = f"/proc/self/fd/{fd}"
        capture = cv2.VideoCapture(through if os.path.exists(through) else str(path), cv2.CAP_FFMPEG)
    finally:
        os.close(fd)  # FFmpeg has opened its own handle of the same file
    if not capture.isOpened():
        capture.release()
        cut = " (or an mp4 cut short: its index is written at its end)" if path.suffix.lower() in (".mp4", ".m4v", ".mov") else ""
        raise CamcliError(f"cannot decode {path}: {'an empty file' if empty else 'not a readable video' + cut}")
    return capture


def open_clip(path: Path, max_pixels: int):
    """(the open capture, its :class:`ClipInfo`) of a clip whose header passes the bounds.

    Raises:
        CamcliError: not a regular file, not a video FFmpeg can open, a frame size over
            ``max_pixels`` or not positive, a frame rate that is not a number in (0, MAX_FPS].
    """
    import cv2

    path = Path(path)
    capture = _capture(path)
    try:
        width, height = (int(capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        if width <= 0 or height <= 0:
            raise CamcliError(f"cannot decode {path}: the clip declares no frame size")
        if width * height > max_pixels:
            raise CamcliError(f"{path}: its frames are {width}x{height} = {width * height:,} pixels, over the limit of "
                              f"{max_pixels:,} (--max-pixels)")
        if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
            raise CamcliError(f"{path}: the clip declares {fps:g} frames per second, not a rate between 0 and {MAX_FPS:g}")
        frames = int(declared) if math.isfinite(declared) and 0 < declared <= MAX_DECLARED_FRAMES else None
    except BaseException:
        capture.release()
        raise
    return capture, ClipInfo(path, width, height, fps, frames)


def sampled(info: ClipInfo, sampling: Sampling) -> int | None:
    """How many frames ``sampling`` takes of the clip by its declared count (a hint, for a
    progress total), or None when the count is not declared."""
    if info.frames is None:
        return None
    first = math.ceil(sampling.start * info.fps - 1e-9)
    stop = info.frames if sampling.end is None else min(info.frames, math.ceil(sampling.end * info.fps - 1e-9))
    if stop <= first:
        return 0
    if sampling.fps is None:
        return len(range(first, stop, sampling.every))
    return sum(1 for _ in _rate_steps(first, stop, info.fps, sampling.fps))


def _rate_steps(first: int, stop: int, fps: float, rate: float) -> Iterator[int]:
    """The frame indices taken at ``rate`` frames per second: the first frame at or after each step."""
    step, k, last = fps / rate, 0, -1
    while True:
        index = max(first, math.ceil(first + k * step - 1e-9))
        k += 1
        if index >= stop:
            return
        if index > last:  # a rate above the clip's: each frame once
            yield index
            last = index


def frames(path: Path, sampling: Sampling = Sampling(), max_pixels: int = 178_956_970,
           stop: threading.Event | None = None) -> Iterator[Frame]:
    """The sampled frames of a clip, decoded one at a time (skipped frames are only grabbed).

    A frame's time is its index over the declared frame rate. A clip that ends well before its
    declared frame count gives the frames up to the cut, then raises. ``stop``: once set, the
    frames end at the next frame read, sampled or not (:func:`ahead` sets it when its consumer
    stops: a Ctrl-C never waits for the next sampled frame).

    Raises:
        CamcliError: see :func:`open_clip`; the clip decodes to no frame in the sampled range; or
            it stops more than :data:`SHORT_BY` before its declared count (after its frames).
    """
    import cv2

    capture, info = open_clip(path, max_pixels)
    try:
        first = math.ceil(sampling.start * info.fps - 1e-9)
        end = None if sampling.end is None else math.ceil(sampling.end * info.fps - 1e-9)
        wanted = _rate_steps(first, end if end is not None else 1 << 62, info.fps, sampling.fps) if sampling.fps else None
        target = next(wanted, None) if wanted is not None else first
        index, taken = 0, 0
        while target is not None and (end is None or index < end):
            if stop is not None and stop.is_set():
                return
            if not capture.grab():
                break
            if index == target:
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    break
                if bgr.shape[0] * bgr.shape[1] > max_pixels:  # a stream that grows past its header's size midway
                    raise CamcliError(f"{path}: frame {index:,} is {bgr.shape[1]}x{bgr.shape[0]}, over the limit of "
                                      f"{max_pixels:,} pixels (--max-pixels)")
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield Frame(index, index / info.fps, cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB))
                taken += 1
                target = next(wanted, None) if wanted is not None else target + sampling.every
            index += 1
    finally:
        capture.release()
    reached_stop = end is not None and index >= end
    if taken == 0:
        until = f"{sampling.end:g} s" if sampling.end is not None else f"its end ({index:,} frame{'s' * (index != 1)})"
        raise CamcliError(f"{path} decodes to no frame" + (f" between {sampling.start:g} s and {until}" if sampling.start else ""))
    if not reached_stop and info.frames is not None and index < info.frames - max(2, SHORT_BY * info.frames):
        raise CamcliError(f"{path} ends after {index:,} frames of the {info.frames:,} it declares: cut short or damaged")


def ahead(items: Iterator, depth: int = 1, stop: threading.Event | None = None) -> Iterator:
    """``items`` produced in a thread of their own, at most ``depth`` ahead of the consumer (and one
    being made): a clip is decoded while the model scores the frames before (OpenCV releases the GIL
    while it decodes). The producer's exception is raised in the consumer, after the items before
    it. Closing this generator (an error or Ctrl-C downstream) sets ``stop`` (which ``items`` may
    watch, as :func:`frames` does, to end without making its next item), stops the producer and
    closes ``items`` in its thread (a capture is released there) before it returns.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = stop or threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            put((end, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="camcli-clip-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = handoff.get()
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()


# the codec each output container gets: OpenCV's wheel has no H.264 encoder (avc1 never opens), so
# mp4/m4v/mov get MPEG-4 Part 2 (mp4v: plays in VLC and most players, not in browsers); webm gets VP8,
# which browsers play; avi and mkv get Motion JPEG
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".webm": "VP80", ".avi": "MJPG", ".mkv": "MJPG"}


class ClipWriter:
    """Writes a clip under a temporary name and renames it to ``path`` once complete, so a run that
    stops (an error, Ctrl-C, a kill) never leaves half a video at the final name.

    OpenCV's writer takes a path and picks the container by its suffix, so the temporary file is
    ``clip<suffix>`` inside a private folder (mode 0700, made with ``mkdtemp``) in the output
    folder: the rename stays on one file system, and nobody else can plant a link at its name.
    Use as a context manager: on an exception the temporary file and folder are removed.

    Args:
        path: the final file (its suffix picks the container and :data:`CODECS` the codec).
        fps: frames per second.
        size: (width, height) of every frame.
        before_rename: called with the finished file's ``os.stat_result`` just before the rename
            (an output guard's record, as :func:`camcli.files.atomic_open` takes).
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], before_rename=None) -> None:
        import tempfile

        import cv2

        self.path, self.size, self.before_rename = Path(path), tuple(size), before_rename
        codec = CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise CamcliError(f"cannot write a video to {self.path}: use one of {', '.join(sorted(CODECS))}")
        if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
            raise CamcliError(f"cannot write {self.path} at {fps:g} frames per second")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=".camcli-video-", dir=self.path.parent))
        except OSError as exc:
            raise CamcliError(f"cannot write to {self.path.parent}: {exc.strerror}") from None
        self.partial = self.folder / f"clip{self.path.suffix.lower()}"
        # OpenCV takes the path as UTF-8 (a folder name that is not crashes it): on Linux it gets the private
        # folder through a descriptor held open until the clip is closed, a path of ASCII whatever the folder's name
        self.dirfd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        through = f"/proc/self/fd/{self.dirfd}"
        target = f"{through}/{self.partial.name}" if os.path.isdir(through) else str(self.partial)
        with stderr_quiet():  # OpenCV prints FFmpeg's tag notes (VP8 in webm) itself, past its log level
            self.writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*codec), fps, self.size)
        self.frames = 0
        if not self.writer.isOpened():
            self.abort()
            raise CamcliError(f"cannot write {self.path}: OpenCV has no {codec} encoder for {self.path.suffix}")

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame of the writer's size."""
        import cv2

        if (rgb.shape[1], rgb.shape[0]) != self.size:  # a stream that changes its frame size midway
            raise CamcliError(f"cannot write {self.path}: frame {self.frames} is {rgb.shape[1]}x{rgb.shape[0]}, the frames "
                              f"before it {self.size[0]}x{self.size[1]}")
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.release()
        if getattr(self, "dirfd", None) is not None:
            os.close(self.dirfd)
            self.dirfd = None

    def finish(self) -> Path:
        """Close the clip and rename it to its final name; returns that name."""
        self._close()
        try:
            if self.frames == 0 or not self.partial.is_file() or self.partial.stat().st_size == 0:
                raise CamcliError(f"cannot write {self.path}: the encoder wrote nothing")
            if self.before_rename is not None:
                self.before_rename(self.partial.stat())
            os.replace(self.partial, self.path)  # a link planted at the final name is replaced, never followed
        except BaseException:
            self.abort()
            raise
        self.folder.rmdir()
        return self.path

    def abort(self) -> None:
        """Drop the partial clip and its folder."""
        self._close()
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.finish()
        else:
            self.abort()
