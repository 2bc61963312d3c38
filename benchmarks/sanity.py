"""The sanity checks of every method on sample_data (docs/commands/evaluate.md, section "sanity").

Trains the Quickstart's head (`camcli train sample_data`, the default backbone), then runs
`camcli evaluate sample_data/val --sanity` with every method but Score-CAM (its 1,280 masked
passes per image and step would take hours here) and writes the table between the page's
`<!-- sanity:begin -->` and `<!-- sanity:end -->` markers. About 4 minutes on 2 cores.

    python benchmarks/sanity.py [--images 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_section import write_section

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "commands" / "evaluate.md"
sys.path.insert(0, str(ROOT))

from camcli.methods import REGISTRY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    camcli = [sys.executable, "-m", "camcli"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([*camcli, "train", str(ROOT / "sample_data"), "--out", str(run), "-q"], check=True)
        names = [m for m in REGISTRY if m != "scorecam"]
        clock = time.perf_counter()
        done = subprocess.run([*camcli, "evaluate", str(ROOT / "sample_data" / "val"), "--checkpoint", str(run / "best.safetensors"),
                               "--sanity", "--sanity-images", str(args.images), "--out", str(Path(tmp) / "ev"), "-q",
                               *(a for m in names for a in ("--method", m))], capture_output=True, text=True)
        seconds = time.perf_counter() - clock
        if done.returncode not in (0, 4):
            sys.exit(done.stderr)
        metrics = json.loads((Path(tmp) / "ev" / "metrics.json").read_text())
    rows = ["| method | head randomized | all randomized | SSIM, all | HOG, all | shuffled labels | verdict |",
            "|---|---|---|---|---|---|---|"]  # Spearman of the signed maps, but SSIM and HOG
    for m in names:
        s = metrics["by_method"][m]["sanity"]
        verdict = ("passes" if s["passed"] else "fails") + (" (baseline)" if REGISTRY[m].baseline else "")
        rows.append(f"| `{m}` | {s['head']['spearman']:.2f} | {s['final']['spearman']:.2f} | {s['final']['ssim']:.2f} | "
                    f"{s['final']['hog']:.2f} | {s['data_randomization']['spearman']:.2f} | {verdict} |")
    steps = len(metrics["sanity"]["steps"]) - 1
    note = (f"{metrics['sanity']['num_images']} images, {steps} steps; the whole command took {seconds:.0f} s on 2 cores "
            f"(`python benchmarks/sanity.py`, {time.strftime('%Y-%m-%d')}).")
    write_section("sanity", "\n".join(rows) + "\n\n" + note, PAGE)
    print("\n".join(rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
