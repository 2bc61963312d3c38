"""Which method, and can I trust it? Every method's localization and faithfulness on sample_data.

    pip install -e '.[test]'
    python benchmarks/which_method.py      # about 25 minutes on 2 CPU cores; writes the table in docs/methods.md

Trains the Quickstart's head (`camcli train sample_data`, the default backbone), then runs
`camcli evaluate sample_data/val` twice with every method, `--method` repeated:

- localization: all 40 validation images with their boxes (`--boxes sample_data/val_boxes.json`);
- faithfulness: 10 of them (the first two of each class, `--exclude '*_0[2-7].jpg'`; about 5 s per
  image and method, most of it ROAD's sparse solves), `--faithfulness`.

Seconds per image: each method's maps, from the localization run's ``seconds_per_image`` (40
images; the maps of each image's ground-truth class, after the ranking pass that all share).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "gradcamelementwise", "eigencam", "eigengradcam",
           "scorecam", "ablationcam", "fem", "kpcacam", "finercam", "random", "center", "sobel")


def evaluate(checkpoint: Path, out: Path, *options: str) -> dict:
    every = [arg for m in METHODS for arg in ("--method", m)]
    done = subprocess.run([sys.executable, "-m", "camcli", "evaluate", str(ROOT / "sample_data" / "val"), "--checkpoint",
                           str(checkpoint), *every, *options, "--out", str(out), "--format", "json", "--quiet"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def table(loc: dict, faith: dict) -> str:
    lines = [f"On `sample_data/val` with the Quickstart's head: localization on {loc['num_images_with_boxes']} images with "
             f"boxes, faithfulness on {faith['faithfulness']['num_images']} (the first two of each class); milliseconds per "
             "image of the maps alone (2 cores). Lower is better for average drop, deletion and MoRF; higher for the rest.", "",
             "| method | pointing game | MaxBoxAcc | MaxBoxAccV2 | average drop | increase | deletion | insertion | "
             "ROAD MoRF | ROAD LeRF | ROAD combined | maps, ms / image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        box, f = loc["by_method"][name], faith["by_method"][name]["faithfulness"]
        seconds = loc["seconds_per_image"][name]["maps"]
        lines.append(f"| `{name}` | {box['pointing_game']:.3f} | {box['max_box_acc']:.3f} | {box['max_box_acc_v2']:.3f} | "
                     f"{f['average_drop']:.2f} % | {f['increase_in_confidence']:.0f} % | {f['deletion_auc']:.3f} | "
                     f"{f['insertion_auc']:.3f} | {f['road_morf']:.3f} | {f['road_lerf']:.3f} | {f['road_combined']:.3f} | "
                     f"{1000 * seconds:.2f} |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = ROOT / "docs" / "methods.md"
    content = readme.read_text()
    begin, end = "<!-- which-method:begin -->", "<!-- which-method:end -->"
    readme.write_text(content[: content.index(begin) + len(begin)] + "\n" + text + "\n" + content[content.index(end):])


def main() -> None:
    if len(sys.argv) == 3:  # two saved JSON outputs: only the table
        loc, faith = (json.loads(Path(a).read_text()) for a in sys.argv[1:])
    else:
        work = Path(tempfile.mkdtemp(prefix="camcli-which-"))
        subprocess.run([sys.executable, "-m", "camcli", "train", str(ROOT / "sample_data"), "--out", str(work / "train"),
                        "--quiet"], check=True)
        checkpoint = work / "train" / "best.safetensors"
        loc = evaluate(checkpoint, work / "loc", "--boxes", str(ROOT / "sample_data" / "val_boxes.json"))
        faith = evaluate(checkpoint, work / "faith", "--faithfulness", "--exclude", "*_0[2-7].jpg")
    text = table(loc, faith)
    write_readme(text)
    print(text)


if __name__ == "__main__":
    main()
