"""Regenerate the README's pictures from sample_data with camcli itself.

    python docs/make_pictures.py        # needs Debian's chromium for the report screenshot

Writes docs/overlays.jpg (a strip of validation overlays: camcli's box from the calibrated
threshold in green, the true box drawn in white) and docs/report.png (a screenshot of the
training report), both small.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def camcli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "camcli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        run, evaluated, val = Path(tmp) / "run", Path(tmp) / "evaluate", ROOT / "sample_data" / "val"
        camcli("train", str(ROOT / "sample_data"), "--out", str(run), "--quiet")
        # the Quickstart's loop: boxes thresholded as calibrated on the validation boxes
        camcli("evaluate", str(val), "--checkpoint", str(run / "best.safetensors"), "--boxes", str(ROOT / "sample_data" / "val_boxes.json"),
               "--calibrate", "--out", str(evaluated), "--quiet")
        truth = json.loads((ROOT / "sample_data" / "val_boxes.json").read_text())
        picks = [f"{c}/{c}_0{i}.jpg" for c, i in [("cat", 2), ("coffee", 4), ("rocket", 1), ("astronaut", 0), ("flower", 3)]]
        camcli("overlay", *(str(val / p) for p in picks), "--checkpoint", str(evaluated / "calibrated.safetensors"),
               "--out-dir", str(Path(tmp) / "ov"), "--draw-box", "--quiet")
        tiles = []
        for pick in picks:
            image = cv2.imread(str(Path(tmp) / "ov" / f"{Path(pick).stem}_cam.jpg"))
            x0, y0, x1, y1 = truth[pick]
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 2)  # the true box, white
            tiles.append(cv2.resize(image, (round(image.shape[1] * 180 / image.shape[0]), 180), interpolation=cv2.INTER_AREA))
        cv2.imwrite(str(DOCS / "overlays.jpg"), np.hstack(tiles), [cv2.IMWRITE_JPEG_QUALITY, 85])
        chromium = shutil.which("chromium")
        if chromium:
            shot = Path(tmp) / "report.png"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}", "--window-size=1000,1500",
                            f"--screenshot={shot}", (run / "report.html").as_uri()], check=True, capture_output=True)
            image = cv2.imread(str(shot))
            cv2.imwrite(str(DOCS / "report.png"), cv2.resize(image, (600, 900), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    main()
