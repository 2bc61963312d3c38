"""Writing files so that a killed run never leaves a truncated output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from camcli.errors import EnvironmentProblem

# mkstemp makes 0600 files; outputs get the usual permissions (0666 less the umask), read once
# here at import, while the process is still single-threaded
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(
    path: Path, mode: str = "wb", before_rename: Callable[[os.stat_result], None] | None = None
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    ``before_rename`` gets the finished file's stat (size and mtime survive the rename), so a
    record of the file can be made before it appears: a kill can never leave it unrecorded.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write to {path.parent}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
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
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}") from exc
