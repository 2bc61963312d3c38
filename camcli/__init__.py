"""camcli: Class Activation Mapping for PyTorch image classifiers.

The public API::

    import camcli
    model = camcli.load("runs/train/exp/best.safetensors")   # or an arch name: camcli.load("efficientnet_lite0")
    rows = model.predict(["cat.jpg"], top_k=3)        # [{"path", "predictions": [{"label", "index", "prob"}]}]
    maps = model.maps(["cat.jpg"])                    # float32 (N, K, h, w), raw CAMs
    overlay = camcli.render_overlay(image_rgb, maps[0, 0], alpha=0.5, colormap="jet")

Names are imported when first used, so ``import camcli`` (and ``camcli --help``) stays light.
"""

from __future__ import annotations

import importlib
import os

# FFmpeg's and OpenCV's native logs are silenced before OpenCV is first imported (camcli.video)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

__version__ = "0.3.3"

_API = {
    "Model": "camcli.engine",
    "CamModel": "camcli.engine",
    "GradModel": "camcli.gradients",
    "load": "camcli.factory",
    "ModelSpec": "camcli.factory",
    "list_layers": "camcli.factory",
    "PredictJob": "camcli.jobs",
    "OverlayJob": "camcli.jobs",
    "EvaluateJob": "camcli.jobs",
    "run_here": "camcli.jobs",
    "CamcliError": "camcli.errors",
    "render_overlay": "camcli.render",
    "class_maps": "camcli.cam",
    "normalize_maps": "camcli.cam",
    "pooled_logits": "camcli.cam",
    "upsample_to": "camcli.cam",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:  # camcli.GradModel without PyTorch: a CamcliError that names the extra, not an ImportError
        return getattr(importlib.import_module("camcli.errors").need(_API[name], f"camcli.{name}"), name)
    raise AttributeError(f"module 'camcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
