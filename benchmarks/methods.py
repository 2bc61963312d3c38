"""Map methods and faithfulness metrics: camcli against pytorch-grad-cam's and torchcam's own classes.

    pip install -e '.[test]'           # pytorch-grad-cam, torchcam, scikit-image, scipy
    python benchmarks/methods.py       # about 25 minutes on 2 CPU cores; writes benchmarks/README.md

Same four photographs (scikit-image's chelsea, coffee, astronaut, rocket), same model (the default
EfficientNet-Lite0 with its ImageNet head, as one PyTorch module for the peers), same geometry
(camcli's default: shorter side 224, aspect kept, sides multiples of 32: the peers get camcli's
preprocessed input), same batch size (32 masked or ablated inputs per forward pass), one image's
map of its predicted class.

- Maps: the whole command, process start and model load included: ``camcli overlay PHOTOS
  --method M`` (its export cached by a first run), and for each peer one Python process that
  imports it, builds the model, decodes, maps, blends (``show_cam_on_image``) and writes each
  photo.
- Metrics: seconds per image of each faithfulness metric on the CAM's maps: camcli's
  ``evaluate --faithfulness`` (its ``seconds_per_image``), torchcam's ``ClassificationMetric``
  (average drop, increase) and ``DeletionInsertionMetric``, pytorch-grad-cam's
  ``ROADMostRelevantFirstAverage`` + ``ROADLeastRelevantFirstAverage`` (its ``ROADCombined``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_section import write_section

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
METHODS = ("cam", "gradcam", "gradcam++", "layercam", "xgradcam", "eigencam", "scorecam", "ablationcam")

PEER = r'''
import sys, time
from functools import partial
from pathlib import Path

tool, method, out, *images = sys.argv[1:]
import cv2, numpy as np, torch
import camcli
from camcli.data import read_image
from camcli.gradients import whole_classifier

model = camcli.load(backend="torch", device="cpu")
net = whole_classifier(model).model.eval().requires_grad_(True)
if tool == "pytorch-grad-cam":
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    kind = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM, "xgradcam": pgc.XGradCAM,
            "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}[method]
    extractor = kind(model=net, target_layers=[net.features])
    extractor.batch_size = 32
else:
    import torchcam.methods as tcm
    kind = {"cam": tcm.CAM, "gradcam": tcm.GradCAM, "gradcam++": tcm.GradCAMpp, "layercam": tcm.LayerCAM,
            "xgradcam": tcm.XGradCAM, "scorecam": tcm.ScoreCAM}[method]
    extractor = kind(net, target_layer="features", **({"fc_layer": "head"} if method == "cam" else {}),
                     **({"batch_size": 32} if method == "scorecam" else {}))
for path in images:
    rgb = read_image(Path(path))
    x = torch.from_numpy(model.preprocess(rgb))[None]
    if tool == "pytorch-grad-cam":
        with torch.no_grad():
            c = int(net(x).argmax())
        heat = extractor(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
    else:
        scores = net(x)
        heat = extractor(int(scores.argmax()), scores)[0][0].detach().numpy()
        heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-7)
    heat = cv2.resize(heat.astype(np.float32), (rgb.shape[1], rgb.shape[0]))
    blend = show_cam_on_image(rgb.astype(np.float32) / 255, heat, use_rgb=True) if tool == "pytorch-grad-cam" else \
        (0.5 * rgb + 0.5 * cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)[..., ::-1]).astype(np.uint8)
    cv2.imwrite(str(Path(out) / (Path(path).stem + "_cam.jpg")), cv2.cvtColor(blend, cv2.COLOR_RGB2BGR))
'''

PEER_METRICS = r'''
import json, sys, time
from functools import partial
from pathlib import Path

import numpy as np, torch
import camcli
from camcli.data import read_image
from camcli.gradients import whole_classifier
from torchcam.methods import CAM
from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

model = camcli.load(backend="torch", device="cpu")
net = whole_classifier(model).model.eval()
spent = {"average_drop": 0.0, "deletion_insertion": 0.0, "road": 0.0}
for path in sys.argv[1:]:
    x = torch.from_numpy(model.preprocess(read_image(Path(path))))[None]
    with CAM(net, target_layer="features", fc_layer="head") as extractor:
        clock = time.perf_counter()
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(x)
        spent["average_drop"] += time.perf_counter() - clock
    with CAM(net, target_layer="features", fc_layer="head") as extractor:
        clock = time.perf_counter()
        metric = DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(x)
        spent["deletion_insertion"] += time.perf_counter() - clock
    with torch.no_grad():
        c = int(net(x).argmax())
    with CAM(net, target_layer="features", fc_layer="head") as extractor:
        scores = net(x)
        cam = extractor(c, scores)[0]
    cam = torch.nn.functional.interpolate(cam[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    cam = ((cam - cam.min()) / (cam.max() - cam.min() + 1e-7)).detach().numpy()
    clock = time.perf_counter()
    targets = [ClassifierOutputSoftmaxTarget(c)]
    with torch.no_grad():
        ROADMostRelevantFirstAverage()(x, cam, targets, net)
        ROADLeastRelevantFirstAverage()(x, cam, targets, net)
    spent["road"] += time.perf_counter() - clock
print(json.dumps({k: v / (len(sys.argv) - 1) for k, v in spent.items()}))
'''


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    from skimage import data as photos

    from camcli.render import write_image

    work = Path(tempfile.mkdtemp(prefix="camcli-methods-"))
    folder = work / "photos"
    folder.mkdir()
    images = []
    for name in PHOTOS:
        images.append(folder / f"{name}.png")
        write_image(images[-1], getattr(photos, name)())
    env = {**os.environ, "CAMCLI_CACHE_DIR": str(work / "cache")}
    camcli = [sys.executable, "-m", "camcli"]
    subprocess.run([*camcli, "predict", str(folder), "--quiet"], check=True, capture_output=True, env=env)  # export, caches
    n = len(images)
    rows = []
    for method in METHODS:
        out = work / f"camcli_{method}"
        ours = timed([*camcli, "overlay", str(folder), "--method", method, "--out-dir", str(out), "--quiet", "--format", "jsonl"],
                     env) / n
        peers = {}
        for tool, has in (("pytorch-grad-cam", method != "cam"), ("torchcam", method not in ("eigencam", "ablationcam"))):
            if not has:
                continue
            target = work / f"{tool}_{method}"
            target.mkdir()
            script = work / "peer.py"
            script.write_text(PEER)
            peers[tool] = timed([sys.executable, str(script), tool, method, str(target), *map(str, images)], env) / n
        rows.append((method, ours, peers))
        print(method, f"camcli {ours:.2f} s/img", {k: f"{v:.2f}" for k, v in peers.items()}, flush=True)
    evaluated = subprocess.run([*camcli, "evaluate", str(folder), "--faithfulness", "--format", "json", "--quiet", "--out",
                                str(work / "eval")], check=True, capture_output=True, text=True, env=env)
    ours_metrics = json.loads(evaluated.stdout)["seconds_per_image"]["cam"]
    script = work / "peer_metrics.py"
    script.write_text(PEER_METRICS)
    theirs = json.loads(subprocess.run([sys.executable, str(script), *map(str, images)], check=True, capture_output=True,
                                       text=True, env=env).stdout)
    print("metrics", ours_metrics, theirs, flush=True)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [f"Machine: {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}; {n} photographs, seconds per image "
             "(whole command / number of images; lower is better).", "",
             "| method | camcli | pytorch-grad-cam | torchcam | camcli's lead |", "|---|---|---|---|---|"]
    for method, ours, peers in rows:
        best = min(peers.values()) if peers else None
        lead = f"{best / ours:.1f}x" if best else "-"
        lines.append(f"| `{method}` | {ours:.2f} | {cell(peers.get('pytorch-grad-cam'))} | {cell(peers.get('torchcam'))} | {lead} |")
    lines += ["", "| metric, on the CAM's maps | camcli | peer (its class) |", "|---|---|---|",
              f"| average drop + increase | {ours_metrics['average_drop']:.3f} | {theirs['average_drop']:.3f} "
              "(torchcam `ClassificationMetric`) |",
              f"| deletion + insertion | {ours_metrics['deletion_insertion']:.3f} | {theirs['deletion_insertion']:.3f} "
              "(torchcam `DeletionInsertionMetric`) |",
              f"| ROAD MoRF + LeRF | {ours_metrics['road']:.3f} | {theirs['road']:.3f} (pytorch-grad-cam "
              "`ROADMostRelevantFirstAverage` + `ROADLeastRelevantFirstAverage`) |"]
    write_section("methods", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
