"""Finding images, decoding them, the one preprocessing, and ImageFolder splits."""

from __future__ import annotations

import fnmatch
import functools
import io
import math
import os
import random
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from camcli.defaults import MAX_FORWARD_PIXELS, MAX_IMG_SIZE, MAX_PIXELS, MIN_IMG_SIZE, RESIZE_MODES, TRAIN
from camcli.errors import CamcliError, InputMistake
from camcli.files import MANIFEST_NAME, read_bytes, read_manifest, read_text, real_path  # noqa: F401 - MANIFEST_NAME re-exported
from camcli.video import VIDEO_EXTENSIONS, is_video

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# OpenCV's own warnings ("PNG input buffer is incomplete") would reach the terminal beside
# camcli's one-line "failed:" report of the same file
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


DEFAULT_RESIZE = TRAIN["resize"]  # keep-aspect; see docs/localization.md: better maps, same accuracy
MAX_ASPECT = 4.0  # keep-aspect: a longer side beyond 4x the shorter is squashed to 4x


@dataclass(frozen=True)
class Preprocess:
    """The one preprocessing shared by train, predict, overlay and evaluate (recorded in checkpoints).

    Decode with OpenCV (EXIF orientation applied), convert BGR to RGB, resize the whole
    image (no crop, so maps map back exactly; INTER_AREA when either side shrinks,
    INTER_LINEAR when both sides grow or stay), scale to [0, 1], then ``(x - mean) / std``.

    The size depends on ``resize``: ``squash`` gives ``img_size x img_size``;
    ``keep-aspect`` makes the shorter side ``img_size`` and the longer keep the aspect ratio
    (at most ``MAX_ASPECT`` times the shorter), both rounded to a multiple of ``stride``.
    """

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "squash"
    stride: int = 32
    interpolation: str = "area_if_a_side_shrinks_else_linear"
    color: str = "rgb"
    exif_orientation: bool = True

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise CamcliError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if not MIN_IMG_SIZE <= self.img_size <= MAX_IMG_SIZE:
            raise CamcliError(f"img_size must be from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, got {self.img_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{**known, "mean": tuple(d["mean"]), "std": tuple(d["std"])})

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the model input for an image of the given size."""
        if self.resize == "squash":
            return self.img_size, self.img_size
        scale = self.img_size / min(height, width)
        cap = MAX_ASPECT * self.img_size

        def side(n: int) -> int:
            return max(self.stride, round(min(n * scale, cap) / self.stride) * self.stride)

        return side(height), side(width)

    def resized(self, image_rgb: np.ndarray) -> np.ndarray:
        """The RGB uint8 (H, W, 3) image resized to the model input (see ``output_size``), still uint8."""
        h, w = image_rgb.shape[:2]
        out_h, out_w = self.output_size(h, w)
        shrinking = h > out_h or w > out_w
        return cv2.resize(image_rgb, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        """Turn an RGB uint8 (H, W, 3) image into a float32 (3, h, w) array (see ``output_size``)."""
        resized = self.resized(image_rgb)
        # (x / 255 - mean) / std as one multiply-add: x * scale + offset
        scale = 1.0 / (255.0 * np.asarray(self.std, dtype=np.float32))
        offset = -np.asarray(self.mean, dtype=np.float32) / np.asarray(self.std, dtype=np.float32)
        x = resized.astype(np.float32)
        x *= scale
        x += offset
        return np.ascontiguousarray(x.transpose(2, 0, 1))


DEFAULT_MAX_PIXELS = MAX_PIXELS


ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white


@dataclass(frozen=True)
class Header:
    """What an encoded image's header says, read without decoding the pixels."""

    width: int
    height: int
    has_alpha: bool
    orientation: int  # EXIF orientation, 1 = as stored


_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")  # what OpenCV decodes for IMAGE_EXTENSIONS
_PILLOW_SETTINGS = threading.Lock()  # guards Pillow's global settings while a header is read


def image_header(buffer: np.ndarray) -> Header | None:
    """The header of an encoded image (via Pillow, which reads headers lazily); None if unknown.

    Only the formats OpenCV decodes for camcli's extensions are tried, each identified by its
    signature, so the size read here is the size OpenCV would decode. Damaged ancillary PNG
    chunks (a bad checksum) do not stop the size from being read.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), _PILLOW_SETTINGS:
            warnings.simplefilter("ignore")
            saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, True
            try:
                with Image.open(io.BytesIO(buffer.tobytes()), formats=_PILLOW_FORMATS) as im:
                    alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
                    orientation = int(im.getexif().get(0x0112, 1)) if alpha else 1
                    return Header(im.width, im.height, alpha, orientation)
            finally:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, struct.error, EOFError):
        return _tiff_header(buffer[:1 << 20].tobytes())


def _tiff_header(data: bytes) -> Header | None:
    """The size of a TIFF whose pixel type Pillow does not read (64-bit float samples), from its
    first image's tags (ImageWidth, ImageLength); None if ``data`` is not such a TIFF."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    try:
        (at,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[at : at + 2])
        size = {}
        for i in range(min(count, 512)):
            tag, kind, _, value = struct.unpack(order + "HHI4s", data[at + 2 + 12 * i : at + 14 + 12 * i])
            if tag in (256, 257) and kind in (3, 4):
                size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    except (TypeError, struct.error):  # not a TIFF (order None), or one cut short
        return None
    return Header(size[256], size[257], False, 1) if size.get(256) and size.get(257) else None


def max_file_bytes(max_pixels: int | None) -> int:
    """The largest encoded image camcli reads: 8 bytes a pixel (16-bit RGBA, uncompressed) of
    ``max_pixels``, at least 64 MiB; 4 GiB without a pixel limit."""
    return 4 << 30 if max_pixels is None else max(64 << 20, 8 * max_pixels)


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to a decoded image."""
    ops = {
        2: lambda m: cv2.flip(m, 1), 3: lambda m: cv2.rotate(m, cv2.ROTATE_180), 4: lambda m: cv2.flip(m, 0),
        5: cv2.transpose, 6: lambda m: cv2.rotate(m, cv2.ROTATE_90_CLOCKWISE),
        7: lambda m: cv2.flip(cv2.transpose(m), -1), 8: lambda m: cv2.rotate(m, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return ops[orientation](image) if orientation in ops else image


def _composite(image: np.ndarray) -> np.ndarray:
    """A BGR(A) or gray(+alpha) image of any depth -> 8-bit BGR, alpha composited over ALPHA_BACKGROUND."""
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1 / 257)
    elif image.dtype.kind == "f":  # float TIFFs hold [0, 1] by convention (else 0..255); NaN is black
        image = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if float(image.max(initial=0.0)) <= 1.0 else 1.0
        image = np.clip(image * scale + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1e-12))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 2:
        color, alpha = cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR), image[:, :, 1]
    elif image.shape[2] == 4:
        color, alpha = image[:, :, :3], image[:, :, 3]
    else:
        return image
    a = alpha.astype(np.float32)[:, :, None] / 255.0
    background = np.array(ALPHA_BACKGROUND[::-1], np.float32)
    return np.clip(color.astype(np.float32) * a + background * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def _without_color_profile(buffer: np.ndarray) -> np.ndarray:
    """A PNG without its ``iCCP`` chunk (camcli does no color management, and libpng prints a
    warning on the terminal for every invalid profile it meets); other files as they are."""
    data = buffer.tobytes() if buffer[:8].tobytes() == b"\x89PNG\r\n\x1a\n" else b""
    at = 8
    while data and at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        end = at + 12 + length
        if kind == b"iCCP" and end <= len(data):
            return np.frombuffer(data[:at] + data[end:], np.uint8)
        if kind in (b"IDAT", b"IEND") or end > len(data):
            break
        at = end
    return buffer


def read_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), EXIF orientation applied.

    Grayscale, palette, CMYK and 16-bit images become 8-bit RGB; transparent pixels are
    composited over ``ALPHA_BACKGROUND`` (white). Only regular files are read (a FIFO or a
    device is refused), at most :func:`max_file_bytes`; the size an image's header declares
    is checked against ``max_pixels`` before any pixel is decoded, and an image whose header
    cannot be read is not decoded at all (its size could not be checked).
    """
    buffer = np.frombuffer(read_bytes(path, max_file_bytes(max_pixels), "image"), dtype=np.uint8)
    if buffer.size == 0:
        raise CamcliError(f"cannot decode {path}: the file is empty")
    header = image_header(buffer)
    if header is None:
        raise CamcliError(f"cannot decode {path}: not a readable image")
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise CamcliError(
            f"{path} is {header.width}x{header.height} = {header.width * header.height:,} pixels, "
            f"over the limit of {max_pixels:,} (max_pixels)"
        )
    buffer = _without_color_profile(buffer)
    if header.has_alpha:
        # IMREAD_COLOR would drop the alpha channel; IMREAD_UNCHANGED keeps it but ignores EXIF
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        image = None if image is None else _orient(_composite(image), header.orientation)
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if image is None:  # IMREAD_COLOR refuses some pixel types (float TIFFs): decode as stored, then convert
            raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
            image = None if raw is None or raw.size == 0 else _orient(_composite(raw), header.orientation)
    if image is None:
        raise CamcliError(f"cannot decode {path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ImageInput:
    """One image found among the inputs.

    Attributes:
        path: the image file.
        relative: where it sits relative to the input it came from, starting with that
            input's name (``folder/sub/a.jpg``, or ``a.jpg`` for a file input); outputs
            under an ``--out-dir`` mirror it.
    """

    path: Path
    relative: Path


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


MAX_EXCLUDES = 10_000  # --exclude patterns (or a config's exclude list) at most


@functools.lru_cache(maxsize=8)
def _exclusion(patterns: tuple[str, ...]) -> re.Pattern | None:
    """The ``patterns`` as one compiled regular expression (each glob translated once: fnmatch's
    own cache holds 32,768 and a longer list recompiled every pattern for every file)."""
    if len(patterns) > MAX_EXCLUDES:
        raise CamcliError(f"`exclude` holds {len(patterns):,} patterns, over the limit of {MAX_EXCLUDES:,}; "
                          "combine them into fewer globs")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)) if patterns else None


def excluded(path: Path, patterns: Sequence[str]) -> bool:
    """Whether a path matches one of the ``--exclude`` glob patterns, e.g. ``*/tmp/*`` or
    ``*_draft.jpg``. Files found in a folder are matched as ``<folder name>/<path inside it>``,
    other paths as given, with forward slashes."""
    matcher = _exclusion(tuple(patterns))
    return matcher is not None and matcher.match(path.as_posix()) is not None


def walk(folder: str | Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(folder)`` top-down without following links, as a loop instead of recursion: Python
    3.11's ``os.walk`` recurses, so a folder nested about a thousand levels deep raised a
    RecursionError. Prune by assigning to the yielded ``dirs`` in place; unreadable folders are
    passed over, as ``os.walk`` does."""
    stack = [os.fspath(folder)]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as entries:
                dirs, files, linked = [], [], set()
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()  # a link to a folder is listed as a folder, as os.walk lists it
                        if is_dir and entry.is_symlink():
                            linked.add(entry.name)
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry.name)
        except OSError:
            continue
        yield root, dirs, files
        # visited in the order dirs is left in; links to folders are not followed (os.walk's followlinks=False)
        stack.extend(os.path.join(root, d) for d in reversed(dirs) if d not in linked)


def walk_images(folder: Path, skip: Sequence[Path] = (), videos: bool = False) -> Iterable[Path]:
    """Images (and with ``videos``, clips) under ``folder`` in sorted order, leaving out dot-files
    and dot-folders, the folders in ``skip`` (resolved paths) and the files camcli wrote (each
    folder's manifest)."""
    wanted = (lambda p: _is_image(p) or is_video(p)) if videos else _is_image
    for root, dirs, files in walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and real_path(here / d) not in skip
        )
        ours = read_manifest(here)
        for name in sorted(files):
            if name not in ours and wanted(here / name):
                yield here / name


def iter_images(
    inputs: Sequence[str | Path], skip: Sequence[Path] = (), stdin: Iterable[str] | None = None,
    exclude: Sequence[str] = (), videos: bool = False,
) -> Iterator[ImageInput]:
    """Expand files, folders (recursively, lazily) and ``-`` (paths from stdin, read as they
    come) into images (and with ``videos``, clips: see :data:`camcli.video.VIDEO_EXTENSIONS`), in
    input order.

    Dot-files and dot-folders, the folders in ``skip`` and the files camcli wrote
    (listed in each folder's manifest) are left out.

    Raises:
        CamcliError: an input does not exist or is not an image (checked before the first
            image for the inputs given as arguments, when reached for stdin's).
    """
    skip = [real_path(s) for s in skip]
    for item in inputs:
        if str(item) != "-":
            _check_input(Path(item), videos)
    for item in inputs:
        if str(item) == "-":
            paths = (Path(line) for line in stdin_lines(stdin) if line.strip())
        else:
            paths = iter([Path(item)])
        for path in paths:
            _check_input(path, videos)
            if path.is_dir():
                root_name = Path(real_path(path).name)
                for image in walk_images(path, skip, videos):
                    relative = root_name / image.relative_to(path)
                    if not excluded(relative, exclude):
                        yield ImageInput(image, relative)
            elif not excluded(path, exclude):
                yield ImageInput(path, Path(path.name))


def read_class_names(path: Path) -> list[str]:
    """Class names for a classifier trained elsewhere: one a line, in index order (blank lines
    and surrounding spaces ignored). At most 100,000 names of 1,000 characters, 16 MiB.

    Raises:
        CamcliError: unreadable, not UTF-8, empty, or over those limits.
    """
    # split on newlines only: str.splitlines also splits on form feeds, U+2028 and others, which would shift every label after them
    names = [line.strip() for line in read_text(Path(path), 16 << 20, "classes file").split("\n") if line.strip()]
    if not names:
        raise CamcliError(f"classes file {path} names no class (one name a line)")
    if len(names) > 100_000 or max(len(n) for n in names) > 1000:
        raise CamcliError(f"classes file {path}: at most 100,000 names of at most 1,000 characters")
    return names


MAX_PATH_BYTES = 4096  # PATH_MAX on Linux: a longer line on stdin is not a path


def stdin_lines(lines: Iterable[str] | None = None) -> Iterator[str]:
    """Paths from stdin (or ``lines``), read as they come: one a line, or NUL-separated when the
    first bytes to arrive hold a NUL (``find -print0``: a name may then hold a newline). A path
    longer than ``MAX_PATH_BYTES`` (a binary stream) stops with one error instead of being read
    without end. Bytes that are not UTF-8 become surrogate escapes, as Python does for file names."""
    if lines is None:
        lines = _records(sys.stdin.buffer)
    for line in lines:
        text = os.fsdecode(line) if isinstance(line, bytes) else line
        text = text.rstrip("\r\n") if "\0" not in text else text.rstrip("\0")
        if len(os.fsencode(text)) > MAX_PATH_BYTES:
            raise CamcliError(f"a path on stdin is longer than {MAX_PATH_BYTES} bytes: give one path per line, or "
                              "NUL-separated paths (find -print0)")
        if "\0" in text:
            raise CamcliError("stdin mixes newline- and NUL-separated paths: use one of them (find -print0, or one path a line)")
        yield text


def _records(stream) -> Iterator[bytes]:
    """A byte stream cut at its separator (NUL if the first bytes to arrive hold one, else newline) as bytes arrive;
    a record never grows past ``MAX_PATH_BYTES`` + 2 before it is handed on (and refused)."""
    read = getattr(stream, "read1", stream.read)
    buffer, separator = b"", None
    while chunk := read(65536):
        buffer += chunk
        if separator is None:  # a NUL anywhere in what came first: find -print0 (its names may hold newlines)
            separator = b"\0" if b"\0" in buffer else b"\n" if b"\n" in buffer else None
        if separator is not None:
            *records, buffer = buffer.split(separator)
            yield from (r + separator for r in records)
        if len(buffer) > MAX_PATH_BYTES + 2:
            yield buffer
            return
    if buffer:
        yield buffer


def _check_input(path: Path, videos: bool = False) -> None:
    """Inputs must exist; a file must have an image extension (or with ``videos``, a clip's).
    Whether it is a readable regular file is found out when it is read (a failed input, not a
    stopped run)."""
    if path.is_dir():
        return
    if str(path).lower().startswith(("http:/", "https:/", "ftp:/")):  # Path folds "https://" to "https:/"
        url = str(path).replace(":/", "://", 1)
        raise InputMistake(f"{url}: camcli reads local files, not URLs; download it first (e.g. curl -O {url})")
    if not os.path.lexists(path):
        raise InputMistake(f"input not found: {path}")
    if videos and is_video(path):
        return
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        known = sorted(IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if videos else set()))
        raise InputMistake(f"{path} is not an image {'or video ' * videos}file (expected one of {', '.join(known)})")


def find_images(
    inputs: Sequence[str | Path], skip: Sequence[Path] = (), stdin: Iterable[str] | None = None,
    exclude: Sequence[str] = (), videos: bool = False,
) -> list[ImageInput]:
    """All of :func:`iter_images` as a list.

    Raises:
        CamcliError: an input does not exist, or no image was found.
    """
    found = list(iter_images(inputs, skip, stdin, exclude, videos))
    if not found:
        raise CamcliError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def load_image_folder(
    root: Path, val_split: float, seed: int, exclude: Sequence[str] = ()
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """Read an ImageFolder dataset: ``root/train/<class>/*`` + ``root/val/<class>/*``,
    or ``root/<class>/*`` split per class by a seeded, stratified ``val_split``. Images
    matching an ``exclude`` glob (as ``<root name>/<path inside root>``) are left out.

    Returns:
        (train samples, val samples, class names), samples as (path, class index).

    Raises:
        CamcliError: missing folder, fewer than two classes, an empty class or split.
    """
    root = Path(root)
    if not root.is_dir():
        raise CamcliError(f"dataset folder not found: {root}")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes = class_folders(root / "train", exclude, root)
        val, val_classes = class_folders(root / "val", exclude, root)
        if val_classes != classes:
            raise CamcliError(
                f"{root}/train and {root}/val must hold the same class folders "
                f"(train: {classes}, val: {val_classes})"
            )
        return train, val, classes
    samples, classes = class_folders(root, exclude)
    if not 0 < val_split < 1:
        raise CamcliError(f"`val_split` must be between 0 and 1 (exclusive), got {val_split}")
    rng = random.Random(seed)
    train, val = [], []
    for index in range(len(classes)):
        members = [s for s in samples if s[1] == index]
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_split)) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    if not val:
        raise CamcliError(f"val_split {val_split} leaves no validation images in {root}: add images")
    empty = [classes[k] for k in range(len(classes)) if not any(y == k for _, y in train)]
    if empty:
        raise CamcliError(
            f"val_split {val_split} leaves no training images for class {empty[0]!r}"
            + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "") + ": use a smaller val_split or add images"
        )
    return sorted(train), sorted(val), classes


def class_folders(
    root: Path, exclude: Sequence[str] = (), base: Path | None = None, known: list[str] | None = None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/*`` images as (path, class index), and the class names.

    Args:
        exclude: globs matched against ``<base name>/<path inside base>`` (base: ``root``).
        known: use these class names and indices (a model's); a folder not among them is an error.
    """
    base = Path(base or root)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if known is not None:
        unknown = [f for f in folders if f not in known]
        if not folders or unknown:
            raise CamcliError(
                f"{root} must hold <class>/<images> folders named after the model's classes"
                + (f"; unknown: {', '.join(unknown[:5])}" if unknown else "")
            )
    classes = known if known is not None else folders
    if known is None and len(classes) < 2:
        raise CamcliError(
            f"{root} must hold at least two class folders (<class>/<images>), found {len(classes)}"
        )
    samples = []
    for name in folders:
        images = [p for p in walk_images(root / name) if not excluded(Path(real_path(base).name) / p.relative_to(base), exclude)]
        if not images and known is None:
            raise CamcliError(f"class folder {root / name} holds no images")
        samples += [(p, classes.index(name)) for p in images]
    return samples, classes


class ImageDataset:
    """Decodes and preprocesses images by position (safe to call from several threads).

    Each item is ``(tensor (3, h, w), position, original RGB image or None, None)``, or
    ``(None, position, None, why)`` when the image cannot be read.
    """

    def __init__(
        self, images: Sequence[Path | np.ndarray], preprocess: Preprocess, keep_images: bool = False, augment: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS, seed: int = 0, other_sizes: Sequence[int] = (),
    ):
        self.max_pixels = max_pixels
        self.other_sizes = tuple(other_sizes)
        self.images = images
        self.preprocess = preprocess
        self.keep_images = keep_images
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int, np.ndarray | None, str | None]:
        """One bad file never stops a batch: its reason comes back instead of a tensor."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            rgb = item
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"images must be RGB uint8 (H, W, 3) arrays, got {rgb.dtype} {rgb.shape}")
        else:
            try:
                rgb = read_image(Path(item), self.max_pixels)
            except CamcliError as exc:
                return None, i, None, str(exc)
        # augmentation draws from a generator of (seed, position): the same crops whatever thread decodes
        model_input = random_resized_crop_flip(rgb, np.random.default_rng([self.seed, i])) if self.augment else rgb
        why = forward_too_large(self.preprocess, model_input.shape[:2], self.other_sizes)
        if why is not None:
            return None, i, None, f"{item if not isinstance(item, np.ndarray) else 'image'}: {why}"
        return self.preprocess(model_input), i, (rgb if self.keep_images else None), None


def forward_too_large(preprocess: Preprocess, shape: tuple[int, int], other_sizes: Sequence[int] = ()) -> str | None:
    """Why an image of ``shape`` (h, w) is too large for one forward pass at the preprocessing's
    size (or any of ``other_sizes``, e.g. the maps' input sizes), or None: its input would hold
    more than ``MAX_FORWARD_PIXELS`` pixels (memory grows with them: a 2048 x 8192 input takes
    over 5 GB in the default backbone)."""
    for size in (preprocess.img_size, *other_sizes):
        h, w = (preprocess if size == preprocess.img_size else replace(preprocess, img_size=size)).output_size(*shape)
        if h * w > MAX_FORWARD_PIXELS:
            return (f"its model input at size {size} would be {h}x{w} = {h * w:,} pixels, over the {MAX_FORWARD_PIXELS:,} "
                    "of one forward pass: lower the input size (img_size, cam_size) or resize squash")
    return None


def random_resized_crop_flip(
    rgb: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """A random crop of 35-100% of the area with an aspect ratio in [3/4, 4/3] (the
    Inception-style crop), flipped horizontally half the time."""
    h, w = rgb.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            rgb = rgb[top : top + ch, left : left + cw]
            break
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def collate(batch: list[tuple[np.ndarray | None, int, np.ndarray | None, str | None]]):
    """(tensors, positions, originals) of the readable images as lists (shapes may differ),
    and (position, why) of the others."""
    good = [item for item in batch if item[3] is None]
    failures = [(item[1], item[3]) for item in batch if item[3] is not None]
    return [g[0] for g in good], [g[1] for g in good], [g[2] for g in good], failures
