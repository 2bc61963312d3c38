"""The CUDA path, run once on a machine with a GPU: autocast, pinned memory, non-blocking copies.

    python benchmarks/cuda_check.py OUT_DIR

Compares on sample_data (CPU float32 is the reference):
1. predict probabilities: CUDA with autocast (float16) and CUDA without it;
2. raw CAMs (overlay --save-raw equivalents through the API): max relative difference and correlation;
3. train on sample_data with --device cuda (3 epochs): validation accuracy against the CPU run;
4. throughput of `predict` on the GPU (steady state over 20 passes of the 30 validation images).
Writes OUT_DIR/cuda_check.json and prints it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camcli.config import resolve_train_config  # noqa: E402
from camcli.factory import load  # noqa: E402
from camcli.train import fit  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    images = sorted((ROOT / "sample_data" / "val").rglob("*.jpg"))
    cpu = load("efficientnet_lite0", device="cpu", backend="torch")
    reference = cpu.predict(images, top_k=1000)
    for amp in (True, False):
        gpu = load("efficientnet_lite0", device="cuda", amp=amp)
        rows = gpu.predict(images, top_k=1000, workers=2)
        delta = max(abs(a["prob"] - {q["index"]: q["prob"] for q in b["predictions"]}[a["index"]])
                    for r, b in zip(reference, rows) for a in r["predictions"])
        top1 = np.mean([r["predictions"][0]["index"] == b["predictions"][0]["index"] for r, b in zip(reference, rows)])
        ref_maps = np.concatenate([cpu.maps([p], classes=[281, 504]).ravel() for p in images[:8]])
        maps = np.concatenate([gpu.maps([p], classes=[281, 504]).ravel() for p in images[:8]])
        rel = float(np.abs(maps - ref_maps).max() / np.abs(ref_maps).max())
        corr = float(np.corrcoef(maps, ref_maps)[0, 1])
        report[f"amp={amp}"] = {"max_abs_prob_delta": delta, "top1_agreement": float(top1),
                                "map_max_rel_delta": rel, "map_correlation": corr}
        if amp:
            start = time.perf_counter()
            for _ in range(20):
                gpu.predict(images, workers=4, batch_size=32)
            torch.cuda.synchronize()
            report["predict_img_per_s_amp"] = 20 * len(images) / (time.perf_counter() - start)
    results = {}
    for device in ("cpu", "cuda"):
        result = fit(resolve_train_config(data=str(ROOT / "sample_data"), epochs=3, device=device, backend="torch",
                                          out=str(out / f"train_{device}"), workers=2))
        results[device] = result.best["val_acc"]
    report["train_val_acc"] = results
    text = json.dumps(report, indent=2)
    (out / "cuda_check.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
