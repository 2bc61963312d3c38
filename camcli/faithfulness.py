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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from camcli.cam import normalize_maps, upsample_to

STEPS = 20

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


def area(fractions: np.ndarray, curve: np.ndarray) -> float:
    """The area under a score curve over the perturbed fraction (trapezoid rule)."""
    return float(np.trapezoid(curve, fractions))


@dataclass
class FaithfulnessTally:
    """Sums over images, mergeable across batches and workers."""

    drop: float = 0.0
    increase: int = 0
    deletion: float = 0.0
    insertion: float = 0.0
    count: int = 0

    def add(self, x: np.ndarray, cam_map: np.ndarray, prob: float, score: Scorer, steps: int = STEPS) -> None:
        """One image: ``x`` (3, H, W), the predicted class's raw map and probability, its scorer."""
        saliency = explanation(cam_map, x.shape[-2:])
        masked = float(score((x * saliency[None]).astype(np.float32)[None])[0])
        drop, increased = confidence_change(prob, masked)
        fractions, deletion, insertion = deletion_insertion(x, saliency, prob, score, steps)
        self.drop += drop
        self.increase += increased
        self.deletion += area(fractions, deletion)
        self.insertion += area(fractions, insertion)
        self.count += 1

    def merge(self, other: FaithfulnessTally) -> None:
        self.drop += other.drop
        self.increase += other.increase
        self.deletion += other.deletion
        self.insertion += other.insertion
        self.count += other.count

    def result(self) -> dict:
        n = max(self.count, 1)
        return {
            "num_images": self.count,
            "average_drop": 100.0 * self.drop / n,
            "increase_in_confidence": 100.0 * self.increase / n,
            "deletion_auc": self.deletion / n,
            "insertion_auc": self.insertion / n,
            "steps": STEPS,
            "baseline": "zeros of the preprocessed input",
            "score": "softmax probability of the predicted class",
        }
