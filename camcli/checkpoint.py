"""The checkpoint: a plain dict of tensors and plain Python values.

It loads with ``torch.load(path, weights_only=True)`` and is self-contained: only the
offline default backbone's packaged ImageNet weights are stored by reference (package,
file name and sha256); every other backbone is stored in full.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from camcli import __version__
from camcli.errors import CamcliError
from camcli.files import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "class_names", "img_size", "preprocess", "backbone", "head")


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file renamed into place)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(Path(path), buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load and check a checkpoint without unpickling arbitrary objects.

    Raises:
        CamcliError: missing file, not a camcli checkpoint, newer format, head and
            class names that disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise CamcliError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe files
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CamcliError(f"{path} is not a camcli checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if not isinstance(ckpt["format_version"], int) or ckpt["format_version"] > FORMAT_VERSION:
        raise CamcliError(
            f"{path} has checkpoint format {ckpt['format_version']!r}, newer than this camcli "
            f"({__version__}) reads ({FORMAT_VERSION}): upgrade camcli"
        )
    weight, bias = ckpt["head"].get("weight"), ckpt["head"].get("bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor) or weight.ndim != 2:
        raise CamcliError(f"{path}: head must hold a 2-D weight and a bias tensor")
    if weight.shape[0] != len(ckpt["class_names"]) or bias.shape != (weight.shape[0],):
        raise CamcliError(f"{path}: head has {weight.shape[0]} outputs but {len(ckpt['class_names'])} class names")
    return ckpt


def describe(checkpoint: dict) -> dict:
    """A checkpoint's plain facts (no tensors), for ``camcli info``."""
    head = checkpoint["head"]["weight"]
    backbone = checkpoint["backbone"]
    return {
        "format_version": checkpoint["format_version"],
        "camcli_version": checkpoint.get("camcli_version"),
        "arch": checkpoint["arch"],
        "backbone_stored": "by reference" if "reference" in backbone else "in full",
        "num_classes": int(head.shape[0]),
        "num_features": int(head.shape[1]),
        "class_names": list(checkpoint["class_names"]),
        "img_size": checkpoint["img_size"],
        "preprocess": dict(checkpoint["preprocess"]),
        "cam_threshold": checkpoint.get("cam_threshold"),
        "calibration": checkpoint.get("calibration"),
        "metrics": dict(checkpoint.get("metrics", {})),
        "config": dict(checkpoint.get("config", {})),
    }
