"""Colormap, blend, caption and image encoding for overlays."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from camcli import defaults, methods
from camcli.cam import display_maps, heatmap, largest_component_box, upsample_to
from camcli.errors import CamcliError
from camcli.files import atomic_write, printable

COLORMAPS = {name: getattr(cv2, f"COLORMAP_{name.upper()}") for name in defaults.COLORMAPS}


def colormap_id(name: str) -> int:
    """OpenCV colormap constant for a name such as ``jet`` or ``turbo``."""
    try:
        return COLORMAPS[name.lower()]
    except KeyError:
        raise CamcliError(f"unknown colormap {name!r}; choose one of {', '.join(sorted(COLORMAPS))}") from None


def render_overlay(
    image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet", normalize: str = "relu"
) -> np.ndarray:
    """Blend a class activation map over an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image.
        cam: (h, w) map at any resolution, raw or normalized; it is scaled to [0, 1] by
            ``normalize`` (see :func:`camcli.cam.display_maps`) and bilinearly upsampled to (H, W).
        alpha: weight of the heatmap in the blend, in [0, 1].
        colormap: OpenCV colormap name.
        normalize: ``relu`` (default, as ``camcli overlay`` shows one map) or ``minmax``.

    Returns:
        (H, W, 3) uint8 RGB overlay, the same size as ``image_rgb``.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be (H, W, 3) uint8, got {image_rgb.dtype} {image_rgb.shape}")
    shown = display_maps(np.asarray(cam, dtype=np.float32)[None], normalize)[0]
    return blend(image_rgb, upsample_to(shown, image_rgb.shape[:2]), alpha, colormap)


def blend(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Color a normalized (H, W) heatmap in [0, 1] and blend it over an (H, W, 3) RGB image."""
    if not 0.0 <= alpha <= 1.0:
        raise CamcliError(f"`alpha` must be between 0 and 1, got {alpha}")
    heat_u8 = cv2.convertScaleAbs(np.clip(heat, 0.0, 1.0), alpha=255.0)
    colored = cv2.cvtColor(cv2.applyColorMap(heat_u8, colormap_id(colormap)), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(colored, alpha, image_rgb, 1.0 - alpha, 0.0)


def draw_caption(image_rgb: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark band, scaled to the image width.

    OpenCV's fonts draw ASCII only (and crash on text that is not UTF-8): the text is made
    printable (see files.printable) and anything else becomes ``?``."""
    text = printable(text).encode("ascii", "replace").decode("ascii")
    out = image_rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.3, min(1.2, w / 640))
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, round(4 * scale))
    cv2.rectangle(out, (0, 0), (min(w, tw + 2 * pad), min(h, th + base + 2 * pad)), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def write_image(path: Path, image_rgb: np.ndarray, before_rename=None) -> None:
    """Encode an RGB image in the format of ``path``'s extension and write it atomically
    (``before_rename``: see :func:`camcli.files.atomic_open`)."""
    ok, encoded = cv2.imencode(Path(path).suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise CamcliError(f"cannot encode an image as {Path(path).suffix}")
    atomic_write(Path(path), encoded.tobytes(), before_rename)


def draw_box(image_rgb: np.ndarray, box: list[int], color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw an [x0, y0, x1, y1] pixel-edge box, its line width scaled to the image."""
    out = image_rgb.copy()
    thickness = max(2, round(max(out.shape[:2]) / 150))
    cv2.rectangle(out, (box[0], box[1]), (box[2] - 1, box[3] - 1), color, thickness)
    return out


def _polyline(img: np.ndarray, points: np.ndarray, color: tuple[int, int, int], thickness: int, dashed: bool) -> None:
    """Draw ``points`` (N, 2) as a line, solid or dashed (8 px drawn, 6 px left out, along its length)."""
    if not dashed:
        cv2.polylines(img, [points], False, color, thickness, cv2.LINE_AA)
        return
    steps = np.hypot(*np.diff(points, axis=0).T.astype(np.float64))
    along = np.concatenate([[0], np.cumsum(steps)])
    for start in np.arange(0, along[-1], 14.0):
        t = np.clip([start, start + 8], 0, along[-1])
        ends = np.stack([np.interp(t, along, points[:, 0]), np.interp(t, along, points[:, 1])], axis=1)
        cv2.line(img, tuple(np.round(ends[0]).astype(int)), tuple(np.round(ends[1]).astype(int)), color, thickness, cv2.LINE_AA)


def plot_curves(
    xs: list[float], curves: dict[str, list[float]], title: str, x_label: str, y_label: str,
    mark: tuple[float, float] | None = None, size: tuple[int, int] = (880, 480),
) -> np.ndarray:
    """A line chart of curves over [0, 1] x [0, 1], drawn with OpenCV; returns RGB uint8.

    Args:
        xs: x values shared by every curve.
        curves: legend label -> y values.
        mark: an (x, y) point to circle, e.g. the best threshold.
    """
    width, height = size
    left, right, top, bottom = 70, 220, 56, 55  # the legend stands right of the plot: no curve runs through it
    img = np.full((height, width, 3), 255, np.uint8)
    pw, ph = width - left - right, height - top - bottom

    def at(x: float, y: float) -> tuple[int, int]:
        return left + round(x * pw), top + round((1 - y) * ph)

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (215, 215, 215), (40, 40, 40)
    for tick in np.linspace(0, 1, 6):
        cv2.line(img, at(tick, 0), at(tick, 1), grey, 1)
        cv2.line(img, at(0, tick), at(1, tick), grey, 1)
        cv2.putText(img, f"{tick:.1f}", (at(tick, 0)[0] - 12, top + ph + 20), font, 0.45, black, 1, cv2.LINE_AA)
        cv2.putText(img, f"{tick:.1f}", (left - 38, at(0, tick)[1] + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, at(0, 1), at(1, 0), black, 1)
    cv2.putText(img, title, (left, 22), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(img, x_label, (left + pw // 2 - 40, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(img, y_label, (8, top - 14), font, 0.45, black, 1, cv2.LINE_AA)
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    spacing = min(22, max(12, ph // max(len(curves), 1)))  # every legend row inside the plot's height
    for i, (label, ys) in enumerate(curves.items()):
        color = palette[i % len(palette)]
        thickness = 5 if i == 0 else 2  # the first curve widest: where a later one covers it, it still shows at the edges
        dashed = (i // len(palette)) % 2 == 1  # past ten curves the colours come again, dashed
        points = np.array([at(x, y) for x, y in zip(xs, ys)], np.int32)
        _polyline(img, points, color, thickness, dashed)
        y = top + 12 + spacing * i
        _polyline(img, np.array([(left + pw + 12, y - 4), (left + pw + 34, y - 4)]), color, thickness, dashed)
        cv2.putText(img, label, (left + pw + 40, y), font, 0.42, black, 1, cv2.LINE_AA)
    if mark is not None:
        cv2.circle(img, at(*mark), 6, black, 2, cv2.LINE_AA)
        x, y = at(*mark)
        cv2.putText(img, f"best {mark[0]:.2f}: {mark[1]:.3f}", (x + 8, max(top + 12, y - 10)), font, 0.45, black, 1, cv2.LINE_AA)
    return img


def overlay_images(
    image_rgb: np.ndarray, maps: np.ndarray, classes: list[int], probs: np.ndarray, class_names: list[str], options,
    threshold: float, method: str = "cam",
) -> tuple[list[np.ndarray], list[int] | None]:
    """One RGB overlay per mapped class (see :func:`write_overlays`), and the first mapped class's
    box (largest region above ``threshold``, original-image pixels) or None."""
    box = None
    mapped_probs = np.asarray([float(probs[c]) for c in classes], np.float64)
    weights = None if methods.get(method).common_scale else mapped_probs / max(float(mapped_probs.max()), 1e-300)
    shown = display_maps(np.stack([np.asarray(m, np.float32) for m in maps[: len(classes)]]), options.normalize, weights)
    overlays = []
    for j, c in enumerate(classes):
        if j == 0:  # boxes threshold the min-max map, as evaluate and calibration do
            box = largest_component_box(heatmap(maps[j], image_rgb.shape[:2]), threshold)
        overlay = blend(image_rgb, upsample_to(shown[j], image_rgb.shape[:2]), options.alpha, options.colormap)
        if options.draw_box and j == 0 and box is not None:
            overlay = draw_box(overlay, box)
        if options.caption:
            overlay = draw_caption(overlay, f"{class_names[c]} {float(probs[c]):.1%}")
        overlays.append(overlay)
    return overlays, box


def write_overlays(
    image_rgb: np.ndarray, maps: np.ndarray, classes: list[int], probs: np.ndarray,
    class_names: list[str], paths: list[Path], options, threshold: float,
    recorder: Callable[[Path], Callable[[os.stat_result], None]], method: str = "cam",
) -> tuple[list[Path], list[int] | None]:
    """Write one overlay per mapped class, then the raw maps (``options``: an overlay job's
    alpha, colormap, caption, draw_box, normalize and save_raw; ``method``: the maps' method,
    which says what ``normalize shared`` does, see :func:`camcli.cam.display_maps`).

    Returns:
        the paths written, and the first mapped class's box (largest region above
        ``threshold``, original-image pixels) or None.
    """
    overlays, box = overlay_images(image_rgb, maps, classes, probs, class_names, options, threshold, method)
    for j, overlay in enumerate(overlays):
        write_image(paths[j], overlay, recorder(paths[j]))
    if options.save_raw:
        for j in range(len(classes)):
            buffer = io.BytesIO()
            np.save(buffer, maps[j].astype(np.float32))
            atomic_write(paths[len(classes) + j], buffer.getvalue(), recorder(paths[len(classes) + j]))
    return paths, box
