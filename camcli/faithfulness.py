"""Faithfulness without boxes: how the model's confidence in its predicted class changes when the
input is perturbed by the class's map. Pure NumPy; the model is a scoring function.

Scores are softmax probabilities of the predicted class throughout. The map of an image is
min-max normalized at feature resolution and upsampled bilinearly (pixel centers aligned) to the
model input, as torchcam does before its metrics (:func:`explanation`).

- Average drop and increase in confidence (Chattopadhay et al. 2018, torchcam's
  ``ClassificationMetric``): the input multiplied by the explanation; drop = max(0, p - p') / p,
  increase = p < p'. camcli reports both as percentages (torchcam returns fractions).
- Deletion and insertion (Petsiuk et al. 2018, torchcam's ``DeletionInsertionMetric``): input
  positions ranked by the explanation, highest first (ties by position); deletion replaces the
  top-ranked positions with the baseline (zeros of the preprocessed input) in ``steps`` (20)
  steps of ceil(P / steps) positions, insertion restores them into the baseline; each score
  curve's area over the perturbed fraction, by the trapezoid rule, in [0, 1]. A faithful map
  gives a low deletion and a high insertion area.
- ROAD (Rong et al. 2022, pytorch-grad-cam's ``ROADMostRelevantFirstAverage``,
  ``ROADLeastRelevantFirstAverage`` and ``ROADCombined``): at each percentile p of 10..90, the
  positions of the explanation at or above its p-th percentile (MoRF: the most relevant, ``1 -
  explanation`` for LeRF) are removed and filled by noisy linear imputation (each removed value
  the weighted mean of its 8 neighbours, a sparse linear system; noise 0.01, seeded); the score is
  the change of the class's probability, averaged over the percentiles: ``road_morf`` (lower:
  more faithful), ``road_lerf`` (higher), ``road_combined`` = (lerf - morf) / 2. It needs SciPy's
  sparse solver, an extra: ``pip install 'camcli[faithfulness]'``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from camcli.cam import normalize_maps, upsample_to
from camcli.defaults import MAX_FORWARD_PIXELS
from camcli.errors import EnvironmentProblem

STEPS = 20
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01
# each removed value: the weighted mean of its neighbours (offset (row, column), weight), as ROAD's imputer
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6), ((-1, -1), 1 / 12),
              ((1, 0), 1 / 6), ((-1, 0), 1 / 6))

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) inputs -> (N,) probabilities of the class


def explanation(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map min-max normalized, then upsampled to ``size``: float32 (H, W) in [0, 1]."""
    return np.clip(upsample_to(normalize_maps(np.nan_to_num(np.asarray(cam_map, np.float32))), size), 0, 1)


def confidence_change(prob: float, masked_prob: float) -> tuple[float, bool]:
    """(drop, increase) of one image: max(0, p - p') / (p + 1e-7) and p < p' (torchcam's)."""
    return max(0.0, prob - masked_prob) / (prob + 1e-7), bool(prob < masked_prob)


def deletion_insertion(x: np.ndarray, saliency: np.ndarray, prob: float, score: Scorer, steps: int = STEPS,
                       batch: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deletion and insertion curves of one image.

    Args:
        x: (3, H, W) the preprocessed input.
        saliency: (H, W) its explanation (see :func:`explanation`).
        prob: the class's probability on ``x``.
        score: scores a (N, 3, H, W) batch (the class's probabilities).
        steps: at most this many intervals.
        batch: perturbed inputs per call of ``score``.

    Returns:
        (fractions, deletion, insertion), each (S,): the perturbed fraction of positions and the
        class's probability there.
    """
    positions = saliency.size
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    ranks = np.empty(positions, np.int64)
    ranks[order] = np.arange(positions)
    step = -(-positions // steps)
    counts = [*range(0, positions, step), positions]
    flat = x.reshape(x.shape[0], -1)
    jobs = [(0, i, n) for i, n in enumerate(counts) if 0 < i] + [(1, i, n) for i, n in enumerate(counts) if 0 < i < len(counts) - 1]

    def perturbed(curve: int, n: int) -> np.ndarray:
        top = ranks < n
        keep = ~top if curve == 0 else top  # deletion keeps the rest of the input; insertion keeps the top
        return np.where(keep[None], flat, 0.0).reshape(x.shape).astype(np.float32)

    deletion = np.empty(len(counts))
    insertion = np.empty(len(counts))
    deletion[0], insertion[-1] = prob, prob
    batch = per_call(x, batch)
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        scores = score(np.stack([perturbed(curve, n) for curve, _, n in chunk]))
        for (curve, i, _), s in zip(chunk, scores):
            if curve == 0:
                deletion[i] = s
                if i == len(counts) - 1:
                    insertion[0] = s  # everything deleted: the baseline alone
            else:
                insertion[i] = s
    return np.asarray(counts, np.float64) / positions, deletion, insertion


def per_call(x: np.ndarray, most: int) -> int:
    """Perturbed copies of the (C, H, W) input ``x`` made and scored together: at most ``most``,
    and at most one forward pass's pixels (``MAX_FORWARD_PIXELS``), so memory stays within the
    pixel budget whatever the input size (``--img-size 1024``: 4 at a time, not 32)."""
    return max(1, min(most, MAX_FORWARD_PIXELS // (x.shape[-2] * x.shape[-1])))


def require_scipy():
    """SciPy's sparse solver (ROAD's imputation), or one line naming the extra (exit 3)."""
    try:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise EnvironmentProblem("`faithfulness` (its ROAD scores) needs SciPy's sparse solver: "
                                 "pip install 'camcli[faithfulness]'") from None
    return csc_matrix, spsolve


ROAD_MAX_PIXELS = 1 << 17  # ROAD imputes at most this many positions' grid (131,072: 362 x 362), whatever the input size


def impute(x: np.ndarray, keep: np.ndarray, noise: float = ROAD_NOISE, rng: np.random.Generator | None = None) -> np.ndarray:
    """Noisy linear imputation (ROAD): the positions where ``keep`` (H, W) is False get, in every
    channel of ``x`` (C, H, W), the solution of "each is the weighted mean of its neighbours inside
    the image" (:data:`NEIGHBOURS`; weights of neighbours outside the image are left out), plus
    ``noise`` times a standard normal draw. Returns float32 (C, H, W).

    The sparse solve grows faster than the image (a 1024 x 1024 input took 200 s and 5 GB), so an
    input of more than :data:`ROAD_MAX_PIXELS` positions is imputed on a grid of at most that many
    (area-averaged; a coarse position is known when all of its fine ones are), the solution
    upsampled bilinearly, and the noise drawn at full resolution: the known positions keep their
    values and the noise its level."""
    c, h, w = x.shape
    if h * w > ROAD_MAX_PIXELS:
        import cv2

        scale = (ROAD_MAX_PIXELS / (h * w)) ** 0.5
        hs, ws = max(1, int(h * scale)), max(1, int(w * scale))
        coarse = np.stack([cv2.resize(channel, (ws, hs), interpolation=cv2.INTER_AREA) for channel in x.astype(np.float32)])
        known = cv2.resize(keep.astype(np.float32), (ws, hs), interpolation=cv2.INTER_AREA) > 0.999
        smooth = impute(coarse, known, 0.0)
        filled = np.stack([cv2.resize(channel, (w, h), interpolation=cv2.INTER_LINEAR) for channel in smooth])
        draw = (rng or np.random.default_rng(0)).standard_normal((c, h, w)).astype(np.float32)
        return np.where(keep[None], x, filled + noise * draw).astype(np.float32)
    csc_matrix, spsolve = require_scipy()
    flat = x.reshape(c, -1).astype(np.float64)
    known = keep.reshape(-1)
    missing = np.flatnonzero(~known)
    out = flat.copy()
    if len(missing) == h * w:  # nothing known (a constant map removes every position): the solution is 0, the
        # normalized mean, without the solve of the whole image's system (3.5x ROAD's usual cost)
        out[:] = noise * (rng or np.random.default_rng(0)).standard_normal((c, h * w))
    elif len(missing):
        n = len(missing)
        index_of = np.full(h * w, -1)
        index_of[missing] = np.arange(n)
        rows0, cols0 = np.divmod(missing, w)
        diagonal = np.ones(n)
        rhs = np.zeros((n, c))
        entries_r, entries_c, entries_v = [np.arange(n)], [np.arange(n)], []
        for (dy, dx), weight in NEIGHBOURS:
            r, col = rows0 + dy, cols0 + dx
            inside = (r >= 0) & (col >= 0) & (r < h) & (col < w)
            diagonal[~inside] -= weight
            ids, neighbour = np.flatnonzero(inside), r[inside] * w + col[inside]
            given = known[neighbour]
            rhs[ids[given]] -= weight * flat[:, neighbour[given]].T
            entries_r.append(ids[~given])
            entries_c.append(index_of[neighbour[~given]])
            entries_v.append(np.full(int((~given).sum()), weight))
        values = np.concatenate([-diagonal, *entries_v])
        matrix = csc_matrix((values, (np.concatenate(entries_r), np.concatenate(entries_c))), shape=(n, n))
        solution = np.asarray(spsolve(matrix, rhs)).reshape(n, c)
        draw = (rng or np.random.default_rng(0)).standard_normal((c, n))
        out[:, missing] = solution.T + noise * draw
    return out.reshape(x.shape).astype(np.float32)


def road(x: np.ndarray, saliency: np.ndarray, prob: float, score: Scorer, noise: float = ROAD_NOISE,
         percentiles=ROAD_PERCENTILES) -> tuple[float, float]:
    """(MoRF, LeRF) ROAD scores of one image: the mean change of the class's probability when the
    most (least) relevant positions above each percentile are imputed (see :func:`impute`)."""
    masks = [(relevance < np.percentile(relevance, p), p) for relevance in (saliency, 1 - saliency) for p in percentiles]
    step = per_call(x, 32)  # MoRF's, then LeRF's imputed inputs, made as they are scored
    scores = np.concatenate([score(np.stack([impute(x, keep, noise, np.random.default_rng(p)) for keep, p in masks[i : i + step]]))
                             for i in range(0, len(masks), step)])
    k = len(percentiles)
    return float(np.mean(scores[:k] - prob)), float(np.mean(scores[k:] - prob))


def area(fractions: np.ndarray, curve: np.ndarray) -> float:
    """The area under a score curve over the perturbed fraction (trapezoid rule)."""
    return float(np.trapezoid(curve, fractions))


CURVE_FRACTIONS = np.linspace(0.0, 1.0, STEPS + 1)  # the mean curves' grid (each image's curve interpolated on it)


@dataclass
class FaithfulnessTally:
    """Sums over images, mergeable across batches and workers: the scores, the deletion and
    insertion curves on :data:`CURVE_FRACTIONS`, and the seconds each metric took."""

    drop: float = 0.0
    increase: int = 0
    deletion: float = 0.0
    insertion: float = 0.0
    morf: float = 0.0
    lerf: float = 0.0
    count: int = 0
    deletion_curve: np.ndarray = field(default_factory=lambda: np.zeros(len(CURVE_FRACTIONS)))
    insertion_curve: np.ndarray = field(default_factory=lambda: np.zeros(len(CURVE_FRACTIONS)))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_COSTS, 0.0))

    def add(self, x: np.ndarray, cam_map: np.ndarray, prob: float, score: Scorer, steps: int = STEPS) -> None:
        """One image: ``x`` (3, H, W), the predicted class's raw map and probability, its scorer."""
        clock = time.perf_counter()
        saliency = explanation(cam_map, x.shape[-2:])
        masked = float(score((x * saliency[None]).astype(np.float32)[None])[0])
        drop, increased = confidence_change(prob, masked)
        clock = self._spent("average_drop", clock)
        fractions, deletion, insertion = deletion_insertion(x, saliency, prob, score, steps)
        clock = self._spent("deletion_insertion", clock)
        morf, lerf = road(x, saliency, prob, score)
        self._spent("road", clock)
        self.morf += morf
        self.lerf += lerf
        self.drop += drop
        self.increase += increased
        self.deletion += area(fractions, deletion)
        self.insertion += area(fractions, insertion)
        self.deletion_curve += np.interp(CURVE_FRACTIONS, fractions, deletion)
        self.insertion_curve += np.interp(CURVE_FRACTIONS, fractions, insertion)
        self.count += 1

    def _spent(self, metric: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[metric] += now - since
        return now

    def merge(self, other: FaithfulnessTally) -> None:
        self.drop += other.drop
        self.increase += other.increase
        self.deletion += other.deletion
        self.insertion += other.insertion
        self.morf += other.morf
        self.lerf += other.lerf
        self.count += other.count
        self.deletion_curve = self.deletion_curve + other.deletion_curve
        self.insertion_curve = self.insertion_curve + other.insertion_curve
        for metric, spent in other.seconds.items():
            self.seconds[metric] = self.seconds.get(metric, 0.0) + spent

    def curves(self) -> dict[str, list[float]]:
        """The mean deletion and insertion curves: ``fractions`` (the perturbed fraction of the
        input's positions), ``deletion``, ``insertion`` (the class's mean probability there)."""
        n = max(self.count, 1)
        return {"fractions": CURVE_FRACTIONS.tolist(), "deletion": (self.deletion_curve / n).tolist(),
                "insertion": (self.insertion_curve / n).tolist()}

    def result(self) -> dict:
        n = max(self.count, 1)
        return {
            "num_images": self.count,
            "average_drop": 100.0 * self.drop / n,
            "increase_in_confidence": 100.0 * self.increase / n,
            "deletion_auc": self.deletion / n,
            "insertion_auc": self.insertion / n,
            "road_morf": self.morf / n,
            "road_lerf": self.lerf / n,
            "road_combined": (self.lerf - self.morf) / (2 * n),
            "road_percentiles": list(ROAD_PERCENTILES),
            "steps": STEPS,
            "baseline": "zeros of the preprocessed input",
            "score": "softmax probability of the predicted class",
            "curves": self.curves(),
        }


METRIC_COSTS = ("average_drop", "deletion_insertion", "road")  # what :attr:`FaithfulnessTally.seconds` times
