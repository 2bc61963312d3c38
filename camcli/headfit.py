"""The head fit in NumPy: a linear layer on pooled features, softmax cross-entropy, AdamW.

The same arithmetic as ``torch.nn.Linear`` + ``torch.nn.functional.cross_entropy`` +
``torch.optim.AdamW`` with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8, decoupled weight
decay), so that a head is fitted the same way whether PyTorch is installed or not (``camcli
train`` fits with it; the light install of issue 21 needs it). Tested step by step against
PyTorch on the same batches. The head's initialization and each epoch's order are drawn from one
NumPy generator seeded by ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LinearHead:
    """``logits = x @ weight.T + bias``: weight (K, C), bias (K,), float32."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def init(cls, num_features: int, num_classes: int, seed: int = 0) -> LinearHead:
        """``nn.Linear``'s initialization (weight and bias uniform in ±1/sqrt(C)), drawn from NumPy."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(num_features)
        weight = rng.uniform(-bound, bound, (num_classes, num_features)).astype(np.float32)
        bias = rng.uniform(-bound, bound, num_classes).astype(np.float32)
        return cls(weight, bias)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) @ self.weight.T + self.bias).astype(np.float32)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of (B, K) logits and (B,) labels, and its gradient (B, K)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = float(-log_probs[rows, labels].mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1.0
    return loss, (grad / len(labels)).astype(np.float32)


@dataclass
class AdamW:
    """``torch.optim.AdamW`` for a :class:`LinearHead` (PyTorch's defaults; its update order)."""

    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    steps: int = 0
    moments: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def step(self, head: LinearHead, grads: dict[str, np.ndarray]) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for name, grad in grads.items():
            param = getattr(head, name)
            m, v = self.moments.get(name, (np.zeros_like(param), np.zeros_like(param)))
            param *= np.float32(1 - self.lr * self.weight_decay)
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            self.moments[name] = (m, v)
            step_size = self.lr / (1 - b1**self.steps)
            denominator = np.sqrt(v) / np.sqrt(1 - b2**self.steps) + self.eps
            param -= (step_size * m / denominator).astype(np.float32)


def shuffled_batches(features: np.ndarray, labels: np.ndarray, batch_size: int,
                     rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) mini-batches in a seeded random order."""
    order = rng.permutation(len(labels))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield features[idx], labels[idx]


def train_one_epoch(head: LinearHead, batches: Iterable[tuple[np.ndarray, np.ndarray]], optimizer: AdamW) -> tuple[float, float]:
    """One pass over (pooled features (B, C), labels (B,)) batches; returns (mean loss, accuracy)."""
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        x = np.asarray(x, np.float32)
        logits = head.logits(x)
        loss, grad = cross_entropy(logits, y)
        optimizer.step(head, {"weight": grad.T @ x, "bias": grad.sum(axis=0)})
        total_loss += loss * len(y)
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    return total_loss / count, correct / count


def evaluate(head: LinearHead, features: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predicted class per sample) of the head on (N, C) pooled features."""
    logits = head.logits(features)
    loss, _ = cross_entropy(logits, labels)
    preds = logits.argmax(1)
    return loss, float((preds == labels).mean()), preds


def fit_head(features: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, lr: float, weight_decay: float,
             batch_size: int, seed: int) -> LinearHead:
    """A head fitted as ``camcli train`` fits one on cached features (the same draws from ``seed``:
    the initialization, then each epoch's order), kept at its last epoch.

    Args:
        features: (N, C) pooled features.
        labels: (N,) class indices.
    """
    rng = np.random.default_rng(seed)
    head = LinearHead.init(features.shape[1], num_classes, seed=seed)
    optimizer = AdamW(lr=lr, weight_decay=weight_decay)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(epochs):
            train_one_epoch(head, shuffled_batches(features, labels, batch_size, rng), optimizer)
    return head
