"""Class activation mapping math (Zhou et al., CVPR 2016). Pure functions, no I/O.

For features F of shape (C, h, w) and a linear head (W: (K, C), b: (K,)) applied after
global average pooling, the map of class c is ``M_c = sum_k W[c, k] * F[k]`` and the
logit is ``mean(M_c) + b[c]``: the maps and the ranking come from the same numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from camcli import methods
from camcli.defaults import NORMALIZATIONS, PAPER_THRESHOLD

Size = tuple[int, int]


def valid_mask(sizes: list[Size], height: int, width: int) -> np.ndarray:
    """(N, 1, height, width) float32 mask: 1 inside each map's valid top-left (h_i, w_i) region."""
    rows = np.arange(height).reshape(1, height, 1)
    cols = np.arange(width).reshape(1, 1, width)
    hs = np.array([h for h, _ in sizes]).reshape(-1, 1, 1)
    ws = np.array([w for _, w in sizes]).reshape(-1, 1, 1)
    return ((rows < hs) & (cols < ws))[:, None].astype(np.float32)


def global_average_pool(features: np.ndarray, sizes: list[Size] | None = None) -> np.ndarray:
    """Mean of each channel over each map's valid region.

    Args:
        features: (N, C, h, w) maps, image i valid in its top-left ``sizes[i]`` region
            (zeros elsewhere); ``sizes=None`` means every map is valid everywhere.

    Returns:
        (N, C) pooled features, in the features' float precision.
    """
    if sizes is None or all(tuple(s) == tuple(features.shape[-2:]) for s in sizes):
        return features.mean(axis=(2, 3))
    mask = valid_mask(sizes, *features.shape[-2:]).astype(features.dtype, copy=False)
    return (features * mask).sum(axis=(2, 3)) / mask.sum(axis=(2, 3))


def pooled_logits(
    features: np.ndarray, weight: np.ndarray, bias: np.ndarray, sizes: list[Size] | None = None
) -> np.ndarray:
    """Logits of a GAP + linear head.

    Args:
        features: (N, C, h, w) feature maps, valid regions as in :func:`global_average_pool`.
        weight: (K, C) head weight.
        bias: (K,) head bias.
        sizes: each map's valid (h_i, w_i), or None.

    Returns:
        (N, K) logits.
    """
    pooled = global_average_pool(features, sizes)
    return pooled @ weight.astype(pooled.dtype, copy=False).T + bias.astype(pooled.dtype, copy=False)


def class_maps(features: np.ndarray, weight: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Class activation maps, before any normalization.

    Args:
        features: (N, C, h, w) feature maps.
        weight: (K, C) head weight.
        classes: optional (N, J) integer array: for each image, the classes to map.

    Returns:
        (N, K, h, w) maps of every class, or (N, J, h, w) maps of the chosen classes.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, h, w), got shape {tuple(features.shape)}")
    weight = weight.astype(features.dtype, copy=False)
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    if classes is None:
        return np.matmul(weight[None], flat).reshape(n, -1, h, w)  # (N, K, hw)
    chosen = weight[np.asarray(classes, dtype=np.int64)]  # (N, J, C)
    return np.matmul(chosen, flat).reshape(n, -1, h, w)




def gradient_map(activations: np.ndarray, grads: np.ndarray, method: str, eigen_smooth: bool = False) -> np.ndarray:
    """A gradient-weighted class map of one image, by the registered ``method`` (see
    :mod:`camcli.methods`): ``gradcam``, ``gradcam++``, ``layercam``, ``hirescam``, ``xgradcam``,
    ``eigencam`` or ``eigengradcam``.

    Args:
        activations: (C, h, w) feature maps A of the target layer.
        grads: (C, h, w) gradients of the class score (the logit) with respect to A.
        eigen_smooth: combine the method's per-channel terms by their first principal component
            (see :func:`combine`) instead of their sum (pytorch-grad-cam's ``eigen_smooth``).

    Returns:
        (h, w) float map, ReLU applied (normalize with :func:`normalize_maps` to show it).
    """
    entry = methods.get(method)
    if not entry.gradients:
        raise ValueError(f"method must be one of {', '.join(methods.gradient_methods())} here, got {method!r}")
    return globals()[entry.function](activations, grads, eigen_smooth)


def combine(terms: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """A map from a method's (C, h, w) per-channel terms (e.g. w_k A_k): their sum over channels,
    or with ``eigen_smooth`` their first principal component (:func:`first_component`); then ReLU."""
    return np.maximum(first_component(terms) if eigen_smooth else terms.sum(axis=0), 0)


# Each gradient method: (C, h, w) activations A and gradients g -> its per-channel terms, combined
# by :func:`combine` (``eigen_smooth``: see there).

def gradcam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): channel weights = mean gradient; ReLU of the weighted sum."""
    return combine(grads.mean(axis=(1, 2))[:, None, None] * activations, eigen_smooth)


def gradcampp_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): alpha = g^2 / (2 g^2 + sum(A) g^3),
    weights = sum of alpha * ReLU(g); ReLU of the weighted sum."""
    g2 = grads * grads
    sums = activations.sum(axis=(1, 2), keepdims=True)
    alpha = np.where(grads != 0, g2 / (2 * g2 + sums * g2 * grads + 1e-6), 0)
    return combine((np.maximum(grads, 0) * alpha).sum(axis=(1, 2))[:, None, None] * activations, eigen_smooth)


def layercam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): ReLU(g) * A summed over channels, then ReLU."""
    return combine(np.maximum(grads, 0) * activations, eigen_smooth)


def hirescam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): the element-wise product g * A summed over channels, then ReLU
    (no spatial averaging of the gradients, so the map is the class score's own decomposition)."""
    return combine(grads * activations, eigen_smooth)


def xgradcam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020): channel weights = sum(g * A) / (sum(A) + 1e-7) over the grid;
    ReLU of the weighted sum (pytorch-grad-cam's definition, its epsilon included)."""
    weights = (grads * activations).sum(axis=(1, 2)) / (activations.sum(axis=(1, 2)) + 1e-7)
    return combine(weights[:, None, None] * activations, eigen_smooth)


SIGN_TOLERANCE = 1e-5  # a channel sum below this share of its largest possible norm is zero (rounding)


def signed_component(projection: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """A principal component's (hw,) projection with camcli's sign: the one that correlates
    non-negatively with the positions' channel sums of the centered (hw, C) values ``flat``.
    Where those sums are zero up to rounding (below :data:`SIGN_TOLERANCE` of sqrt(C) times the
    values' norm: a LayerNorm output, whose every position has channel mean 0), they give no sign,
    and the largest-magnitude value is made positive instead."""
    sums = flat.sum(axis=1)
    if np.linalg.norm(sums) > SIGN_TOLERANCE * np.sqrt(flat.shape[1]) * np.linalg.norm(flat):
        agreement = float(projection @ sums)
        if agreement != 0:
            return -projection if agreement < 0 else projection
    return -projection if projection[np.argmax(np.abs(projection))] < 0 else projection


def first_component(values: np.ndarray) -> np.ndarray:
    """The projection of each grid position's (C,) vector on the first principal component of
    ``values`` (C, h, w), centered over positions (pytorch-grad-cam's ``get_2d_projection``).

    A principal component has no sign of its own (the SVD may return either), so camcli fixes it:
    the sign for which the projection correlates non-negatively with the channel sum of the
    centered values (the map points where the layer is most active); where those sums are zero
    (see :func:`signed_component`), the sign that makes the largest-magnitude value positive.
    Returns (h, w) float32.
    """
    c, h, w = values.shape
    flat = np.nan_to_num(values.reshape(c, h * w).T.astype(np.float64))  # (hw, C)
    flat = flat - flat.mean(axis=0)
    if not flat.any():
        return np.zeros((h, w), np.float32)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    projection = signed_component(flat @ vt[0], flat)
    return projection.reshape(h, w).astype(np.float32)


def eigencam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the layer's
    activations (see :func:`first_component` for its sign), then ReLU. It uses no gradient and
    no class: every class of an image gets the same map (already a component: ``eigen_smooth``
    changes nothing)."""
    return np.maximum(first_component(activations), 0)


def eigengradcam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of g * A (class-specific,
    see :func:`first_component`), then ReLU (``eigen_smooth`` changes nothing)."""
    return np.maximum(first_component(grads * activations), 0)


def gradcamelementwise_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``): ReLU(g * A) per
    position and channel, summed over channels, then ReLU."""
    return combine(np.maximum(grads * activations, 0), eigen_smooth)


def fem_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False, k: float = 2.0) -> np.ndarray:
    """FEM, the feature explanation method (Fuad et al. 2020, pytorch-grad-cam's ``FEM``): channel
    weights = the fraction of the channel's positions above its mean + ``k`` standard deviations;
    ReLU of the weighted sum. No gradient, no class."""
    acts = activations.astype(np.float64)
    threshold = acts.mean(axis=(1, 2), keepdims=True) + k * acts.std(axis=(1, 2), keepdims=True)
    weights = (acts > threshold).mean(axis=(1, 2))
    return combine(weights[:, None, None] * acts, eigen_smooth).astype(np.float32)


def kpcacam_map(activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """KPCA-CAM (Karmani et al. 2024, pytorch-grad-cam's ``KPCA_CAM``): the first kernel principal
    component of the positions' centered (C,) vectors, with scikit-learn's ``KernelPCA``
    defaults: a sigmoid kernel tanh(<x, y> / C + 1), centered in feature space, the projection
    eigenvector x sqrt(eigenvalue); its sign by :func:`first_component`'s rule; then ReLU. No
    gradient, no class."""
    c, h, w = activations.shape
    flat = np.nan_to_num(activations.reshape(c, h * w).T.astype(np.float64))
    flat = flat - flat.mean(axis=0)
    kernel = np.tanh(flat @ flat.T / c + 1.0)
    n = len(kernel)
    centering = np.full((n, n), 1.0 / n)
    kernel = kernel - centering @ kernel - kernel @ centering + centering @ kernel @ centering
    values, vectors = np.linalg.eigh((kernel + kernel.T) / 2)
    if values[-1] <= 0:
        return np.zeros((h, w), np.float32)
    projection = signed_component(vectors[:, -1] * np.sqrt(values[-1]), flat)
    return np.maximum(projection.reshape(h, w), 0).astype(np.float32)


# The baselines (see :mod:`camcli.methods`): maps that know nothing of the model, which a method
# has to beat before its maps can be trusted. Each takes one image's (3, H, W) model input and
# its (h, w) map grid.

def random_map(x: np.ndarray, grid: Size) -> np.ndarray:
    """Uniform noise on the map grid, seeded by the input's bytes (the same image always gets
    the same map, in any batch or engine)."""
    seed = zlib.crc32(np.ascontiguousarray(x, np.float32).tobytes())
    return np.random.default_rng(seed).random(grid).astype(np.float32)


def center_map(x: np.ndarray, grid: Size) -> np.ndarray:
    """A Gaussian centred on the grid, its standard deviation a quarter of each side."""
    ys = (np.arange(grid[0]) + 0.5 - grid[0] / 2) / (grid[0] / 4)
    xs = (np.arange(grid[1]) + 0.5 - grid[1] / 2) / (grid[1] / 4)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


def sobel_map(x: np.ndarray, grid: Size) -> np.ndarray:
    """Edge magnitude of the input, at input resolution: the channel mean, then half the absolute
    3x3 Sobel derivative in x plus half in y (pytorch-grad-cam's ``sobel_cam``, on the model
    input and without its rounding to 8 bits)."""
    gray = np.asarray(x, np.float32).mean(axis=0)
    return (0.5 * np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3))
            + 0.5 * np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))).astype(np.float32)


def upsample_corners(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with the corner pixels aligned (PyTorch's ``UpsamplingBilinear2d``,
    ``align_corners=True``: output pixel y samples input position y (h - 1) / (H - 1)), unlike
    :func:`upsample_to`; pytorch-grad-cam's ScoreCAM upsamples its masks this way.

    Args:
        maps: (..., h, w) maps.
        size: (H, W).

    Returns:
        float32 (..., H, W).
    """
    def weights(n_in: int, n_out: int) -> np.ndarray:  # (n_out, n_in) interpolation matrix
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        low = np.minimum(np.floor(pos).astype(int), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = pos - low
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), low), 1 - frac)
        np.add.at(m, (np.arange(n_out), high), frac)
        return m

    maps = np.asarray(maps, dtype=np.float64)
    rows, cols = weights(maps.shape[-2], size[0]), weights(maps.shape[-1], size[1])
    return (rows @ maps @ cols.T).astype(np.float32)  # two matrix products (BLAS): einsum took 14x longer


def scorecam_masks(activations: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Score-CAM's masks (Wang et al. 2020, as pytorch-grad-cam makes them): each channel of
    ``activations`` (C, h, w) upsampled with corners aligned to ``size`` and min-max normalized
    to [0, 1] (1e-8 in the denominator). Returns float32 (C, H, W); the model then scores the
    input multiplied by each mask."""
    up = upsample_corners(activations, size)
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return ((up - low) / (high - low + 1e-8)).astype(np.float32)


def scorecam_map(activations: np.ndarray, scores: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Score-CAM: channel weights = softmax over channels of the class score (the logit) of the
    input masked by each channel (``scores``: (C,)); ReLU of the weighted sum of ``activations``
    (``eigen_smooth``: see :func:`combine`)."""
    z = scores.astype(np.float64) - scores.max()
    weights = np.exp(z) / np.exp(z).sum()
    return combine(weights[:, None, None] * activations.astype(np.float64), eigen_smooth).astype(np.float32)


def ablationcam_map(activations: np.ndarray, weight_c: np.ndarray, logit: float, eigen_smooth: bool = False) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020) of a GAP + linear head, in closed form.

    Channel weights are (y - y_k) / y, y the class logit and y_k the logit with channel k
    ablated (pytorch-grad-cam's definition): set to 0 where the layer's minimum is 0, else to that
    minimum - 1e7. Through global average pooling and the linear head, y - y_k is exactly
    W[c, k] (mean(A_k) - ablated value), so no forward pass is needed.

    Args:
        activations: (C, h, w) the image's feature maps A.
        weight_c: (C,) the head's row W[c].
        logit: the class's logit y.

    Returns:
        (h, w) float32 map, ReLU applied.
    """
    acts = activations.astype(np.float64)
    ablated = 0.0 if acts.min() == 0 else float(acts.min()) - 1e7
    drops = weight_c.astype(np.float64) * (acts.mean(axis=(1, 2)) - ablated)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = drops / logit
    return combine(np.nan_to_num(weights)[:, None, None] * acts, eigen_smooth).astype(np.float32)


def head_gradients(weight: np.ndarray, c: int, shape: tuple[int, int, int]) -> np.ndarray:
    """d logit_c / d A for a GAP + linear head, exactly: W[c, k] / (h w) at every position.

    (The logit is mean(M_c) + b_c = sum_k W[c, k] mean(A_k) + b_c.) So on such a model the
    gradient methods need no backward pass, and Grad-CAM equals the ReLU of the CAM up to scale.
    """
    channels, h, w = shape
    return np.broadcast_to((weight[c] / (h * w)).astype(np.float32)[:, None, None], (channels, h, w))


FINER_COMPARISONS = 3  # FinerCAM's classes compared with the mapped one (pytorch-grad-cam's default: 1, 2, 3)
FINER_ALPHA = 1.0  # and the strength of the comparison


def finer_classes(logits: np.ndarray, c: int, count: int = FINER_COMPARISONS) -> np.ndarray:
    """FinerCAM's comparison classes for class ``c`` of one image's (K,) logits: the ``count``
    other classes whose logits are nearest to c's (pytorch-grad-cam's order: by |y - y_c|)."""
    order = np.argsort(np.abs(np.asarray(logits, np.float64) - float(logits[c])), kind="stable")
    return order[order != c][:count]


def finer_score_gradient(logits: np.ndarray, c: int, alpha: float = FINER_ALPHA) -> np.ndarray:
    """d s / d y for FinerCAM's score of class ``c`` (Zhang et al. 2025, pytorch-grad-cam's
    ``FinerWeightedTarget``): s = sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9) over the
    comparison classes j (:func:`finer_classes`), p the softmax of the (K,) logits y, which
    depends on y too. Returns float64 (K,)."""
    y = np.asarray(logits, np.float64)
    p = softmax(y[None])[0]
    classes = finer_classes(y, c)
    eye = np.eye(len(y))
    dp = p[classes, None] * (eye[classes] - p[None, :])  # (J, K): d p_j / d y
    gaps = y[c] - alpha * y[classes]
    numerator = float(p[classes] @ gaps)
    d_numerator = gaps @ dp + p[classes] @ (eye[c][None, :] - alpha * eye[classes])
    denominator = float(p[classes].sum()) + 1e-9
    return (d_numerator * denominator - numerator * dp.sum(axis=0)) / denominator**2


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, computed stably (max subtracted) in float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def heatmap(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One map, min-max normalized at feature resolution, then upsampled to ``size`` (height,
    width): float32 in [0, 1].

    The order is the CAM tutorial's (``returnCAM``: min-max at 7x7, then ``cv2.resize``). It is
    not the same as normalizing the upsampled map: bilinear upsampling blurs an interior peak
    below the maximum, so here the upsampled map's top may stay below 1, and a box threshold
    is a fraction of the map's own maximum at feature resolution.
    """
    return upsample_to(normalize_maps(np.asarray(cam_map, dtype=np.float32)), size)




def display_maps(maps: np.ndarray, mode: str = "shared", weights: np.ndarray | None = None) -> np.ndarray:
    """The maps of one image scaled to [0, 1] for display.

    Args:
        maps: (J, h, w) raw maps of one image (J classes).
        mode: ``shared`` (ReLU, then one scale for the image, so a weak class looks weak; for
            one map the same as ``relu``), ``relu`` (ReLU, then each map divided by its own
            maximum: a map with no positive evidence stays empty), or ``minmax`` (each map on
            its own, no ReLU: the original tutorial's ``returnCAM``, where a class's least
            negative region shows as hot).
        weights: for ``shared``, (J,) weights in [0, 1] of maps that are not on one scale
            (gradient methods, see :attr:`camcli.methods.Method.common_scale`): each map is
            divided by its own maximum and multiplied by its weight (the class's probability
            relative to the most probable mapped class). None: all J maps divided by their
            largest value.

    Returns:
        float32 (J, h, w) in [0, 1].
    """
    maps = np.asarray(maps, dtype=np.float32)
    if mode == "minmax":
        return normalize_maps(maps)
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
    positive = np.maximum(maps, 0)
    own = mode == "relu" or weights is not None
    top = positive.max(axis=(-2, -1), keepdims=True) if own else positive.max(keepdims=True)
    shown = np.where(top > 0, positive / np.where(top > 0, top, 1), 0).astype(np.float32)
    if mode == "shared" and weights is not None:
        shown *= np.clip(np.asarray(weights, np.float32), 0, 1)[:, None, None]
    return shown


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max normalize each map (last two dims) to [0, 1]; a constant map becomes zeros.

    Args:
        maps: (..., h, w) maps.

    Returns:
        float32 maps of the same shape, in [0, 1] (computed in float64 when given float64).
    """
    maps = np.asarray(maps)
    maps = maps if maps.dtype == np.float64 else maps.astype(np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    safe = np.where(span > 0, span, 1)
    return np.where(span > 0, (maps - low) / safe, 0).astype(np.float32)


def upsample_to(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of maps to an image size, pixel centers aligned (OpenCV's
    INTER_LINEAR, the same as PyTorch's ``interpolate(..., align_corners=False)``).

    Args:
        maps: (h, w) or (..., h, w) float maps.
        size: (height, width) of the target image.

    Returns:
        float32 maps of shape (height, width) or (..., height, width).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        return cv2.resize(maps, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in flat])
    return out.reshape(*maps.shape[:-2], *size)


# Boxes use pixel-edge coordinates [x0, y0, x1, y1]: a box covering pixel columns 0..9 is
# [0, y0, 10, y1]. Maps passed here are min-max normalized and at image resolution.
Box = list[int]


def component_boxes(cam_norm: np.ndarray, threshold: float) -> list[tuple[int, Box]]:
    """Every 8-connected region of ``cam_norm > threshold``, as (area, box), largest first.

    Args:
        cam_norm: (H, W) map normalized to [0, 1].
        threshold: fraction of the map's range (the CAM paper uses 0.2).
    """
    mask = (np.asarray(cam_norm) > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = [
        (int(stats[i, cv2.CC_STAT_AREA]),
         [int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP]),
          int(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH]),
          int(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT])])
        for i in range(1, count)
    ]
    return sorted(regions, key=lambda r: -r[0])


def largest_component_box(cam_norm: np.ndarray, threshold: float = PAPER_THRESHOLD) -> Box | None:
    """The CAM paper's box: around the largest connected region above ``threshold``; None if empty."""
    regions = component_boxes(cam_norm, threshold)
    return regions[0][1] if regions else None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (0 when either is empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def map_peak(cam_map: np.ndarray) -> tuple[float, float]:
    """(x, y) of the center of the map's maximum pixel (first one on ties)."""
    y, x = np.unravel_index(int(np.argmax(cam_map)), np.shape(cam_map))
    return x + 0.5, y + 0.5


def point_hits_box(point: tuple[float, float], box: Sequence[float], tolerance: float = 15.0) -> bool:
    """Pointing game (TorchRay): the point lies within ``tolerance`` pixels of the box."""
    x, y = point
    dx = max(box[0] - x, 0.0, x - box[2])
    dy = max(box[1] - y, 0.0, y - box[3])
    return dx * dx + dy * dy <= tolerance * tolerance
