"""Shared fixtures: tiny image folders made in tmp_path, and one real run on sample_data."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

# the tests never touch the user's cache (ONNX exports, pooled features), and leave none behind
os.environ["CAMCLI_CACHE_DIR"] = tempfile.mkdtemp(prefix="camcli-test-cache-")
# a shell that starts pytest in the background (`pytest &`) sets SIGINT to "ignore", which every camcli the tests start would
# inherit, so that the Ctrl-C tests could not interrupt it: a Python handler here is reset to the default in those processes
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
atexit.register(shutil.rmtree, os.environ["CAMCLI_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def make_image_folder(root: Path, classes=("red", "blue"), per_class: int = 6, size=(40, 56), seed: int = 0) -> Path:
    """A flat ImageFolder whose classes differ by color, with non-square images."""
    rng = np.random.default_rng(seed)
    colors = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    for name in classes:
        for i in range(per_class):
            noise = rng.integers(0, 40, size=(*size, 3))
            rgb = np.clip(np.array(colors[name]) + noise, 0, 255).astype(np.uint8)
            write_image(root / name / f"{name}_{i}.png", rgb)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """A real training run on sample_data with the offline default backbone (3 epochs)."""
    from camcli.config import resolve_train_config
    from camcli.train import fit

    out = tmp_path_factory.mktemp("sample_run") / "run"
    fit(resolve_train_config(data=str(SAMPLE_DATA), epochs=3, out=str(out), workers=0))
    return out


def save_v1(checkpoint: dict, path: Path) -> Path:
    """Save a checkpoint dict (arrays as NumPy) in camcli 0.1's format: a PyTorch pickle.
    Nothing is checked, so tests can craft any field; camcli reads this format too."""
    import torch

    def tensors(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value))
        if isinstance(value, dict):
            return {k: tensors(v) for k, v in value.items()}
        return value

    torch.save(tensors(checkpoint), path)
    return path


def with_class_names(sample_run: Path, path: Path, names: list[str]) -> Path:
    """The sample run's checkpoint with other class names, saved at ``path``: camcli 0.1's
    unchecked format for a ``.pt`` path (see :func:`save_v1`), else safetensors."""
    from camcli.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(sample_run / "best.safetensors")
    checkpoint["class_names"] = list(names)
    save_v1(checkpoint, path) if path.suffix == ".pt" else save_checkpoint(checkpoint, path)
    return path


_MEASURED = """import runpy, sys
setup, sys.argv = sys.argv[1], ["camcli", *sys.argv[2:]]
exec(setup)  # the test's own lines: limits scaled down so that the child runs in seconds
try:
    runpy.run_module("camcli", run_name="__main__", alter_sys=True)
finally:
    # VmHWM: this process image's own high-water mark (ru_maxrss survives exec: it would count the parent's)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS_KB={peak}\\n")
"""


def run_measured(*args, timeout: float = 300, setup: str = "", **kwargs):
    """Run ``camcli ARGS`` in a child process, after the Python lines ``setup``; returns (the
    CompletedProcess with the peak line removed from stderr, the child's peak resident memory in
    MB: its VmHWM; camcli decodes in threads, not processes)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _MEASURED, setup, *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    head, _, peak = result.stderr.rpartition("\nPEAK_RSS_KB=")
    result.stderr = head.strip("\n") + "\n" if head.strip() else ""
    return result, int(peak) / 1024


def on_a_terminal(args: list, stdout_path: Path | None = None, env: dict | None = None) -> tuple[int, list[tuple[float, bytes]]]:
    """Run ``camcli ARGS`` with stderr (and stdout, unless ``stdout_path``) on a pseudo-terminal
    120 columns wide; returns (exit status, (seconds since the start, bytes) of each read)."""
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    out = open(stdout_path, "w") if stdout_path else None
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "camcli", *map(str, args)], stdin=subprocess.DEVNULL,
                                stdout=out or slave, stderr=slave, env={**os.environ, "COLUMNS": "120", **(env or {})})
    finally:
        os.close(slave)
    chunks = []
    while True:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if chunk:
                chunks.append((time.monotonic() - start, chunk))
                continue
        if proc.poll() is not None:
            break
    os.close(master)
    if out:
        out.close()
    return proc.wait(), chunks
