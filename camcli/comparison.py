"""``camcli compare``: two models on the same images, and how far their explanations moved.

A team retraining a classifier asks two questions before it ships the new one: does it rank as
the old one did, and does it still look where the old one looked? (A model that learned a
watermark keeps its accuracy and moves its maps.) Per image, both models rank the classes and map
the *base* model's top-1 class with the same method; the two maps are compared on one common grid,
the input image's (so architectures with different map sizes compare), at most
:data:`COMPARE_PIXELS` positions (area-preserving, for large photographs):

- ``map_spearman``: Spearman's rank correlation of the two maps (Pearson's of their average ranks);
  1 when both maps are constant, 0 when one is;
- ``map_iou``: the IoU of the boxes around each map's largest region above ``threshold`` of its
  normalized map (the CAM paper's box; 0 when either has none);
- ``peak_shift``: the distance between the two maps' maxima, as a fraction of the grid's diagonal.

The summary: ``top1_agreement``, and the median and 10th percentile of the similarities (for the
peak shift, a distance, the median and the 90th percentile).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from camcli import methods
from camcli.cam import box_iou, heatmap, largest_component_box, softmax
from camcli.data import ImageInput
from camcli.defaults import BATCH_SIZE, PAPER_THRESHOLD
from camcli.engine import Model, map_groups
from camcli.errors import CamcliError
from camcli.results import csv_cell, json_safe
from camcli.similarity import spearman

COMPARE_PIXELS = 224 * 224  # positions of the common grid at most (the input image's, scaled down when larger): the
# maps are 7x7 to 28x28, upsampled; a finer grid adds no detail and costs its sort (512x512: compare 3.7x an overlay)
SUMMARY = ("num_images", "top1_agreement", "map_spearman_median", "map_spearman_p10", "map_iou_median", "map_iou_p10",
           "peak_shift_median", "peak_shift_p90")
MAP_SUMMARY = SUMMARY[2:]  # a method's own, under by_method.<method>. when several are compared
SIMILARITIES = ("map_spearman", "map_iou", "peak_shift")
CSV_COLUMNS = ("path", "base_label", "base_prob", "candidate_label", "candidate_prob", "candidate_prob_of_base_top1", "agree",
               "map_spearman", "map_iou", "peak_shift", "error")


def common_grid(height: int, width: int) -> tuple[int, int]:
    """The input image's (height, width), scaled down to at most :data:`COMPARE_PIXELS` positions."""
    scale = min(1.0, (COMPARE_PIXELS / (height * width)) ** 0.5)
    return max(1, round(height * scale)), max(1, round(width * scale))


def map_similarity(base_map: np.ndarray, candidate_map: np.ndarray, grid: tuple[int, int],
                   threshold: float = PAPER_THRESHOLD) -> dict[str, float]:
    """How alike two raw (h_i, w_i) maps are on ``grid`` (see the module docstring)."""
    a, b = heatmap(base_map, grid), heatmap(candidate_map, grid)
    box_a, box_b = largest_component_box(a, threshold), largest_component_box(b, threshold)
    peak_a, peak_b = (np.array(np.unravel_index(int(np.argmax(m)), m.shape), np.float64) for m in (a, b))
    return {"map_spearman": spearman(a, b),
            "map_iou": box_iou(box_a, box_b) if box_a is not None and box_b is not None else 0.0,
            "peak_shift": float(np.linalg.norm(peak_a - peak_b) / np.hypot(*grid))}


def class_mapping(base: Sequence[str], candidate: Sequence[str]) -> np.ndarray:
    """The candidate's index of each base class, matched by name.

    Raises:
        CamcliError: the two models do not have the same classes.
    """
    if len(base) == len(candidate) == len(set(base)) == len(set(candidate)) and set(base) == set(candidate):
        where = {name: i for i, name in enumerate(candidate)}
        return np.array([where[name] for name in base], np.int64)
    only_base, only_candidate = sorted(set(base) - set(candidate)), sorted(set(candidate) - set(base))
    sample = "; ".join(part for part in (
        f"only the base has {', '.join(map(repr, only_base[:3]))}{' ...' * (len(only_base) > 3)}" if only_base else "",
        f"only the candidate has {', '.join(map(repr, only_candidate[:3]))}{' ...' * (len(only_candidate) > 3)}"
        if only_candidate else "") if part) or "a class name repeats"
    raise CamcliError(f"the two models' classes differ (base {len(base)}, candidate {len(candidate)}: {sample}); "
                      "compare needs the same classes, in any order")


@dataclass
class Changed:
    """One of the most-changed images, for the report: its row and the thumbnails of the input and both overlays."""

    row: dict
    pictures: list[np.ndarray]


@dataclass
class CompareJob:
    """Two models on the same images (see the module docstring), as an engine runs a job: the
    "model" is the pair (base, candidate). Rows come out in input order, failures as rows with
    ``error``; the local engine and Ray's run the same code (:meth:`run`).

    Attributes:
        method: a registered method, or ``auto`` (each model's default), or several (each compared:
            ``by_method`` in rows and summary, the first one's also at the top level, as evaluate
            does); the base's top-1 class is mapped.
        threshold: the box threshold of ``map_iou``.
        batch_size: images decoded and run together.
        workers: decoding threads.
        top_channels: Score-CAM's channels (see :class:`camcli.jobs.PredictJob`).
        mapping: set by :meth:`bind`: the candidate's index of each base class.
    """

    method: str | tuple[str, ...] = methods.AUTO
    threshold: float = PAPER_THRESHOLD
    batch_size: int = BATCH_SIZE
    workers: int = 0
    top_channels: int | None = None
    mapping: tuple[int, ...] = ()
    stage: ClassVar[str] = "compare"

    def validate(self) -> None:
        if not 0 <= self.threshold < 1:
            raise CamcliError(f"`box_threshold` must be from 0 to below 1, got {self.threshold}")
        if self.batch_size < 1:
            raise CamcliError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if not self.names():
            raise CamcliError("`method` needs at least one method")
        for name in self.names():
            if name != methods.AUTO:
                methods.get(name)
        if self.top_channels is not None and ("scorecam" not in self.names() or self.top_channels < 1):
            raise CamcliError("`top_channels` bounds Score-CAM's passes: a positive number, with `method` scorecam")

    def bind(self, models: tuple[Model, Model], images: Sequence[ImageInput]) -> tuple[CompareJob, list[ImageInput]]:
        """The job with the candidate's index of each base class (a mismatch: one line), each
        model's method checked, before any image."""
        base, candidate = models
        mapping = class_mapping(base.class_names, candidate.class_names)
        for model in models:
            for name in self.names():
                model.resolve_method(name)
        return replace(self, mapping=tuple(int(i) for i in mapping)), list(images)

    def names(self) -> tuple[str, ...]:
        """The methods compared, each once, in the order given."""
        return tuple(dict.fromkeys((self.method,) if isinstance(self.method, str) else self.method))

    def slice(self, images: Sequence[ImageInput], start: int, stop: int) -> tuple[CompareJob, list[ImageInput]]:
        return self, list(images[start:stop])

    def count(self, row: dict) -> int:
        return 1

    def run(self, models: tuple[Model, Model], images: Iterable[ImageInput]) -> Iterator[dict]:
        """One row per image, in order (see :data:`CSV_COLUMNS`)."""
        images = iter(images)
        while chunk := list(itertools.islice(images, self.batch_size)):
            yield from (row for row, _ in self.compared(models, chunk))

    def compared(self, models: tuple[Model, Model], chunk: list[ImageInput]) -> Iterator[tuple[dict, tuple | None]]:
        """(row, (the original RGB image, the base's map, the candidate's map), or None for a
        failure) per image of ``chunk``, in order. The base decodes each image once; the
        candidate takes the decoded pixels."""
        if not chunk:
            return
        base, candidate = models
        mapping = np.asarray(self.mapping, np.int64)
        rows: dict[int, tuple[dict, tuple | None]] = {}
        for batch in base.batches([i.path if isinstance(i, ImageInput) else i for i in chunk], len(chunk), self.workers,
                                  keep_images=True):
            for position, reason in batch.failures:
                rows[position] = ({"path": _name(chunk[position]), "error": reason}, None)
            if not batch.positions:
                continue
            top = batch.logits.argmax(axis=1)
            names = self.names()
            base_maps = {m: self._maps(base, batch, top, m) for m in names}
            their = mapping[top]
            kept, failed = {}, {}  # the candidate's (probabilities, map) of each of the base batch's rows; its failures
            for other in candidate.batches(list(batch.originals), len(batch.originals), 0, keep_images=True):
                failed.update(other.failures)
                if other.positions:
                    maps = {m: self._maps(candidate, other, their[other.positions], m) for m in names}
                    probs = softmax(other.logits)
                    for k, b in enumerate(other.positions):
                        kept[b] = (probs[k], {m: maps[m][k][0] for m in names})
            base_probs = softmax(batch.logits)
            for b, position in enumerate(batch.positions):
                name = _name(chunk[position])
                if b not in kept:
                    reason = failed.get(b, "the candidate model could not run this image")
                    rows[position] = ({"path": name, "error": f"{name}: candidate: {reason.split(': ', 1)[-1]}"}, None)
                    continue
                probs, candidate_maps = kept[b]
                c, cand_top = int(top[b]), int(probs.argmax())
                grid = common_grid(*batch.originals[b].shape[:2])
                similar = {m: map_similarity(base_maps[m][b][0], candidate_maps[m], grid, self.threshold) for m in names}
                row = {"path": name,
                       "base": {"label": base.class_names[c], "index": c, "prob": float(base_probs[b, c])},
                       "candidate": {"label": candidate.class_names[cand_top], "index": cand_top, "prob": float(probs[cand_top])},
                       "agree": candidate.class_names[cand_top] == base.class_names[c],
                       "candidate_prob_of_base_top1": float(probs[their[b]]),
                       **similar[names[0]], **({"by_method": similar} if len(names) > 1 else {})}
                rows[position] = (row, (batch.originals[b], base_maps[names[0]][b][0], candidate_maps[names[0]]))
        for position in range(len(chunk)):
            yield rows[position]

    def _maps(self, model: Model, batch, classes: np.ndarray, name: str) -> list[np.ndarray]:
        method = model.resolve_method(name)
        out: list[np.ndarray] = []
        for group in map_groups(len(batch.positions), method):
            out += model.batch_maps(batch.take(group), np.asarray(classes)[group][:, None], method=method,
                                    top_channels=self.top_channels)
        return out

    def most_changed(self, models: tuple[Model, Model], rows: list[dict]) -> list[Changed]:
        """The report's images: ``rows`` (the most changed, in the order to show) run again here,
        with thumbnails of the input and both overlays (the maps are not kept while the run goes,
        so its memory does not grow with the images, on any engine)."""
        from camcli.render import blend
        from camcli.report import thumbnail

        out = []
        for row, kept in self.compared(models, [Path(r["path"]) for r in rows]):
            if kept is None:
                continue
            original, base_map, candidate_map = kept
            small = thumbnail(original)
            out.append(Changed(row, [small] + [blend(small, heatmap(m, small.shape[:2])) for m in (base_map, candidate_map)]))
        return out


def _name(image: ImageInput | object) -> str:
    return str(image.path) if isinstance(image, ImageInput) else str(image)


class Summary:
    """The similarities of every compared image, summarized (see :data:`SUMMARY`), and the
    ``keep`` rows whose maps changed most (lowest Spearman; the earlier image among equals)."""

    def __init__(self, keep: int = 0) -> None:
        self.agree: list[bool] = []
        self.values: dict[str, list[float]] = {k: [] for k in SIMILARITIES}  # the first method's
        self.by_method: dict[str, dict[str, list[float]]] = {}  # each method's, when several are compared
        self.failed = 0
        self.keep = keep
        self._changed: list[tuple[float, int, dict]] = []  # a heap: the least changed of the kept on top

    def add(self, row: dict) -> None:
        if "error" in row:
            self.failed += 1
            return
        self.agree.append(row["agree"])
        for key, values in self.values.items():
            values.append(row[key])
        for method, similar in row.get("by_method", {}).items():
            for key, values in self.by_method.setdefault(method, {k: [] for k in SIMILARITIES}).items():
                values.append(similar[key])
        entry = (-row["map_spearman"], -len(self.agree), row)
        if len(self._changed) < self.keep:
            heapq.heappush(self._changed, entry)
        elif self.keep and entry[:2] > self._changed[0][:2]:
            heapq.heapreplace(self._changed, entry)

    def most_changed(self) -> list[dict]:
        """The kept rows, most changed first."""
        return [row for *_, row in sorted(self._changed, key=lambda e: (-e[0], -e[1]))]

    def result(self) -> dict:
        n = len(self.agree)

        def stats(values: dict[str, list[float]]) -> dict[str, float]:
            def stat(key: str, q: float) -> float:
                return float(np.percentile(values[key], q)) if n else float("nan")

            return {"map_spearman_median": stat("map_spearman", 50), "map_spearman_p10": stat("map_spearman", 10),
                    "map_iou_median": stat("map_iou", 50), "map_iou_p10": stat("map_iou", 10),
                    "peak_shift_median": stat("peak_shift", 50), "peak_shift_p90": stat("peak_shift", 90)}

        return {"num_images": n, "top1_agreement": float(np.mean(self.agree)) if n else float("nan"), **stats(self.values),
                "num_failed": self.failed,
                **({"by_method": {m: stats(v) for m, v in self.by_method.items()}} if self.by_method else {})}


def write_rows(rows: Iterable[dict], fmt: str, stream, more_methods: Sequence[str] = ()) -> int:
    """Comparison rows as jsonl, json or csv (:data:`CSV_COLUMNS`, text cells guarded as
    :func:`camcli.results.csv_cell` does; ``more_methods``, the methods compared after the first:
    their similarities as ``<method>.map_spearman`` ... columns before ``error``); returns how many."""
    if fmt == "json":
        everything = list(rows)
        stream.write(json.dumps(everything, indent=2) + "\n")
        return len(everything)
    writer = csv.writer(stream, lineterminator="\r\n") if fmt == "csv" else None
    more = [f"{m}.{k}" for m in more_methods for k in SIMILARITIES]
    if writer:
        writer.writerow([*CSV_COLUMNS[:-1], *more, CSV_COLUMNS[-1]])
    count = 0
    for row in rows:
        if writer and "error" in row:
            writer.writerow([csv_cell(row["path"]), *[""] * (9 + len(more)), csv_cell(row["error"])])
        elif writer:
            writer.writerow([csv_cell(row["path"]), csv_cell(row["base"]["label"]), f"{row['base']['prob']:.6g}",
                             csv_cell(row["candidate"]["label"]), f"{row['candidate']['prob']:.6g}",
                             f"{row['candidate_prob_of_base_top1']:.6g}", int(row["agree"]), f"{row['map_spearman']:.6g}",
                             f"{row['map_iou']:.6g}", f"{row['peak_shift']:.6g}",
                             *(f"{row['by_method'][m][k]:.6g}" for m in more_methods for k in SIMILARITIES), ""])
        else:
            stream.write(json.dumps(row) + "\n")
        stream.flush()
        count += 1
    return count


def write_outputs(out: Path, summary: dict, changed: list[Changed], settings: dict, guard) -> list[Path]:
    """``out/comparison.json`` (the summary, the settings and the requirements' verdicts) and
    ``out/report.html`` (the most-changed images side by side); returns the paths written."""
    from camcli.files import atomic_write
    from camcli.report import write_compare_report

    written = [out / "comparison.json", out / "report.html"]

    atomic_write(written[0], json.dumps({**json_safe(summary), "settings": settings}, indent=2) + "\n", guard.recorder(written[0]))
    write_compare_report(written[1], changed, summary, settings, guard.recorder(written[1]))
    return written
