"""The checkpoint: tensors and plain values, in a file that loads without running code.

Format 2 (camcli 0.2+) is a safetensors file (``best.safetensors``): the tensors ``head.weight``
(K x C), ``head.bias`` (K) and, for a backbone stored in full, ``backbone.<name>``, plus one
metadata entry ``camcli`` holding JSON (format_version, arch, class_names, preprocess, config,
metrics, ...). It loads into NumPy with no pickle and no PyTorch, so ``camcli info`` and the
ONNX Runtime path never import PyTorch. Format 1 (camcli 0.1, ``best.pt``) is a PyTorch zip
loaded with ``weights_only=True``; it stays readable (that needs PyTorch).

In memory a checkpoint is a dict: the metadata's keys, ``head: {"weight", "bias"}`` and
``backbone: {"reference": {...}}`` or ``{"state_dict": {name: array}}``, arrays as NumPy.

A checkpoint is untrusted input: :func:`load_checkpoint` reads only a regular file of bounded
size, format 1 only as a zip with uncompressed entries (so nothing inflates), and checks every
field it uses (:func:`validate_checkpoint`) before anything is built from it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np

from camcli import __version__
from camcli.data import MAX_IMG_SIZE, MIN_IMG_SIZE, RESIZE_MODES, Preprocess
from camcli.errors import CamcliError
from camcli.files import atomic_write, open_regular

FORMAT_VERSION = 2
SUFFIX = ".safetensors"
REQUIRED_KEYS = ("format_version", "arch", "class_names", "img_size", "preprocess", "backbone", "head")
MAX_CHECKPOINT_BYTES = 8 << 30
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
MAX_CLASSES = 100_000
MAX_LABEL_CHARS = 1000


def make_checkpoint(
    arch: str, weight: np.ndarray, bias: np.ndarray, class_names: list[str], preprocess: Preprocess,
    config: dict, metrics: dict, stored_backbone: dict,
) -> dict:
    """The checkpoint dict (see the module docstring and README, "Checkpoint format").

    Args:
        weight, bias: the GAP + linear head, (K, C) and (K,).
        config: the resolved training config (empty for a head that was not trained here).
        stored_backbone: ``{"reference": {...}}`` or ``{"state_dict": {name: array}}``.
    """
    return {
        "format_version": FORMAT_VERSION,
        "camcli_version": __version__,
        "arch": arch,
        "class_names": list(class_names),
        "img_size": preprocess.img_size,
        "preprocess": preprocess.to_dict(),
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "config": dict(config),
        "metrics": dict(metrics),
        "backbone": stored_backbone,
        "head": {"weight": np.array(weight, np.float32), "bias": np.array(bias, np.float32)},
    }


def checkpoint_bytes(checkpoint: dict) -> bytes:
    """A checkpoint dict (see the module docstring) as a format-2 safetensors file."""
    from safetensors.numpy import save

    tensors = {f"head.{k}": np.ascontiguousarray(checkpoint["head"][k], dtype=np.float32) for k in ("weight", "bias")}
    backbone = checkpoint["backbone"]
    if "state_dict" in backbone:
        tensors.update({f"backbone.{k}": np.ascontiguousarray(v) for k, v in backbone["state_dict"].items()})
    meta = {k: v for k, v in checkpoint.items() if k not in ("head", "backbone")}
    meta["format_version"] = FORMAT_VERSION
    meta["backbone"] = {"reference": dict(backbone["reference"])} if "reference" in backbone else {"stored": "tensors"}
    return save(tensors, metadata={"camcli": json.dumps(_plain(meta), allow_nan=False)})


def save_checkpoint(checkpoint: dict, path: Path, before_rename=None) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file renamed into place);
    ``before_rename`` as in :func:`camcli.files.atomic_open`."""
    atomic_write(Path(path), checkpoint_bytes(checkpoint), before_rename)


def load_checkpoint(path: Path) -> dict:
    """Load and check a checkpoint (format 2, or format 1 with PyTorch) without running code.

    Raises:
        CamcliError: missing or special file, not a camcli checkpoint, newer format, or a
            field that is not what camcli writes (see :func:`validate_checkpoint`).
    """
    path = Path(path)
    with open_regular(path, MAX_CHECKPOINT_BYTES, "checkpoint") as f:
        start = f.read(8)
        f.seek(0)
        ckpt = _load_v1(f, path) if start[:4] == b"PK\x03\x04" else _load_v2(f.read(), path)
    return validate_checkpoint(ckpt, path)


def _load_v2(data: bytes, path: Path) -> dict:
    from safetensors.numpy import load

    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(MAX_HEADER_BYTES, len(data) - 8) or data[8:9] != b"{":
        raise CamcliError(f"{path} is not a camcli checkpoint (neither safetensors nor a PyTorch zip file)")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = json.loads(header["__metadata__"]["camcli"])
        tensors = load(data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CamcliError(f"{path} is not a camcli checkpoint (no camcli metadata, or a damaged safetensors file)") from exc
    except Exception as exc:  # safetensors raises its own error type for inconsistent offsets
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: the file is damaged or incomplete") from exc
    if not isinstance(meta, dict):
        raise CamcliError(f"{path} is not a camcli checkpoint (its camcli metadata is not a mapping)")
    ckpt = dict(meta)
    ckpt["head"] = {k: tensors.get(f"head.{k}") for k in ("weight", "bias")}
    if isinstance(meta.get("backbone"), dict) and meta["backbone"].get("stored") == "tensors":
        ckpt["backbone"] = {"state_dict": {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}}
    return ckpt


def _load_v1(f, path: Path) -> dict:
    """A camcli 0.1 checkpoint: a PyTorch zip read with ``weights_only=True``, tensors made NumPy."""
    _check_zip(f, path)
    try:
        import torch
    except ImportError as exc:
        raise CamcliError(f"{path} is a format-1 (PyTorch) checkpoint, which needs PyTorch to read") from exc
    try:
        with warnings.catch_warnings():  # torch's deprecation notes about odd storages are not for the user
            warnings.simplefilter("ignore")
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CamcliError(
            f"{path} is not a loadable camcli checkpoint: it holds objects other than tensors and plain "
            "values, which camcli refuses to load (loading them could run code)"
        ) from exc
    except Exception as exc:  # torch raises many types for damaged files
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: the file is damaged or incomplete") from exc

    def array(value: object) -> object:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).contiguous().numpy()
        return value

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _arrays_of(ckpt, array)
    except Exception as exc:  # sparse, quantized or meta tensors have no plain array
        raise CamcliError(f"{path} is not a camcli checkpoint: it holds a tensor that is not a plain dense array") from exc


def _arrays_of(ckpt: object, array) -> object:
    if isinstance(ckpt, dict):
        if isinstance(ckpt.get("head"), dict):
            ckpt["head"] = {k: array(v) for k, v in ckpt["head"].items()}
        backbone = ckpt.get("backbone")
        if isinstance(backbone, dict) and isinstance(backbone.get("state_dict"), dict):
            ckpt["backbone"] = {"state_dict": {k: array(v) for k, v in backbone["state_dict"].items()}}
    return ckpt


def _check_zip(f, path: Path) -> None:
    """PyTorch's zip format with stored (uncompressed) entries only: nothing can inflate."""
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    try:
        entries = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CamcliError(f"{path} is not a camcli checkpoint (a damaged PyTorch zip file)") from exc
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise CamcliError(f"{path} is not a camcli checkpoint: it holds compressed entries, which PyTorch never writes")
        total += entry.file_size
    if total > size:
        raise CamcliError(f"{path} is not a camcli checkpoint: its entries claim more bytes than the file holds")
    f.seek(0)


def _encodable(name: str) -> bool:
    """A name writable to UTF-8 files (with surrogate escapes, as file names that are not UTF-8 have)."""
    try:
        os.fsencode(name)
    except UnicodeError:
        return False
    return True


def _finite_numbers(value: object, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _finite_tensor(value: object, ndim: int | None) -> bool:
    """A float array (of ``ndim`` dimensions) whose values stay finite as float32, the precision camcli runs in."""
    if not (isinstance(value, np.ndarray) and (ndim is None or value.ndim == ndim) and value.dtype.kind == "f"):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(value.astype(np.float32)).all())


def validate_checkpoint(ckpt: object, path: Path | str = "checkpoint") -> dict:
    """Check every field camcli uses; returns ``ckpt``.

    Raises:
        CamcliError: one line naming the first field that is not what camcli writes.
    """
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            got = ckpt.get(field) if isinstance(ckpt, dict) and "." not in field else None
            shown = f", got {type(got).__name__} {str(got)[:60]!r}" if got is not None else ""
            raise CamcliError(f"{path}: checkpoint field {field} must be {expected}{shown}")

    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CamcliError(f"{path} is not a camcli checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    version = ckpt["format_version"]
    need(isinstance(version, int) and not isinstance(version, bool) and version >= 1, "format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise CamcliError(
            f"{path} has checkpoint format {version}, newer than this camcli ({__version__}) reads "
            f"({FORMAT_VERSION}): upgrade camcli"
        )
    need(isinstance(ckpt["arch"], str) and 0 < len(ckpt["arch"]) <= 200, "arch", "a backbone name")
    names = ckpt["class_names"]
    need(isinstance(names, list) and 0 < len(names) <= MAX_CLASSES
         and all(isinstance(n, str) and len(n) <= MAX_LABEL_CHARS and _encodable(n) for n in names),
         "class_names", f"a list of 1 to {MAX_CLASSES:,} strings of at most {MAX_LABEL_CHARS} characters")
    sizes = f"an integer from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}"
    need(isinstance(ckpt["img_size"], int) and MIN_IMG_SIZE <= ckpt["img_size"] <= MAX_IMG_SIZE, "img_size", sizes)
    pre = ckpt["preprocess"]
    need(isinstance(pre, dict), "preprocess", "a mapping")
    need(isinstance(pre.get("img_size"), int) and MIN_IMG_SIZE <= pre["img_size"] <= MAX_IMG_SIZE, "preprocess.img_size", sizes)
    need(pre["img_size"] == ckpt["img_size"], "preprocess.img_size", f"equal to img_size ({ckpt['img_size']})")
    need(_finite_numbers(pre.get("mean"), 3) and all(abs(v) <= 1e3 for v in pre["mean"]), "preprocess.mean",
         "3 numbers from -1000 to 1000")
    need(_finite_numbers(pre.get("std"), 3) and all(1e-6 <= v <= 1e3 for v in pre["std"]), "preprocess.std",
         "3 numbers from 1e-6 to 1000")
    need(pre.get("resize", "squash") in RESIZE_MODES, "preprocess.resize", f"one of {', '.join(RESIZE_MODES)}")
    need(isinstance(pre.get("stride", 32), int) and 1 <= pre.get("stride", 32) <= 1024, "preprocess.stride", "an integer from 1 to 1024")
    for key in ("interpolation", "color", "exif_orientation"):
        default = Preprocess.__dataclass_fields__[key].default
        need(pre.get(key, default) == default, f"preprocess.{key}", f"{default!r} (the only one camcli implements)")
    head = ckpt["head"]
    need(isinstance(head, dict), "head", "a mapping of weight and bias tensors")
    weight, bias = head.get("weight"), head.get("bias")
    need(_finite_tensor(weight, 2), "head.weight", "a 2-D tensor of finite floats")
    need(_finite_tensor(bias, 1) and bias.shape == (weight.shape[0],), "head.bias", f"a tensor of {weight.shape[0]} finite floats")
    ckpt["head"] = {"weight": weight.astype(np.float32, copy=False), "bias": bias.astype(np.float32, copy=False)}
    if weight.shape[0] != len(names):
        raise CamcliError(f"{path}: head has {weight.shape[0]} outputs but {len(names)} class names")
    backbone = ckpt["backbone"]
    by_reference = isinstance(backbone, dict) and isinstance(backbone.get("reference"), dict) and all(
        isinstance(backbone["reference"].get(k), str) for k in ("package", "file", "sha256"))
    in_full = isinstance(backbone, dict) and isinstance(backbone.get("state_dict"), dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in backbone["state_dict"].items())
    need(by_reference or in_full, "backbone", "{'reference': {package, file, sha256}} or {'state_dict': {name: tensor}}")
    if in_full:
        for name, value in backbone["state_dict"].items():
            ok = value.dtype.kind in "iu" or (value.dtype.kind == "f" and _finite_tensor(value, None))
            need(ok, f"backbone.{name}", "a tensor of finite floats (or integers)")
    threshold = ckpt.get("cam_threshold")
    need(threshold is None or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 1),
         "cam_threshold", "a number in [0, 1)")
    for key in ("metrics", "config", "calibration"):
        need(ckpt.get(key) is None or isinstance(ckpt[key], dict), key, "a mapping")
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
        "preprocess": _plain(checkpoint["preprocess"]),
        "cam_threshold": checkpoint.get("cam_threshold"),
        "calibration": _plain(checkpoint.get("calibration")),
        "metrics": _plain(checkpoint.get("metrics") or {}),
        "config": _plain(checkpoint.get("config") or {}),
    }


def _plain(value: object, depth: int = 0) -> object:
    """A JSON-safe copy of a checkpoint's free-form field: non-finite numbers become None,
    anything that is not a plain value becomes its type name, nesting stops at depth 8."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth < 8 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return f"<{type(value).__name__}>"
