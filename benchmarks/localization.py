"""Localization benchmark: how input geometry changes CAM localization.

    python benchmarks/localization.py            # input geometry: writes its table into benchmarks/README.md
    python benchmarks/localization.py --methods  # cam, gradcam, gradcam++, layercam on one head
    python benchmarks/localization.py --vgg      # vgg16 against vgg16_gap (needs torchvision's ImageNet VGG16 weights)
    python benchmarks/localization.py --calibrate  # evaluate --calibrate on one half of the scenes, scored on the other

Builds a composite set of its own: photographs that scikit-image and scikit-learn ship
(cat, coffee cup, astronaut, flower, temple; licenses in sample_data/README.md and the
scikit-learn sample-image README) pasted at known boxes onto textures scikit-image ships
(brick, grass, gravel; CC0), on non-square canvases. Then, for each setting, it trains a
head on the frozen default backbone and runs `evaluate` with the boxes.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from readme_section import README, write_section
from sklearn.datasets import load_sample_image

from camcli import methods
from camcli.config import resolve_train_config
from camcli.evaluate import load_boxes
from camcli.factory import load
from camcli.jobs import EvaluateJob, LocalEngine
from camcli.train import fit

OBJECTS = {
    "cat": lambda: skimage.data.chelsea()[20:300, 120:420],
    "coffee": lambda: skimage.data.coffee()[30:370, 60:540],
    "astronaut": lambda: skimage.data.astronaut(),
    "flower": lambda: load_sample_image("flower.jpg")[0:427, 100:540],
    "temple": lambda: load_sample_image("china.jpg"),
}
TEXTURES = (skimage.data.brick, skimage.data.grass, skimage.data.gravel)
PER_CLASS = {"train": 24, "val": 16}
SETTINGS = [  # name, training resize and img_size, cam sizes for evaluation
    ("squash 224", "squash", 224, []),
    ("squash 224, cam 448", "squash", 224, [448]),
    ("keep-aspect 224", "keep-aspect", 224, []),
    ("keep-aspect 224, cam 320", "keep-aspect", 224, [320]),
    ("keep-aspect 224, cams 224+320", "keep-aspect", 224, [224, 320]),
    ("keep-aspect 320", "keep-aspect", 320, []),
]



def evaluate(model, data: Path, boxes: dict, cam_sizes=(), workers: int = 1, method: str = "auto") -> dict:
    """camcli evaluate's metrics (the job writes its run folder to a temporary one)."""
    job = EvaluateJob(data, boxes, cam_sizes=cam_sizes, method=method, workers=workers, out=Path(tempfile.mkdtemp()))
    job.validate()
    job, samples = job.bind(model)
    return job.finish(model, LocalEngine().run(job, model, samples))

def build(root: Path, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    objects = {k: np.ascontiguousarray(v()) for k, v in OBJECTS.items()}
    textures = [np.stack([t()] * 3, axis=-1) for t in TEXTURES]
    boxes: dict[str, dict] = {"train": {}, "val": {}}
    for split, count in PER_CLASS.items():
        for name, obj in objects.items():
            for i in range(count):
                ch, cw = (int(rng.integers(200, 300)), int(rng.integers(320, 480)))
                if rng.random() < 0.3:
                    ch, cw = cw, ch  # some portrait canvases
                tex = textures[rng.integers(len(textures))]
                y, x = rng.integers(0, 512 - 200, size=2)
                crop = tex[y : y + 200, x : x + 200]
                tint = rng.uniform(0.6, 1.2, size=3)
                canvas = np.clip(cv2.resize(crop, (cw, ch)) * tint, 0, 255).astype(np.uint8)
                side = rng.uniform(0.35, 0.6) * min(ch, cw)
                scale = side / max(obj.shape[:2])
                oh, ow = max(8, round(obj.shape[0] * scale)), max(8, round(obj.shape[1] * scale))
                patch = cv2.resize(obj, (ow, oh), interpolation=cv2.INTER_AREA)
                top, left = int(rng.integers(0, ch - oh + 1)), int(rng.integers(0, cw - ow + 1))
                canvas[top : top + oh, left : left + ow] = patch
                rel = f"{name}/{name}_{i:02d}.jpg"
                (root / split / name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / split / rel), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                boxes[split][rel] = [left, top, left + ow, top + oh]
    for split in boxes:
        (root / f"{split}_boxes.json").write_text(json.dumps(boxes[split]))
    return boxes


METHODS = methods.NAMES


def _row(name: str, r: dict, extra: str = "") -> str:
    return (f"| {name} | {r['accuracy']:.3f} | {r['pointing_game']:.3f} | {r['gt_known_loc']:.3f} | "
            f"{r['max_box_acc']:.3f} ({r['best_threshold']:.2f}) | {r['max_box_acc_v2']:.3f} |{extra}")


def trained_composite(tmp: Path) -> tuple[Path, dict, Path]:
    """The composite set built in ``tmp``, its validation boxes, and the run folder of one default
    (keep-aspect 224) head trained on it."""
    root = tmp / "composite"
    build(root)
    out = tmp / "run"
    fit(resolve_train_config(data=str(root), out=str(out), workers=1))
    return root, load_boxes(root / "val_boxes.json", root / "val"), out


def methods() -> None:
    """Every method on the same keep-aspect 224 head of the default backbone, at the ranking
    pass's maps and at cam size 320; seconds per image of the whole evaluate pass."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, truth, out = trained_composite(Path(tmp))
        model = load(out / "best.safetensors", device="cpu")
        for cam_sizes in ([], [320]):
            for method in METHODS:
                start = time.perf_counter()
                result = evaluate(model, root / "val", truth, cam_sizes=cam_sizes, workers=1, method=method)
                per_image = (time.perf_counter() - start) / result["num_images"]
                name = method + (f", cam {cam_sizes[0]}" if cam_sizes else "")
                rows.append(_row(name, result, f" {per_image * 1000:.0f} |"))
                print(rows[-1], file=sys.stderr)
    table = "\n".join(["| method | accuracy | pointing game | GT-known loc @ 0.2 | MaxBoxAcc (best threshold) | MaxBoxAccV2 | "
                       "ms per image (evaluate) |", "|---|---|---|---|---|---|---|", *rows])
    print(table)
    write_section("localization-methods", table)


def vgg() -> None:
    """The CAM paper's VGGnet-GAP geometry (no last pooling: 14x14) against plain VGG16 (7x7),
    each with a trained GAP + linear head on ImageNet VGG16 features."""
    from camcli.backbones import torchvision_cache_path

    if not torchvision_cache_path("vgg16").is_file():
        sys.exit(f"--vgg needs torchvision's ImageNet VGG16 weights at {torchvision_cache_path('vgg16')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "composite"
        build(root)
        truth = load_boxes(root / "val_boxes.json", root / "val")
        for arch in ("vgg16", "vgg16_gap"):
            out = Path(tmp) / arch
            fit(resolve_train_config(data=str(root), arch=arch, lr=0.001, out=str(out), workers=1))
            result = evaluate(load(out / "best.safetensors", device="cpu"), root / "val", truth, workers=1)
            rows.append(_row(arch, result))
            print(rows[-1], file=sys.stderr)
    table = "\n".join(["| backbone | accuracy | pointing game | GT-known loc @ 0.2 | MaxBoxAcc (best threshold) | MaxBoxAccV2 |",
                       "|---|---|---|---|---|---|", *rows])
    print(table)
    write_section("localization-vgg", table)


def calibrate() -> None:
    """evaluate --calibrate (map size and threshold) on the even-numbered validation scenes, scored
    on the odd-numbered ones, and the other way round, against the defaults (ranking-pass maps,
    threshold 0.2), on one keep-aspect 224 head of the default backbone."""
    halves = {"even": "*[13579].jpg", "odd": "*[02468].jpg"}  # the pattern that leaves the other half out
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, truth, out = trained_composite(Path(tmp))
        for fit_half, score_half in (("even", "odd"), ("odd", "even")):
            job = EvaluateJob(root / "val", truth, checkpoint=out / "best.safetensors", calibrate=True, workers=1,
                              exclude=[halves[fit_half]], out=Path(tmp) / f"cal_{fit_half}")
            job.validate()
            model = load(out / "best.safetensors", device="cpu")
            job, samples = job.bind(model)
            chosen = job.finish(model, LocalEngine().run(job, model, samples))["calibration"]
            scored = {}
            for name, checkpoint in (("default", out / "best.safetensors"), ("calibrated", job.run_dir / "calibrated.safetensors")):
                model = load(checkpoint, device="cpu")
                scoring = EvaluateJob(root / "val", truth, checkpoint=checkpoint, workers=1, exclude=[halves[score_half]],
                                      out=Path(tempfile.mkdtemp()))
                scoring.validate()
                scoring, samples = scoring.bind(model)
                scored[name] = scoring.finish(model, LocalEngine().run(scoring, model, samples))
            d, c = scored["default"], scored["calibrated"]
            tried = ", ".join(f"{s}: {a:.3f}" for s, a in chosen["max_box_acc_by_cam_size"].items())
            rows.append(f"| {fit_half} -> {score_half} ({d['num_images_with_boxes']} scenes) | {tried} | {chosen['cam_size']}, "
                        f"{chosen['threshold']:.2f} | {d['gt_known_loc']:.3f} | {c['gt_known_loc']:.3f} | {d['max_box_acc']:.3f} | "
                        f"{c['max_box_acc']:.3f} |")
            print(rows[-1], file=sys.stderr)
    table = "\n".join(["| calibrated on -> scored on | MaxBoxAcc by map size (calibration half) | chosen size, threshold | "
                       "GT-known loc, defaults | GT-known loc, calibrated | MaxBoxAcc, defaults | MaxBoxAcc, calibrated |",
                       "|---|---|---|---|---|---|---|", *rows])
    print(table)
    for readme in (README, Path(__file__).resolve().parents[1] / "docs" / "localization.md"):
        write_section("localization-calibrated", table, readme)


def main() -> None:
    if "--calibrate" in sys.argv[1:]:
        return calibrate()
    if "--methods" in sys.argv[1:]:
        return methods()
    if "--vgg" in sys.argv[1:]:
        return vgg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "composite"
        build(root)
        truth = load_boxes(root / "val_boxes.json", root / "val")
        trained: dict[tuple[str, int], Path] = {}
        for name, resize, img_size, cam_sizes in SETTINGS:
            start = time.time()
            key = (resize, img_size)
            if key not in trained:
                out = Path(tmp) / f"run_{resize}_{img_size}"
                fit(resolve_train_config(data=str(root), resize=resize, img_size=img_size, out=str(out), workers=1))
                trained[key] = out / "best.safetensors"
            model = load(trained[key], device="cpu")
            result = evaluate(model, root / "val", truth, cam_sizes=cam_sizes, workers=1)
            rows.append((name, result, time.time() - start))
            print(f"{name}: acc {result['accuracy']:.3f} pointing {result['pointing_game']:.3f} "
                  f"MaxBoxAcc {result['max_box_acc']:.3f} @ {result['best_threshold']:.2f} "
                  f"V2 {result['max_box_acc_v2']:.3f} GT-known@0.2 {result['gt_known_loc']:.3f}", file=sys.stderr)
    lines = [
        "| setting | accuracy | pointing game | GT-known loc @ 0.2 | MaxBoxAcc (best threshold) | MaxBoxAccV2 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, _ in rows:
        lines.append(_row(name, r))
    table = "\n".join(lines)
    print(table)
    write_section("localization", table)


if __name__ == "__main__":
    main()
