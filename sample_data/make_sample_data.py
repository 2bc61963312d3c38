"""Regenerate ``sample_data/`` from photographs that scikit-image ships in its wheel.

Run from the repository root with scikit-image installed (``pip install -e .[test]``)::

    python sample_data/make_sample_data.py

Each class comes from one photograph. The photograph is cut along its longer side
into a training region (first 60%) and a validation region (last 35%, after a 5% gap),
and crops are drawn from each region only, so validation crops never share a pixel
with training crops. The output is deterministic (fixed seed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import skimage.data

# class name -> scikit-image loader; licenses are in sample_data/README.md
PHOTOS = {
    "brick": skimage.data.brick,
    "cat": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "grass": skimage.data.grass,
    "rocket": skimage.data.rocket,
}
N_TRAIN, N_VAL = 16, 6
MAX_SIDE = 256


def _regions(h: int, w: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Train and val regions as (y0, y1, x0, x1), split along the longer side."""
    if w >= h:
        return (0, h, 0, int(0.60 * w)), (0, h, int(0.65 * w), w)
    return (0, int(0.60 * h), 0, w), (int(0.65 * h), h, 0, w)


def _crop(image: np.ndarray, region: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    y0, y1, x0, x1 = region
    rh, rw = y1 - y0, x1 - x0
    side = min(rh, rw)
    ch = int(rng.uniform(0.6, 1.0) * side)
    cw = int(min(rw, ch * rng.uniform(0.75, 1.33)))
    ch = min(ch, rh)
    top = y0 + int(rng.integers(0, rh - ch + 1))
    left = x0 + int(rng.integers(0, rw - cw + 1))
    crop = image[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = MAX_SIDE / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def main(root: Path = Path(__file__).resolve().parent) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        shutil.rmtree(root / split, ignore_errors=True)
    for name, loader in PHOTOS.items():
        rgb = loader()
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        train_region, val_region = _regions(*rgb.shape[:2])
        for split, region, count in (("train", train_region, N_TRAIN), ("val", val_region, N_VAL)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                crop = _crop(rgb, region, rng)
                cv2.imwrite(str(folder / f"{name}_{i:02d}.jpg"), crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


if __name__ == "__main__":
    main()
