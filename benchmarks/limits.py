"""The hardening cases at full size: peak memory and wall time of whole commands in child processes.

    python benchmarks/limits.py [--photos 40]    # about 10 minutes on 2 cores; writes the "limits" section

``tests/test_limits.py`` runs each case with its limit scaled down, so that the suite stays fast;
here each runs as a user would meet it, with camcli's real limits. Each figure is one fresh
process (``python -m camcli``), its peak resident memory (VmHWM) and its wall time, with a private
cache folder (built INT8 models included: the first INT8 run builds one):

- ``predict ONE --precision int8 --calibration sample_data/train --img-size 2048 --resize squash``
  (the INT8 build took 9 GB in 98 s before it was bounded), against the same in fp32;
- ``overlay`` on ``--photos`` photographs of 12 Mpixels at the default batch of 32 (100 took 3.1 GB);
- ``overlay`` of one 400x1600 photograph with ``--method scorecam`` (4.0 GB and 168 s);
- ``evaluate ONE --faithfulness --img-size 1024 --resize squash`` (ROAD alone took 200 s, 5.2 GB);
- ``predict`` with a 28 KB sparse checkpoint declaring 3.5 GB of INT8 calibration JPEGs (3.44 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from readme_section import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
MEASURED = """import runpy, sys
sys.argv = ["camcli", *sys.argv[1:]]
try:
    runpy.run_module("camcli", run_name="__main__", alter_sys=True)
finally:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS_KB={peak}\\n")
"""


def measured(*args: object, env: dict) -> tuple[int, float, float, str]:
    """(exit status, peak MB, seconds, the last line of stderr before the peak) of ``camcli ARGS``."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    head, _, peak = result.stderr.rpartition("\nPEAK_RSS_KB=")
    lines = [line for line in head.strip().splitlines() if line.strip()]
    return result.returncode, int(peak) / 1024, seconds, lines[-1] if lines else ""


def photographs(folder: Path, count: int, height: int, width: int) -> Path:
    """``count`` JPEGs of ``height`` x ``width``: sample_data's photographs resized, with noise so each differs."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((SAMPLE / "val").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    for i in range(count):
        image = cv2.resize(cv2.imread(str(sources[i % len(sources)])), (width, height), interpolation=cv2.INTER_LINEAR)
        image = cv2.add(image, rng.integers(0, 8, image.shape, dtype=np.uint8))
        cv2.imwrite(str(folder / f"p{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return folder


def sparse_checkpoint(path: Path) -> Path:
    """A 28 KB safetensors file declaring 3.5 GB of INT8 calibration JPEGs (a sparse hole)."""
    huge = 3_500_000_000
    meta = {"format_version": 2, "arch": "efficientnet_lite0", "class_names": ["a", "b"], "img_size": 224,
            "preprocess": {"img_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"},
            "backbone": {"reference": {"package": "x", "file": "y", "sha256": "z"}}}
    entries = {"head.weight": ("F32", (2, 4), 0, 32), "head.bias": ("F32", (2,), 32, 40),
               "int8.offsets": ("I64", (2,), 40, 56), "int8.jpeg": ("U8", (huge,), 56, 56 + huge)}
    header = {"__metadata__": {"camcli": json.dumps(meta)}}
    header.update({k: {"dtype": d, "shape": list(s), "data_offsets": [a, b]} for k, (d, s, a, b) in entries.items()})
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + 56 + huge)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40, help="photographs of 12 Mpixels for the overlay case")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="camcli-limits-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CAMCLI_CACHE_DIR": str(tmp / "cache")}
        one = SAMPLE / "val" / "cat" / "cat_00.jpg"
        big = ("--img-size", "2048", "--resize", "squash", "--format", "jsonl")
        cases = [
            ("predict ONE --img-size 2048 --resize squash (fp32)", ("predict", one, *big)),
            ("the same with --precision int8 --calibration sample_data/train (the build and the run)",
             ("predict", one, *big, "--precision", "int8", "--calibration", SAMPLE / "train")),
            (f"overlay of {args.photos} photographs of 12 Mpixels, batch 32",
             ("overlay", photographs(tmp / "large", args.photos, 3000, 4000), "--out-dir", tmp / "o", "--format", "jsonl")),
            ("overlay of one 400x1600 photograph, --method scorecam",
             ("overlay", photographs(tmp / "wide", 1, 400, 1600), "--method", "scorecam", "--out-dir", tmp / "s",
              "--format", "jsonl")),
            ("evaluate ONE --faithfulness --img-size 1024 --resize squash",
             ("evaluate", photographs(tmp / "faith", 1, 480, 640), "--faithfulness", "--img-size", "1024", "--resize",
              "squash", "--out", tmp / "e", "--format", "json")),
            ("predict with a 28 KB sparse checkpoint declaring 3.5 GB of calibration JPEGs",
             ("predict", one, "--checkpoint", sparse_checkpoint(tmp / "sparse.safetensors"))),
        ]
        for what, command in cases:
            code, peak, seconds, last = measured(*command, env=env)
            rows.append(f"| {what} | {code} | {peak:,.0f} MB | {seconds:.1f} s | {last[:110].replace('|', '/')} |")
            print(rows[-1], flush=True)
    lines = [f"{date.today()}, {os.cpu_count()} cores (`python benchmarks/limits.py --photos {args.photos}`):", "",
             "| case | exit | peak memory | wall time | the last line on stderr |", "|---|---|---|---|---|", *rows]
    write_section("limits", "\n".join(lines))


if __name__ == "__main__":
    main()
