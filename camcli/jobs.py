"""The jobs: predict, overlay, evaluate, and train's feature pass.

A job is a dataclass of its options with three steps:

- ``validate()``: every check that needs no model (the command line runs it before any model loads);
- ``bind(model, work, notify)``: the checks that need the model (class names, the method the
  head allows, the checkpoint's threshold, every output path), run once right after loading;
  returns the bound job and the work it will do;
- ``run(model, work)``: the results of a slice of the work, in order (rows, tallies, features).

An engine (:class:`LocalEngine` here, :class:`camcli.scaleout.RayEngine` on a cluster) runs a
bound job on its work; ``slice`` cuts a bound job and its work into the parts a worker gets,
and ``count`` says how many images a result stands for, so progress is counted one way for
every job.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import ClassVar

import numpy as np

from camcli import gates, methods, sanity
from camcli.cam import global_average_pool, heatmap, largest_component_box, normalize_maps, softmax
from camcli.checkpoint import SUFFIX, checkpoint_bytes, load_checkpoint
from camcli.data import ImageInput, Preprocess, find_images
from camcli.defaults import (
    ALPHA,
    BATCH_SIZE,
    CALIBRATION_CAM_SIZES,
    COLORMAPS,
    MAX_IMG_SIZE,
    MIN_IMG_SIZE,
    NORMALIZATIONS,
    PAPER_THRESHOLD,
    SANITY_IMAGES,
    SANITY_MAX_SPEARMAN,
    TOP_K,
)
from camcli.engine import KEPT_PIXELS, Batch, Model, check_smooth, extract_features, image_batches, map_groups
from camcli.errors import CamcliError
from camcli.evaluate import LocalizationTally, calibrated, check_inside, choose_calibration, classification_metrics, labeled_images
from camcli.faithfulness import FaithfulnessTally, require_scipy
from camcli.files import OutputGuard, atomic_write, next_run_dir, real_path, remove_if_ours
from camcli.outputs import FRAME_NAME, FixedNames, RankedNames, frame_folder, frame_path
from camcli.render import overlay_images, plot_curves, write_image, write_overlays
from camcli.results import csv_cell, json_safe
from camcli.video import ClipInfo, ClipWriter, Sampling, ahead, frames, is_video, open_clip, sampled

Progress = Callable[[str, int, int | None], None]
Notify = Callable[[str], None]


# ---------------------------------------------------------------- checks shared by the jobs

def check_common(job) -> None:
    """The values every inference job has: batch size, decoding threads, top-k, the box threshold,
    the map sizes and the method name."""
    if job.batch_size < 1:
        raise CamcliError(f"`batch_size` must be at least 1, got {job.batch_size}")
    if job.workers < 0:
        raise CamcliError(f"`workers` must be 0 or more, got {job.workers}")
    if getattr(job, "top_k", 1) < 1:
        raise CamcliError(f"`top_k` must be at least 1, got {job.top_k}")
    threshold = getattr(job, "box_threshold", None)
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise CamcliError(f"`box_threshold` must be from 0 to below 1, got {threshold}")
    sizes = getattr(job, "cam_sizes", ())
    if any(not MIN_IMG_SIZE <= s <= MAX_IMG_SIZE for s in sizes):
        raise CamcliError(f"`cam_sizes` must be from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, got {', '.join(map(str, sizes))}")
    for name in method_names(job.method):
        if name != methods.AUTO:
            methods.get(name)
    check_smooth(getattr(job, "smooth", ()))
    top = getattr(job, "top_channels", None)
    if top is not None:
        if top < 1:
            raise CamcliError(f"`top_channels` must be at least 1, got {top}")
        if "scorecam" not in method_names(job.method):
            raise CamcliError("`top_channels` bounds Score-CAM's passes: it goes with `method` scorecam")


def int8_key(model: Model, batch: Batch | None = None, b: int = 0) -> dict:
    """What rows, settings and files add about the precision: ``{"precision": "int8"}`` when INT8 ran, else nothing
    (fp32 outputs stay byte for byte as they were before INT8 existed); the row of image ``b`` of ``batch`` says
    ``fp32`` when that image was a near tie run again in fp32 (see :meth:`camcli.engine.CamModel.ranked`)."""
    if model.precision != "int8":
        return {}
    return {"precision": "fp32" if batch is not None and batch.fp32 is not None and batch.fp32[b] else "int8"}


def method_names(method: str | Sequence[str]) -> tuple[str, ...]:
    """A job's ``method``: one name, or (evaluate) several, compared side by side."""
    names = (method,) if isinstance(method, str) else tuple(method)
    if not names:
        raise CamcliError("`method` needs at least one method")
    return names


def cam_sizes_for(model: Model, cam_sizes: Sequence[int]) -> tuple[int, ...]:
    """The map sizes: the ones given, else the checkpoint's calibrated ``cam_size`` (see
    :func:`camcli.evaluate.calibrated`), else none (the maps of the ranking pass). A calibrated
    size equal to the model's input size is the ranking pass itself."""
    if cam_sizes:
        return tuple(cam_sizes)
    size = (model.checkpoint or {}).get("cam_size")  # checked when the checkpoint was loaded
    return () if size is None or size == model.preprocess.img_size else (int(size),)


def box_threshold_for(model: Model, threshold: float | None) -> float:
    """The box threshold: the one given, else the checkpoint's calibrated one, else the paper's 0.2."""
    if threshold is None:  # a checkpoint's cam_threshold was checked when it was loaded
        return float((model.checkpoint or {}).get("cam_threshold", PAPER_THRESHOLD))
    return threshold


def _one_per_batch(job, work: Sequence, start: int, stop: int):
    return job, list(work[start:stop])


# ---------------------------------------------------------------- predict

@dataclass
class PredictJob:
    """Rank classes for every image; with ``boxes``, rows add the top-1 class's box.

    Attributes:
        top_k: classes per row (capped at the number of classes).
        boxes: add ``box`` (original-image pixels), ``box_label``, ``box_threshold`` and ``method``.
        box_threshold: None: the checkpoint's calibrated one, else 0.2.
        cam_sizes: compute the boxes' maps at these input sizes (see :meth:`Model.batch_maps`).
        top_channels: with Score-CAM, only the K channels of largest activation variance are
            scored (see :func:`camcli.engine.scorecam_maps`); None: every channel.
        method: ``auto`` or a registered method (see :mod:`camcli.methods`).
        chunk_size: images taken at a time from a lazy input (a folder walk, stdin), so the
            first rows come before the walk is finished.
        sampling: which frames of a clip (see :class:`camcli.video.Sampling`). A clip gives one
            row per sampled frame (``kind`` ``frame``, with ``frame`` and ``time``), then one row
            of its own (``kind`` ``clip``: ``frames``, and per class of the top ``top_k`` by mean
            probability its mean ``prob`` and ``top1_share``, the share of frames where it ranks
            first). A clip that cannot be read, or is cut short, is a failure of its clip row.
    """

    top_k: int = TOP_K
    boxes: bool = False
    box_threshold: float | None = None
    cam_sizes: Sequence[int] = ()
    method: str = methods.AUTO
    batch_size: int = BATCH_SIZE
    workers: int = 0
    chunk_size: int = 1024
    smooth: Sequence[str] = ()
    top_channels: int | None = None
    sampling: Sampling = Sampling()
    stage: ClassVar[str] = "predict"

    def validate(self) -> None:
        check_common(self)
        self.sampling.validate()

    def bind(self, model: Model, work: Iterable[ImageInput], notify: Notify | None = None) -> tuple[PredictJob, Iterable[ImageInput]]:
        threshold = box_threshold_for(model, self.box_threshold) if self.boxes else None
        sizes = cam_sizes_for(model, self.cam_sizes) if self.boxes else tuple(self.cam_sizes)
        return replace(self, method=model.resolve_method(self.method), box_threshold=threshold, cam_sizes=sizes), work

    slice = _one_per_batch

    def count(self, row: dict) -> int:
        """Progress counts images and frames; a clip that gave no frame counts as one (as :meth:`total` does)."""
        return (row["frames"] == 0) if row.get("kind") == "clip" else 1

    def total(self, work: Sequence[ImageInput]) -> int | None:
        """The progress total: images, and each clip's sampled frames by its declared count (a
        hint: None when a clip does not declare one)."""
        count = 0
        for item in work:
            if not is_video(item.path):
                count += 1
                continue
            try:
                capture, info = open_clip(item.path, 1 << 62)
            except CamcliError:
                count += 1  # its failure row
                continue
            capture.release()
            frames_hint = sampled(info, self.sampling)
            if frames_hint is None:
                return None
            count += frames_hint
        return count

    def run(self, model: Model, images: Iterable[ImageInput]) -> Iterator[dict]:
        """Rows in input order, batch by batch; a clip's frames, then its own row."""
        iterator = iter(images)
        while chunk := list(islice(iterator, self.chunk_size)):
            for clip, group in itertools.groupby(chunk, key=lambda i: is_video(i.path)):
                if clip:
                    for item in group:
                        yield from self._clip(model, item.path)
                    continue
                group = list(group)
                for batch in model.batches([i.path for i in group], self.batch_size, self.workers, keep_images=self.boxes,
                                           cam_sizes=self.cam_sizes if self.boxes else ()):
                    yield from self._rows(model, batch, [{"path": str(group[pos].path)} for pos in range(len(group))])

    def _rows(self, model: Model, batch: Batch, keys: list[dict]) -> Iterator[dict]:
        """The rows of one batch, in order; ``keys``: what each position's row starts with."""
        rows = {pos: {**keys[pos], "predictions": preds, **int8_key(model, batch, b)}
                for b, (pos, preds) in enumerate(zip(batch.positions, model.rank(batch.logits, self.top_k)))}
        if self.boxes and batch.positions:
            top1 = batch.logits.argmax(axis=1)[:, None]
            maps = model.batch_maps(batch, top1, self.cam_sizes, self.method, self.smooth, self.top_channels)
            for b, (pos, cam_map) in enumerate(zip(batch.positions, maps)):
                heat = heatmap(cam_map[0], batch.originals[b].shape[:2])
                rows[pos].update(box=largest_component_box(heat, self.box_threshold),
                                 box_label=model.class_names[int(top1[b, 0])], box_threshold=self.box_threshold,
                                 method=self.method, **({"cam_sizes": list(self.cam_sizes)} if self.cam_sizes else {}),
                                 **({"smooth": list(self.smooth)} if self.smooth else {}))
        rows.update({pos: {**keys[pos], "predictions": [], "error": why} for pos, why in batch.failures})
        yield from (rows[pos] for pos in sorted(rows))

    def _clip(self, model: Model, path: Path) -> Iterator[dict]:
        """A clip's frame rows as they are decoded (a batch at a time), then its summary row."""
        tally = ClipTally(model.num_classes)

        def ranked(chunk: list) -> Iterator[dict]:
            keys = [{"path": str(path), "kind": "frame", "frame": f.index, "time": round(f.time, 6)} for f in chunk]
            for batch in model.batches([f.rgb for f in chunk], self.batch_size, 0, keep_images=self.boxes,
                                       cam_sizes=self.cam_sizes if self.boxes else ()):
                tally.add(batch.logits)
                failures = [(pos, f"{path} frame {chunk[pos].index}: {why.split(': ', 1)[-1]}") for pos, why in batch.failures]
                yield from self._rows(model, replace(batch, failures=failures), keys)

        try:
            for chunk in tally.chunks(path, self.sampling, self.batch_size, model):
                yield from ranked(chunk)
        except CamcliError as exc:  # a clip that cannot be read, or a frame the model cannot score
            tally.error = str(exc)
        yield tally.row(path, self.top_k, model.class_names)


class ClipTally:
    """A clip's own row: over its ranked frames, each class's mean probability and the share of
    frames where it ranks first; and the clip's failure, if any."""

    def __init__(self, num_classes: int) -> None:
        self.sums = np.zeros(num_classes)
        self.firsts = np.zeros(num_classes, np.int64)
        self.frames = 0
        self.error: str | None = None
        self.info: ClipInfo | None = None  # the clip's header, once :meth:`chunks` has opened it

    def chunks(self, path: Path, sampling: Sampling, size: int, model: Model) -> Iterator[list]:
        """The clip's sampled frames, ``size`` at a time (fewer once a chunk holds
        :data:`~camcli.engine.KEPT_PIXELS`), decoded up to a chunk ahead in a reader thread; a clip
        cut short ends the chunks and sets :attr:`error` (its frames before the cut come first)."""
        budget = model.max_pixels if model.max_pixels is not None else 1 << 62
        chunk, pixels = [], 0
        try:
            capture, self.info = open_clip(path, budget)
            capture.release()
            stop = threading.Event()
            depth = max(1, min(size, KEPT_PIXELS // (self.info.width * self.info.height)))
            for frame in ahead(frames(path, sampling, budget, stop), depth, stop):
                area = frame.rgb.shape[0] * frame.rgb.shape[1]
                if chunk and pixels + area > KEPT_PIXELS:  # cut where Model.batches would: no batch of one frame after
                    yield chunk
                    chunk, pixels = [], 0
                chunk.append(frame)
                pixels += area
                if len(chunk) == size:
                    yield chunk
                    chunk, pixels = [], 0
        except CamcliError as exc:
            self.error = str(exc)
        if chunk:
            yield chunk

    def add(self, logits: np.ndarray) -> None:
        """Count a batch of frames' (B, K) logits (non-finite ones are failed frames, left out)."""
        logits = logits[np.isfinite(logits).all(axis=1)]
        if len(logits):
            probs = softmax(logits).astype(np.float64)
            self.sums += probs.sum(axis=0)
            np.add.at(self.firsts, probs.argmax(axis=1), 1)
            self.frames += len(probs)

    def row(self, path: Path, top_k: int, class_names: Sequence[str], **extra) -> dict:
        summary = []
        if self.frames:
            mean = self.sums / self.frames
            for c in np.argsort(-mean, kind="stable")[: min(top_k, len(class_names))]:
                summary.append({"label": class_names[int(c)], "index": int(c), "prob": float(mean[c]),
                                "top1_share": float(self.firsts[c] / self.frames)})
        return {"path": str(path), "kind": "clip", "frames": self.frames, "predictions": summary, **extra,
                **({"error": self.error} if self.error else {})}


# ---------------------------------------------------------------- overlay

@dataclass
class OverlayPlan:
    """What :meth:`OverlayJob.bind` found: the resolved method and threshold, the classes to map,
    and the checked output names of the images to process (``names.guard`` None in a worker's slice)."""

    method: str
    threshold: float
    chosen: list[int]  # classes to map for every image; empty: top-1 (or top-maps_k)
    maps_k: int
    names: FixedNames | RankedNames


@dataclass
class OverlayJob:
    """Write a CAM overlay for every image and yield its row, in input order.

    Attributes:
        class_names, class_indices: the classes to map (names, indices); none means top-1.
        alpha: heatmap weight in the blend.
        colormap: OpenCV colormap name.
        caption: draw "label prob" in the corner.
        save_raw: also write the float32 (h, w) map as ``.npy`` (raw, or fused for several cam sizes).
        out_dir: mirror outputs under this folder instead of writing next to inputs.
        overwrite: replace files at output paths that camcli did not write.
        box_threshold: the box's threshold (fraction of the normalized map); None: the
            checkpoint's calibrated ``cam_threshold``, else the CAM paper's 0.2.
        draw_box: draw the box on the overlay.
        skip_existing: leave out (no row, no work) the inputs whose outputs camcli already wrote
            (and, with ``rows_kept``, whose row a previous results file holds: an input whose
            outputs were written but whose row was not, when a run was interrupted, is run again).
        maps: write the maps of each image's top-``maps`` classes as ``<stem>_cam_<rank>_<label><ext>``.
        cam_sizes: compute the maps at these input sizes (fused when several) instead of
            from the ranking pass; see :meth:`Model.batch_maps`.
        reserved: paths the job writes otherwise (the results file), never an overlay.
        top_channels: with Score-CAM, only the K channels of largest activation variance are
            scored (see :func:`camcli.engine.scorecam_maps`); None: every channel.
        method: ``auto`` or a registered method (see :mod:`camcli.methods`).
        normalize: how the heatmaps are scaled for display (see :func:`camcli.cam.display_maps`).
        writers: threads that colour, blend, encode and write (OpenCV releases the GIL), so the
            next batch's forward pass overlaps them.
        sampling, temporal_smooth: a clip's frames (see :class:`camcli.video.Sampling`), and
            each frame's map averaged with the previous ``temporal_smooth - 1`` of its class.
        frame_images: a clip's overlays as JPEG files in a folder ``<stem>_cam/``, one per frame
            (``000123.jpg``: the frame's index in the clip), and ``index.csv`` (frame, time,
            file, label, prob) written last; instead of one video.
    """

    class_names: Sequence[str] = ()
    class_indices: Sequence[int] = ()
    alpha: float = ALPHA
    colormap: str = "jet"
    caption: bool = True
    save_raw: bool = False
    out_dir: Path | None = None
    overwrite: bool = False
    cam_sizes: Sequence[int] = ()
    box_threshold: float | None = None
    draw_box: bool = False
    skip_existing: bool = False
    maps: int = 0
    reserved: Sequence[Path] = ()
    method: str = methods.AUTO
    normalize: str = "shared"
    top_k: int = TOP_K
    batch_size: int = BATCH_SIZE
    workers: int = 0
    writers: int = 2
    rows_kept: frozenset[str] | None = None
    smooth: Sequence[str] = ()
    top_channels: int | None = None
    sampling: Sampling = Sampling()
    temporal_smooth: int = 1
    frame_images: bool = False
    plan: OverlayPlan | None = None
    stage: ClassVar[str] = "overlay"

    def validate(self) -> None:
        check_common(self)
        if self.colormap.lower() not in COLORMAPS:
            raise CamcliError(f"unknown `colormap` {self.colormap!r}; choose one of {', '.join(sorted(COLORMAPS))}")
        if self.normalize not in NORMALIZATIONS:
            raise CamcliError(f"`normalize` must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise CamcliError(f"`alpha` must be between 0 and 1, got {self.alpha}")
        if self.maps < 0 or (self.maps and (self.class_names or self.class_indices)):
            raise CamcliError("`maps` takes a positive K and excludes `class_names` / `class_indices`")
        self.sampling.validate()
        if not 1 <= self.temporal_smooth <= 100:
            raise CamcliError(f"`temporal_smooth` must be from 1 to 100 frames, got {self.temporal_smooth}")

    def bind(self, model: Model, images: Sequence[ImageInput], notify: Notify | None = None) -> tuple[OverlayJob, list[ImageInput]]:
        """Check every output path before any work, so a refused overwrite stops the job before
        anything is written; leave out finished inputs with ``skip_existing``."""
        method = model.resolve_method(self.method)
        threshold = box_threshold_for(model, self.box_threshold)
        chosen = [model.class_index(n) for n in self.class_names]
        for index in self.class_indices:
            if not 0 <= index < model.num_classes:
                raise CamcliError(f"class index {index} out of range 0..{model.num_classes - 1}")
            chosen.append(index)
        chosen = list(dict.fromkeys(chosen))
        maps_k = min(self.maps, model.num_classes)
        if methods.get(method).class_free and (chosen or maps_k > 1):
            raise CamcliError(f"`method` {method} makes one map per image whatever the class (it uses no class score): "
                              "leave out `class_names`, `class_indices` and `maps`, or choose a class-specific method")
        if any(is_video(i.path) for i in images) and (maps_k or self.save_raw or len(chosen) > 1):
            raise CamcliError("a clip's overlay is one video of one class a frame (the top-1, or one `class_names`): leave out "
                              "`maps` and `save_raw`, give one `class_names`, or give the clips a run of their own")
        guard = OutputGuard({real_path(i.path) for i in images}, self.overwrite, {real_path(p) for p in self.reserved})
        if maps_k:
            names: FixedNames | RankedNames = RankedNames(images, maps_k, self, guard)
        else:
            names = FixedNames(images, [model.class_names[c] for c in chosen] if chosen else ["top1"], self, guard)
        names.check_all()
        todo = list(range(len(images)))
        if self.skip_existing:
            kept = self.rows_kept
            todo = [k for k in todo if not (names.finished(k) and (kept is None or str(real_path(images[k].path)) in kept))]
            if notify and len(todo) < len(images):
                notify(f"{len(images) - len(todo)} inputs skipped: their outputs exist (`skip_existing`)")
        plan = OverlayPlan(method, threshold, chosen, maps_k, names.subset(todo, guard))
        return replace(self, plan=plan, cam_sizes=cam_sizes_for(model, self.cam_sizes)), [images[k] for k in todo]

    def slice(self, images: Sequence[ImageInput], start: int, stop: int) -> tuple[OverlayJob, list[ImageInput]]:
        """A worker's part: its images' output names, checked again there by a guard of its own."""
        stop = min(stop, len(images))
        plan = replace(self.plan, names=self.plan.names.subset(range(start, stop), None))
        return replace(self, plan=plan, rows_kept=None), list(images[start:stop])  # rows_kept served bind only

    count = PredictJob.count
    total = PredictJob.total

    def run(self, model: Model, images: Sequence[ImageInput]) -> Iterator[dict]:
        """Rows in input order; a clip's frames (its video written as they come), then its own row."""
        plan = self.plan
        if plan is None:
            raise ValueError("run a bound job: OverlayJob.bind(model, images) first")
        names = plan.names
        if names.guard is None:
            # a worker's slice: the driver checked every planned output against the inputs; a worker
            # checks each path again for folders, devices and files camcli did not write
            names.guard = OutputGuard(set(), self.overwrite, {real_path(p) for p in self.reserved})
        for clip, group in itertools.groupby(range(len(images)), key=lambda k: is_video(images[k].path)):
            if clip:
                for k in group:
                    yield from self._clip(model, images[k].path, k)
            else:
                yield from self._images(model, images, list(group))

    def _clip(self, model: Model, path: Path, k: int) -> Iterator[dict]:
        """A clip: each sampled frame's overlay into one video (:class:`camcli.video.ClipWriter`,
        renamed into place once complete) at the sampled rate; its frame rows, then its own row.

        Three stages overlap: a thread decodes the next chunk of frames (:meth:`ClipTally.chunks`),
        this one ranks and maps a batch, and one writer thread colours, blends and encodes the
        batch before, in order. A frame's row goes out once its frame is encoded."""
        plan, names = self.plan, self.plan.names
        (target,) = names.paths(k, [])
        folder = frame_folder(target)  # frame_images: the frames' folder, ``target`` its index written last
        tally, writer = ClipTally(model.num_classes), None
        recent: deque[tuple[int, np.ndarray]] = deque(maxlen=self.temporal_smooth - 1)
        pending: deque[tuple[dict, Future]] = deque()  # frame rows in order, each with its frame's encoding
        index: list[list] = []  # frame_images: index.csv's rows

        def encode(original: np.ndarray, shown: np.ndarray, c: int, probs: np.ndarray, frame) -> tuple[list[int] | None, list[str]]:
            nonlocal writer
            (image,), box = overlay_images(original, shown[None], [c], probs, model.class_names, self, plan.threshold,
                                           plan.method)
            if folder is not None:
                path = frame_path(folder, frame.index)
                write_image(path, image, names.guard.recorder(path))
                index.append([frame.index, f"{frame.time:.6f}", path.name, csv_cell(model.class_names[c]), f"{float(probs[c]):.6f}"])
                return box, [str(path)]
            if writer is None:  # the sampled stream's rate
                rate = min(tally.info.fps, self.sampling.fps) if self.sampling.fps else tally.info.fps / self.sampling.every
                writer = ClipWriter(target, rate, (image.shape[1], image.shape[0]), names.guard.recorder(target))
            writer.write(image)
            return box, []

        def cancel() -> None:
            for _, future in pending:
                future.cancel()  # the one running finishes before the pool closes

        def encoded(wait: bool, stopping: bool = False) -> Iterator[dict]:
            """The rows of the frames encoded (``wait``: all, waiting for them), in order; while
            ``stopping``, up to the first frame whose encoding never started."""
            while pending and (wait or pending[0][1].done()):
                row, future = pending[0]
                if stopping and (future.cancelled() or future.exception() is not None):
                    return
                box, outputs = future.result()
                pending.popleft()
                yield {**row, "outputs": outputs, "box": box}

        def mapped(chunk: list, pool: ThreadPoolExecutor) -> Iterator[dict]:
            for batch in model.batches([f.rgb for f in chunk], self.batch_size, 0, keep_images=True, cam_sizes=self.cam_sizes):
                yield from encoded(wait=True)  # the batch before was encoded while this one was ranked
                if batch.failures:
                    pos, why = batch.failures[0]
                    raise CamcliError(f"{path} frame {chunk[pos].index}: {why.split(': ', 1)[-1]}")
                if not batch.positions:
                    continue
                probs, ranked = softmax(batch.logits), model.rank(batch.logits, self.top_k)
                tally.add(batch.logits)
                classes = np.array([plan.chosen or [int(row.argmax())] for row in batch.logits], np.int64)
                maps = []
                for group in map_groups(len(batch.positions), plan.method, self.smooth):
                    maps += model.batch_maps(batch.take(group), classes[group], self.cam_sizes, plan.method, self.smooth,
                                             self.top_channels)
                for b, pos in enumerate(batch.positions):
                    c, frame = int(classes[b, 0]), chunk[pos]
                    shown = self._smoothed(recent, c, maps[b][0])
                    row = {"path": str(path), "kind": "frame", "frame": frame.index, "time": round(frame.time, 6),
                           "predictions": ranked[b], **int8_key(model, batch, b), "box_label": model.class_names[c],
                           "box_threshold": plan.threshold, "method": plan.method, "normalize": self.normalize}
                    pending.append((row, pool.submit(encode, batch.originals[b], shown, c, probs[b], frame)))
                yield from encoded(wait=False)

        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="camcli-encoder") as pool:
                try:
                    if folder is not None:
                        self._clear(folder, target)
                    for chunk in tally.chunks(path, self.sampling, self.batch_size, model):
                        yield from mapped(chunk, pool)
                    yield from encoded(wait=True)
                except CamcliError as exc:  # unreadable, a frame the model cannot score, or the encoder's failure
                    tally.error = str(exc)
                    cancel()
                    yield from encoded(wait=True, stopping=True)  # the frames encoded before it keep their rows
                except KeyboardInterrupt:
                    cancel()
                    with contextlib.suppress(Exception):
                        yield from encoded(wait=True, stopping=True)
                    raise
                finally:
                    cancel()
            outputs = [str(writer.finish())] if writer is not None else []  # a clip cut short keeps its frames
            if folder is not None and index:
                table = io.StringIO()
                csv.writer(table, lineterminator="\n").writerows([["frame", "time", "file", "label", "prob"], *index])
                atomic_write(target, table.getvalue(), names.guard.recorder(target))
                outputs = [str(target)]
        except BaseException:
            if writer is not None:
                writer.abort()  # never half a video at the final name
            raise
        yield tally.row(path, self.top_k, model.class_names, outputs=outputs, box=None)

    def _clear(self, folder: Path, target: Path) -> None:
        """Remove an earlier run's frame images and index from ``folder`` (its index first, so it
        never lists frames that are gone): camcli's files; with ``overwrite``, another file at a
        frame's name stays until this run replaces it."""
        for stale in [target, *sorted(p for p in folder.glob("*.jpg") if FRAME_NAME.fullmatch(p.name))]:
            try:
                remove_if_ours(stale, self.plan.names.guard)
            except CamcliError:
                if not self.overwrite:
                    raise

    def _smoothed(self, recent: deque, c: int, cam_map: np.ndarray) -> np.ndarray:
        """``temporal_smooth``: the frame's map averaged with the previous maps of the same class
        (each min-max normalized first, so a frame's scale does not dominate); else the map."""
        if self.temporal_smooth == 1:
            return cam_map
        norm = normalize_maps(np.asarray(cam_map, np.float32))  # every frame on one scale, the first one too
        same = [m for cls, m in recent if cls == c and m.shape == norm.shape]
        recent.append((c, norm))
        return np.mean([*same, norm], axis=0)

    def _images(self, model: Model, images: Sequence[ImageInput], at: list[int]) -> Iterator[dict]:
        """The overlays of ``images[k]`` for ``k`` in ``at`` (no clip among them)."""
        plan = self.plan
        names = plan.names
        guard = names.guard
        pending: deque[tuple[dict, Future | None]] = deque()  # rows in input order, each with its write (None: a failure)
        batch_rows: dict[int, tuple[dict, Future | None]] = {}  # this batch's rows not yet in ``pending``, by position

        def queue(upto: int | None = None) -> None:
            """Move this batch's rows (up to position ``upto``) to ``pending``, in input order."""
            for pos in sorted(batch_rows):
                if upto is None or pos <= upto:
                    pending.append(batch_rows.pop(pos))

        def finished(wait: bool, stop_at_cancelled: bool = False) -> Iterator[dict]:
            """The rows of the oldest images whose files are written (``wait``: all of them, waiting
            for their writes), in input order. A row leaves ``pending`` only once its file is written,
            so a Ctrl-C while waiting still finds it."""
            while pending and (wait or pending[0][1] is None or pending[0][1].done()):
                row, future = pending[0]
                if future is not None:
                    if stop_at_cancelled and future.cancelled():
                        return  # never started, and neither were the ones after it (the pool takes them in order)
                    try:
                        outputs, box = future.result()
                    except Exception:
                        if not stop_at_cancelled:
                            raise
                        pending.popleft()  # a write that failed while stopping: no row, the interruption goes on
                        continue
                    row = {**row, "outputs": [str(p) for p in outputs], "box": box}
                pending.popleft()
                yield row

        with ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="camcli-writer") as pool:
            try:
                for batch in model.batches([images[k].path for k in at], self.batch_size, self.workers, keep_images=True,
                                           cam_sizes=self.cam_sizes):
                    # the previous batch's files were written while this batch was decoded and ranked: their rows
                    # go out before this batch's maps, so a row is never held back behind a long computation
                    yield from finished(wait=True)
                    batch_rows.update({
                        pos: ({"path": str(images[at[pos]].path), "predictions": [], "outputs": [], "box": None, "error": why},
                              None) for pos, why in batch.failures})
                    if batch.positions:
                        if plan.maps_k:
                            classes = np.argsort(-batch.logits, axis=1, kind="stable")[:, : plan.maps_k]
                        else:
                            classes = np.array([plan.chosen or [int(row.argmax())] for row in batch.logits], np.int64)
                        probs, ranked = softmax(batch.logits), model.rank(batch.logits, self.top_k)
                    for group in map_groups(len(batch.positions), plan.method, self.smooth) if batch.positions else ():
                        maps = model.batch_maps(batch.take(group), classes[group], self.cam_sizes, plan.method, self.smooth,
                                                self.top_channels)
                        for b, cam_map in zip(group, maps):
                            pos, mapped = batch.positions[b], classes[b].tolist()
                            paths = names.paths(at[pos], [model.class_names[c] for c in mapped])
                            future = pool.submit(write_overlays, batch.originals[b], cam_map, mapped, probs[b], model.class_names,
                                                 paths, self, plan.threshold, guard.recorder, plan.method)
                            batch_rows[pos] = ({"path": str(images[at[pos]].path), "predictions": ranked[b],
                                                **int8_key(model, batch, b),
                                                "box_label": model.class_names[mapped[0]], "box_threshold": plan.threshold,
                                                "method": plan.method, "normalize": self.normalize,
                                                **({"cam_sizes": list(self.cam_sizes)} if self.cam_sizes else {}),
                                                **({"smooth": list(self.smooth)} if self.smooth else {})}, future)
                        if len(group) < len(batch.positions):  # one image at a time: its row before the next one's maps
                            queue(upto=batch.positions[group[-1]])
                            yield from finished(wait=True)
                    queue()
                    yield from finished(wait=False)
                yield from finished(wait=True)
            except KeyboardInterrupt:
                # Ctrl-C: the writes not started are cancelled; the rows of the files written (or being written) go out first
                queue()
                for _, future in pending:
                    if future is not None:
                        future.cancel()
                yield from finished(wait=True, stop_at_cancelled=True)
                raise
            finally:
                for _, future in [*pending, *batch_rows.values()]:
                    if future is not None:
                        future.cancel()  # the ones running finish (and record) before the pool closes


# ---------------------------------------------------------------- evaluate

@dataclass
class EvaluateJob:
    """Classification and, with boxes, localization metrics on a labeled ImageFolder, written to a
    run folder: ``metrics.json`` (with the whole box-accuracy curve), ``box_accuracy.png`` with
    boxes, ``calibrated.safetensors`` with ``calibrate``.

    Localization uses the ``method``'s map of each image's ground-truth class (GT-known),
    normalized and upsampled to the original image size.

    Attributes:
        data: ``DATA/<class>/*``, class folders named as the model's classes.
        boxes: ground-truth boxes by relative path (see :func:`camcli.evaluate.load_boxes`), or None.
        checkpoint: the file the model came from (None for a classifier loaded by arch).
        box_threshold: None: the checkpoint's calibrated one, else 0.2.
        calibrate: also write a copy of the checkpoint with the best box threshold.
        out: the run folder (default the next ``runs/evaluate/expN``); it may hold an earlier
            evaluation's files, which are replaced; any other file at those names stops the job
            before any work.
        exclude: glob patterns of images to leave out.
        faithfulness: also score the map of each image's predicted class by what the model does
            when the input is perturbed by it (see :mod:`camcli.faithfulness`); DATA may then be a
            plain folder of images (no labels: no accuracy).
        top_channels: with Score-CAM, only the K channels of largest activation variance are
            scored (see :func:`camcli.engine.scorecam_maps`); None: every channel.
        method: ``auto``, a registered method, or several (compared side by side: the metrics of
            each in ``by_method``, the first one's also at the top level); :meth:`bind` makes it
            the tuple of resolved names.
        labeled: set by :meth:`bind`: whether DATA's images have labels.
        requirements: gates on the metrics (:mod:`camcli.gates`): :meth:`bind` refuses one on a
            metric this evaluation does not compute; :meth:`finish` adds their verdicts.
        sanity: also run :mod:`camcli.sanity`'s checks (model and data randomization) on
            ``sanity_images`` images spread over DATA, for each method (``sanity`` in its
            ``by_method`` entry, ``sanity.png``); each method that is not a baseline must pass
            (a requirement of its own).
    """

    data: Path
    boxes: dict[str, list[list[float]]] | None = None
    checkpoint: Path | None = None
    box_threshold: float | None = None
    cam_sizes: Sequence[int] = ()
    calibrate: bool = False
    out: Path | None = None
    exclude: Sequence[str] = ()
    method: str | Sequence[str] = methods.AUTO
    batch_size: int = BATCH_SIZE
    workers: int = 0
    faithfulness: bool = False
    labeled: bool = True
    smooth: Sequence[str] = ()
    top_channels: int | None = None
    calibration_sizes: tuple[int, ...] | None = None
    requirements: tuple[gates.Requirement, ...] = ()
    sanity: bool = False
    sanity_images: int = SANITY_IMAGES
    sanity_paths: tuple[Path, ...] = ()
    data_randomization: bool = False
    run_dir: Path | None = field(default=None, repr=False)
    guard: OutputGuard | None = field(default=None, repr=False)
    stage: ClassVar[str] = "evaluate"

    def validate(self) -> None:
        check_common(self)
        if self.calibrate and self.boxes is None:
            raise CamcliError("`calibrate` needs `boxes`: the threshold is chosen by box accuracy")
        if self.faithfulness:
            require_scipy()
        if self.calibrate and self.smooth:
            raise CamcliError("`calibrate` measures the checkpoint's own CAM maps, which overlay draws without smoothing: "
                              "leave out `aug_smooth` and `eigen_smooth`")
        if self.calibrate and len(self.cam_sizes) > 1:
            raise CamcliError("`calibrate` chooses one map size: give one `cam_sizes` size, or none to try "
                              f"{', '.join(map(str, CALIBRATION_CAM_SIZES))}")
        if self.calibrate and self.checkpoint is None:
            raise CamcliError("`calibrate` writes a copy of a checkpoint with the best threshold: it needs a checkpoint")
        if self.sanity and not 1 <= self.sanity_images <= 10_000:
            raise CamcliError(f"`sanity_images` must be from 1 to 10000, got {self.sanity_images}")

    def bind(self, model: Model, work=None, notify: Notify | None = None) -> tuple[EvaluateJob, list[tuple[Path, int]]]:
        """The labeled images, and every output path checked before any work."""
        method = tuple(dict.fromkeys(model.resolve_method(m) for m in method_names(self.method)))
        if self.calibrate and (method != ("cam",) or getattr(model, "layer", None) is not None):
            raise CamcliError("`calibrate` measures the threshold of the checkpoint's own CAM maps, which overlay uses by default: "
                              "leave out `layer` and use `method` cam alone (or leave it out)")
        if self.sanity and model.precision == "int8":
            raise CamcliError("`sanity` runs the model again with randomized weights, which INT8 would quantize again at every "
                              "step: leave out precision int8")
        data = Path(self.data)
        labeled = True
        try:
            samples = labeled_images(data, model.class_names, self.exclude)
        except CamcliError as exc:
            if not (self.faithfulness or self.sanity) or self.boxes or not data.is_dir() or "holds the splits" in str(exc):
                raise
            samples, labeled = [(i.path, -1) for i in find_images([data], exclude=self.exclude)], False
            if notify:
                notify(f"{data}: no class folders named as the model's classes ({exc}): no accuracy"
                       + ("" if not self.sanity else ", and --sanity without data randomization"))
        if self.boxes and not any(path.relative_to(data).as_posix() in self.boxes for path, _ in samples):
            raise CamcliError("none of the images to evaluate has a box: the boxes name images that `exclude` leaves out or that "
                              "lie outside DATA's class folders")
        run_dir = Path(self.out) if self.out is not None else next_run_dir(Path("runs/evaluate"))
        guard = OutputGuard({real_path(self.checkpoint)} if self.checkpoint is not None else set(),
                            remedy="evaluate replaces only its own earlier results: choose another out")
        for path in self._outputs(run_dir):
            guard.check(path)
        threshold = box_threshold_for(model, self.box_threshold)
        # --calibrate tries each map size of CALIBRATION_CAM_SIZES (and the ranking pass's own) unless one is given
        trial = None if not self.calibrate or self.cam_sizes else tuple(sorted({model.preprocess.img_size, *CALIBRATION_CAM_SIZES}))
        bound = replace(self, data=data, method=method, box_threshold=threshold, run_dir=run_dir, guard=guard,
                        labeled=labeled, cam_sizes=cam_sizes_for(model, self.cam_sizes), calibration_sizes=trial)
        if self.sanity:
            chosen = sanity.chosen_images(samples, self.sanity_images)
            bound = replace(bound, sanity_paths=tuple(samples[i][0] for i in chosen),  # shuffling one class changes nothing
                            data_randomization=labeled and len({y for _, y in samples}) > 1 and sanity.refit_settings(model) is not None)
        gates.check_known(self.requirements, bound.metric_names(model), "this evaluation",  # before any image
                          "localization metrics need `boxes`, faithfulness ones `faithfulness`, sanity ones `sanity`, accuracy "
                          "labeled class folders")
        return bound, samples

    def _outputs(self, run_dir: Path) -> list[Path]:
        return [run_dir / "metrics.json"] + ([run_dir / "box_accuracy.png"] if self.boxes else []) + (
            [run_dir / "faithfulness_curves.png"] if self.faithfulness else []) + (
            [run_dir / "sanity.png"] if self.sanity else []) + ([run_dir / f"calibrated{SUFFIX}"] if self.calibrate else [])

    def _remove_stale(self) -> None:
        """An earlier evaluation's files that this one does not write (its plot of faithfulness, say)
        are removed when camcli wrote them, so the folder holds one evaluation; a user's file stays."""
        written = set(self._outputs(self.run_dir))
        for name in ("box_accuracy.png", "faithfulness_curves.png", "sanity.png", f"calibrated{SUFFIX}"):
            if self.run_dir / name not in written:
                with contextlib.suppress(CamcliError):
                    remove_if_ours(self.run_dir / name, self.guard)

    def slice(self, samples: Sequence[tuple[Path, int]], start: int, stop: int) -> tuple[EvaluateJob, list]:
        """A worker's part: its samples and their boxes only."""
        chunk = list(samples[start:stop])
        boxes = None
        if self.boxes:
            rels = [p.relative_to(self.data).as_posix() for p, _ in chunk]
            boxes = {r: self.boxes[r] for r in rels if r in self.boxes}
        return replace(self, boxes=boxes, guard=None), chunk

    def count(self, part: dict) -> int:
        return len(part["true"])

    def run(self, model: Model, samples: Sequence[tuple[Path, int]]) -> Iterator[dict]:
        """Per batch, or per image when each costs many forward passes (faithfulness, Score-CAM,
        aug-smooth): ``{"true": classes, "pred": predicted classes, "by_method": {method: {"tally":
        LocalizationTally, "faithfulness": FaithfulnessTally, "seconds": map seconds}}}``."""
        boxes = self.boxes
        maps_at_sizes = bool(boxes) or (self.faithfulness and bool(self.cam_sizes))
        for batch in model.batches([p for p, _ in samples], self.batch_size, self.workers, keep_images=maps_at_sizes,
                                   cam_sizes=self.cam_sizes if maps_at_sizes else ()):
            if batch.failures:
                raise CamcliError(f"{batch.failures[0][1]}; fix or remove that file")
            names = method_names(self.method)
            # calibration's trials run two more forward passes per image, at 320 and 448
            slow = self.faithfulness or bool(self.calibration_sizes) or any(methods.get(m).many_passes for m in names)
            groups = map_groups(len(batch.positions), names[0], self.smooth, one_at_a_time=slow) if batch.positions else [[]]
            for group in groups:  # one image at a time when each costs many passes: a part (and progress) per image
                yield self._part(model, batch.take(group), samples)

    def _part(self, model: Model, batch: Batch, samples: Sequence[tuple[Path, int]]) -> dict:
        """The tallies of one batch (or one image of it) for every method."""
        boxes = self.boxes
        labels = [samples[i][1] for i in batch.positions]
        predicted = batch.logits.argmax(axis=1).tolist()
        probs = softmax(batch.logits)
        by_method = {}
        for method in method_names(self.method):
            tally, faith, seconds = LocalizationTally(self.box_threshold), FaithfulnessTally(), 0.0
            if not batch.positions or not (self.faithfulness or boxes):
                by_method[method] = {"tally": tally, "faithfulness": faith, "seconds": seconds}
                continue
            # one call maps both the predicted class (faithfulness) and the true one (boxes): Score-CAM's
            # masked inputs, aug-smooth's passes and the cam sizes' forward passes serve both
            columns = ([predicted] if self.faithfulness else []) + ([labels] if boxes else [])
            clock = time.perf_counter()
            maps = model.batch_maps(batch, np.array(columns, np.int64).T, self.cam_sizes, method, self.smooth, self.top_channels)
            seconds += time.perf_counter() - clock
            if self.faithfulness:
                exact = batch.fp32 if batch.fp32 is not None else np.zeros(len(maps), bool)  # INT8's near ties: fp32
                for b, cam_map in enumerate(maps):
                    c = predicted[b]
                    faith.add(batch.inputs[b], cam_map[0], float(probs[b, c]),
                              lambda xs, c=c, e=exact[b]: softmax(model.forward(list(xs), False, e)[0])[:, c])
            if boxes:
                for b, pos in enumerate(batch.positions):
                    rel = samples[pos][0].relative_to(self.data).as_posix()
                    if rel not in boxes:
                        continue
                    check_inside(boxes[rel], batch.originals[b].shape[:2], rel)
                    tally.add(heatmap(maps[b][-1], batch.originals[b].shape[:2]), boxes[rel], predicted[b] == labels[b])
            by_method[method] = {"tally": tally, "faithfulness": faith, "seconds": seconds}
        part = {"true": labels, "pred": predicted, "by_method": by_method, "fp32": int(batch.fp32.sum()) if batch.fp32 is not None else 0,
                **({"probe": model.int8_probe.describe()} if model.precision == "int8" and model.int8_probe.failed else {})}
        if self.data_randomization and batch.positions:  # the features the head is fitted again on, with shuffled labels
            part["pooled"] = np.ascontiguousarray(global_average_pool(batch.features, batch.sizes), dtype=np.float32)
        if self.calibration_sizes and boxes and batch.positions:
            part["calibration"] = {size: self._tally(model, batch, samples, labels, predicted, size) for size in self.calibration_sizes}
        return part

    def _tally(self, model: Model, batch: Batch, samples, labels: list[int], predicted: list[int], size: int) -> LocalizationTally:
        """The box tally of the true classes' CAM maps at map size ``size`` (--calibrate's trials)."""
        tally = LocalizationTally(self.box_threshold)
        sizes = () if size == model.preprocess.img_size else (size,)
        maps = model.batch_maps(batch, np.array(labels, np.int64)[:, None], sizes, "cam")
        for b, pos in enumerate(batch.positions):
            rel = samples[pos][0].relative_to(self.data).as_posix()
            if rel in self.boxes:
                tally.add(heatmap(maps[b][0], batch.originals[b].shape[:2]), self.boxes[rel], predicted[b] == labels[b])
        return tally

    def finish(self, model: Model, parts: Iterable[dict], progress: Progress | None = None) -> dict:
        """Merge the parts into the metrics, run the ``sanity`` checks, judge the ``requirements``
        and write the run folder; returns the metrics, with ``requirements`` (their verdicts, also
        in ``metrics.json``) and ``seconds_per_image`` (what each method's maps and each
        faithfulness metric cost; not written to ``metrics.json``, which stays the same from run to
        run)."""
        pooled: list[tuple[np.ndarray, list[int]]] = []
        result, by_size, seconds, faiths, n = self._merge(model, parts, pooled)
        names = method_names(self.method)
        by_method = result.get("by_method", {})
        if self.sanity:
            self._sanity(model, result, pooled, progress)
        requirements = self.requirements + (self.sanity_requirements() if self.sanity else ())
        if requirements:
            result["requirements"] = gates.verdicts(requirements, result)
        metrics_file, *others = self._outputs(self.run_dir)
        self._remove_stale()
        atomic_write(metrics_file, json.dumps(json_safe(result), indent=2) + "\n", self.guard.recorder(metrics_file))
        if self.boxes:
            curve = result["box_acc_curve"]
            plot = plot_curves(
                curve["thresholds"],
                {"IoU 0.5, largest box": curve["iou_0.5_largest_box"],
                 **{f"IoU {iou}, all boxes": curve[f"iou_{iou}_all_boxes"] for iou in ("0.3", "0.5", "0.7")}},
                f"Box accuracy vs threshold: {names[0]} maps ({result['num_images_with_boxes']} images)",
                "threshold (fraction of the normalized map)", "box accuracy",
                mark=(result["best_threshold"], result["max_box_acc"]),
            )
            target = others.pop(0)
            write_image(target, plot, self.guard.recorder(target))
        if self.faithfulness:
            target = others.pop(0)
            write_image(target, faithfulness_plot({m: by_method[m]["faithfulness"] for m in names}), self.guard.recorder(target))
        if self.sanity:
            target = others.pop(0)
            write_image(target, sanity_plot({m: by_method[m]["sanity"] for m in names}), self.guard.recorder(target))
        if self.calibrate:
            target = others[-1]
            atomic_write(target, checkpoint_bytes(calibrated(load_checkpoint(self.checkpoint), by_size, self.data)),
                         self.guard.recorder(target))
        result["seconds_per_image"] = {m: {"maps": seconds[m] / n, **({k: v / n for k, v in faiths[m].seconds.items()}
                                                                          if self.faithfulness else {})} for m in names}
        return result

    def sanity_requirements(self) -> tuple[gates.Requirement, ...]:
        """Each method's own sanity verdict, as a requirement (baselines are there to fail: none)."""
        return tuple(gates.Requirement(f"by_method.{m}.sanity.end_similarity", "<", SANITY_MAX_SPEARMAN)
                     for m in method_names(self.method) if not methods.get(m).baseline)

    def _sanity(self, model: Model, result: dict, pooled: list[tuple[np.ndarray, list[int]]], progress: Progress | None) -> None:
        """Run :mod:`camcli.sanity`'s checks and put each method's into ``result``."""
        names = method_names(self.method)
        head = None
        if self.data_randomization and pooled:
            features = np.concatenate([x for x, _ in pooled])
            labels = np.array([y for _, ys in pooled for y in ys], np.int64)
            head = sanity.shuffled_head(features, labels, model.num_classes, sanity.refit_settings(model))
        check = sanity.SanityCheck(list(self.sanity_paths), names, self.batch_size, self.workers, self.smooth, self.top_channels,
                                   self.cam_sizes)
        found = check.run(model, head, progress)
        for m in names:
            result["by_method"][m]["sanity"] = found[m]
        result["sanity"] = found[names[0]]

    def metric_names(self, model: Model) -> list[str]:
        """The dotted names of the numbers this bound job's ``metrics.json`` will hold (see
        :mod:`camcli.gates`): those of the metrics of no image, which have every key."""
        return sorted(gates.numbers(self._merge(model, [])[0]))

    def _merge(self, model: Model, parts: Iterable[dict], pooled: list | None = None) -> tuple[dict, dict, dict, dict, int]:
        """(the metrics, the calibration trials' results by map size, map seconds and faithfulness
        tallies by method, the image count, at least 1) of the parts; ``pooled`` receives each
        part's pooled features and labels (data randomization's)."""
        names = method_names(self.method)
        true, pred, fp32, probe_failure = [], [], 0, None
        tallies = {m: LocalizationTally(self.box_threshold) for m in names}
        faiths = {m: FaithfulnessTally() for m in names}
        seconds = dict.fromkeys(names, 0.0)
        trials = {s: LocalizationTally(self.box_threshold) for s in self.calibration_sizes or ()}
        for part in parts:
            for size, got in part.get("calibration", {}).items():
                trials[size].merge(got)
            true += part["true"]
            pred += part["pred"]
            fp32 += part.get("fp32", 0)
            probe_failure = probe_failure or part.get("probe")
            if pooled is not None and "pooled" in part:
                pooled.append((part["pooled"], part["true"]))
            for m, got in part["by_method"].items():
                tallies[m].merge(got["tally"])
                faiths[m].merge(got["faithfulness"])
                seconds[m] += got["seconds"]
        result = classification_metrics(true, pred, model.class_names) if self.labeled else {"num_images": len(pred)}
        by_method = {}
        for m in names:
            scores = {"method": m, **(tallies[m].result() if self.boxes else {})}
            if self.faithfulness:
                scores["faithfulness"] = {**faiths[m].result(), "method": m}
            if self.sanity:  # its numbers' names, for `require`; finish puts the checks' results here
                scores["sanity"] = sanity.skeleton(self.data_randomization)
            by_method[m] = scores
        if self.boxes or self.faithfulness or self.sanity:
            result.update(by_method[names[0]])
            result["by_method"] = by_method
        result["settings"] = {"checkpoint": str(self.checkpoint) if self.checkpoint is not None else None, "arch": model.arch,
                              "layer": getattr(model, "layer", None), "data": str(self.data), "img_size": model.preprocess.img_size,
                              **int8_key(model), **({"images_in_fp32": fp32, "int8_probe": {"passed": probe_failure is None, **(
                                  {"failure": probe_failure} if probe_failure else {})}} if model.precision == "int8" else {}),
                              "resize": model.preprocess.resize, "cam_sizes": list(self.cam_sizes), "methods": list(names),
                              **({"smooth": list(self.smooth)} if self.smooth else {})}
        by_size = {}
        if self.calibrate:
            by_size = ({s: tally.result() for s, tally in trials.items()} if trials
                       else {self.cam_sizes[0] if self.cam_sizes else model.preprocess.img_size: by_method[names[0]]})
            size, chosen = choose_calibration(by_size)
            result["calibration"] = {"cam_size": size, "threshold": chosen["best_threshold"], "max_box_acc": chosen["max_box_acc"],
                                     "max_box_acc_by_cam_size": {str(s): r["max_box_acc"] for s, r in sorted(by_size.items())}}
        return result, by_size, seconds, faiths, max(len(pred), 1)


def sanity_plot(checks: dict[str, dict]) -> np.ndarray:
    """Each method's similarity to its trained maps against randomized depth, one chart per
    measure, side by side: RGB uint8."""
    first = next(iter(checks.values()))
    steps = len(first["steps"])
    xs = [i / (steps - 1) for i in range(steps)]
    charts = []
    limit = first["max_spearman"]
    for measure, title in (("spearman", f"|Spearman| (passes below {limit:g})"), ("ssim", "SSIM"), ("hog", "HOG (Pearson)")):
        sign = abs if measure == "spearman" else float  # the verdict's magnitude; SSIM and HOG below 0 are drawn at 0
        charts.append(plot_curves(
            xs, {f"{m} {sign(c['final'][measure]):.2f}": [min(max(sign(v), 0.0), 1.0) for v in c["curve"][measure]]
                 for m, c in checks.items()},
            f"{title}, {first['num_images']} images", f"randomized: the head, then {steps - 2} more steps top down",
            "similarity to the trained model's map", size=(600, 440),
        ))
    return np.hstack(charts)


def faithfulness_plot(scores: dict[str, dict]) -> np.ndarray:
    """The mean deletion and insertion curves of each method, side by side: RGB uint8."""
    charts = []
    for curve, better in (("deletion", "lower"), ("insertion", "higher")):
        first = next(iter(scores.values()))
        charts.append(plot_curves(
            first["curves"]["fractions"],
            {f"{m} {f[curve + '_auc']:.3f}": f["curves"][curve] for m, f in scores.items()},
            f"{curve.capitalize()} ({first['num_images']} images; area: {better} is more faithful)",
            "fraction of the input's positions " + ("deleted" if curve == "deletion" else "inserted"),
            "probability of the predicted class", size=(640, 440),
        ))
    return np.hstack(charts)


# ---------------------------------------------------------------- train's feature pass

def pooled_features(
    runner: Callable[[np.ndarray], np.ndarray], paths: Sequence[Path], preprocess: Preprocess,
    batch_size: int, workers: int, augment: bool = False, seed: int = 0,
) -> Iterator[np.ndarray]:
    """Global-average-pooled backbone features, one (B, C) float32 array per batch, in the order of
    ``paths`` (``augment``: random resized crop + horizontal flip first, drawn from ``seed``)."""
    for tensors, _, _, failures in image_batches(paths, preprocess, batch_size, workers, augment=augment, seed=seed):
        if failures:
            raise CamcliError(f"{failures[0][1]}; fix or remove that file")
        feats, sizes = extract_features(runner, tensors)
        yield np.ascontiguousarray(global_average_pool(feats, sizes), dtype=np.float32)


@dataclass
class FeatureJob:
    """``camcli train``'s feature pass: pooled backbone features of images, one (B, C) float32
    array per batch, in order. The model is the backbone alone (:func:`camcli.factory.backbone_model`)."""

    preprocess: Preprocess
    batch_size: int = BATCH_SIZE
    workers: int = 0
    augment: bool = False
    seed: int = 0
    stage: str = "features"
    method: ClassVar[str] = methods.AUTO  # (no maps: for check_common)

    def validate(self) -> None:
        check_common(self)

    def bind(self, model: Model, paths: Sequence[Path], notify: Notify | None = None) -> tuple[FeatureJob, list[Path]]:
        return self, list(paths)

    slice = _one_per_batch

    def count(self, part: np.ndarray) -> int:
        return len(part)

    def run(self, model: Model, paths: Sequence[Path]) -> Iterator[np.ndarray]:
        model.prepare()
        yield from pooled_features(model.runner, paths, self.preprocess, self.batch_size, self.workers, self.augment, self.seed)


# ---------------------------------------------------------------- the local engine

class Interrupts:
    """Where a Ctrl-C lands while a job's results are consumed.

    As the SIGINT handler (the command line installs it, see ``camcli.cli.rows.held_interrupts``),
    it raises KeyboardInterrupt at once while the job's own code runs (inside :meth:`guarded`).
    Anywhere else (a row being written out, progress drawn) it is held, then thrown into the job
    at its next step. So the job always sees it, and gives the rows of the work it finished (an
    overlay's files written) before it stops: a Ctrl-C between two rows loses neither. A second
    Ctrl-C while one is held raises at once (a consumer stuck on a blocked pipe still stops).
    """

    def __init__(self) -> None:
        self.live = False  # the job's code is running
        self.pending = False  # a Ctrl-C is held for the job's next step
        self.seen = False  # a Ctrl-C came (the Ray engine: a failure that follows it is the interruption)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The engine's own work before the job's first step (reading the work, clip headers for
        the total): Ctrl-C raises at once there, as in the job's code."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
        live, self.live = self.live, True
        try:
            yield
        finally:
            self.live = live

    def guarded(self, results: Iterator) -> Iterator:
        while True:
            self.live = True
            try:
                if self.pending:
                    self.pending = False
                    item = results.throw(KeyboardInterrupt())
                else:
                    item = next(results)
            except StopIteration:
                return
            finally:
                self.live = False
            yield item

    def handler(self, signum, frame) -> None:
        self.seen = True
        if self.live or self.pending:
            self.pending = False
            raise KeyboardInterrupt
        self.pending = True


class LocalEngine:
    """Runs a bound job here, in this process, on the model given."""

    name = "local"

    def __init__(self) -> None:
        self.interrupts = Interrupts()

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, job, model: Model, work: Iterable, progress: Progress | None = None) -> Iterator:
        """The job's results on all its work, in order; ``progress(stage, images done, total or None)``."""
        with self.interrupts.running():
            total = (job.total(work) if hasattr(job, "total") else len(work)) if isinstance(work, Sized) else None
        return counted(job, self.interrupts.guarded(job.run(model, work)), total, progress)


def counted(job, results: Iterable, total: int | None, progress: Progress | None) -> Iterator:
    """The results, with progress counted by ``job.count`` (the same for every job and engine)."""
    done = 0
    if progress:
        progress(job.stage, 0, total)  # the work has started: a bar appears now, not with the first result
    for part in results:
        done += job.count(part)
        if progress:
            progress(job.stage, done, total)
        yield part


def run_here(job, model: Model, work: Iterable, progress: Progress | None = None, notify: Notify | None = None) -> Iterator:
    """Validate, bind and run a job in this process: the Python API's one call
    (``list(run_here(PredictJob(top_k=3), model, find_images(["photos"])))``)."""
    job.validate()
    job, work = job.bind(model, work, notify)
    return LocalEngine().run(job, model, work, progress)

