"""Grad-CAM throughput: `camcli overlay --method gradcam` against pytorch-grad-cam's GradCAM.

    pip install -e '.[bench]'
    python benchmarks/gradients.py        # about 10 minutes on 2 CPU cores; writes benchmarks/README.md

Same real-content 640x480 JPEGs (bench.make_images), same model and target layer, batch 32,
both squashing to 224x224 (camcli `--resize squash`, so both see the same pixels):

- efficientnet_lite0 with its ImageNet head (a GAP + linear head: camcli's gradients are exact,
  no backward pass, ONNX Runtime); target layer: the last feature map (`bn2`);
- vgg16 (random weights: speed does not depend on them, saved as a state dict and passed with
  `--weights`): fully connected head, so camcli runs the backward engine in PyTorch; target
  layer `features`.

camcli: the whole command (process start and model load included) on N and 4·N images, and the
steady state 3·N / (T(4·N) - T(N)). pytorch-grad-cam: decode, resize, GradCAM (its forward and
backward), show_cam_on_image and write, in one process, model already loaded (its steady state;
its whole pipeline has no process start of its own to count).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench import BATCH, gradcam_loop, make_images, timed
from readme_section import write_section


def run(arch: str, n: int, work: Path, log) -> dict:
    from camcli.backbones import build_classifier

    data, big = work / f"data_{arch}", work / f"big_{arch}"
    make_images(data, n)
    for copy in range(4):
        shutil.copytree(data, big / f"copy{copy}")
    env = {**os.environ, "CAMCLI_CACHE_DIR": str(work / "cache")}
    if arch == "vgg16":
        torch.manual_seed(0)
        classifier = build_classifier(arch, "none")
        weights = work / "vgg16.pth"
        torch.save(classifier.model.state_dict(), weights)
        source = ["--arch", arch, "--weights", str(weights)]
    else:
        classifier = build_classifier(arch, "imagenet")
        source = ["--arch", arch]
    cmd = [sys.executable, "-m", "camcli", "overlay", *source, "--method", "gradcam", "--resize", "squash",
           "--batch-size", str(BATCH), "--format", "jsonl", "--quiet"]
    subprocess.run([*cmd, str(data), "--out-dir", str(work / "warm")], check=True, capture_output=True, env=env)  # exports, caches
    log(f"[{arch}] camcli")
    small = timed([*cmd, str(data), "--out-dir", str(work / f"ov_{arch}_n")], env)
    large = timed([*cmd, str(big), "--out-dir", str(work / f"ov_{arch}_4n")], env)
    log(f"[{arch}] pytorch-grad-cam")
    out = work / f"peer_{arch}"
    out.mkdir()
    layer = dict(classifier.model.named_modules())[classifier.default_layer]
    peer_rate = gradcam_loop(classifier.model, layer, classifier.mean, classifier.std, sorted(data.rglob("*.jpg")), out)
    return {"arch": arch, "n": n, "whole": n / small[0], "steady": 3 * n / (large[0] - small[0]), "rss": large[1],
            "peer": peer_rate, "layer": classifier.default_layer}


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, n in (("efficientnet_lite0", 128), ("vgg16", 32)):
            results.append(run(arch, n, Path(tmp), lambda m: print(m, file=sys.stderr, flush=True)))
    lines = ["| backbone (target layer) | N | camcli whole command, N images (img/s) | camcli steady (img/s) | "
             "pytorch-grad-cam GradCAM (img/s) | steady / GradCAM | whole / GradCAM | camcli peak RSS at 4·N (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['arch']} (`{r['layer']}`) | {r['n']} | {r['whole']:.1f} | {r['steady']:.1f} | {r['peer']:.1f} | "
                     f"{r['steady'] / r['peer']:.2f} | {r['whole'] / r['peer']:.2f} | {r['rss']:.0f} |")
    text = "\n".join(lines) + f"\n\nMeasured {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {os.cpu_count()} CPU cores."
    print(text)
    write_section("gradients", text)


if __name__ == "__main__":
    main()
