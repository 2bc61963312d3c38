"""The predict and overlay jobs: results as a stream of rows, outputs written safely.

A row is ``{"path": str, "predictions": [{"label", "index", "prob"}, ...]}``; overlay
rows add ``"outputs": [paths written]``. Readers must ignore keys they do not know.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from camcli.cam import NORMALIZATIONS, display_maps, heatmap, largest_component_box, softmax, upsample_to
from camcli.data import ImageInput
from camcli.engine import Model
from camcli.errors import CamcliError
from camcli.evaluate import PAPER_THRESHOLD
from camcli.files import OutputGuard, atomic_write, fit_name, real_path
from camcli.render import blend, colormap_id, draw_box, draw_caption, write_image

Progress = Callable[[str, int, int | None], None]


def box_threshold_for(model: Model, threshold: float | None) -> float:
    """The box threshold: the one given, else the checkpoint's calibrated one, else 0.2."""
    if threshold is None:  # a checkpoint's cam_threshold was checked when it was loaded
        return float((model.checkpoint or {}).get("cam_threshold", PAPER_THRESHOLD))
    if not 0.0 <= threshold < 1.0:
        raise CamcliError(f"box_threshold must be in [0, 1), got {threshold}")
    return threshold


def predict_rows(
    model: Model, images: Iterable[ImageInput], top_k: int = 5, batch_size: int = 32, workers: int = 0,
    progress: Progress | None = None, chunk_size: int = 1024, boxes: bool = False,
    box_threshold: float | None = None, cam_sizes: Sequence[int] = (), method: str = "auto",
) -> Iterator[dict]:
    """Rank classes for every image; rows come out in input order, batch by batch.

    ``images`` may be a lazy iterator (a folder walk, stdin): it is consumed ``chunk_size``
    images at a time, so the first rows come before the walk is finished. With ``boxes``,
    rows add the top-1 class's box (see :func:`overlay_rows`).
    """
    model.rank(np.zeros((1, model.num_classes), np.float32), top_k)  # validates top_k before any work
    method = model.resolve_method(method)
    threshold = box_threshold_for(model, box_threshold) if boxes else None
    total = len(images) if isinstance(images, Sized) else None
    done = 0
    iterator = iter(images)
    while chunk := list(islice(iterator, chunk_size)):
        for batch in model.batches([i.path for i in chunk], batch_size, workers, keep_images=boxes):
            rows = {pos: {"path": str(chunk[pos].path), "predictions": preds}
                    for pos, preds in zip(batch.positions, model.rank(batch.logits, top_k))}
            if boxes and batch.positions:
                top1 = batch.logits.argmax(axis=1)[:, None]
                for b, (pos, cam_map) in enumerate(zip(batch.positions, model.batch_maps(batch, top1, cam_sizes, method))):
                    heat = heatmap(cam_map[0], batch.originals[b].shape[:2])
                    rows[pos].update(box=largest_component_box(heat, threshold), box_label=model.class_names[int(top1[b, 0])],
                                     box_threshold=threshold, method=method)
            rows.update({pos: {"path": str(chunk[pos].path), "predictions": [], "error": why} for pos, why in batch.failures})
            yield from (rows[pos] for pos in sorted(rows))
            done += len(rows)
            if progress:
                progress("predict", done, total)


@dataclass
class OverlayOptions:
    """What overlay draws and where it writes.

    Attributes:
        classes, class_indices: the classes to map (names, indices); none means top-1.
        alpha: heatmap weight in the blend.
        colormap: OpenCV colormap name.
        caption: draw "label prob" in the corner.
        save_raw: also write the float32 (h, w) map as ``.npy`` (raw, or fused for several cam sizes).
        out_dir: mirror outputs under this folder instead of writing next to inputs.
        overwrite: replace files at output paths that camcli did not write.
        box_threshold: the box's threshold (fraction of the normalized map); None uses the
            checkpoint's calibrated ``cam_threshold``, else the CAM paper's 0.2.
        draw_box: draw the box on the overlay.
        skip_existing: leave out (no row, no work) the inputs whose outputs camcli already wrote.
        maps: write the maps of each image's top-``maps`` classes as ``<stem>_cam_<rank>_<label><ext>``.
        cam_sizes: compute the maps at these input sizes (fused when several) instead of
            from the ranking pass; see :meth:`Model.batch_maps`.
        reserved: paths the job writes otherwise (the results file), never an overlay.
        method: ``auto``, ``cam``, ``gradcam``, ``gradcam++`` or ``layercam`` (see :meth:`Model.batch_maps`).
        normalize: how the heatmaps are scaled for display (see :func:`camcli.cam.display_maps`).
    """

    classes: Sequence[str] = ()
    class_indices: Sequence[int] = ()
    alpha: float = 0.5
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
    method: str = "auto"
    normalize: str = "shared"


def safe_label(label: str) -> str:
    """A class label made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "class"


def output_bases(images: Sequence[ImageInput], options: OverlayOptions) -> list[tuple[Path, str, str]]:
    """(output folder, output stem, extension) per image.

    Inputs whose stems collide in one output folder (``a.jpg``, ``a.png``) keep their
    extension in the stem (``a_jpg``) so no output overwrites another.
    """
    seen: dict[Path, Path] = {}
    for image in images:
        first = seen.setdefault(real_path(image.path), image.path)
        if first is not image.path:
            raise CamcliError(f"{image.path} is the same file as {first}: give each image once")
    folders = [(options.out_dir / i.relative.parent) if options.out_dir else i.path.parent for i in images]
    stems = Counter((real_path(f), i.path.stem) for f, i in zip(folders, images))
    bases = []
    for folder, image in zip(folders, images):
        stem = image.path.stem
        if stems[(real_path(folder), stem)] > 1:
            stem = f"{stem}_{image.path.suffix.lstrip('.')}"
        bases.append((folder, stem, image.path.suffix))
    return bases


def output_paths(base: tuple[Path, str, str], tags: Sequence[str], save_raw: bool) -> list[Path]:
    """The overlays ``<stem><tag><ext>``, then with ``save_raw`` the maps ``<stem><tag>.npy``
    (a name longer than the file system allows is shortened, see :func:`camcli.files.fit_name`)."""
    folder, stem, ext = base
    names = [f"{stem}{tag}{ext}" for tag in tags] + ([f"{stem}{tag}.npy" for tag in tags] if save_raw else [])
    return [folder / fit_name(name) for name in names]


def rank_tags(class_names: Sequence[str]) -> list[str]:
    """``--maps K`` name tags ``_cam_<rank>_<label>``: unique even when two classes share a label."""
    return [f"_cam_{rank}_{safe_label(name)}" for rank, name in enumerate(class_names, start=1)]


class FixedNames:
    """Outputs whose names are known before the model runs: ``<stem>_cam<ext>`` for one class
    (top-1 or the one asked for), ``<stem>_cam_<label><ext>`` for several; then the ``.npy`` maps."""

    def __init__(self, images: Sequence[ImageInput], labels: Sequence[str], options: OverlayOptions, guard: OutputGuard):
        tags = ["_cam"] if len(labels) == 1 else [f"_cam_{safe_label(label)}" for label in labels]
        self.plans = [output_paths(base, tags, options.save_raw) for base in output_bases(images, options)]
        self.guard = guard

    def check_all(self) -> None:
        planned = [p for paths in self.plans for p in paths]
        duplicates = [p for p, n in Counter(real_path(p) for p in planned).items() if n > 1]
        if duplicates:
            raise CamcliError(f"two inputs would write the same output {duplicates[0]}; use --out-dir or rename one")
        for path in planned:
            self.guard.check(path)

    def paths(self, k: int, class_names: Sequence[str]) -> list[Path]:
        return self.plans[k]

    def finished(self, k: int) -> bool:
        return all(self.guard.is_ours(p) for p in self.plans[k])

    def subset(self, ks: Sequence[int], guard: OutputGuard) -> FixedNames:
        """The plans of images ``ks`` only (in that order), checking with ``guard`` (for a worker)."""
        part = object.__new__(FixedNames)
        part.plans, part.guard = [self.plans[k] for k in ks], guard
        return part


class RankedNames:
    """``--maps K``: ``<stem>_cam_<rank>_<label><ext>`` for each image's top-K classes, names
    known only once the model has ranked the image. Planning checks every existing
    ``<stem>_cam_*`` file instead; each image's names are checked again before they are written."""

    def __init__(self, images: Sequence[ImageInput], k: int, options: OverlayOptions, guard: OutputGuard):
        self.bases = output_bases(images, options)
        self.k, self.save_raw, self.guard = k, options.save_raw, guard
        self.listings: dict[Path, list[str]] = {}

    def _listing(self, folder: Path) -> list[str]:
        if folder not in self.listings:
            self.listings[folder] = sorted(os.listdir(folder)) if folder.is_dir() else []
        return self.listings[folder]

    def check_all(self) -> None:
        same = [b for b, n in Counter((real_path(f), stem, ext) for f, stem, ext in self.bases).items() if n > 1]
        if same:
            raise CamcliError(f"two inputs would write the same outputs {same[0][0] / same[0][1]}_cam_*; use --out-dir or rename one")
        for folder, stem, _ in self.bases:
            for name in self._listing(folder):
                if name.startswith(f"{stem}_cam_"):
                    self.guard.check(folder / name)
            for path in self.guard.reserved:
                if path.parent == real_path(folder) and path.name.startswith(f"{stem}_cam_"):
                    raise CamcliError(f"the results file (--output) {path} has the name of a --maps output; choose another one")

    def paths(self, k: int, class_names: Sequence[str]) -> list[Path]:
        paths = output_paths(self.bases[k], rank_tags(class_names), self.save_raw)
        for path in paths:
            self.guard.check(path)
        return paths

    def subset(self, ks: Sequence[int], guard: OutputGuard) -> RankedNames:
        """The plans of images ``ks`` only (in that order), checking with ``guard`` (for a worker)."""
        part = object.__new__(RankedNames)
        part.bases, part.k, part.save_raw, part.guard, part.listings = [self.bases[k] for k in ks], self.k, self.save_raw, guard, {}
        return part

    def finished(self, k: int) -> bool:
        folder, stem, ext = self.bases[k]
        names = self._listing(folder)
        return all(
            any(n.startswith(f"{stem}_cam_{rank}_") and n.endswith(suffix) and self.guard.is_ours(folder / n) for n in names)
            for rank in range(1, self.k + 1) for suffix in ([ext, ".npy"] if self.save_raw else [ext])
        )


@dataclass
class OverlayPlan:
    """An overlay job checked and planned, before any work: see :func:`plan_overlays`."""

    method: str  # resolved (never auto)
    threshold: float
    chosen: list[int]  # classes to map for every image; empty: top-1 (or top-maps_k)
    maps_k: int
    guard: OutputGuard
    names: FixedNames | RankedNames
    todo: list[int]  # the images to process (all but those --skip-existing leaves out)


def plan_overlays(
    model: Model, images: Sequence[ImageInput], options: OverlayOptions, top_k: int = 5,
    notify: Callable[[str], None] | None = None,
) -> OverlayPlan:
    """Check the options and every output path of an overlay job before any work, so a refused
    overwrite stops the job before anything is written; leave out finished inputs with
    ``skip_existing``."""
    colormap_id(options.colormap)
    if options.normalize not in NORMALIZATIONS:
        raise CamcliError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {options.normalize!r}")
    method = model.resolve_method(options.method)
    threshold = box_threshold_for(model, options.box_threshold)
    if not 0.0 <= options.alpha <= 1.0:
        raise CamcliError(f"alpha must be between 0 and 1, got {options.alpha}")
    model.rank(np.zeros((1, model.num_classes), np.float32), top_k)
    chosen = [model.class_index(n) for n in options.classes]
    for index in options.class_indices:
        if not 0 <= index < model.num_classes:
            raise CamcliError(f"class index {index} out of range 0..{model.num_classes - 1}")
        chosen.append(index)
    chosen = list(dict.fromkeys(chosen))
    if options.maps < 0 or (options.maps and chosen):
        raise CamcliError("--maps takes a positive K and excludes --class / --class-index")
    maps_k = min(options.maps, model.num_classes)
    guard = OutputGuard({real_path(i.path) for i in images}, options.overwrite, {real_path(p) for p in options.reserved})
    if maps_k:
        names: FixedNames | RankedNames = RankedNames(images, maps_k, options, guard)
    else:
        names = FixedNames(images, [model.class_names[c] for c in chosen] if chosen else ["top1"], options, guard)
    names.check_all()
    todo = list(range(len(images)))
    if options.skip_existing:
        todo = [k for k in todo if not names.finished(k)]
        if notify and len(todo) < len(images):
            notify(f"{len(images) - len(todo)} inputs skipped: their outputs exist (--skip-existing)")
    return OverlayPlan(method, threshold, chosen, maps_k, guard, names, todo)


def overlay_rows(
    model: Model, images: Sequence[ImageInput], options: OverlayOptions, top_k: int = 5,
    batch_size: int = 32, workers: int = 0, progress: Progress | None = None, writers: int = 2,
    notify: Callable[[str], None] | None = None, plan: OverlayPlan | None = None,
) -> Iterator[dict]:
    """Write a CAM overlay for every image (see :class:`FixedNames`, :class:`RankedNames`) and
    yield its row, in input order.

    Every output path is checked before any work (:func:`plan_overlays`, unless a ``plan`` of
    these images is given). Colormap, blend, encoding and writing run in a small thread pool
    (OpenCV releases the GIL), so the next batch's forward pass overlaps them.
    """
    if plan is None:
        plan = plan_overlays(model, images, options, top_k, notify)
    method, threshold, chosen, maps_k, guard, names, todo = (
        plan.method, plan.threshold, plan.chosen, plan.maps_k, plan.guard, plan.names, plan.todo)
    pending: deque[tuple[dict, Future | None]] = deque()
    done = 0

    def finish_oldest() -> dict:
        nonlocal done
        row, future = pending.popleft()
        if future is not None:  # None: an input that could not be read, its row is complete
            outputs, box = future.result()
            row = {**row, "outputs": [str(p) for p in outputs], "box": box}
        done += 1
        if progress:
            progress("overlay", done, len(todo))
        return row

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="camcli-writer") as pool:
        try:
            for batch in model.batches([images[k].path for k in todo], batch_size, workers, keep_images=True):
                if batch.positions:  # else every image of this batch failed: only failure rows below
                    if maps_k:
                        classes = np.argsort(-batch.logits, axis=1, kind="stable")[:, :maps_k]
                    else:
                        classes = np.array([chosen or [int(row.argmax())] for row in batch.logits], np.int64)
                    probs, ranked = softmax(batch.logits), model.rank(batch.logits, top_k)
                    maps = model.batch_maps(batch, classes, options.cam_sizes, method)
                entries = {pos: (b, None) for b, pos in enumerate(batch.positions)}
                entries.update({pos: (None, why) for pos, why in batch.failures})
                for pos in sorted(entries):
                    b, why = entries[pos]
                    path = str(images[todo[pos]].path)
                    if why is not None:
                        pending.append(({"path": path, "predictions": [], "outputs": [], "box": None, "error": why}, None))
                        continue
                    mapped = classes[b].tolist()
                    paths = names.paths(todo[pos], [model.class_names[c] for c in mapped])
                    future = pool.submit(
                        _write_overlays, batch.originals[b], maps[b], mapped, probs[b], model.class_names, paths,
                        options, threshold, guard.recorder,
                    )
                    row = {"path": path, "predictions": ranked[b], "box_label": model.class_names[mapped[0]], "box_threshold": threshold,
                           "method": method, "normalize": options.normalize}
                    pending.append((row, future))
                while len(pending) > batch_size or (pending and (pending[0][1] is None or pending[0][1].done())):
                    yield finish_oldest()
            while pending:
                yield finish_oldest()
        finally:
            for _, future in pending:
                if future is not None:
                    future.cancel()  # the ones running finish (and record) before the pool closes


def _write_overlays(
    image_rgb: np.ndarray, maps: np.ndarray, classes: list[int], probs: np.ndarray,
    class_names: list[str], paths: list[Path], options: OverlayOptions, threshold: float,
    recorder: Callable[[Path], Callable[[os.stat_result], None]],
) -> tuple[list[Path], list[int] | None]:
    """Write one overlay per mapped class, then the raw maps.

    Returns:
        the paths written, and the first mapped class's box (largest region above
        ``threshold``, original-image pixels) or None.
    """
    box = None
    shown = display_maps(np.stack([np.asarray(m, np.float32) for m in maps[: len(classes)]]), options.normalize)
    for j, c in enumerate(classes):
        if j == 0:  # boxes threshold the min-max map, as evaluate and calibration do
            box = largest_component_box(heatmap(maps[j], image_rgb.shape[:2]), threshold)
        overlay = blend(image_rgb, upsample_to(shown[j], image_rgb.shape[:2]), options.alpha, options.colormap)
        if options.draw_box and j == 0 and box is not None:
            overlay = draw_box(overlay, box)
        if options.caption:
            overlay = draw_caption(overlay, f"{class_names[c]} {float(probs[c]):.1%}")
        write_image(paths[j], overlay, recorder(paths[j]))
    if options.save_raw:
        for j in range(len(classes)):
            buffer = io.BytesIO()
            np.save(buffer, maps[j].astype(np.float32))
            atomic_write(paths[len(classes) + j], buffer.getvalue(), recorder(paths[len(classes) + j]))
    return paths, box


def default_format(stdout_is_tty: bool) -> str:
    """``table`` for a person at a terminal, ``jsonl`` for a pipe or file."""
    return "table" if stdout_is_tty else "jsonl"


def is_tty(stream: object) -> bool:
    try:
        return os.isatty(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


CSV_COLUMNS = ("path", "rank", "label", "index", "prob", "outputs", "box", "error")


def csv_cell(text: str) -> str:
    """Text from outside (paths, labels) for a CSV cell: a leading ``'`` where a spreadsheet
    would take the cell for a formula (OWASP's CSV-injection rule: = + - @ tab CR)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_rows(rows: Iterator[dict], fmt: str, stream) -> int:
    """Write rows to a text stream as csv, json or jsonl; returns how many were written.

    jsonl and csv stream (flushed per row); json needs every row and writes at the end.
    """
    import csv

    count = 0
    if fmt == "json":
        everything = list(rows)
        stream.write(json.dumps(everything, indent=2) + "\n")
        return len(everything)
    # RFC 4180's CRLF: a field holding a CR or LF (a file name may) is then always quoted
    writer = csv.writer(stream, lineterminator="\r\n") if fmt == "csv" else None
    if writer:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        if writer:
            box = row.get("box")
            for rank, p in enumerate(row["predictions"], start=1):
                writer.writerow([
                    csv_cell(row["path"]), rank, csv_cell(p["label"]), p["index"], f"{p['prob']:.6g}",
                    csv_cell(";".join(row.get("outputs", []))), " ".join(map(str, box)) if box else "", "",
                ])
            if "error" in row:
                writer.writerow([csv_cell(row["path"]), "", "", "", "", "", "", csv_cell(row["error"])])
        elif fmt == "jsonl":
            stream.write(json.dumps(row) + "\n")
        else:
            raise ValueError(f"unknown format {fmt!r}")
        stream.flush()
        count += 1
    return count
