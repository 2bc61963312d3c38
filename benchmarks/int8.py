"""Issue 22's first measurement: which static INT8 quantization of the default backbone agrees with fp32.

    python benchmarks/int8.py [--images 100] [--settings minmax,entropy,...]   # needs the onnx package

Images: seeded random crops (40-100 % of the short side) of the real photographs that ship
offline with scikit-image and scikit-learn, squashed to 224x224 by camcli's preprocessing;
``--images`` crops calibrate, as many other crops evaluate. The fp32 model is the shipped graph
(camcli/assets); each INT8 model is ONNX Runtime's ``quantize_static`` of it (QDQ, per-channel int8 weights;
only the op types each setting names, see ``SETTINGS``).
For each setting: top-1 agreement with fp32 under the default ImageNet head, the agreement where
fp32's top-1 margin (p1 - p2) is at least 0.1, the mean Pearson correlation of the fp32 top-1
class's raw map, and the forward time per image (batches of 4, after a warm-up) against fp32's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from camcli import cam
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


class Reader(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self.items = iter([{"image": images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.items, None)


def node_names(path: Path) -> dict[str, list[str]]:
    import onnx

    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return {"first": [convs[0].name], "depthwise": depthwise, "last": [n.name for n in convs[-3:]]}


# Quantizing every op breaks the graph: it computes TensorFlow's "same" padding from the input's shape in float ops
# (Div, Ceil, ...), and quantized pads give 6x6 feature maps at 224 instead of 7x7. So only these op types are quantized:
# the convolutions alone, or with the activations after them (Clip = ReLU6) and the residual sums (Add).
CONV = ["Conv"]
ACTIVATIONS = ["Conv", "Clip", "Add"]
SETTINGS = {  # name: (calibration, activations, reduce_range, excluded node groups, op types)
    "minmax": (CalibrationMethod.MinMax, QuantType.QUInt8, False, (), CONV),
    "minmax-s8": (CalibrationMethod.MinMax, QuantType.QInt8, False, (), CONV),
    "minmax-reduce": (CalibrationMethod.MinMax, QuantType.QUInt8, True, (), CONV),
    "entropy": (CalibrationMethod.Entropy, QuantType.QUInt8, False, (), CONV),
    "percentile": (CalibrationMethod.Percentile, QuantType.QUInt8, False, (), CONV),
    "minmax-first-last-fp32": (CalibrationMethod.MinMax, QuantType.QUInt8, False, ("first", "last"), CONV),
    "minmax-depthwise-fp32": (CalibrationMethod.MinMax, QuantType.QUInt8, False, ("depthwise",), CONV),
    "act-minmax": (CalibrationMethod.MinMax, QuantType.QUInt8, False, (), ACTIVATIONS),
    "act-minmax-s8": (CalibrationMethod.MinMax, QuantType.QInt8, False, (), ACTIVATIONS),
    "act-percentile": (CalibrationMethod.Percentile, QuantType.QUInt8, False, (), ACTIVATIONS),
    "act-entropy": (CalibrationMethod.Entropy, QuantType.QUInt8, False, (), ACTIVATIONS),
    "act-minmax-first-last-fp32": (CalibrationMethod.MinMax, QuantType.QUInt8, False, ("first", "last"), ACTIVATIONS),
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
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    facts = backbone_facts()
    preprocess = Preprocess(224, tuple(facts["mean"]), tuple(facts["std"]), "squash", facts["stride"])
    photos = photographs()
    calibration = crops(photos, args.images, 1, preprocess)
    held_out = crops(photos, args.images, 2, preprocess)
    path, data = asset(BACKBONE_GRAPH)
    head = load_checkpoint(asset(IMAGENET_HEAD)[0])["head"]
    fp32 = OnnxRunner(path, model=data)
    logits, feats = per_image(fp32, held_out, head["weight"], head["bias"])
    top = logits.argmax(1)
    probs = cam.softmax(logits)
    ranked = np.sort(probs, axis=1)
    confident = ranked[:, -1] - ranked[:, -2] >= 0.1
    reference_maps = cam.class_maps(feats, head["weight"])[np.arange(len(top)), top]
    fp32_s = seconds_per_image(fp32, held_out[:64])
    groups = node_names(path)
    print(f"{len(photos)} photographs; {args.images} calibration crops, {args.images} held-out crops "
          f"({int(confident.sum())} with fp32 margin >= 0.1); {os.cpu_count()} CPU cores; fp32 {1000 * fp32_s:.1f} ms/image")
    print("| setting | top-1 agreement | where margin >= 0.1 | mean map correlation | ms/image | speed-up |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            method, activations, reduce_range, excluded, ops = SETTINGS[name]
            out = Path(tmp) / f"{name}.onnx"
            started = time.perf_counter()
            quantize_static(str(path), str(out), Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=activations, weight_type=QuantType.QInt8, calibrate_method=method,
                            reduce_range=reduce_range, nodes_to_exclude=[n for g in excluded for n in groups[g]],
                            op_types_to_quantize=ops)
            built = time.perf_counter() - started
            int8 = OnnxRunner(out)
            q_logits, q_feats = per_image(int8, held_out, head["weight"], head["bias"])
            agree = q_logits.argmax(1) == top
            q_maps = cam.class_maps(q_feats, head["weight"])[np.arange(len(top)), top]
            corr = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(reference_maps, q_maps)])
            q_s = seconds_per_image(int8, held_out[:64])
            print(f"| {name} | {agree.mean():.3f} | {agree[confident].mean():.3f} | {corr:.4f} | {1000 * q_s:.1f} | "
                  f"{fp32_s / q_s:.2f}x | (built in {built:.0f} s)")


if __name__ == "__main__":
    main()
