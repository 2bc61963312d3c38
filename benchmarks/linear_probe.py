"""Compare `camcli train`'s head with scikit-learn's LogisticRegression on the same
frozen, pooled features and the same split.

    python benchmarks/linear_probe.py [DATA] [--arch efficientnet_lite0]

Prints both validation accuracies and the majority-class baseline.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

from camcli.backbones import build_backbone
from camcli.config import resolve_train_config
from camcli.data import Preprocess, load_image_folder
from camcli.train import fit, pooled_features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="?", default="sample_data")
    parser.add_argument("--arch", default="efficientnet_lite0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_train_config(data=args.data, arch=args.arch, out=str(Path(tmp) / "run"), workers=0)
        result = fit(cfg)
    train, val, classes = load_image_folder(Path(args.data), cfg.val_split, cfg.seed)
    backbone = build_backbone(args.arch, "imagenet")
    pre = Preprocess(cfg.img_size, backbone.mean, backbone.std)
    device = torch.device("cpu")
    xtr = pooled_features(backbone.features, [p for p, _ in train], pre, device, 32, 0).numpy()
    xva = pooled_features(backbone.features, [p for p, _ in val], pre, device, 32, 0).numpy()
    ytr, yva = [y for _, y in train], [y for _, y in val]
    sk = LogisticRegression(max_iter=5000).fit(xtr, ytr).score(xva, yva)
    majority = Counter(yva).most_common(1)[0][1] / len(yva)
    print(f"data={args.data} arch={args.arch} train={len(train)} val={len(val)} classes={len(classes)}")
    print(f"camcli best val acc  {result.best['val_acc']:.4f} (epoch {result.best['epoch']}, last {result.history[-1]['val_acc']:.4f})")
    print(f"sklearn LogisticRegression val acc {sk:.4f}")
    print(f"majority-class baseline {majority:.4f}")


if __name__ == "__main__":
    main()
