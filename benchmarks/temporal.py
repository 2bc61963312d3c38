"""What ``overlay --temporal-smooth K`` does to a clip's maps: flicker and the pointing game.

    python benchmarks/temporal.py [--frames-per-object 60]    # about 2 minutes on 2 cores; writes the "temporal" section

The clip: sample_data's five objects crossing its validation textures one after another (each
for ``--frames-per-object`` frames, 640x480 at 15 frames/s, losslessly written, with camera-like
noise of 6 grey levels drawn afresh each frame: ``moving_clip`` in sample_data/make_sample_data.py),
so every frame's true box is known. A head trained on sample_data (3 epochs). For each K, the
maps the overlay draws are taken from camcli's own clip path (``OverlayJob`` through
``run_here``; the map each frame's overlay is drawn from, after smoothing) and scored:

- flicker: the mean absolute change of the min-max normalized map from one frame to the next
  (0 to 1; the pairs where one object gives way to the next are left out: a scene cut is not flicker);
- pointing game: the share of frames whose map's maximum, upsampled to the frame, falls inside
  the object's box; and the same for the frame's centre, the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "sample_data"))
from make_sample_data import moving_clip  # noqa: E402
from readme_section import write_section  # noqa: E402

SMOOTHING = (1, 3, 5, 9)


def normalized(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def peak_in(m: np.ndarray, shape: tuple[int, int], box: list[int]) -> bool:
    up = cv2.resize(np.asarray(m, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    return bool(box[0] <= x < box[2] and box[1] <= y < box[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-object", type=int, default=60)
    args = parser.parse_args()
    per = args.frames_per_object
    with tempfile.TemporaryDirectory(prefix="camcli-temporal-") as tmp:
        tmp = Path(tmp)
        os.environ["CAMCLI_CACHE_DIR"] = str(tmp / "cache")
        import camcli
        import camcli.jobs as jobs
        from camcli.config import resolve_train_config
        from camcli.data import find_images
        from camcli.train import fit

        fit(resolve_train_config(data=str(ROOT / "sample_data"), out=str(tmp / "run"), epochs=3))
        model = camcli.load(tmp / "run" / "best.safetensors")
        clip = tmp / "moving.avi"
        truth = moving_clip(clip, frames=5 * per, size=(640, 480), per_object=per)
        drawn: list = []
        real = jobs.overlay_images

        def overlay_images(image_rgb, maps, *rest, **kwargs):
            drawn.append((image_rgb.shape[:2], np.array(maps[0])))
            return real(image_rgb, maps, *rest, **kwargs)

        jobs.overlay_images = overlay_images
        lines = []
        centre = np.mean([b[0] <= 320 < b[2] and b[1] <= 240 < b[3] for _, b in truth])
        for k in SMOOTHING:
            drawn.clear()
            started = time.perf_counter()
            list(jobs.run_here(jobs.OverlayJob(out_dir=tmp / f"k{k}", temporal_smooth=k), model, find_images([str(clip)], videos=True)))
            seconds = time.perf_counter() - started
            maps = [normalized(m) for _, m in drawn]
            flicker = np.mean([np.abs(maps[t] - maps[t - 1]).mean() for t in range(1, len(maps)) if t % per])
            pointing = np.mean([peak_in(m, shape, truth[t][1]) for t, (shape, m) in enumerate(drawn)])
            label = "none (K = 1)" if k == 1 else f"K = {k}"
            lines.append(f"| {label} | **{flicker:.4f}** | **{pointing:.1%}** | {len(drawn) / seconds:.1f} |")
            print(lines[-1], flush=True)
    table = [f"{date.today()}, {os.cpu_count()} cores; a {5 * per}-frame 640x480 clip of sample_data's five objects crossing "
             f"its validation textures ({per} frames each, noise of 6 grey levels per frame), CAM, the overlay's own maps "
             f"(`python benchmarks/temporal.py --frames-per-object {per}`):", "",
             "| `--temporal-smooth` | flicker (mean change of the normalized map per frame) | pointing game | frames/s (overlay job, "
             "no start-up) |", "|---|---|---|---|", *lines, "",
             f"The frame's centre, as a map that never moves, points inside the box in {centre:.1%} of the frames."]
    write_section("temporal", "\n".join(table))


if __name__ == "__main__":
    main()
