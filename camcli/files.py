"""Every file camcli opens by name, in one place.

- Reads are of regular files only, and bounded: a FIFO, a device (``/dev/zero``) or a file
  larger than the caller's limit is refused with one line, never read without end.
- Files camcli picks by name inside a folder (the output manifest) are opened without
  following symbolic links, so a planted link cannot redirect a write elsewhere.
- Outputs are written to a temporary file beside the target and renamed into place, so a
  killed run never leaves a truncated output; temporary names have a fixed length.
- The output manifest (``.camcli-outputs.jsonl``) records what camcli wrote in a folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from camcli.errors import CamcliError, EnvironmentProblem, os_error

# mkstemp makes 0600 files; outputs get the usual permissions (0666 less the umask), read once
# here at import, while the process is still single-threaded
_UMASK = os.umask(0)
os.umask(_UMASK)
OUTPUT_MODE = 0o666 & ~_UMASK

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
# Every folder camcli writes outputs into holds this manifest of what it wrote there;
# folder walks skip the files it lists, so outputs are never taken as inputs.
# It is append-only JSON lines, one {"name", "size", "mtime_ns"} per file, appended before
# the file is renamed into place, so even a killed run leaves it accurate.
MANIFEST_NAME = ".camcli-outputs.jsonl"
MANIFEST_LIMIT = 256 << 20  # about three million records
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _open_regular(path: Path, flags: int, follow_links: bool, what: str, mode: int = 0o666) -> int:
    """An fd of ``path`` checked to be a regular file (O_NONBLOCK: opening a FIFO never waits)."""
    flags |= os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise CamcliError(f"{what} {path} is a symbolic link; camcli does not follow it: remove it") from exc
        if exc.errno == errno.ENOENT:
            raise CamcliError(f"{what} not found: {path}") from exc
        raise os_error(exc, f"cannot open {what} {path}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CamcliError(f"{what} {path} is {_kind(info.st_mode)}, not a regular file")
    return fd


def open_regular(path: Path, limit: int, what: str = "file", follow_links: bool = True) -> IO[bytes]:
    """A regular file of at most ``limit`` bytes, opened for reading.

    Raises:
        CamcliError: missing, not a regular file (FIFO, device, folder), larger than ``limit``,
            or (``follow_links=False``) a symbolic link.
        EnvironmentProblem: the system refused to open it (permissions).
    """
    fd = _open_regular(Path(path), os.O_RDONLY, follow_links, what)
    size = os.fstat(fd).st_size
    if size > limit:
        os.close(fd)
        raise CamcliError(f"{what} {path} is {size:,} bytes, over the limit of {limit:,}")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, limit: int, what: str = "file", follow_links: bool = True) -> bytes:
    """The contents of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    with open_regular(path, limit, what, follow_links) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise os_error(exc, f"cannot read {what} {path}") from exc
    if len(data) > limit:
        raise CamcliError(f"{what} {path} grew past the limit of {limit:,} bytes while being read")
    return data


def read_text(path: Path, limit: int, what: str = "file") -> str:
    """A bounded regular file (see :func:`read_bytes`) decoded as UTF-8; anything else is one line."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CamcliError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc


# C0/C1 controls, and the invisible format characters that reorder or hide text (bidi overrides, zero-width)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def printable(text: object) -> str:
    """Text from outside (a file or class name, a library message) made safe to show: bytes
    that are not UTF-8 (a name's surrogate escapes) and control characters (terminal escape
    sequences, newlines) appear as backslash escapes, e.g. ``\\xff``, ``\\x1b``, ``\\n``."""
    text = str(text)
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def real_path(path: Path) -> Path:
    """The absolute path with links resolved as far as they go (``Path.resolve`` raises on a link loop)."""
    return Path(os.path.realpath(path))


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it fits in ``limit`` bytes, else a shortened ``<start>~<hash><suffix>``.

    Deterministic, and two different long names never shorten to the same name (the hash
    is of the whole name).
    """
    encoded = os.fsencode(name)
    if len(encoded) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    suffix = f".{suffix}" if dot and stem and len(os.fsencode(suffix)) <= 16 else ""
    stem = name[: len(name) - len(suffix)]
    tag = "~" + hashlib.sha256(encoded).hexdigest()[:12]
    budget = limit - len(os.fsencode(tag + suffix))
    while len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    return stem + tag + suffix


def _temp_prefix(path: Path) -> str:
    # fixed length (a hash, not the name): a temporary name fits wherever its target does
    return f".camcli-{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]}-"


@contextlib.contextmanager
def atomic_open(
    path: Path, mode: str = "wb", before_rename: Callable[[os.stat_result], None] | None = None
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    ``before_rename`` gets the finished file's stat (size and mtime survive the rename), so a
    record of the file can be made before it appears: a kill can never leave it unrecorded.
    Text mode writes UTF-8 with ``surrogateescape``, so file names that are not UTF-8 come
    out as the bytes they are on disk.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents) if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is not None:  # the folder to write in is a file (or a link to nothing): say which
            raise CamcliError(f"cannot write to {path.parent}: {blocker} is not a folder") from exc
        raise os_error(exc, f"cannot write to {path.parent}") from exc
    try:
        os.fchmod(fd, OUTPUT_MODE)
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
        with os.fdopen(fd, mode, **text) as f:
            yield f
        if before_rename is not None:
            before_rename(os.stat(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes | str, before_rename: Callable[[os.stat_result], None] | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    try:
        with atomic_open(path, "wb" if isinstance(data, bytes) else "w", before_rename) as f:
            f.write(data)
    except OSError as exc:
        raise os_error(exc, f"cannot write {path}") from exc


def next_run_dir(base: Path = Path("runs/train"), name: str = "exp") -> Path:
    """The first of ``base/exp``, ``base/exp2``, ... that does not exist yet."""
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}{n}"
    return candidate


class FolderLock:
    """An exclusive ``flock`` on a folder itself (no lock file to leave behind), held until
    :meth:`release` or the process ends: two camcli runs never write one run folder at once."""

    def __init__(self, folder: Path, what: str):
        self.fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self.fd)
            raise CamcliError(f"another camcli process is writing {what} {folder}: wait for it, or choose another folder") from exc
        except OSError:  # a file system without locks: nothing more to hold
            pass

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def remove_if_ours(path: Path, guard: OutputGuard) -> None:
    """Delete ``path`` only if it is the file camcli wrote there, checked and removed in one step:
    the file is first renamed aside (an atomic step, so what is checked is what is removed), and
    a file that is not camcli's is linked back under its name and refused.

    Raises:
        CamcliError: the file is not camcli's (it stays where it was).
    """
    aside = path.with_name(f"{_temp_prefix(path)}{os.getpid()}.removing")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, f"cannot remove {path}") from exc
    info = aside.lstat()
    if stat.S_ISREG(info.st_mode) and guard.records(path).get(path.name) == {"size": info.st_size, "mtime_ns": info.st_mtime_ns}:
        aside.unlink()
        return
    try:
        os.link(aside, path, follow_symlinks=False)
        aside.unlink()
    except OSError:  # a file was written under the name meanwhile: keep both, say where
        raise CamcliError(f"{path} was not written by camcli and is kept as {aside}; {guard.remedy}") from None
    raise CamcliError(f"{path} exists and was not written by camcli; {guard.remedy}")


# ---------------------------------------------------------------- the output manifest

def read_manifest(folder: Path) -> dict[str, dict]:
    """The files camcli wrote into ``folder``: name -> {"size", "mtime_ns"} (the latest record
    of each name). Lines that are not whole records (torn by a kill or a full disk) are ignored.

    Raises:
        CamcliError: the manifest is a symbolic link, not a regular file, or over ``MANIFEST_LIMIT``.
    """
    return _read_records(Path(folder) / MANIFEST_NAME)[0]


_RECORD = re.compile(rb'^\{"name": .*$', re.MULTILINE)  # a line camcli wrote starts so: junk lines are skipped at C speed


def _parse_records(data: bytes, files: dict[str, dict]) -> int:
    """Add the whole records of ``data`` to ``files``, line by line (never a list of all lines);
    returns how many lines it held."""
    for match in _RECORD.finditer(data):
        try:
            entry = json.loads(match.group().decode("utf-8", "replace"))
            files[str(entry["name"])] = {"size": int(entry["size"]), "mtime_ns": int(entry["mtime_ns"])}
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError):  # e.g. a size of 1e400
            continue
    return data.count(b"\n") + (not data.endswith(b"\n") and bool(data))


def _read_records(path: Path, start: int = 0, files: dict[str, dict] | None = None) -> tuple[dict[str, dict], int, tuple, int]:
    """Records of the manifest at ``path`` from byte ``start`` on, added to ``files``.

    Returns:
        (files, the offset read up to (a whole line), the file's (device, inode) or (), lines read).
    """
    files = {} if files is None else files
    if not os.path.lexists(path):
        return files, 0, (), 0
    try:
        with open_regular(path, MANIFEST_LIMIT, "output manifest", follow_links=False) as f:
            info = os.fstat(f.fileno())
            f.seek(start)
            data = f.read(MANIFEST_LIMIT + 1 - start)
    except EnvironmentProblem:
        return files, 0, (), 0
    data = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time, whole
    lines = _parse_records(data, files)
    return files, start + len(data), (info.st_dev, info.st_ino), lines


_APPEND_LOCK = threading.Lock()


def _locked_manifest(path: Path) -> int:
    """An O_APPEND descriptor of the manifest, locked (``flock``) against other camcli processes,
    that is the file now at ``path`` and has no other hard link: a manifest replaced while this
    process waited for the lock (compacted, or made unlinked by another run) is opened again, and a
    hard-linked one (a ``cp -al`` snapshot) is first replaced by a copy, so the other link keeps its
    content."""
    for _ in range(100):
        fd = _open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, False, "output manifest", OUTPUT_MODE)
        try:
            with contextlib.suppress(OSError):  # a file system without locks: the thread lock still holds in-process
                fcntl.flock(fd, fcntl.LOCK_EX)
            info = os.fstat(fd)
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                if info.st_nlink <= 1:
                    return fd
                atomic_write(path, os.pread(fd, min(info.st_size, MANIFEST_LIMIT), 0))  # the copy replaces this link only
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise CamcliError(f"output manifest {path} keeps being replaced by another process; try again")


def append_manifest(folder: Path, name: str, info: os.stat_result) -> dict:
    """Record that camcli wrote ``folder/name`` (its size and mtime); returns the record.

    One ``write`` per record on a locked O_APPEND descriptor opened without following links
    (see :func:`_locked_manifest`). A line left unfinished by a kill or a full disk is closed
    first, so a new record is never glued onto it.
    """
    path = Path(folder) / MANIFEST_NAME
    entry = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    line = (json.dumps({"name": name, **entry}) + "\n").encode("ascii")
    with _APPEND_LOCK:
        fd = _locked_manifest(path)
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            raise os_error(exc, f"cannot write {path}") from exc
        finally:
            os.close(fd)
    return entry


COMPACT_LINES = 1024  # a manifest is rewritten when its lines exceed twice its live records by this many


def compact_manifest(folder: Path) -> tuple[dict[str, dict], int, tuple, int]:
    """Rewrite the manifest with one record per file that is still as camcli wrote it, when its
    lines exceed twice the files it can describe (its distinct names, at most the folder's
    entries) by ``COMPACT_LINES``: runs with ``overwrite`` add a record per file each time, and
    deleted files leave theirs. Done under the manifest's lock, by rename.

    Returns:
        the manifest as it is now, as :func:`_read_records` returns it (read once when nothing
        was compacted).
    """
    path = Path(folder) / MANIFEST_NAME
    read = _read_records(path)
    files, lines = read[0], read[3]
    if lines <= 2 * len(files) + COMPACT_LINES:
        try:  # records of files since deleted count as lines too: the folder's entries bound what is described
            with os.scandir(folder) as entries:
                present = sum(1 for _ in entries)
        except OSError:
            return read
        if lines <= 2 * min(len(files), present) + COMPACT_LINES:
            return read
    with _APPEND_LOCK:
        fd = _locked_manifest(path)
        try:
            files, end, _, _ = _read_records(path)  # again, under the lock: records appended meanwhile count
            recent: dict[str, dict] = {}  # the last records: a file is recorded just before it is renamed into place,
            _parse_records(os.pread(fd, 4096, max(0, end - 4096)), recent)  # so it may not be there yet (a few in flight)
            live = {}
            for name, entry in files.items():
                with contextlib.suppress(OSError):
                    info = (Path(folder) / name).lstat()
                    if stat.S_ISREG(info.st_mode) and {"size": info.st_size, "mtime_ns": info.st_mtime_ns} == entry:
                        live[name] = entry
                if name not in live and recent.get(name) == entry and not (Path(folder) / name).exists():
                    live[name] = entry
            atomic_write(path, "".join(json.dumps({"name": n, **e}) + "\n" for n, e in live.items()))
        finally:
            os.close(fd)
    return _read_records(path)  # the compacted file: small


@dataclass
class OutputGuard:
    """Refuses to overwrite inputs, folders, or files camcli did not write; keeps each folder's manifest."""

    inputs: set[Path]
    overwrite: bool = False
    reserved: set[Path] = field(default_factory=set)  # written by the job itself (the --output results file)
    remedy: str = "pass `overwrite` to replace it"  # what the user can do about a file camcli did not write
    manifests: dict[Path, dict[str, dict]] = field(default_factory=dict)
    read_to: dict[Path, tuple[int, tuple]] = field(default_factory=dict)  # folder -> (offset, (device, inode)) read
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _manifest(self, folder: Path) -> dict[str, dict]:
        """The folder's records, read whole once per run (and compacted if it has grown far
        beyond its files), then only the bytes appended since (see :meth:`is_ours`)."""
        if folder not in self.manifests:
            files, end, ident, _ = compact_manifest(folder)
            self.manifests[folder], self.read_to[folder] = files, (end, ident)
        return self.manifests[folder]

    def _read_new(self, folder: Path) -> dict[str, dict]:
        """Records appended since the last read (another camcli run may write into the folder);
        the whole file again only if it was replaced (compacted)."""
        end, ident = self.read_to[folder]
        try:
            now = (folder / MANIFEST_NAME).lstat()
            same = (now.st_dev, now.st_ino) == ident
        except OSError:
            same = False
        files, end, ident, _ = _read_records(folder / MANIFEST_NAME, end if same else 0, self.manifests[folder] if same else None)
        self.manifests[folder], self.read_to[folder] = files, (end, ident)
        return files

    def records(self, path: Path) -> dict[str, dict]:
        """The records of ``path``'s folder, read up to now (a file of another run included)."""
        with self.lock:
            self._manifest(path.parent)
            return self._read_new(path.parent)

    def is_ours(self, path: Path) -> bool:
        """Whether ``path`` is a regular file as camcli wrote it (same size and mtime as in the
        manifest). A file the records read so far do not know is looked up in the records
        appended since, since another camcli run may have written it."""
        try:
            info = path.lstat()
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        wanted = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        with self.lock:
            if self._manifest(path.parent).get(path.name) == wanted:
                return True
            return self._read_new(path.parent).get(path.name) == wanted

    def check(self, path: Path) -> None:
        """Refuse (before anything is written) an output path that is an input, a folder, or a
        file camcli did not write (unless ``overwrite``); also reads the folder's manifest,
        so an unusable one stops the job here."""
        if real_path(path) in self.inputs:
            raise CamcliError(f"output {path} would replace an input; choose another output path")
        if real_path(path) in self.reserved:
            raise CamcliError(f"output {path} is also the results file (`output`); choose another one")
        with self.lock:
            self._manifest(path.parent)
        if path.is_dir():
            raise CamcliError(f"output {path} is a folder; camcli never replaces folders")
        with contextlib.suppress(OSError):
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise CamcliError(f"output {path} is {_kind(mode)}; camcli replaces only regular files")
        if os.path.lexists(path) and not self.overwrite and not self.is_ours(path):
            raise CamcliError(f"{path} exists and was not written by camcli; {self.remedy}")

    def recorder(self, path: Path, recheck: bool = False) -> Callable[[os.stat_result], None]:
        """A ``before_rename`` hook (see files.atomic_open) that records ``path`` in its folder's
        manifest before the finished file is renamed into place (safe from writer threads).
        ``recheck``: first check again that whatever is at ``path`` now may be replaced (a long job
        whose folder others may write into meanwhile, e.g. train's run folder)."""
        def hook(info: os.stat_result) -> None:
            if recheck:
                self.check(path)
            self.record(path, info)

        return hook

    def record(self, path: Path, info: os.stat_result) -> None:
        """Note a file camcli wrote in the folder's manifest, at once."""
        entry = append_manifest(path.parent, path.name, info)
        with self.lock:
            self._manifest(path.parent)[path.name] = entry


def guard_output_file(path: Path, protected: Iterable[Path], overwrite: bool = False) -> OutputGuard:
    """Check a results file (``--output``) like overlay outputs, before any work: not an input
    or the checkpoint, not a folder, not a file camcli did not write unless ``overwrite``.
    Returns the guard whose ``recorder(path)`` records the file when it is written."""
    guard = OutputGuard({real_path(p) for p in protected}, overwrite)
    guard.check(Path(path))
    return guard


@contextlib.contextmanager
def stderr_quiet() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null during the block: native code's own prints (Ray's C++ core, OpenCV's
    FFmpeg notes); nothing of camcli's writes meanwhile."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
