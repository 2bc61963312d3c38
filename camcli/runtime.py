"""Runtimes for the backbone's forward pass: PyTorch (CPU, CUDA, MPS) and ONNX Runtime (CPU).

A runner maps a (N, 3, H, W) float32 array to (N, C, h, w) float32 features, as NumPy
arrays. The head is a small matmul in NumPy either way, so one exported backbone serves
every checkpoint trained on it. PyTorch is imported only where a PyTorch runner is built or
an export is made: with a cached export, inference needs ONNX Runtime, NumPy and OpenCV only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from camcli import progress
from camcli.defaults import BACKENDS, DEVICES
from camcli.errors import CamcliError, first_line, need, os_error
from camcli.files import OUTPUT_MODE, atomic_write, read_bytes
from camcli.packaged import shipped_graph

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # max|delta| / max|reference| accepted when verifying an export
ONNX_CHUNK = 4  # images per ONNX Runtime run (see OnnxRunner)


def cache_dir() -> Path:
    """camcli's cache: ``$CAMCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/camcli``, else ``~/.cache/camcli``."""
    if os.environ.get("CAMCLI_CACHE_DIR"):
        return Path(os.environ["CAMCLI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "camcli"


def _may_have_cuda() -> bool:
    # without an NVIDIA driver there is no CUDA: no need to import PyTorch to find that out
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def torch_installed() -> bool:
    """Whether PyTorch can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a module entry that is None or has no spec
        return False


def resolve_device(name: str = "auto") -> str:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable choice is an error.

    PyTorch is imported only where a GPU may exist (an NVIDIA driver, or macOS for MPS).
    """
    if name not in DEVICES:
        raise CamcliError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not _may_have_cuda() and sys.platform != "darwin"):
        return "cpu"
    if name == "auto" and not torch_installed():
        return "cpu"  # an install without PyTorch runs on the CPU
    torch = need("torch", f"`device` {name}")

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda" and not cuda:
        raise CamcliError("device cuda: no CUDA device is available (use the cpu)")
    if name == "mps" and not mps:
        raise CamcliError("device mps: MPS is not available (use the cpu)")
    return name


def weights_key(state: Mapping[str, np.ndarray]) -> str:
    """sha256 of a state dict given as NumPy arrays (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(state[name])
        digest.update(f"{name}:{array.shape}:{array.dtype.str}".encode())
        digest.update(memoryview(array.reshape(-1)).cast("B"))  # no copy of a large tensor
    return digest.hexdigest()


def module_state(module) -> dict[str, np.ndarray]:
    """A PyTorch module's state dict as float32 (or integer) NumPy arrays on the CPU."""
    import torch

    out = {}
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu()
        out[name] = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).contiguous().numpy()
    return out


def onnxruntime():
    """The ``onnxruntime`` module, imported with its telemetry off: on import it would otherwise
    write a device id and a database under ``~/.cache/Microsoft/DeveloperTools`` (the variable
    must be set before the first import; its API call comes too late). Every import of
    ONNX Runtime in camcli goes through here, in Ray workers too."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    return ort


class TorchRunner:
    """PyTorch eager: channels-last on the CPU and CUDA (about 2x faster on the CPU here),
    autocast to float16 on CUDA when ``amp``, batches copied from pinned memory on CUDA."""

    name = "torch"

    def __init__(self, features, device: str, amp: bool = True):
        import torch

        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.channels_last = self.device.type in ("cpu", "cuda")
        self.features = features.eval().requires_grad_(False).to(self.device)
        if self.channels_last:
            self.features = self.features.to(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the non_blocking copy overlap
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            out = self.features(batch).float().cpu().contiguous().numpy()
        progress.add_passes(len(x))
        return out


class OnnxRunner:
    """ONNX Runtime's CPU execution provider on an exported backbone (dynamic batch, height, width)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, model: bytes | None = None, facts: dict | None = None,
                 initializers: dict[str, np.ndarray] | None = None):
        """``model``: the file's bytes, already read (and verified, see :func:`cached_bytes`);
        ``facts``: its expected inputs and outputs as ``[[name, rank], ...]`` (refused otherwise);
        ``initializers``: values that replace the graph's own initializers of those names (ONNX
        Runtime's ``add_initializer``: the graph file is not changed; ``evaluate --sanity``)."""
        ort = onnxruntime()
        options = ort.SessionOptions()
        # the session reads these buffers (not copies) for its whole life: arrays and values live as long as the runner
        self._arrays = {name: np.ascontiguousarray(v, np.float32) for name, v in (initializers or {}).items()}
        self._values = {name: ort.OrtValue.ortvalue_from_numpy(v) for name, v in self._arrays.items()}
        for name, value in self._values.items():
            options.add_initializer(name, value)
        if initializers:  # level ALL's layout passes copy the Conv weights into new initializers first: the values
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # given would be ignored
        options.intra_op_num_threads = threads or int(os.environ.get("CAMCLI_THREADS") or 0) or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # spinning intra-op threads would take the CPU from the decoding threads between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path) if model is None else model, options, providers=["CPUExecutionProvider"])
        if facts is not None:
            io_of = {"inputs": self.session.get_inputs(), "outputs": self.session.get_outputs()}
            if any([[a.name, len(a.shape)] for a in io_of[k]] != facts[k] for k in io_of):
                raise CamcliError(f"{path} does not have the inputs and outputs of a camcli backbone export")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        # a few images per run: ONNX Runtime's arena grows with the largest batch it has seen (1.1 GB
        # at 32 images of 224x288 for the default backbone, 250 MB at 4), and small runs are no slower
        # on the CPU (benchmarks/README.md, "memory")
        parts = []
        for i in range(0, len(x), ONNX_CHUNK):
            parts.append(self.session.run(None, {"image": x[i : i + ONNX_CHUNK]})[0])
            progress.add_passes(len(parts[-1]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


MAX_CACHE_BYTES = 4 << 30  # a cached export (VGG16's is 528 MB), head or feature file


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".record.json")


def record_cache(path: Path, **facts) -> None:
    """Write what the cache file ``path`` must be: its sha256 and size, plus ``facts`` (the weights
    it came from, its shapes): :func:`cached_bytes` uses it only if all still hold."""
    data = read_bytes(path, MAX_CACHE_BYTES, "cache file")
    record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **facts}
    atomic_write(_record_path(path), json.dumps(record, sort_keys=True))


def cached_bytes(path: Path, **facts) -> bytes | None:
    """The content of the cache file ``path`` if it is what its record says (sha256, size and
    ``facts``), else None: a file replaced, damaged or truncated since it was made, or one
    without a record, is never used (the caller makes it again). One read and one hash
    (about 10 ms for the default backbone's export)."""
    found = cached_record(path, **facts)
    return None if found is None else found[0]


def cached_record(path: Path, **facts) -> tuple[bytes, dict] | None:
    """:func:`cached_bytes` with the whole record (facts written beside the wanted ones, too)."""
    try:
        record = json.loads(read_bytes(_record_path(path), 1 << 20, "cache record"))
        size = record.get("size") if isinstance(record, dict) else None
        if type(size) is not int or not 0 <= size <= MAX_CACHE_BYTES:
            return None
        # the file's size is compared with the record's (fstat) before any byte is read: a file grown,
        # truncated or made sparse since it was written costs nothing to find
        data = read_bytes(path, size, "cache file")
    except (CamcliError, ValueError, RecursionError):
        return None
    wanted = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **json.loads(json.dumps(facts))}
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
        return None
    return data, record


def onnx_facts(arch: str, key: str) -> dict:
    """What a cached backbone export must be: its arch, weights key, opset, input and output."""
    return {"arch": arch, "weights": key, "opset": ONNX_OPSET, "inputs": [["image", 4]], "outputs": [["features", 4]]}


def onnx_path(arch: str, key: str) -> Path:
    """Where the export of a backbone with weights ``key`` is cached."""
    settings = json.dumps({"weights": key, "opset": ONNX_OPSET, "format": 2})
    digest = hashlib.sha256(settings.encode()).hexdigest()[:20]
    return cache_dir() / "onnx" / f"{arch.replace(':', '_').replace('/', '_')}-{digest}.onnx"


def export_onnx(features, path: Path) -> None:
    """Export the backbone ``features`` (image (N, 3, H, W) -> feature maps; dynamic batch, height,
    width) to ``path`` atomically: to a temporary file beside it, checked against PyTorch on two
    input shapes, then renamed.

    Raises:
        CamcliError: the export failed or its outputs differ from PyTorch's.
    """
    import torch

    features = features.eval().to("cpu", memory_format=torch.contiguous_format)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".camcli-export-", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise os_error(exc, f"cannot write to {path.parent}") from exc
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
        rng = np.random.default_rng(0)
        for shape in ((2, 3, 224, 224), (1, 3, 224, 320)):
            x = rng.standard_normal(shape, dtype=np.float32)
            with torch.inference_mode():
                reference = features(torch.from_numpy(x)).float().numpy()
            error = float(np.abs(runner(x) - reference).max() / max(float(np.abs(reference).max()), 1e-12))
            if not error <= ONNX_TOLERANCE:  # NaN fails too
                raise CamcliError(f"the ONNX export differs from PyTorch (relative error {error:.1e})")
        os.chmod(tmp, OUTPUT_MODE)  # mkstemp made it 0600; an export is an ordinary output
        os.replace(tmp, path)
    except CamcliError:
        raise
    except Exception as exc:  # exporters and runtimes fail in many ways
        raise CamcliError(f"ONNX export failed: {first_line(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def backbone_onnx(build: Callable[[], object], arch: str, key: str) -> tuple[Path, bytes, str | None]:
    """The backbone's ONNX graph (image -> features): the one camcli ships for the default
    backbone with its packaged weights, else the cached export, made with PyTorch (``build``)
    on first use and again when the cache file is not what its record says.

    Returns:
        (its path, its bytes, a one-line note when an export was made, else None).

    Raises:
        CamcliError: the export failed; MissingExtra: it needs PyTorch, which is not installed.
    """
    shipped = shipped_graph(arch, key)
    if shipped is not None:
        return *shipped, None
    path, facts = onnx_path(arch, key), onnx_facts(arch, key)
    model = cached_bytes(path, **facts)
    if model is not None:
        return path, model, None
    again = _record_path(path).is_file()  # a record, and a file that is not what it says
    export_onnx(build(), path)
    record_cache(path, **facts)
    model = cached_bytes(path, **facts)
    if model is None:
        raise CamcliError(f"the ONNX export of {arch} changed while it was written ({path})")
    return path, model, (f"the cached ONNX export of {arch} did not match its record: exported again ({path})" if again
                         else f"exported {arch} to ONNX ({path}): later runs start without PyTorch")


def make_runner(
    build: Callable[[], object], arch: str, device: str, backend: str = "auto", amp: bool = True,
    key: Callable[[], str] | None = None,
) -> tuple[TorchRunner | OnnxRunner, str | None]:
    """Choose and build the runner.

    On the CPU, ``auto`` takes ONNX Runtime (2x to 5x PyTorch eager here) on the backbone's
    graph (:func:`backbone_onnx`); on a GPU, PyTorch. When ONNX Runtime fails, PyTorch takes over.
    ``build`` makes the PyTorch module and is called only when PyTorch runs or exports it.

    Returns:
        (runner, a one-line note to show the user, or None).
    """
    if backend not in BACKENDS:
        raise CamcliError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and device != "cpu":
        raise CamcliError(f"the onnxruntime backend runs on the CPU; use the cpu device or the torch backend (device is {device})")
    if backend == "torch" or device != "cpu":
        need("torch", "`backend` torch" if backend == "torch" else f"`device` {device}")
        return TorchRunner(build(), device, amp), None
    try:
        onnxruntime()
    except ImportError:
        note = "onnxruntime is not installed: using PyTorch" if backend == "onnxruntime" else None
        return TorchRunner(build(), device, amp), note
    weights = key()
    try:
        path, model, note = backbone_onnx(build, arch, weights)
        return OnnxRunner(path, model=model, facts=onnx_facts(arch, weights)), note
    except Exception as exc:  # any failure falls back to PyTorch, said once; without PyTorch, it is the error
        if not torch_installed():
            if isinstance(exc, CamcliError):
                raise
            raise CamcliError(f"ONNX Runtime failed on {arch}: {first_line(exc)}") from exc
        return TorchRunner(build(), device, amp), f"warning: ONNX Runtime unavailable for {arch} ({first_line(exc)}); using PyTorch"
