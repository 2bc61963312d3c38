"""Score-CAM's cost: --top-channels K against exact Score-CAM, and INT8 against fp32.

    python benchmarks/scorecam.py          # both tables into benchmarks/README.md (about 15 minutes on 2 cores)
    python benchmarks/scorecam.py --quick  # 4 scenes instead of 12

On the composite scenes of benchmarks/localization.py, with one keep-aspect 224 head of the
default backbone:

- the maps of the predicted class with ``top_channels`` K, against exact Score-CAM (every
  channel): Pearson correlation of the (h, w) maps, the fraction of scenes whose map peak is the
  same cell, forward passes and seconds per image;
- Score-CAM through the INT8 backbone (``--precision int8``: the masked passes run INT8 too)
  against fp32, seconds per image of the maps (the INT8 model is built and checked first, not timed).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from localization import trained_composite
from readme_section import README, write_section

from camcli import progress
from camcli.factory import load

KS = (32, 64, 128, 256, 512)
MANUAL = Path(__file__).resolve().parents[1] / "docs" / "methods.md"  # the tables also go into the manual's methods page


def scorecam_maps(model, paths: list[Path], top_channels: int | None) -> tuple[list[np.ndarray], float, int]:
    """(each image's predicted-class Score-CAM map, seconds per image, forward passes per image)."""
    maps, seconds, start_passes = [], 0.0, progress.passes()
    for batch in model.batches(paths, batch_size=1, keep_images=True):
        top = batch.logits.argmax(axis=1)[:, None]
        clock = time.perf_counter()
        maps.append(model.batch_maps(batch, top, method="scorecam", top_channels=top_channels)[0][0])
        seconds += time.perf_counter() - clock
    return maps, seconds / len(paths), (progress.passes() - start_passes) // len(paths)


def main() -> None:
    count = 4 if "--quick" in sys.argv[1:] else 12
    with tempfile.TemporaryDirectory() as tmp:
        root, _, out = trained_composite(Path(tmp))
        paths = sorted((root / "val").rglob("*.jpg"))[:: max(1, len(list((root / "val").rglob("*.jpg"))) // count)][:count]
        model = load(out / "best.safetensors", device="cpu")
        exact, exact_s, exact_passes = scorecam_maps(model, paths, None)
        rows = [f"| every channel (exact) | {exact_passes} | {exact_s:.2f} | 1.000 | 1.000 | 1.00 |"]
        print(rows[-1], file=sys.stderr)
        for k in KS:
            maps, seconds, passes = scorecam_maps(model, paths, k)
            r = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(exact, maps)]
            peaks = np.mean([np.unravel_index(a.argmax(), a.shape) == np.unravel_index(b.argmax(), b.shape) for a, b in zip(exact, maps)])
            rows.append(f"| {k} | {passes} | {seconds:.2f} | {np.mean(r):.3f} | {np.min(r):.3f} | {peaks:.2f} | ")
            print(rows[-1], file=sys.stderr)
        table = "\n".join([f"| --top-channels | forward passes per image | seconds per image | mean r with exact ({count} scenes) | "
                           "lowest r | same peak cell |", "|---|---|---|---|---|---|", *rows])
        print(table)
        for readme in (README, MANUAL):
            write_section("scorecam-top-channels", table, readme)

        int8 = load(out / "best.safetensors", device="cpu", precision="int8", calibration=str(root / "train"))
        int8.prepare()
        speed = []
        for name, m in (("fp32", model), ("int8", int8)):
            maps, seconds, passes = scorecam_maps(m, paths[:4], None)
            speed.append((name, seconds, maps))
        r = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(speed[0][2], speed[1][2])]
        table = "\n".join(["| backbone | Score-CAM seconds per image (4 scenes, every channel) | speed-up | mean r with fp32's maps |",
                           "|---|---|---|---|",
                           f"| fp32 | {speed[0][1]:.2f} | 1.00x | 1.000 |",
                           f"| int8 ({int8.precision} ran) | {speed[1][1]:.2f} | {speed[0][1] / speed[1][1]:.2f}x | {np.mean(r):.3f} |"])
        print(table)
        for readme in (README, MANUAL):
            write_section("scorecam-int8", table, readme)


if __name__ == "__main__":
    main()
