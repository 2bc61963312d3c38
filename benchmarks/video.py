"""What a clip costs: the whole ``camcli overlay clip.mp4`` command in frames per second, against
the same frames as JPEG files and against pytorch-grad-cam's frame loop, and its memory from a
10-second to a 10-minute clip.

    python benchmarks/video.py [--seconds 30]    # about 10 minutes on 2 cores; writes the "video" section

The clip: 640x480 at 30 frames/s, mp4v in mp4, made by panning and zooming across sample_data's
photographs (the machine has no real clip to install), ``--seconds`` long. A head trained on
sample_data (3 epochs). Each figure is one fresh process (``python -m camcli``, start-up
included): wall time and peak resident memory (VmHWM), with a private cache, the best of two
runs taken in turns with the other commands; the INT8 run is timed after a first run has built
and cached its model. The peer: OpenCV's VideoCapture, then
pytorch-grad-cam's GradCAM on the same classifier (the default backbone and the same head, in
PyTorch) at the same 224x224 input, its ``show_cam_on_image`` and a VideoWriter, frame by frame,
as its users write it (timed on the first 300 frames).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from compare import measured, trained  # noqa: E402
from readme_section import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (640, 480)
FPS = 30
ROUNDS = 2  # each command's best of this many runs


def make_clip(path: Path, seconds: float) -> Path:
    """A 640x480 clip at 30 frames/s panning and zooming across sample_data's photographs, a
    photograph every 2 seconds."""
    sources = [cv2.imread(str(p)) for p in sorted((ROOT / "sample_data" / "val").rglob("*_0[0-3].jpg"))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(int(seconds * FPS)):
        photo = sources[(i // (2 * FPS)) % len(sources)]
        t = (i % (2 * FPS)) / (2 * FPS)
        zoom = 1.0 + 0.4 * t  # a slow zoom in, and a pan from left to right
        big = cv2.resize(photo, (int(SIZE[0] * zoom * 1.2), int(SIZE[1] * zoom)), interpolation=cv2.INTER_LINEAR)
        x = int((big.shape[1] - SIZE[0]) * t)
        y = (big.shape[0] - SIZE[1]) // 2
        writer.write(np.ascontiguousarray(big[y : y + SIZE[1], x : x + SIZE[0]]))
    writer.release()
    return path


PEER = """import sys, time, cv2, numpy as np, torch, camcli
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from camcli.gradients import whole_classifier
torch.set_num_threads(2)
model = camcli.load(sys.argv[1], backend="torch")
module = whole_classifier(model).model.requires_grad_(True)  # camcli freezes it; pytorch-grad-cam needs gradients
cam = GradCAM(model=module, target_layers=[module.features])
pre = model.preprocess
started = time.perf_counter()
capture = cv2.VideoCapture(sys.argv[2])
writer = cv2.VideoWriter(sys.argv[3], cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
frames = 0
while frames < int(sys.argv[4]):
    ok, bgr = capture.read()
    if not ok:
        break
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(pre(rgb))[None]
    grayscale = cam(input_tensor=x, targets=None)[0]
    heat = cv2.resize(grayscale, (640, 480))
    writer.write(cv2.cvtColor(show_cam_on_image(rgb.astype(np.float32) / 255, heat, use_rgb=True), cv2.COLOR_RGB2BGR))
    frames += 1
writer.release()
print(frames / (time.perf_counter() - started))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    frames = int(args.seconds * FPS)
    lines = []
    with tempfile.TemporaryDirectory(prefix="camcli-video-") as tmp:
        tmp = Path(tmp)
        env, ckpt = trained(tmp)
        clip = make_clip(tmp / "pan.mp4", args.seconds)

        jpegs = tmp / "jpegs"
        jpegs.mkdir()
        capture, i = cv2.VideoCapture(str(clip)), 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            cv2.imwrite(str(jpegs / f"f{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            i += 1
        common = ("--checkpoint", ckpt, "--format", "jsonl", "-q")
        measured("predict", clip, *common, "--precision", "int8", "--end", "1", env=env)  # builds and caches the INT8 model
        commands = {
            "`overlay pan.mp4` (fp32, CAM)": ("overlay", clip, *common),
            "`overlay jpegs/` (the same frames as JPEG files)": ("overlay", jpegs, *common),
            "`overlay pan.mp4 --precision int8` (model cached)": ("overlay", clip, *common, "--precision", "int8"),
            "`overlay pan.mp4 --method gradcam` (fp32)": ("overlay", clip, *common, "--method", "gradcam"),
        }
        best: dict[str, tuple[float, float]] = {}
        for round_ in range(ROUNDS):  # the commands take turns, so a slower minute of the machine hits them alike
            for k, (label, options) in enumerate(commands.items()):
                seconds, peak = measured(*options, "--out-dir", tmp / f"o{round_}{k}", env=env)
                best[label] = (min(seconds, best.get(label, (seconds,))[0]), max(peak, best.get(label, (0, 0))[1]))
                print(f"{label}: {frames / seconds:.1f} frames/s", flush=True)
        for label, (seconds, peak) in best.items():
            lines.append(f"| {label} | {seconds:.1f} s | **{frames / seconds:.1f}** | {peak:,.0f} MB |")
        fp32, images, _, gradcam = (frames / seconds for seconds, _ in best.values())
        peer_frames = min(300, frames)
        peer = subprocess.run([sys.executable, "-c", PEER, ckpt, clip, tmp / "peer.mp4", str(peer_frames)], capture_output=True,
                              text=True, env=env)
        if peer.returncode != 0:
            raise SystemExit(f"the pytorch-grad-cam loop failed: {peer.stderr.strip().splitlines()[-1:]}")
        peer_rate = float(peer.stdout.strip().splitlines()[-1])
        lines.append(f"| pytorch-grad-cam loop: VideoCapture, GradCAM, VideoWriter (first {peer_frames} frames, "
                     f"after its start-up) | | **{peer_rate:.1f}** | |")
        short, long = make_clip(tmp / "short.mp4", 10), make_clip(tmp / "long.mp4", 600)
        # 15 frames/s: the 10-second clip's 150 frames fill the pipeline as the long one's do (a batch decoded ahead, one
        # ranked, one encoded); at 2 frames/s its 20 frames make one small batch: a difference of batch, not of length
        memory = [measured("overlay", c, *common, "--fps", "15", "--out-dir", tmp / f"m{c.stem}", env=env) for c in (short, long)]
    table = [f"{date.today()}, {os.cpu_count()} cores, a {args.seconds:g} s 640x480 clip at 30 frames/s ({frames} frames, mp4v), "
             "the default backbone, mp4v output; each figure the whole command, start-up included, the best of "
             f"{ROUNDS} runs taken in turns "
             f"(`python benchmarks/video.py --seconds {args.seconds:g}`):", "",
             "| command | time | frames/s | peak memory |", "|---|---|---|---|", *lines, "",
             f"fp32 against the JPEG frames: {fp32 / images:.2f}x; Grad-CAM against the pytorch-grad-cam loop: "
             f"{gradcam / peer_rate:.1f}x. Memory, `overlay --fps 15`: a 10-second clip {memory[0][1]:,.0f} MB, a 10-minute clip "
             f"{memory[1][1]:,.0f} MB ({memory[1][0]:.0f} s), {memory[1][1] / memory[0][1] - 1:+.1%}."]
    write_section("video", "\n".join(table))


if __name__ == "__main__":
    main()
