"""Compare `camcli train`'s head with scikit-learn's LogisticRegression on the same
frozen, pooled features and the same split.

    python benchmarks/linear_probe.py [DATA] [--arch efficientnet_lite0]
    python benchmarks/linear_probe.py --digits   # scikit-learn's 1797 handwritten digits

Prints both validation accuracies and the majority-class baseline. ``--digits`` writes
scikit-learn's digits (real scans, 8x8, 10 classes) as a flat ImageFolder of 32x32 PNGs
into a temporary folder and uses the seeded 20% validation split.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from camcli.backbones import build_backbone
from camcli.config import resolve_train_config
from camcli.data import Preprocess, load_image_folder
from camcli.jobs import pooled_features
from camcli.runtime import TorchRunner
from camcli.train import fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default="sample_data")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--digits", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.digits:
            args.data = _write_digits(Path(tmp) / "digits")
        cfg = resolve_train_config(data=args.data, arch=args.arch, out=str(Path(tmp) / "run"), workers=1)
        result = fit(cfg)
        report(args, cfg, result)


def _write_digits(root: Path) -> str:
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        gray = (image * (255 / 16)).astype("uint8")
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.resize(gray, (32, 32), interpolation=cv2.INTER_NEAREST))
    return str(root)


def report(args, cfg, result) -> None:
    train, val, classes = load_image_folder(Path(args.data), cfg.val_split, cfg.seed)
    backbone = build_backbone(args.arch, "imagenet")
    pre = Preprocess(cfg.img_size, backbone.mean, backbone.std, cfg.resize, backbone.stride)
    runner = TorchRunner(backbone.features, torch.device("cpu"))
    xtr = np.concatenate(list(pooled_features(runner, [p for p, _ in train], pre, 32, 0)))
    xva = np.concatenate(list(pooled_features(runner, [p for p, _ in val], pre, 32, 0)))
    ytr, yva = [y for _, y in train], [y for _, y in val]
    sk = LogisticRegression(max_iter=5000).fit(xtr, ytr).score(xva, yva)
    majority = Counter(yva).most_common(1)[0][1] / len(yva)
    print(f"data={args.data} arch={args.arch} train={len(train)} val={len(val)} classes={len(classes)}")
    print(f"camcli best val acc  {result.best['val_acc']:.4f} (epoch {result.best['epoch']}, last {result.history[-1]['val_acc']:.4f})")
    print(f"sklearn LogisticRegression val acc {sk:.4f}")
    print(f"majority-class baseline {majority:.4f}")


if __name__ == "__main__":
    main()
