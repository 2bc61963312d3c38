"""What ``camcli compare`` costs against one ``camcli overlay`` of the same images, and its memory from 200 to 1,000 images.

    python benchmarks/compare.py [--images 200,1000]    # about 5 minutes on 2 cores; writes the "compare" section

Images: 640x480 JPEGs made from sample_data's photographs (each with its own noise). One head
trained on sample_data (3 epochs) is both the base and the candidate (the comparison does all its
work whatever the two models are). Each figure is one fresh process (``python -m camcli``): wall
time and peak resident memory (VmHWM), with a private cache (the default backbone's graph ships:
nothing to build). The issue's bar: compare at most 2.2x one overlay run (two models' forward
passes and maps, and nothing else), and memory flat from 200 to 1,000 images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from limits import MEASURED, photographs  # noqa: E402
from readme_section import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measured(*args: object, env: dict) -> tuple[float, float]:
    """(seconds, peak MB) of ``camcli ARGS``; raises if it fails."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    head, _, peak = result.stderr.rpartition("\nPEAK_RSS_KB=")
    if result.returncode != 0:
        raise SystemExit(f"camcli {' '.join(map(str, args[:2]))} failed: {head.strip().splitlines()[-1:]}")
    return seconds, int(peak) / 1024


def trained(tmp: Path) -> tuple[dict, Path]:
    """(an environment with a private cache under ``tmp``, the checkpoint of a head trained there
    on sample_data for 3 epochs)."""
    env = {**os.environ, "CAMCLI_CACHE_DIR": str(tmp / "cache")}
    subprocess.run([sys.executable, "-m", "camcli", "train", ROOT / "sample_data", "--epochs", "3", "--out", tmp / "run", "-q"],
                   check=True, env=env, capture_output=True)
    return env, tmp / "run" / "best.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="200,1000")
    args = parser.parse_args()
    counts = [int(n) for n in args.images.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="camcli-compare-") as tmp:
        tmp = Path(tmp)
        env, ckpt = trained(tmp)
        for n in counts:
            folder = photographs(tmp / f"images{n}", n, 480, 640)
            overlay = measured("overlay", folder, "--checkpoint", ckpt, "--out-dir", tmp / f"o{n}", "--format", "jsonl", "-q", env=env)
            compare = measured("compare", folder, "--base", ckpt, "--candidate", ckpt, "--out", tmp / f"c{n}", "--output",
                               tmp / f"c{n}.jsonl", "-q", env=env)
            rows.append(f"| {n} | {overlay[0]:.1f} s ({n / overlay[0]:.1f} img/s), {overlay[1]:,.0f} MB | "
                        f"{compare[0]:.1f} s ({n / compare[0]:.1f} img/s), {compare[1]:,.0f} MB | **{compare[0] / overlay[0]:.2f}x** |")
            print(rows[-1], flush=True)
    lines = [f"{date.today()}, {os.cpu_count()} cores, 640x480 JPEGs, the default backbone, CAM maps "
             f"(`python benchmarks/compare.py --images {args.images}`):", "",
             "| images | overlay: time, peak memory | compare (two models, report): time, peak memory | compare / overlay |",
             "|---|---|---|---|", *rows]
    write_section("compare", "\n".join(lines))


if __name__ == "__main__":
    main()
