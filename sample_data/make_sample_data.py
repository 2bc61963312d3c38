"""Regenerate ``sample_data/``: objects from freely licensed photographs, pasted into scenes at
recorded boxes.

Run from the repository root with the test extras installed (``pip install -e '.[test]'``, for
scikit-image and scikit-learn, whose wheels hold the photographs)::

    python sample_data/make_sample_data.py

Each class is one object cut from one photograph (licenses in sample_data/README.md). Each image
is a scene: a crop of a texture photograph (brick, grass or gravel), tinted and resized to a
landscape or portrait canvas, with the object pasted at a random place and size, sometimes
mirrored. The box it was pasted at is recorded in ``train_boxes.json`` and ``val_boxes.json``
as ``{"<class>/<file>": [x0, y0, x1, y1]}`` (pixels; x1, y1 exclusive). Training scenes take
their backgrounds from the top half of each texture and validation scenes from the bottom half,
so no validation background shares a pixel with a training one. The output is deterministic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from sklearn.datasets import load_sample_image

# class -> (photograph, the object's region in it as y0, y1, x0, x1)
OBJECTS = {
    "astronaut": (skimage.data.astronaut, (0, 512, 40, 470)),
    "cat": (skimage.data.chelsea, (0, 300, 0, 390)),
    "coffee": (skimage.data.coffee, (15, 390, 60, 545)),
    "flower": (lambda: load_sample_image("flower.jpg"), (70, 370, 150, 460)),
    "rocket": (skimage.data.rocket, (60, 427, 160, 290)),
}
TEXTURES = (skimage.data.brick, skimage.data.grass, skimage.data.gravel)  # 512 x 512 grey, CC0
PER_CLASS = {"train": 16, "val": 8}
QUALITY = 85


def scene(obj: np.ndarray, texture: np.ndarray, rows: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """One RGB scene with the object pasted in it, and the object's box [x0, y0, x1, y1]."""
    ch, cw = int(rng.integers(240, 320)), int(rng.integers(340, 440))
    if rng.random() < 0.3:
        ch, cw = cw, ch  # some portrait canvases
    side = int(rng.integers(160, 230))
    y = int(rng.integers(rows[0], rows[1] - side + 1))
    x = int(rng.integers(0, texture.shape[1] - side + 1))
    crop = texture[y : y + side, x : x + side].astype(np.float32)
    tint = rng.uniform(0.6, 1.1) * rng.uniform(0.8, 1.2, size=3)  # brightness, then a mild colour cast
    canvas = np.clip(cv2.resize(crop, (cw, ch))[..., None] * tint, 0, 255).astype(np.uint8)
    scale = rng.uniform(0.45, 0.75) * min(ch, cw) / max(obj.shape[:2])
    oh, ow = round(obj.shape[0] * scale), round(obj.shape[1] * scale)
    patch = cv2.resize(obj, (ow, oh), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    top, left = int(rng.integers(0, ch - oh + 1)), int(rng.integers(0, cw - ow + 1))
    canvas[top : top + oh, left : left + ow] = patch
    return canvas, [left, top, left + ow, top + oh]


def main(root: Path = Path(__file__).resolve().parent) -> None:
    rng = np.random.default_rng(0)
    objects = {}
    for name, (load, (y0, y1, x0, x1)) in OBJECTS.items():
        objects[name] = np.ascontiguousarray(load()[y0:y1, x0:x1])
    textures = [t() for t in TEXTURES]
    halves = {"train": (0, 256), "val": (256, 512)}
    for split, count in PER_CLASS.items():
        shutil.rmtree(root / split, ignore_errors=True)
        boxes = {}
        for name, obj in objects.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                texture = textures[int(rng.integers(len(textures)))]
                rgb, box = scene(obj, texture, halves[split], rng)
                rel = f"{name}/{name}_{i:02d}.jpg"
                cv2.imwrite(str(root / split / rel), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
                boxes[rel] = box
        (root / f"{split}_boxes.json").write_text(json.dumps(boxes, indent=1) + "\n")


def moving_clip(path: Path, frames: int = 60, size: tuple[int, int] = (320, 240), fps: float = 15.0, per_object: int = 20,
                noise: float = 6.0, seed: int = 0) -> list[tuple[str, list[int]]]:
    """A clip of the validation textures with the objects crossing them, one object at a time
    (``per_object`` frames each, in class order), written losslessly (FFV1; ``path`` ends in
    .avi or .mkv), with camera-like noise (Gaussian, ``noise`` grey levels) drawn afresh each frame.

    Returns:
        per frame, the object's class and its box [x0, y0, x1, y1] (x1, y1 exclusive).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    names = list(OBJECTS)
    objects = [np.ascontiguousarray(OBJECTS[n][0]()[OBJECTS[n][1][0]:OBJECTS[n][1][1], OBJECTS[n][1][2]:OBJECTS[n][1][3]])
               for n in names]
    textures = [t() for t in TEXTURES]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, size)
    truth = []
    for i in range(frames):
        k, t = divmod(i, per_object)
        if t == 0:  # a new object crosses a new background
            texture = textures[k % len(textures)]
            crop = texture[256 : 256 + 200, 40 * k % 300 : 40 * k % 300 + 200].astype(np.float32)
            background = np.clip(cv2.resize(crop, size)[..., None] * (0.8, 0.9, 1.0), 0, 255)
            obj = objects[k % len(objects)]
            scale = 0.6 * height / max(obj.shape[:2])
            patch = cv2.resize(obj, (round(obj.shape[1] * scale), round(obj.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        oh, ow = patch.shape[:2]
        left = round((width - ow) * t / max(per_object - 1, 1))  # left to right
        top = round((height - oh) * (0.5 + 0.4 * np.sin(2 * np.pi * t / per_object)))
        canvas = background.copy()
        canvas[top : top + oh, left : left + ow] = patch
        canvas = np.clip(canvas + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        truth.append((names[k % len(names)], [left, top, left + ow, top + oh]))
    writer.release()
    return truth


if __name__ == "__main__":
    main()
