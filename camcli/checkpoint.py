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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from camcli import __version__
from camcli.data import MAX_IMG_SIZE, MIN_IMG_SIZE, RESIZE_MODES, Preprocess
from camcli.errors import CamcliError, first_line, need
from camcli.files import atomic_write, open_regular

FORMAT_VERSION = 2
SUFFIX = ".safetensors"
REQUIRED_KEYS = ("format_version", "arch", "class_names", "img_size", "preprocess", "backbone", "head")
MAX_CHECKPOINT_BYTES = 8 << 30
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
MAX_CLASSES = 100_000
MAX_LABEL_CHARS = 1000
INT8_TENSORS = ("int8.jpeg", "int8.offsets")  # the optional INT8 calibration entry (see camcli.quantize.calibration_entry)
MAX_INT8_IMAGES = 256  # images a checkpoint's INT8 calibration entry may hold (camcli writes 64)
MAX_INT8_JPEG_BYTES = MAX_INT8_IMAGES << 20  # their bytes: 1 MiB a JPEG (camcli writes them at the model's input size: ~20 KB)


def make_checkpoint(
    arch: str, weight: np.ndarray, bias: np.ndarray, class_names: list[str], preprocess: Preprocess,
    config: dict, metrics: dict, stored_backbone: dict, int8_calibration: dict | None = None,
) -> dict:
    """The checkpoint dict (see the module docstring and docs/checkpoint.md).

    Args:
        weight, bias: the GAP + linear head, (K, C) and (K,).
        config: the resolved training config (empty for a head that was not trained here).
        stored_backbone: ``{"reference": {...}}`` or ``{"state_dict": {name: array}}``.
        int8_calibration: images for ``precision`` int8 (:func:`camcli.quantize.calibration_entry`), or None.
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
        **({"int8_calibration": int8_calibration} if int8_calibration is not None else {}),
    }


def checkpoint_bytes(checkpoint: dict) -> bytes:
    """A checkpoint dict (see the module docstring) as a format-2 safetensors file."""
    from safetensors.numpy import save

    tensors = {f"head.{k}": np.ascontiguousarray(checkpoint["head"][k], dtype=np.float32) for k in ("weight", "bias")}
    backbone = checkpoint["backbone"]
    if "state_dict" in backbone:
        tensors.update({f"backbone.{k}": np.ascontiguousarray(v) for k, v in backbone["state_dict"].items()})
    if checkpoint.get("int8_calibration") is not None:
        tensors.update({f"int8.{k}": np.ascontiguousarray(v) for k, v in checkpoint["int8_calibration"].items()})
    meta = {k: v for k, v in checkpoint.items() if k not in ("head", "backbone", "int8_calibration")}
    meta["format_version"] = FORMAT_VERSION
    meta["backbone"] = {"reference": dict(backbone["reference"])} if "reference" in backbone else {"stored": "tensors"}
    return save(tensors, metadata={"camcli": json.dumps(_plain(meta), allow_nan=False)})


def save_checkpoint(checkpoint: dict, path: Path, before_rename=None) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file renamed into place);
    ``before_rename`` as in :func:`camcli.files.atomic_open`."""
    atomic_write(Path(path), checkpoint_bytes(checkpoint), before_rename)


def load_checkpoint(path: Path, tensors: bool = True, calibration_images: bool = True) -> dict:
    """Load and check a checkpoint (format 2, or format 1 with PyTorch) without running code.

    Format 2 is read header first: every tensor it declares must be one camcli writes (see
    :data:`TENSOR_DTYPES`), lie inside the file and overlap no other, before any tensor is read;
    then only the tensors used are read. ``tensors=False`` (``camcli info``) reads the metadata
    and the header only: the head's arrays are then zero-copy placeholders of the right shape.
    ``calibration_images=False``: the INT8 calibration entry (``int8.jpeg``, at most
    :data:`MAX_INT8_JPEG_BYTES`) is left unread, as placeholders: only an INT8 build from the
    checkpoint's own images reads it.

    Raises:
        CamcliError: missing or special file, not a camcli checkpoint, newer format, or a
            field that is not what camcli writes (see :func:`validate_checkpoint`).
    """
    path = Path(path)
    with open_regular(path, MAX_CHECKPOINT_BYTES, "checkpoint") as f:
        start = f.read(8)
        f.seek(0)
        ckpt = _load_v1(f, path) if start[:4] == b"PK\x03\x04" else _load_v2(f, path, tensors, calibration_images)
    return validate_checkpoint(ckpt, path, values=tensors)


# safetensors dtype -> NumPy dtype (BF16 has none: read as uint16 and widened, see _read_tensor)
TENSOR_DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64, "I8": np.int8,
                 "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}
MAX_TENSORS = 20_000  # a stored backbone has hundreds; camcli refuses a header that declares more
MAX_PICKLE_BYTES = 8 << 20  # a PyTorch file's pickle: names and storage references only (a VGG16 state dict: 3 KB)
MAX_BRACKETS = 4 * MAX_TENSORS + 100_000  # JSON objects and arrays a safetensors header may open
MAX_DIMS = 8


class _TooMany(Exception):
    pass


def _counting_hook(limit: int):
    count = [0]

    def hook(pairs: list) -> dict:
        count[0] += 1
        if count[0] > limit:  # stops the parse: a header of a million tiny tensors never becomes a million dicts
            raise _TooMany
        return dict(pairs)

    return hook


def _load_v2(f, path: Path, read_tensors: bool = True, calibration_images: bool = True) -> dict:
    """A format-2 checkpoint read header first (see :func:`load_checkpoint`)."""
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(9)
    declared = int.from_bytes(prefix[:8], "little") if len(prefix) == 9 else -1
    if declared <= 0 or prefix[8:9] != b"{":
        raise CamcliError(f"{path} is not a camcli checkpoint (neither safetensors nor a PyTorch zip file)")
    if declared > MAX_HEADER_BYTES:
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: its safetensors header declares {declared:,} bytes, "
                          f"over the safetensors limit of {MAX_HEADER_BYTES:,}")
    if declared > size - 8:
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: its header declares {declared:,} bytes but the file "
                          f"holds {size - 8:,} after the length (a damaged or incomplete file)")
    raw = prefix[8:] + f.read(declared - 1)
    if raw.count(b"[") + raw.count(b"{") > MAX_BRACKETS:  # counted before parsing: each becomes a Python object
        raise CamcliError(f"{path} is not a camcli checkpoint: its header opens more than {MAX_BRACKETS:,} JSON objects and arrays")
    try:
        header = json.loads(raw, object_pairs_hook=_counting_hook(2 * MAX_TENSORS + 2))
        meta = json.loads(header["__metadata__"]["camcli"])
    except _TooMany as exc:
        raise CamcliError(f"{path} is not a camcli checkpoint: its header declares more than {MAX_TENSORS:,} tensors") from exc
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CamcliError(f"{path} is not a camcli checkpoint (no camcli metadata, or a damaged safetensors header)") from exc
    if not isinstance(header, dict) or not isinstance(meta, dict):
        raise CamcliError(f"{path} is not a camcli checkpoint (its camcli metadata is not a mapping)")
    stored = isinstance(meta.get("backbone"), dict) and meta["backbone"].get("stored") == "tensors"
    entries = _tensor_entries(header, path, size - 8 - declared, stored)
    data_start = 8 + declared

    if "int8.jpeg" in entries and entries["int8.jpeg"][3] - entries["int8.jpeg"][2] > MAX_INT8_JPEG_BYTES:
        raise CamcliError(f"{path}: checkpoint field int8_calibration.jpeg must be at most {MAX_INT8_JPEG_BYTES:,} bytes "
                          f"({MAX_INT8_IMAGES} JPEGs of at most 1 MiB), its header declares "
                          f"{entries['int8.jpeg'][3] - entries['int8.jpeg'][2]:,}")

    def read(name: str) -> np.ndarray:
        wanted = read_tensors and (calibration_images or not name.startswith("int8."))
        return _read_tensor(f, path, data_start, *entries[name]) if wanted else _placeholder(*entries[name])

    ckpt = {k: v for k, v in meta.items() if k != "int8_calibration"}  # an entry is tensors, never metadata
    if any(name.startswith("int8.") for name in entries):
        ckpt["int8_calibration"] = {name[len("int8."):]: read(name) for name in entries if name.startswith("int8.")}
    ckpt["head"] = {k: read(f"head.{k}") if f"head.{k}" in entries else None for k in ("weight", "bias")}
    if stored:
        if not any(name.startswith("backbone.") for name in entries):
            raise CamcliError(f"{path}: checkpoint declares its backbone stored in the file but holds no backbone tensor")
        ckpt["backbone"] = {"state_dict": {name[len("backbone."):]: read(name) for name in entries if name.startswith("backbone.")}}
    return ckpt


def _tensor_entries(header: dict, path: Path, data_bytes: int, stored: bool) -> dict[str, tuple]:
    """name -> (dtype name, shape, start, end) of each tensor a format-2 header declares, checked:
    a name camcli writes, a known dtype, a size that matches the shape, inside the file, no overlap."""
    entries: dict[str, tuple] = {}
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise CamcliError(f"{path} is not a camcli checkpoint: its header declares more than {MAX_TENSORS:,} tensors")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if name not in ("head.weight", "head.bias", *INT8_TENSORS) and not (stored and name.startswith("backbone.")):
            raise CamcliError(f"{path} is not a camcli checkpoint: it holds a tensor camcli does not write ({str(name)[:60]!r})")
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (dtype in TENSOR_DTYPES and isinstance(shape, list) and len(shape) <= MAX_DIMS
                  and all(type(n) is int and 0 <= n <= 1 << 40 for n in shape) and math.prod(shape) <= 1 << 40
                  and type(start) is int and type(end) is int
                  and 0 <= start <= end <= data_bytes
                  and end - start == math.prod(shape) * np.dtype(TENSOR_DTYPES[dtype]).itemsize)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CamcliError(f"{path} is not a loadable camcli checkpoint: the header entry of tensor {str(name)[:60]!r} "
                              "is inconsistent (dtype, shape or offsets), or lies outside the file")
        entries[name] = (dtype, tuple(shape), start, end)
    last = 0
    for _, _, start, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
        if start < last:
            raise CamcliError(f"{path} is not a loadable camcli checkpoint: two tensors share bytes (overlapping offsets)")
        last = end
    return entries


def _read_tensor(f, path: Path, data_start: int, dtype: str, shape: tuple, start: int, end: int) -> np.ndarray:
    array = np.empty(math.prod(shape), TENSOR_DTYPES[dtype])
    f.seek(data_start + start)
    if end > start and f.readinto(memoryview(array).cast("B")) != end - start:
        raise CamcliError(f"{path} is not a loadable camcli checkpoint: the file ended while a tensor was read")
    if dtype == "BF16":  # the upper half of a float32: widened into one new array, no temporaries
        wide = np.zeros(array.size, np.float32)
        wide.view(np.uint16)[1::2] = array  # little-endian: the high half of each float32
        array = wide
    return array.reshape(shape)


def _placeholder(dtype: str, shape: tuple, *_) -> np.ndarray:
    """An array of ``shape`` that holds no memory (every element is one zero)."""
    kind = np.float32 if dtype == "BF16" else TENSOR_DTYPES[dtype]
    return np.lib.stride_tricks.as_strided(np.zeros(1, kind), shape, (0,) * len(shape), writeable=False)


def _load_v1(f, path: Path) -> dict:
    """A camcli 0.1 checkpoint: a PyTorch zip read with ``weights_only=True``, tensors made NumPy."""
    ckpt = torch_load(f, path, "camcli checkpoint")
    import torch

    def array(value: object) -> object:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).contiguous().numpy()
        return value

    return _arrays_of(ckpt, array)


def torch_load(f, path: Path, what: str) -> object:
    """The one reader of PyTorch files (camcli 0.1 checkpoints, ``weights`` state dicts): a zip of
    stored entries (nothing inflates), at most :data:`MAX_TENSORS` of them, loaded with
    ``weights_only=True`` (no code runs); every tensor in it must be dense, real and plain.

    Raises:
        CamcliError: one line: no PyTorch, not a PyTorch zip, compressed or too many entries,
            objects other than tensors and plain values, a sparse, complex or quantized tensor.
    """
    _check_zip(f, path, what)
    torch = need("torch", f"reading {path} (a PyTorch file: {what})")
    try:
        with warnings.catch_warnings():  # torch's deprecation notes about odd storages are not for the user
            warnings.simplefilter("ignore")
            loaded = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, which would run code from the file: not said here
        raise CamcliError(
            f"{path} is not a loadable {what}: it holds objects other than tensors and plain "
            "values, which camcli refuses to load (loading them could run code)"
        ) from exc
    except Exception as exc:  # torch raises many types for damaged files
        raise CamcliError(f"{path} is not a loadable {what}: the file is damaged or incomplete ({first_line(exc)[:120]})") from exc
    for tensor in _tensors_in(loaded):
        if tensor.layout != torch.strided or tensor.is_complex() or tensor.is_quantized or tensor.is_meta:
            raise CamcliError(f"{path} is not a usable {what}: it holds a {tensor.layout} {tensor.dtype} tensor; camcli takes "
                              "dense real tensors only")
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            # an expanded or strided view: a 3 KB file can declare gigabytes, which a copy would allocate
            raise CamcliError(f"{path} is not a usable {what}: a tensor of shape {tuple(tensor.shape)} declares more elements "
                              "than its storage holds (an expanded view)")
    return loaded


def _tensors_in(value: object, depth: int = 0) -> Iterator:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 8 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, depth + 1)
    elif depth < 8 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v, depth + 1)


def _arrays_of(ckpt: object, array) -> object:
    if isinstance(ckpt, dict):
        if isinstance(ckpt.get("head"), dict):
            ckpt["head"] = {k: array(v) for k, v in ckpt["head"].items()}
        backbone = ckpt.get("backbone")
        if isinstance(backbone, dict) and isinstance(backbone.get("state_dict"), dict):
            ckpt["backbone"] = {"state_dict": {k: array(v) for k, v in backbone["state_dict"].items()}}
        if isinstance(ckpt.get("int8_calibration"), dict):
            ckpt["int8_calibration"] = {k: array(v) for k, v in ckpt["int8_calibration"].items()}
    return ckpt


def _check_zip(f, path: Path, what: str = "checkpoint") -> None:
    """PyTorch's zip format with stored (uncompressed) entries only: nothing can inflate."""
    size = f.seek(0, io.SEEK_END)
    declared = _zip_entry_count(f, size)
    if declared is not None and declared > MAX_TENSORS + 16:
        raise CamcliError(f"{path} is not a loadable {what}: it declares {declared:,} entries, over camcli's limit of {MAX_TENSORS:,}")
    f.seek(0)
    try:
        entries = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CamcliError(f"{path} is not a loadable {what} (a damaged PyTorch zip file)") from exc
    if len(entries) > MAX_TENSORS + 16:
        raise CamcliError(f"{path} is not a loadable {what}: it holds {len(entries):,} entries, over camcli's limit of {MAX_TENSORS:,}")
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise CamcliError(f"{path} is not a loadable {what}: it holds compressed entries, which PyTorch never writes")
        total += entry.file_size
        if entry.filename.endswith("data.pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise CamcliError(f"{path} is not a loadable {what}: its pickle is {entry.file_size:,} bytes, over camcli's limit of "
                              f"{MAX_PICKLE_BYTES:,} (a state dict of {MAX_TENSORS:,} tensors needs a few MB)")
    if total > size:
        raise CamcliError(f"{path} is not a loadable {what}: its entries claim more bytes than the file holds")
    f.seek(0)


def _zip_entry_count(f, size: int) -> int | None:
    """The number of entries a zip's end records declare, read before its central directory is
    parsed (a directory of millions of entries would take gigabytes to parse); None if unclear."""
    tail = min(size, (1 << 16) + 22)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(data):
        return None
    count = int.from_bytes(data[at + 10 : at + 12], "little")
    if count != 0xFFFF:
        return count
    locator = data.rfind(b"PK\x06\x07", 0, at)  # zip64: the locator names the zip64 end record
    if locator < 0:
        return None
    offset = int.from_bytes(data[locator + 8 : locator + 16], "little")
    if not 0 <= offset <= size - 56:
        return None
    f.seek(offset)
    record = f.read(56)
    return int.from_bytes(record[32:40], "little") if record[:4] == b"PK\x06\x06" else None


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


def _float_tensor(value: object, ndim: int | None) -> bool:
    return isinstance(value, np.ndarray) and (ndim is None or value.ndim == ndim) and value.dtype.kind == "f"


def _finite_tensor(value: object, ndim: int | None) -> bool:
    """A float array (of ``ndim`` dimensions) whose values stay finite as float32, the precision
    camcli runs in; checked in slices, so the check costs no copy of a large tensor."""
    if not _float_tensor(value, ndim):
        return False
    flat = value.reshape(-1)
    limit = float(np.finfo(np.float32).max)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, flat.size, 1 << 22):
            part = flat[start : start + (1 << 22)]
            if not (np.isfinite(part).all() and (part.dtype.itemsize <= 4 or np.abs(part).max(initial=0) <= limit)):
                return False
    return True


def _int8_entry_problem(entry: object) -> tuple[str, str] | None:
    """(the part, what it must be) of a checkpoint's ``int8_calibration`` entry that is wrong, or None."""
    if not isinstance(entry, dict) or set(entry) != {"jpeg", "offsets"}:
        return "tensors", "exactly int8.jpeg and int8.offsets"
    jpeg, offsets = entry["jpeg"], entry["offsets"]
    if not (isinstance(jpeg, np.ndarray) and jpeg.dtype == np.uint8 and jpeg.ndim == 1):
        return "jpeg", "a 1-D uint8 tensor (the JPEG files one after another)"
    if not (isinstance(offsets, np.ndarray) and offsets.dtype == np.int64 and offsets.ndim == 1
            and 2 <= len(offsets) <= MAX_INT8_IMAGES + 1):
        return "offsets", f"a 1-D int64 tensor: where each of 1 to {MAX_INT8_IMAGES} images starts, then the end"
    return None


def validate_checkpoint(ckpt: object, path: Path | str = "checkpoint", values: bool = True) -> dict:
    """Check every field camcli uses; returns ``ckpt``. ``values=False``: the tensors' shapes and
    dtypes only (placeholders, see :func:`load_checkpoint`), not whether their values are finite.

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
    stride = pre.get("stride", 32)
    need(type(stride) is int and 1 <= stride <= 1024, "preprocess.stride", "an integer from 1 to 1024")
    for key in ("interpolation", "color", "exif_orientation"):
        default = Preprocess.__dataclass_fields__[key].default
        need(pre.get(key, default) == default, f"preprocess.{key}", f"{default!r} (the only one camcli implements)")
    head = ckpt["head"]
    need(isinstance(head, dict), "head", "a mapping of weight and bias tensors")
    weight, bias = head.get("weight"), head.get("bias")
    finite = _finite_tensor if values else _float_tensor
    need(finite(weight, 2), "head.weight", "a 2-D tensor of finite floats")
    need(finite(bias, 1) and bias.shape == (weight.shape[0],), "head.bias", f"a tensor of {weight.shape[0]} finite floats")
    if values:
        ckpt["head"] = {"weight": weight.astype(np.float32, copy=False), "bias": bias.astype(np.float32, copy=False)}
    if weight.shape[0] != len(names):
        raise CamcliError(f"{path}: head has {weight.shape[0]} outputs but {len(names)} class names")
    backbone = ckpt["backbone"]
    by_reference = isinstance(backbone, dict) and isinstance(backbone.get("reference"), dict) and all(
        isinstance(backbone["reference"].get(k), str) for k in ("package", "file", "sha256"))
    in_full = isinstance(backbone, dict) and isinstance(backbone.get("state_dict"), dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in backbone["state_dict"].items())
    need(by_reference or in_full, "backbone", "{'reference': {package, file, sha256}} or {'state_dict': {name: tensor}}")
    if in_full and values:
        for name, value in backbone["state_dict"].items():
            ok = value.dtype.kind in "iub" or (value.dtype.kind == "f" and _finite_tensor(value, None))
            need(ok, f"backbone.{name}", "a tensor of finite floats (or integers)")
    threshold = ckpt.get("cam_threshold")
    need(threshold is None or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 1),
         "cam_threshold", "a number in [0, 1)")
    cam_size = ckpt.get("cam_size")
    need(cam_size is None or (type(cam_size) is int and MIN_IMG_SIZE <= cam_size <= MAX_IMG_SIZE), "cam_size",
         f"an integer from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}")
    entry = ckpt.get("int8_calibration")
    if entry is not None:
        field, expected = _int8_entry_problem(entry) or ("", "")
        need(not field, f"int8_calibration.{field}", expected)
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
        "cam_size": checkpoint.get("cam_size"),
        "calibration": _plain(checkpoint.get("calibration")),
        "int8_calibration_images": (len(checkpoint["int8_calibration"]["offsets"]) - 1
                                    if checkpoint.get("int8_calibration") is not None else 0),
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
