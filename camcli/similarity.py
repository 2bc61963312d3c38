"""How alike two maps are: the measures of ``compare`` and of ``evaluate --sanity``.

Pure functions of NumPy arrays (OpenCV for the box filter), each equal to a reference library's
(the tests compare them to 1e-6):

- :func:`spearman`: Spearman's rank correlation (SciPy's ``spearmanr``);
- :func:`ssim`: the mean structural similarity of two images (scikit-image's
  ``structural_similarity`` with its defaults: a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariance);
- :func:`hog`: the histogram of oriented gradients (scikit-image's ``hog`` with its defaults:
  :data:`HOG_ORIENTATIONS` bins over 0-180 degrees, :data:`HOG_CELL` x :data:`HOG_CELL` pixels per
  cell, :data:`HOG_BLOCK` x :data:`HOG_BLOCK` cells per block, L2-Hys block normalization), whose
  descriptors Adebayo et al. (2018) compare by Pearson's correlation (:func:`pearson`).
"""

from __future__ import annotations

import cv2
import numpy as np

HOG_ORIENTATIONS = 9
HOG_CELL = 8  # pixels per cell, each way
HOG_BLOCK = 3  # cells per block, each way
SSIM_WINDOW = 7


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given their average rank (as SciPy's ``rankdata``)."""
    order = np.argsort(values)  # ties get their average rank whatever their order
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two arrays of one size (flattened); 1 when both are constant, 0
    when one is (a constant map shares no ordering with a varying one)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    flat_a, flat_b = bool(np.all(a == a[0])), bool(np.all(b == b[0]))
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip(a @ b / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one shape (Pearson's of their average ranks); 1
    when both are constant, 0 when one is."""
    a, b = np.ravel(a), np.ravel(b)
    if bool(np.all(a == a[0])) or bool(np.all(b == b[0])):
        return pearson(a, b)
    return pearson(average_ranks(a), average_ranks(b))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """The mean structural similarity of two (H, W) images of values within ``data_range``
    (Wang et al. 2004, as scikit-image computes it by default), over the positions whose 7x7
    window lies inside the image; images need at least 7 pixels each way."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"ssim needs two 2-D images of one shape, at least {SSIM_WINDOW}x{SSIM_WINDOW}: got {a.shape}, {b.shape}")

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.blur(x, (SSIM_WINDOW, SSIM_WINDOW), borderType=cv2.BORDER_REFLECT)

    n = SSIM_WINDOW * SSIM_WINDOW
    sample = n / (n - 1)
    ua, ub = mean(a), mean(b)
    va, vb = sample * (mean(a * a) - ua * ua), sample * (mean(b * b) - ub * ub)
    vab = sample * (mean(a * b) - ua * ub)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    pad = (SSIM_WINDOW - 1) // 2  # the border, where the window leaves the image, is not scored
    return float(s[pad:-pad, pad:-pad].mean())


def hog(image: np.ndarray) -> np.ndarray:
    """The HOG descriptor of an (H, W) image: per block of :data:`HOG_BLOCK`\\ ² cells, each cell's
    histogram of gradient magnitude by unsigned orientation (central differences, 0 at the
    border), the block L2-normalized, clipped at 0.2 and normalized again; flattened float64.
    Rows and columns past the last whole cell are not counted. The image needs at least
    :data:`HOG_BLOCK` cells each way."""
    image = np.asarray(image, np.float64)
    cells = (image.shape[0] // HOG_CELL, image.shape[1] // HOG_CELL)
    if image.ndim != 2 or min(cells) < HOG_BLOCK:
        raise ValueError(f"hog needs a 2-D image of at least {HOG_BLOCK * HOG_CELL} pixels each way, got {image.shape}")
    g_row, g_col = np.zeros_like(image), np.zeros_like(image)
    g_row[1:-1] = image[2:] - image[:-2]
    g_col[:, 1:-1] = image[:, 2:] - image[:, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    width = 180.0 / HOG_ORIENTATIONS
    bins = np.floor(orientation / width).astype(np.int64)  # [i w, (i + 1) w); 180 itself (rounding) in no bin
    h, w = cells[0] * HOG_CELL, cells[1] * HOG_CELL
    histogram = np.zeros((*cells, HOG_ORIENTATIONS + 1))
    cell_of = (np.arange(h)[:, None] // HOG_CELL, np.arange(w)[None, :] // HOG_CELL)
    np.add.at(histogram, (*np.broadcast_arrays(*cell_of), bins[:h, :w]), magnitude[:h, :w])
    histogram = histogram[..., :HOG_ORIENTATIONS]
    blocks = np.lib.stride_tricks.sliding_window_view(histogram, (HOG_BLOCK, HOG_BLOCK), axis=(0, 1))
    blocks = np.moveaxis(blocks, 2, -1)  # (rows, cols, block rows, block cols, orientations)
    eps = 1e-5
    out = blocks / np.sqrt((blocks ** 2).sum(axis=(2, 3, 4), keepdims=True) + eps ** 2)
    out = np.minimum(out, 0.2)
    out = out / np.sqrt((out ** 2).sum(axis=(2, 3, 4), keepdims=True) + eps ** 2)
    return out.ravel()
