"""Class activation mapping math (Zhou et al., CVPR 2016). Pure functions, no I/O.

For features F of shape (C, h, w) and a linear head (W: (K, C), b: (K,)) applied after
global average pooling, the map of class c is ``M_c = sum_k W[c, k] * F[k]`` and the
logit is ``mean(M_c) + b[c]``: the maps and the ranking come from the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

Size = tuple[int, int]


def valid_mask(sizes: list[Size], height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(N, 1, height, width) float mask: 1 inside each map's valid top-left (h_i, w_i) region."""
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    hs = torch.tensor([h for h, _ in sizes], device=device).view(-1, 1, 1)
    ws = torch.tensor([w for _, w in sizes], device=device).view(-1, 1, 1)
    return ((rows < hs) & (cols < ws)).unsqueeze(1).float()


def global_average_pool(features: torch.Tensor, sizes: list[Size] | None = None) -> torch.Tensor:
    """Mean of each channel over each map's valid region.

    Args:
        features: (N, C, h, w) maps, image i valid in its top-left ``sizes[i]`` region
            (zeros elsewhere); ``sizes=None`` means every map is valid everywhere.

    Returns:
        (N, C) pooled features.
    """
    if sizes is None or all(tuple(s) == tuple(features.shape[-2:]) for s in sizes):
        return features.mean(dim=(2, 3))
    mask = valid_mask(sizes, *features.shape[-2:], device=features.device)
    return (features * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def pooled_logits(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, sizes: list[Size] | None = None
) -> torch.Tensor:
    """Logits of a GAP + linear head.

    Args:
        features: (N, C, h, w) feature maps, valid regions as in :func:`global_average_pool`.
        weight: (K, C) head weight.
        bias: (K,) head bias.
        sizes: each map's valid (h_i, w_i), or None.

    Returns:
        (N, K) logits.
    """
    return F.linear(global_average_pool(features, sizes), weight, bias)


def class_maps(
    features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor | None = None
) -> torch.Tensor:
    """Class activation maps, before any normalization.

    Args:
        features: (N, C, h, w) feature maps.
        weight: (K, C) head weight.
        classes: optional (N, J) long tensor: for each image, the classes to map.

    Returns:
        (N, K, h, w) maps of every class, or (N, J, h, w) maps of the chosen classes.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, h, w), got shape {tuple(features.shape)}")
    if classes is None:
        return torch.einsum("kc,nchw->nkhw", weight.to(features.dtype), features)
    chosen = weight.to(features.dtype)[classes]  # (N, J, C)
    return torch.einsum("njc,nchw->njhw", chosen, features)


def heatmap(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One map, min-max normalized then upsampled to ``size`` (height, width): float32 in [0, 1].

    (Bilinear interpolation never leaves the range of its inputs, so normalizing first, at
    feature resolution, gives the same result as normalizing the upsampled map.)
    """
    normalized = normalize_maps(torch.from_numpy(np.ascontiguousarray(cam_map, dtype=np.float32))).numpy()
    return upsample_to(normalized, size)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each map (last two dims) to [0, 1]; a constant map becomes zeros.

    Args:
        maps: (..., h, w) maps.

    Returns:
        float32 maps of the same shape, in [0, 1].
    """
    maps = maps if maps.dtype == torch.float64 else maps.float()  # float64 input keeps its precision
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - low) / safe, torch.zeros_like(maps)).float()


def upsample_to(maps: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor | np.ndarray:
    """Bilinear upsampling of maps to an image size, pixel centers aligned (``align_corners=False``).

    Args:
        maps: (N, K, h, w) or (h, w) tensor, or an (h, w) float32 array (resized with OpenCV's
            INTER_LINEAR, the same interpolation, several times faster for one map).
        size: (height, width) of the target image.

    Returns:
        maps of shape (N, K, height, width) or (height, width), of the input's type.
    """
    if isinstance(maps, np.ndarray):
        return cv2.resize(maps.astype(np.float32, copy=False), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    squeeze = maps.ndim == 2
    batch = maps[None, None] if squeeze else maps
    out = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False)
    return out[0, 0] if squeeze else out


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


def largest_component_box(cam_norm: np.ndarray, threshold: float = 0.2) -> Box | None:
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
