"""Speed benchmark: camcli against its own limits and against its peers.

    pip install -e '.[bench]'
    python benchmarks/bench.py            # about 12 minutes on 2 CPU cores; writes benchmarks/README.md

For the default backbone (efficientnet_lite0) and vgg16 (random weights: speed does not depend
on them), on real-content 640x480 JPEGs, at batch 32 and torch's default thread count:

1. forward-only throughput on pre-decoded tensors (the default keep-aspect input, 224x288),
   for PyTorch eager, PyTorch channels-last and ONNX Runtime;
2. `camcli predict` and `camcli overlay` end to end: whole command (process start included)
   on N images, and steady state: the extra images per extra second between N and 10·N
   images, 9·N / (T(10·N) - T(N)), so process start and model loading cancel out;
3. `camcli train` wall time for 1 and 10 epochs, each with a cold feature cache, and a warm rerun;
4. peak RSS (``/usr/bin/time -v``) of `camcli overlay` on N and 10·N images;
5. peers on the same images and model: pytorch-grad-cam's GradCAM + show_cam_on_image,
   torchcam's CAM + overlay_mask, and a plain per-image loop like the original CAM tutorial.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from readme_section import write_section
from torch import nn

BATCH = 32


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """n real-content 640x480 JPEGs in 4 class folders (crops of scikit-image's photographs)."""
    import skimage.data

    photos = {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
              "astronaut": skimage.data.astronaut(), "rocket": skimage.data.rocket()}
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = list(photos)[i % 4]
        photo = photos[name]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = cv2.resize(photo[y : y + ch, x : x + cw], (640, 480), interpolation=cv2.INTER_LINEAR)
        (root / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name / f"{i:05d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def forward_only(arch: str, images: int) -> dict[str, float]:
    """Images/s of the backbone alone on pre-decoded (B, 3, 224, 288) tensors."""
    from camcli.backbones import build_backbone
    from camcli.runtime import OnnxRunner, TorchRunner, export_onnx

    weights = "imagenet" if arch == "efficientnet_lite0" else "none"
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 288), dtype=np.float32)
    results = {}
    eager = build_backbone(arch, weights).features
    runners = {
        "torch eager": lambda t: eager(torch.from_numpy(t)),
        "torch channels-last": TorchRunner(build_backbone(arch, weights).features, "cpu"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.onnx"
        export_onnx(build_backbone(arch, weights).features, path)
        runners["onnxruntime"] = OnnxRunner(path)
        for name, run in runners.items():
            with torch.inference_mode():
                run(x[:4])
                batches = max(1, images // BATCH)
                start = time.perf_counter()
                for _ in range(batches):
                    run(x)
                results[name] = batches * BATCH / (time.perf_counter() - start)
    return results


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB from /usr/bin/time -v) of a whole command."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-500:]}")
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024


def wall(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


class _Classifier(nn.Module):
    """features -> GAP -> linear, for the peers (which need a model that returns logits)."""

    def __init__(self, features: nn.Module, head: nn.Linear):
        super().__init__()
        self.features, self.pool, self.fc = features, nn.AdaptiveAvgPool2d(1), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _classifier(checkpoint: Path) -> tuple[_Classifier, nn.Module, tuple, tuple]:
    from camcli.factory import load

    model = load(checkpoint, device="cpu", backend="torch")
    head = nn.Linear(model.weight.shape[1], model.weight.shape[0])
    head.load_state_dict({"weight": torch.from_numpy(model.weight), "bias": torch.from_numpy(model.bias)})
    features = model.features_module()
    clf = _Classifier(features, head).eval()
    modules = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    return clf, modules[-1], model.preprocess.mean, model.preprocess.std


def peer_gradcam(checkpoint: Path, paths: list[Path], out: Path) -> float:
    model, layer, mean, std = _classifier(checkpoint)
    return gradcam_loop(model, layer, mean, std, paths, out)


def gradcam_loop(model: nn.Module, layer: nn.Module, mean, std, paths: list[Path], out: Path) -> float:
    """pytorch-grad-cam's documented pipeline: decode, resize to 224x224, GradCAM (its forward and
    backward), show_cam_on_image, write; images per second."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image

    model = model.eval().requires_grad_(True)  # GradCAM needs a graph to backpropagate through
    start = time.perf_counter()
    with GradCAM(model=model, target_layers=[layer]) as method:
        for i in range(0, len(paths), BATCH):
            rgbs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[i : i + BATCH]]
            floats = [cv2.resize(r, (224, 224)).astype(np.float32) / 255 for r in rgbs]
            x = torch.cat([preprocess_image(f, mean=list(mean), std=list(std)) for f in floats])
            cams = method(input_tensor=x, targets=None)
            for p, f, c in zip(paths[i : i + BATCH], floats, cams):
                vis = show_cam_on_image(f, c, use_rgb=True)
                cv2.imwrite(str(out / f"gradcam_{p.name}"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    return len(paths) / (time.perf_counter() - start)


def peer_torchcam(checkpoint: Path, paths: list[Path], out: Path) -> float:
    from PIL import Image
    from torchcam.methods import CAM
    from torchcam.utils import overlay_mask
    from torchvision.transforms.functional import normalize, resize, to_pil_image, to_tensor

    model, layer, mean, std = _classifier(checkpoint)
    start = time.perf_counter()
    with CAM(model, target_layer=model.features, fc_layer=model.fc, input_shape=(3, 224, 224)) as extractor:
        for p in paths:
            img = Image.open(p).convert("RGB")
            x = normalize(to_tensor(resize(img, [224, 224])), list(mean), list(std))
            with torch.no_grad():
                scores = model(x[None])
            cams = extractor(scores.argmax(1).item(), scores)
            overlay_mask(img, to_pil_image(cams[0].squeeze(0), mode="F"), alpha=0.5).save(out / f"torchcam_{p.name}")
    return len(paths) / (time.perf_counter() - start)


def peer_plain_loop(checkpoint: Path, paths: list[Path], out: Path) -> float:
    """The original CAM tutorial's loop: PIL open, transform, forward with a hook, CAM, cv2 blend, write."""
    from PIL import Image
    from torchvision import transforms

    model, _, mean, std = _classifier(checkpoint)
    grabbed = []
    hook = model.features.register_forward_hook(lambda m, i, o: grabbed.append(o))
    transform = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(mean, std)])
    weight = model.fc.weight.detach()
    start = time.perf_counter()
    for p in paths:
        grabbed.clear()
        with torch.no_grad():
            logits = model(transform(Image.open(p).convert("RGB"))[None])
        c = int(logits.argmax())
        cam = torch.einsum("c,chw->hw", weight[c], grabbed[0][0]).numpy()
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-12)
        image = cv2.imread(str(p))
        heat = cv2.applyColorMap(np.uint8(255 * cv2.resize(cam, (image.shape[1], image.shape[0]))), cv2.COLORMAP_JET)
        cv2.imwrite(str(out / f"plain_{p.name}"), cv2.addWeighted(heat, 0.5, image, 0.5, 0))
    hook.remove()
    return len(paths) / (time.perf_counter() - start)


def bench_arch(arch: str, n: int, work: Path, log) -> dict:
    camcli = [sys.executable, "-m", "camcli"]
    data = work / f"data_{arch}"
    make_images(data, n)
    big = work / f"big_{arch}"
    for copy in range(10):
        shutil.copytree(data, big / f"copy{copy}")
    weights = [] if arch == "efficientnet_lite0" else ["--weights", "none"]
    # one cache for every command, holding the backbone's ONNX export before anything is timed,
    # so --backend auto takes ONNX Runtime at any image count; train's cold runs get a copy of
    # it without pooled features
    cache = work / f"cache_{arch}"
    env = {**os.environ, "CAMCLI_CACHE_DIR": str(cache)}
    r: dict = {"arch": arch, "n": n}
    log(f"[{arch}] forward only")
    r["forward"] = forward_only(arch, n)
    subprocess.run([*camcli, "train", str(data), "--arch", arch, *weights, "--epochs", "1", "--backend", "onnxruntime",
                    "--out", str(work / f"warmup_{arch}"), "--quiet"], check=True, capture_output=True, env=env)
    shutil.rmtree(cache / "features")

    def train(epochs: int, cold: Path, out: str) -> float:
        if not cold.exists():
            shutil.copytree(cache / "onnx", cold / "onnx")
        env_c = {**env, "CAMCLI_CACHE_DIR": str(cold)}
        return wall([*camcli, "train", str(data), "--arch", arch, *weights, "--epochs", str(epochs), "--val-split", "0.25",
                     "--out", str(work / out), "--exist-ok", "--quiet"], env_c)

    log(f"[{arch}] train")
    r["train_1"] = train(1, work / f"cacheA_{arch}", f"t1_{arch}")
    r["train_10"] = train(10, work / f"cacheB_{arch}", f"t10_{arch}")
    r["train_10_warm"] = train(10, work / f"cacheB_{arch}", f"t10w_{arch}")
    ckpt = work / f"t10_{arch}" / "best.safetensors"
    common = ["--checkpoint", str(ckpt), "--batch-size", str(BATCH), "--format", "jsonl"]
    log(f"[{arch}] predict / overlay")
    r["backend"] = "onnxruntime (auto, cached export)"
    for job, extra in (("predict", []), ("overlay", ["--out-dir", str(work / f"ov_{arch}")])):
        small = timed([*camcli, job, str(data), *common, *extra], env)
        large = timed([*camcli, job, str(big), *common, *extra], env)
        r[job] = (n / small[0], 9 * n / (large[0] - small[0]))
        if job == "overlay":
            r["rss_n"], r["rss_10n"] = small[1], large[1]
    paths = sorted(data.rglob("*.jpg"))
    peers_out = work / f"peers_{arch}"
    peers_out.mkdir()
    log(f"[{arch}] peers")
    r["gradcam"] = peer_gradcam(ckpt, paths, peers_out)
    r["torchcam"] = peer_torchcam(ckpt, paths, peers_out)
    r["plain"] = peer_plain_loop(ckpt, paths, peers_out)
    return r


def table(results: list[dict]) -> str:
    lines = ["| measure | " + " | ".join(f"{r['arch']} (N={r['n']})" for r in results) + " |",
             "|---|" + "---|" * len(results)]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")

    for backend in ("torch eager", "torch channels-last", "onnxruntime"):
        row(f"forward only, {backend} (img/s)", lambda r, b=backend: f"{r['forward'][b]:.1f}")
    row("predict end to end, N images (img/s, whole command)", lambda r: f"{r['predict'][0]:.1f}")
    row("predict steady state (img/s)", lambda r: f"{r['predict'][1]:.1f}")
    row("overlay end to end, N images (img/s, whole command)", lambda r: f"{r['overlay'][0]:.1f}")
    row("overlay steady state (img/s)", lambda r: f"{r['overlay'][1]:.1f}")
    row("predict steady / fastest forward", lambda r: f"{r['predict'][1] / max(r['forward'].values()):.2f}")
    row("overlay steady / fastest forward", lambda r: f"{r['overlay'][1] / max(r['forward'].values()):.2f}")
    row("overlay end to end / torch eager forward", lambda r: f"{r['overlay'][0] / r['forward']['torch eager']:.2f}")
    row("overlay steady / torch eager forward", lambda r: f"{r['overlay'][1] / r['forward']['torch eager']:.2f}")
    row("train, 1 epoch, cold cache (s)", lambda r: f"{r['train_1']:.1f}")
    row("train, 10 epochs, cold cache (s)", lambda r: f"{r['train_10']:.1f}")
    row("train, 10 epochs, warm cache (s)", lambda r: f"{r['train_10_warm']:.1f}")
    row("train 10 / train 1 (cold)", lambda r: f"{r['train_10'] / r['train_1']:.2f}")
    row("overlay peak RSS, N images (MB)", lambda r: f"{r['rss_n']:.0f}")
    row("overlay peak RSS, 10·N images (MB)", lambda r: f"{r['rss_10n']:.0f}")
    row("RSS 10·N / N", lambda r: f"{r['rss_10n'] / r['rss_n']:.2f}")
    row("pytorch-grad-cam GradCAM + show_cam_on_image (img/s)", lambda r: f"{r['gradcam']:.1f}")
    row("torchcam CAM + overlay_mask (img/s)", lambda r: f"{r['torchcam']:.1f}")
    row("plain per-image loop, CAM tutorial style (img/s)", lambda r: f"{r['plain']:.1f}")
    row("camcli overlay end to end / GradCAM", lambda r: f"{r['overlay'][0] / r['gradcam']:.1f}")
    row("camcli overlay steady / GradCAM", lambda r: f"{r['overlay'][1] / r['gradcam']:.1f}")
    row("camcli overlay end to end / torchcam", lambda r: f"{r['overlay'][0] / r['torchcam']:.1f}")
    row("camcli overlay steady / torchcam", lambda r: f"{r['overlay'][1] / r['torchcam']:.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images for efficientnet_lite0")
    parser.add_argument("--n-vgg", type=int, default=32, help="images for vgg16")
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_arch("efficientnet_lite0", args.n, Path(tmp), log), bench_arch("vgg16", args.n_vgg, Path(tmp), log)]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), Python {platform.python_version()}, batch {BATCH}, "
               f"{time.strftime('%Y-%m-%d')}")
    text = f"Machine: {machine}.\n\n{table(results)}"
    print(text)
    if not args.no_readme:
        write_section("speed", text)


if __name__ == "__main__":
    main()
