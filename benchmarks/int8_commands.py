"""INT8 against fp32: whole commands and the forward limits, measured in one run (issue 22).

    python benchmarks/int8_commands.py [--images 256] [--runs 3]    # about 15 minutes on 2 CPU cores

On ``--images`` real-content 640x480 JPEGs (bench.py's crops of scikit-image's photographs):

1. heads: a ``camcli train`` checkpoint of the default backbone (ImageNet weights) and one of
   vgg16 with ``--weights none`` (speed only), each carrying its own calibration images;
2. the INT8 models are built and cached first (and the fp32 exports), so every timed command
   starts from a warm cache, as a user's second run does;
3. whole commands (process start, loading, decoding, writing included), ``--runs`` times each,
   median: ``overlay`` and ``predict`` for the default backbone, ``predict`` for vgg16,
   ``--precision fp32`` and ``int8``;
4. the forward limits in the same run: the backbone alone on pre-decoded (4, 3, 224, 288) tensors
   (camcli's keep-aspect input for 640x480), fp32 graph vs INT8 graph, ms per image; and how many
   of the images were near ties that INT8 ran again in fp32 (their rows say ``precision`` fp32).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import make_images  # noqa: E402
from readme_section import write_section  # noqa: E402

from camcli.factory import ModelSpec, build_model  # noqa: E402


def camcli(*args: object, quiet: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "camcli", *map(str, args), *(["-q"] if quiet else [])], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - start


def forward_ms(runner, x: np.ndarray, repeats: int = 3) -> float:
    runner(x)
    start = time.perf_counter()
    for _ in range(repeats):
        runner(x)
    return 1000 * (time.perf_counter() - start) / (repeats * len(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steady", action="store_true", help="also the steady state, 9N / (T(10N) - T(N)): lite0 overlay "
                        "at N = --images, vgg16 predict at N = 32 (about 10 more minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["CAMCLI_CACHE_DIR"] = str(root / "cache")
        data = root / "images"
        make_images(data, args.images)
        heads = {}
        for arch, weights, epochs in (("efficientnet_lite0", "imagenet", 5), ("vgg16", "none", 3)):
            out = root / f"train-{arch}"
            took = camcli("train", data, "--arch", arch, "--weights", weights, "--epochs", epochs, "--out", out)
            heads[arch] = out / "best.safetensors"
            print(f"trained {arch} in {took:.0f} s", flush=True)
            for precision in ("fp32", "int8"):  # exports and INT8 models built and cached before any timing
                took = camcli("predict", data / "cat" / "00000.jpg", "--checkpoint", heads[arch], "--precision", precision,
                              "--format", "jsonl", quiet=False)
                built = " and INT8 build" if precision == "int8" else ""
                print(f"{arch} {precision}: first predict (export{built}) {took:.0f} s", flush=True)
        rows = []
        jobs = [("efficientnet_lite0", "overlay"), ("efficientnet_lite0", "predict"), ("vgg16", "predict")]
        for arch, command in jobs:
            times = {}
            for precision in ("fp32", "int8"):
                extra = ["--out-dir", root / "overlays", "--overwrite"] if command == "overlay" else ["--format", "jsonl"]
                runs = [camcli(command, data, "--checkpoint", heads[arch], "--precision", precision, *extra) for _ in range(args.runs)]
                times[precision] = statistics.median(runs)
            rows.append((arch, command, times))
            print(f"{arch} {command}: fp32 {times['fp32']:.1f} s, int8 {times['int8']:.1f} s "
                  f"({times['fp32'] / times['int8']:.2f}x)", flush=True)
        limits = {}
        x = np.random.default_rng(0).standard_normal((4, 3, 224, 288), dtype=np.float32)
        for arch in heads:
            fp32 = build_model(ModelSpec(checkpoint=str(heads[arch]), device="cpu"))
            int8 = build_model(ModelSpec(checkpoint=str(heads[arch]), device="cpu", precision="int8"))
            fp32.prepare()
            int8.prepare()
            assert int8.precision == "int8", f"{arch}: the INT8 model was refused by its check"
            limits[arch] = (forward_ms(fp32.runner, x), forward_ms(int8.runner, x))
            rows_out = subprocess.run([sys.executable, "-m", "camcli", "predict", data, "--checkpoint", heads[arch], "--precision",
                                       "int8", "--format", "jsonl", "-q"], check=True, capture_output=True, text=True).stdout
            near = rows_out.count('"precision": "fp32"')
            print(f"{arch} INT8 check: {int8.int8_check.describe()}; near ties run in fp32 on the {args.images} images: {near}",
                  flush=True)
        steady = {}
        if args.steady:
            for arch, command, n_steady in (("efficientnet_lite0", "overlay", args.images), ("vgg16", "predict", 32)):
                small, large = root / f"steady-{n_steady}", root / f"steady-{10 * n_steady}"
                make_images(small, n_steady, seed=1)
                make_images(large, 10 * n_steady, seed=1)
                for precision in ("fp32", "int8"):
                    def once(folder: Path) -> float:
                        extra = ["--out-dir", root / "steady-out", "--overwrite"] if command == "overlay" else ["--format", "jsonl"]
                        return camcli(command, folder, "--checkpoint", heads[arch], "--precision", precision, *extra)

                    t1, t10 = once(small), once(large)
                    steady[arch, command, precision] = 9 * n_steady / (t10 - t1)
                print(f"steady {arch} {command}: fp32 {steady[arch, command, 'fp32']:.1f} img/s, "
                      f"int8 {steady[arch, command, 'int8']:.1f} img/s", flush=True)
        n = args.images
        lines = [f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {n} images of "
                 f"640x480; median of {args.runs} whole commands (`python benchmarks/int8_commands.py"
                 f"{' --steady' if args.steady else ''}`)", "",
                 "| backbone | command | fp32 s (img/s) | INT8 s (img/s) | speed-up | forward limit fp32 / INT8 ms per image |",
                 "|---|---|---|---|---|---|"]
        for arch, command, t in rows:
            a, b = limits[arch]
            lines.append(f"| {arch} | {command} | {t['fp32']:.1f} ({n / t['fp32']:.1f}) | {t['int8']:.1f} ({n / t['int8']:.1f}) | "
                         f"{t['fp32'] / t['int8']:.2f}x | {a:.1f} / {b:.1f} ({a / b:.2f}x) |")
        if steady:
            lines += ["", "| backbone | command | steady fp32 img/s (÷ fp32 limit) | steady INT8 img/s (÷ INT8 limit) | speed-up |",
                      "|---|---|---|---|---|"]
            for (arch, command, precision), rate in steady.items():
                if precision == "int8":
                    a, b = limits[arch]
                    fp = steady[arch, command, "fp32"]
                    lines.append(f"| {arch} | {command} | {fp:.1f} ({fp * a / 1000:.2f}) | {rate:.1f} ({rate * b / 1000:.2f}) | "
                                 f"{rate / fp:.2f}x |")
        print("\n" + "\n".join(lines))
        write_section("int8-commands", "\n".join(lines))

if __name__ == "__main__":
    main()
