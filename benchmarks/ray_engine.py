"""The Ray engine against the local engine on one machine: fixed cost and steady state.

    pip install -e '.[ray,bench]'
    python benchmarks/ray_engine.py       # about 5 minutes on 2 CPU cores; writes benchmarks/README.md

Same real-content 640x480 JPEGs (bench.make_images), default backbone with its ImageNet head,
batch 32: `camcli predict` and `camcli overlay` as whole commands on N and 4·N images with
`--engine local` and `--engine ray` (a local Ray instance started by the command). Fixed cost:
T(N) - N / steady; steady state: 3·N / (T(4·N) - T(N)).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import BATCH, make_images, timed
from readme_section import write_section


def main() -> None:
    n = 128
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, big = work / "data", work / "big"
        make_images(data, n)
        for copy in range(4):
            shutil.copytree(data, big / f"copy{copy}")
        env = {**os.environ, "CAMCLI_CACHE_DIR": str(work / "cache")}
        camcli = [sys.executable, "-m", "camcli"]
        subprocess.run([*camcli, "predict", str(data), "--format", "jsonl"], check=True, capture_output=True, env=env)  # export
        for job in ("predict", "overlay"):
            for engine in ("local", "ray"):
                def cmd(folder: Path, tag: str) -> list[str]:
                    extra = ["--out-dir", str(work / f"o_{job}_{engine}_{tag}")] if job == "overlay" else []
                    return [*camcli, job, str(folder), "--engine", engine, "--batch-size", str(BATCH), "--format", "jsonl",
                            "--quiet", *extra]

                print(f"{job} {engine}", file=sys.stderr, flush=True)
                small, small_rss = timed(cmd(data, "n"), env)
                large, large_rss = timed(cmd(big, "4n"), env)
                steady = 3 * n / (large - small)
                rows.append(f"| {job} | {engine} | {small:.1f} | {large:.1f} | {steady:.1f} | {small - n / steady:.1f} | "
                            f"{max(small_rss, large_rss):.0f} |")
    table = "\n".join([
        f"| job | engine | whole command, N={n} (s) | whole command, 4·N (s) | steady state (img/s) | fixed cost (s) | "
        "driver peak RSS (MB) |",
        "|---|---|---|---|---|---|---|", *rows,
    ]) + f"\n\nMeasured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores (one machine: a local Ray instance per command)."
    print(table)
    write_section("ray", table)


if __name__ == "__main__":
    main()
