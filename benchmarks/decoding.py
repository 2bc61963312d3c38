"""Decoding in threads against decoding in worker processes (what camcli used before 0.2).

    python benchmarks/decoding.py [--n 256] [--workers 2]

Decodes and preprocesses N real-content 640x480 JPEGs (the images of bench.py) at batch 32
with camcli's preprocessing, three ways, and prints images per second and the peak RSS of
all processes involved:

- inline: no helpers (``--workers 0``);
- threads: camcli's ``engine.image_batches`` (a thread pool, two batches decoded ahead);
- processes: a torch DataLoader with worker processes over the same dataset (the old way).

Then the same with the default backbone's forward pass on ONNX Runtime in the main thread,
as in ``camcli predict`` (decoding overlaps the forward pass).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from bench import make_images
from torch.utils.data import DataLoader

from camcli.data import ImageDataset, collate
from camcli.engine import image_batches
from camcli.factory import load


def _processes(paths, pre, workers):
    dataset = ImageDataset(paths, pre)
    yield from DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate)


def _threads(paths, pre, workers):
    yield from image_batches(paths, pre, 32, workers)


def measure(name: str, batches) -> float:
    start = time.perf_counter()
    count = 0
    for tensors, _, _, _ in batches:
        count += len(tensors)
    rate = count / (time.perf_counter() - start)
    print(f"{name:<40} {rate:7.1f} img/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), args.n)
        paths = sorted(Path(tmp).rglob("*.jpg"))
        model = load("efficientnet_lite0", device="cpu", backend="onnxruntime")
        model.prepare()
        pre = model.preprocess
        measure("decode+preprocess, inline", _threads(paths, pre, 0))
        measure(f"decode+preprocess, {args.workers} threads", _threads(paths, pre, args.workers))
        measure(f"decode+preprocess, {args.workers} processes", _processes(paths, pre, args.workers))
        for label, batches in (("threads", _threads), ("processes", _processes)):
            start = time.perf_counter()
            count = 0
            for tensors, _, _, _ in batches(paths, pre, args.workers):
                model.forward(tensors)
                count += len(tensors)
            print(f"{'+ forward (ONNX Runtime), ' + label:<40} {count / (time.perf_counter() - start):7.1f} img/s")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main process {own:.0f} MB, largest worker process {children:.0f} MB")


if __name__ == "__main__":
    main()
