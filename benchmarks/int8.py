"""Issue 22: how well camcli's static INT8 backbone agrees with fp32, and what each part of the recipe adds.

    python benchmarks/int8.py [--images 100] [--variants camcli,no-bias-correction,...]   # about 8 minutes

Images: seeded random crops (40-100 % of the short side) of the real photographs that ship
offline with scikit-image and scikit-learn, squashed to 224x224 by camcli's preprocessing;
``--images`` crops calibrate and ``--held-out`` crops evaluate; the held-out crops come from
``--held-out-photographs`` whole photographs that no calibration crop comes from (0: crops of the
same photographs, as the tables before 2026-12-07 were made). The fp32 model is the shipped graph
(camcli/assets); each INT8 model is :func:`camcli.quantize.quantize` of it, as camcli builds it
(``camcli``) or with one part of the recipe taken out (see ``VARIANTS``).
For each: top-1 agreement with fp32 under the default ImageNet head, of the INT8 model alone and
as camcli runs it (the images whose two best INT8 logits are within the near-tie margin, which the
calibration crops set, run again in fp32: :func:`camcli.quantize.compare`), how many such near
ties ran in fp32, the agreement where fp32's top-1 margin (p1 - p2) is at least 0.1, the mean
Pearson correlation of the fp32 top-1 class's raw map (as camcli runs it), the median over images
of the largest absolute logit error of INT8 alone (a measure that, unlike agreement, does not
hinge on near ties), the median change of the gap between fp32's top two logits (what flips a near
tie), and the forward time per image (batches of 4), of INT8 alone and with the near ties' fp32
runs added (INT8 + share x fp32).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from readme_section import write_section  # noqa: E402

from camcli import cam, quantize  # noqa: E402
from camcli.checkpoint import load_checkpoint
from camcli.data import Preprocess
from camcli.packaged import BACKBONE_GRAPH, IMAGENET_HEAD, asset, backbone_facts
from camcli.runtime import OnnxRunner


def photographs() -> list[np.ndarray]:
    """The RGB photographs available offline."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"):
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # a picture that would need a download
            continue
        if image.ndim == 3 and image.shape[2] == 3:
            out.append(image)
    out += [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]
    return out


def crops(photos: list[np.ndarray], count: int, seed: int, preprocess: Preprocess) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        batch.append(preprocess(np.ascontiguousarray(photo[top : top + side, left : left + side])))
    return np.stack(batch).astype(np.float32)


def _no_bias_correction(model, tensors, convs):
    """The fed-forward rounding without the bias correction: the bias put back as it was."""
    corrected = ROUND_WEIGHTS(model, tensors, convs)
    biases = {i.name: i for i in model.graph.initializer}
    for init in corrected.graph.initializer:
        if len(init.dims) == 1 and init.name in biases:
            init.CopyFrom(biases[init.name])
    return corrected


def _first(count: int):
    """fp32_prefix with a fixed number of fp32 convolutions instead of the share of the work."""
    def prefix(nodes, multiply_adds):
        convs = [k for k, n in enumerate(nodes) if n.op_type == "Conv"]
        return convs[count] if count < len(convs) else len(nodes)
    return prefix


ROUND_WEIGHTS = quantize.round_weights
VARIANTS = {  # name: what is taken out of camcli's recipe (or changed in it)
    "camcli": {},
    "plain-rounding": {"rounded_weights": lambda weight, groups, moment: quantize.nearest(weight)},
    "no-bias-correction": {"round_weights": _no_bias_correction},
    "neither": {"round_weights": lambda model, tensors, convs: model},
    "no-fp32-prefix": {"fp32_prefix": _first(0)},
    "1-fp32-convolution": {"fp32_prefix": _first(1)},  # recipe 3
    "recipe-2": {"rounded_weights": lambda weight, groups, moment: quantize.nearest(weight),
                 "fp32_prefix": _first(1)},
    "3-fp32-convolutions": {"fp32_prefix": _first(3)},
    "no-pad-folding": {"same_padding": lambda model: None},
    "entropy": {"CALIBRATION_METHOD": "Entropy"},
    "percentile": {"CALIBRATION_METHOD": "Percentile"},
}


def per_image(runner: OnnxRunner, images: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = runner(images)
    logits = feats.mean(axis=(2, 3)) @ weight.T + bias
    return logits, feats


def seconds_per_image(runner: OnnxRunner, images: np.ndarray) -> float:
    runner(images[:8])
    start = time.perf_counter()
    for _ in range(2):
        runner(images)
    return (time.perf_counter() - start) / (2 * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=100,
                        help="crops compared (the issue's bar: 100); more make the agreement less noisy")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--held-out-photographs", type=int, default=3,
                        help="photographs whose crops are held out only (0: calibrate and check on crops of the same ones)")
    args = parser.parse_args()
    facts = backbone_facts()
    preprocess = Preprocess(224, tuple(facts["mean"]), tuple(facts["std"]), "squash", facts["stride"])
    photos = photographs()
    k = args.held_out_photographs
    calibration = crops(photos[k:] if k else photos, args.images, 1, preprocess)
    held_out = crops(photos[:k] if k else photos, args.held_out, 2, preprocess)
    path, data = asset(BACKBONE_GRAPH)
    head = load_checkpoint(asset(IMAGENET_HEAD)[0])["head"]
    fp32 = OnnxRunner(path, model=data)
    logits, _ = per_image(fp32, held_out, head["weight"], head["bias"])
    top = logits.argmax(1)
    ranked = np.sort(cam.softmax(logits), axis=1)
    confident = ranked[:, -1] - ranked[:, -2] >= 0.1
    gaps = np.diff(np.sort(logits, axis=1)[:, -2:], axis=1)[:, 0]
    fp32_s = seconds_per_image(fp32, held_out[:64])
    lines = [f"{date.today()}: {len(photos)} photographs; {args.images} calibration crops, {args.held_out} held-out crops "
             + (f"of {k} other whole photographs" if k else "of the same photographs") +
             f" ({int(confident.sum())} with fp32 margin >= 0.1, {int((gaps < 0.05).sum())} with fp32's top two logits within "
             f"0.05); {os.cpu_count()} CPU cores; fp32 {1000 * fp32_s:.1f} ms/image (`python benchmarks/int8.py --images "
             f"{args.images} --held-out {args.held_out} --held-out-photographs {k} --variants {args.variants}`)", "",
             "| recipe | top-1 agreement, INT8 alone | with near ties in fp32 | near ties run in fp32 (margin) | "
             "where margin >= 0.1 | mean map correlation | median largest logit error | median change of fp32's top-two logit gap "
             "| ms/image | speed-up | with near ties | built in |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0])
    for name in args.variants.split(","):
        saved = {k: getattr(quantize, k) for k in VARIANTS[name]}
        for k, v in VARIANTS[name].items():
            setattr(quantize, k, v)
        try:
            started = time.perf_counter()
            int8 = OnnxRunner(Path(name), model=quantize.quantize(data, list(calibration)))
            built = time.perf_counter() - started
        finally:
            for k, v in saved.items():
                setattr(quantize, k, v)
        q_logits, _ = per_image(int8, held_out, head["weight"], head["bias"])
        agree = q_logits.argmax(1) == top
        check = quantize.compare(fp32, int8, head["weight"], head["bias"], list(calibration), list(held_out))
        error = float(np.median(np.abs(q_logits - logits).max(axis=1)))
        first, second = np.argsort(logits, axis=1)[:, -1], np.argsort(logits, axis=1)[:, -2]
        rows = np.arange(len(logits))
        gap_change = float(np.median(np.abs((q_logits - logits)[rows, first] - (q_logits - logits)[rows, second])))
        q_s = seconds_per_image(int8, held_out[:64])
        share = check.rechecked / check.images
        lines.append(f"| {name} | {agree.mean():.3f} | {check.agreement:.3f} | {check.rechecked} ({check.tie_margin:.3f}) | "
                     f"{agree[confident].mean():.3f} | {check.map_correlation:.4f} | {error:.3f} | {gap_change:.3f} | "
                     f"{1000 * q_s:.1f} | {fp32_s / q_s:.2f}x | {fp32_s / (q_s + share * fp32_s):.2f}x | {built:.0f} s |")
        print(lines[-1], flush=True)
    write_section("int8-recipe", "\n".join(lines))


if __name__ == "__main__":
    main()
