"""Runtimes for the backbone's forward pass: PyTorch (CPU, CUDA, MPS) and ONNX Runtime (CPU).

A runner maps a (N, 3, H, W) float32 batch to (N, C, h, w) float32 features. The head is a
small matmul done in PyTorch either way, so one exported backbone serves every checkpoint
trained on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from camcli.errors import CamcliError

BACKENDS = ("auto", "torch", "onnxruntime")
AUTO_ONNX_MIN_IMAGES = 256  # below this, exporting costs more than it saves (unless already cached)
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # max|delta| / max|reference| accepted when verifying an export


def cache_dir() -> Path:
    """camcli's cache: ``$CAMCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/camcli``, else ``~/.cache/camcli``."""
    if os.environ.get("CAMCLI_CACHE_DIR"):
        return Path(os.environ["CAMCLI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "camcli"


def weights_key(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


class TorchRunner:
    """PyTorch eager: channels-last on the CPU (about 2x faster here), autocast on CUDA when ``amp``."""

    name = "torch"

    def __init__(self, features: nn.Module, device: torch.device, amp: bool = True):
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.channels_last = device.type in ("cpu", "cuda")
        self.features = features.eval().requires_grad_(False).to(device)
        if self.channels_last:
            self.features = self.features.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            return self.features(x).float().contiguous()


class OnnxRunner:
    """ONNX Runtime's CPU execution provider on an exported backbone (dynamic batch, height, width)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # spinning intra-op threads would take the CPU from the decoding workers between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def onnx_path(arch: str, key: str) -> Path:
    """Where the export of a backbone with weights ``key`` is cached."""
    settings = json.dumps({"weights": key, "opset": ONNX_OPSET, "torch": torch.__version__, "format": 1})
    digest = hashlib.sha256(settings.encode()).hexdigest()[:20]
    return cache_dir() / "onnx" / f"{arch.replace(':', '_').replace('/', '_')}-{digest}.onnx"


def export_onnx(features: nn.Module, path: Path) -> None:
    """Export ``features`` to ``path`` (atomically), and check it reproduces PyTorch.

    Raises:
        CamcliError: the export failed or its outputs differ from PyTorch's.
    """
    features = features.eval().to("cpu", memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                features, (torch.zeros(1, 3, 224, 224),), tmp, input_names=["image"], output_names=["features"],
                dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "features": {0: "n", 2: "fh", 3: "fw"}},
                opset_version=ONNX_OPSET, dynamo=False,
            )
        runner = OnnxRunner(Path(tmp))
        generator = torch.Generator().manual_seed(0)
        for shape in ((2, 3, 224, 224), (1, 3, 224, 320)):
            x = torch.randn(*shape, generator=generator)
            with torch.inference_mode():
                reference = features(x).float()
            error = float((runner(x) - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
            if error > ONNX_TOLERANCE:
                raise CamcliError(f"the ONNX export differs from PyTorch (relative error {error:.1e})")
        os.replace(tmp, path)
    except CamcliError:
        raise
    except Exception as exc:  # exporters and runtimes fail in many ways
        raise CamcliError(f"ONNX export failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def make_runner(
    features: nn.Module, arch: str, device: torch.device, backend: str = "auto", amp: bool = True,
    num_images: int | None = None, key: Callable[[], str] | None = None,
) -> tuple[TorchRunner | OnnxRunner, str | None]:
    """Choose and build the runner.

    ``auto`` takes ONNX Runtime on the CPU when an export of these weights is cached or the
    job has at least ``AUTO_ONNX_MIN_IMAGES`` images, PyTorch otherwise. When ONNX Runtime
    fails, PyTorch takes over.

    Returns:
        (runner, a one-line warning to show the user, or None).
    """
    if backend not in BACKENDS:
        raise CamcliError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and device.type != "cpu":
        raise CamcliError(f"the onnxruntime backend runs on the CPU; use --device cpu or --backend torch (device is {device.type})")
    if backend == "torch" or device.type != "cpu":
        return TorchRunner(features, device, amp), None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        note = "onnxruntime is not installed: using PyTorch" if backend == "onnxruntime" else None
        return TorchRunner(features, device, amp), note
    path = onnx_path(arch, key() if key else weights_key(features))
    if backend == "auto" and not path.exists() and (num_images or 0) < AUTO_ONNX_MIN_IMAGES:
        return TorchRunner(features, device, amp), None
    try:
        if not path.exists():
            export_onnx(features, path)
        return OnnxRunner(path), None
    except Exception as exc:  # any failure falls back to PyTorch, said once
        return TorchRunner(features, device, amp), f"warning: ONNX Runtime unavailable for {arch} ({exc}); using PyTorch"
