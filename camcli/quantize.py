"""Static INT8 models of a backbone's ONNX graph, for ONNX Runtime on the CPU.

One recipe, chosen by measurement (``benchmarks/int8.py``, benchmarks/README.md, "INT8"):

- The graph is first rewritten where TensorFlow's "same" padding is computed at run time from
  the input's shape (EfficientNet-Lite0's stride-2 convolutions: Shape, Div, Ceil, ... then Pad):
  the Pad goes and its Conv takes ``auto_pad=SAME_UPPER``, ONNX's name for the same padding.
  The rewrite is checked against the graph as it was on inputs of even and odd sizes (else the
  graph is quantized as it is). Quantized, those Pads cost as much as half the convolutions.
- Every initializer is made the one node's that uses it (the exporter shares equal tensors through
  Identity nodes, and ONNX Runtime fuses a quantized Conv only with a bias of its own).
- ONNX Runtime's ``quantize_static``, QDQ format, int8 per-channel weights, uint8 activations
  (VNNI's fast path; int8 activations ran 0.6x as fast), MinMax ranges, on the nodes of the data
  path only (a shape computation quantized would change the padding), except the first
  convolutions while they do at most 4 % of the work (:func:`fp32_prefix`: EfficientNet-Lite0's
  stem and first depthwise convolution, VGG16's stem; the median largest logit error over 100
  photographs 0.26 -> 0.24 -> 0.21 on EfficientNet-Lite0 with none, one, two; VGG16's second
  convolution would cost it a third of its gain).
- Each quantized convolution's weights are rounded onto the int8 grid the quantizer will use with
  each rounding error fed forward onto the weights not yet rounded, weighted by the calibration
  inputs (GPTQ), and its bias is corrected for the mean error that rounding still makes
  (:func:`round_weights`: the median largest logit error 0.54 with neither, 0.30 with the bias
  correction alone, 0.24 with both).
- An image whose two best INT8 logits are within the near-tie margin runs again in fp32
  (:func:`near_ties`, :meth:`camcli.engine.CamModel.ranked`): INT8's rounding moves logits by
  about 0.2, enough to swap classes fp32 barely separates (ImageNet's tabby and tiger cat). The
  margin is :data:`TIE_FACTOR` times the median change INT8 makes to the gaps below fp32's top-1
  logit on the calibrating images, under the model's own head (:func:`tie_margin`); on 100 crops
  of the offline photographs it takes top-1 agreement 0.91 -> 1.00 for 19 fp32 passes.
- The INT8 model is checked against fp32 on held-out calibration images under the model's own
  head, as it runs (near ties in fp32): top-1 agreement, the mean correlation of the top-1 class's
  raw map and the share of near ties (:data:`MIN_AGREEMENT`, :data:`MIN_MAP_CORRELATION`,
  :data:`MAX_RECHECKED`); a model outside any is refused. A calibration set of fewer than
  :data:`MIN_IMAGES` distinct images with content (flat images and near copies do not count,
  :func:`distinct`) is refused: it exercises nothing and would vouch for itself.
- A set unlike the inputs can still pass its own check, so every run checks INT8 again on its own
  first inputs (:class:`Probe`): :data:`PROBE_IMAGES` of them run in fp32 too, and more than
  :data:`MAX_PROBE_MISSES` top-1 disagreements, or maps less correlated than the check's bar, send
  the rest of the run to fp32 (:meth:`camcli.engine.CamModel.ranked`). It costs those images' fp32
  passes, about 0.2 s on EfficientNet-Lite0 at 224.
- The model is built and checked at no more than :data:`CALIBRATION_PIXELS` input pixels per
  image (:func:`calibration_preprocess`), whatever ``--img-size`` is, so the build's memory is
  bounded (about 1.5 GB for 128 images at the bound); the run's own probe checks it at the run's size.

Building needs the ``onnx`` package (``camcli[export]``); a built model is cached beside the fp32
export, keyed by the fp32 graph, the calibration images and the preprocessing, and runs on
ONNX Runtime alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from camcli import cam, progress
from camcli.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, MAX_ASPECT, Preprocess, image_header, max_file_bytes, read_image, walk_images
from camcli.defaults import INT8_PROBE_IMAGES, MIN_IMG_SIZE
from camcli.errors import CamcliError, first_line, need, os_error
from camcli.files import atomic_write, read_bytes
from camcli.runtime import OnnxRunner, cache_dir, cached_record, onnxruntime, record_cache, weights_key

RECIPE = 4  # bump when the recipe changes: cached INT8 models of another recipe are built again
MIN_AGREEMENT = 0.97  # top-1 agreement with fp32 on the held-out calibration images
MIN_MAP_CORRELATION = 0.98  # mean Pearson correlation of the top-1 class's raw map with fp32's
SAMPLE = 128  # images taken from a calibration folder (seeded): every other one calibrates, the rest check
MAX_CHECKS = 100  # heads whose check a cached INT8 model's record keeps
MIN_IMAGES = 16  # distinct calibration images with content needed (8 calibrate, 8 check)
FLAT = 0.02  # a preprocessed image whose values' standard deviation is below this (about one grey level) is flat
NEAR_COPY = 0.05  # two images whose 16 x 16 thumbnails differ nowhere by more than this (about 3 grey levels) are copies
CALIBRATION_PIXELS = 448 * 448  # model-input pixels per calibration image at most (the build holds them all)
PROBE_IMAGES = INT8_PROBE_IMAGES  # each run's first inputs (not near ties) that also run in fp32 to check INT8 on them
MAX_PROBE_MISSES = 1  # top-1 disagreements among them above which the rest of the run goes to fp32
CALIBRATION_METHOD = "MinMax"  # ONNX Runtime's CalibrationMethod: MinMax, Entropy and Percentile measured alike
_QUANTIZED_OPS = ("Conv", "Clip", "Relu", "Add", "MaxPool", "AveragePool", "Pad")  # on the data path


@dataclass(frozen=True)
class Calibration:
    """Calibration images, from a folder or a checkpoint's entry.

    Attributes:
        source: what to name in messages (the folder, or ``<checkpoint> (its int8 entry)``).
        key: sha256 of the images' encoded bytes: with the fp32 graph and the preprocessing, the
            cache key of the INT8 model.
        load: decodes the images one at a time and returns them preprocessed, (3, H, W) float32
            each (called only when a model is built or checked; no decoded original is kept).
    """

    source: str
    key: str
    load: Callable[[Preprocess], list[np.ndarray]]


def folder_calibration(folder: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Calibration:
    """A seeded sample of up to :data:`SAMPLE` images under ``folder`` (sorted walk, then a
    seeded choice). Hashing reads the files; decoding waits until a model is built.

    Raises:
        CamcliError: not a folder, no images in it, or fewer than :data:`MIN_IMAGES`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CamcliError(f"calibration folder not found: {folder} (pass a folder of images like the ones to process)")
    try:
        paths = list(walk_images(folder))
    except OSError as exc:
        raise os_error(exc, f"cannot list {folder}") from exc
    if len(paths) < MIN_IMAGES:
        raise CamcliError(f"calibration folder {folder} holds {len(paths)} images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                          f"INT8 calibration needs at least {MIN_IMAGES}")
    if len(paths) > SAMPLE:
        picked = np.random.default_rng(0).choice(len(paths), SAMPLE, replace=False)
        paths = [paths[i] for i in sorted(picked)]
    digest = hashlib.sha256()
    for path in paths:
        try:
            data = read_bytes(path, max_file_bytes(max_pixels), "calibration image")
        except CamcliError:
            data = b"unreadable"  # counted as unreadable when the images are decoded
        digest.update(hashlib.sha256(data).digest())

    def load(preprocess: Preprocess) -> list[np.ndarray]:
        images, first_failure = [], None
        for path in progress.counting("int8: reading calibration images", paths):
            try:
                images.append(preprocess(read_image(path, max_pixels)))
            except CamcliError as exc:
                first_failure = first_failure or str(exc)
        if len(images) < MIN_IMAGES:
            raise CamcliError(f"calibration folder {folder}: only {len(images)} of {len(paths)} images could be read "
                              f"(INT8 calibration needs at least {MIN_IMAGES}){': ' + first_failure if first_failure else ''}")
        return images

    return Calibration(str(folder), digest.hexdigest(), load)


def calibration_preprocess(preprocess: Preprocess) -> Preprocess:
    """The preprocessing INT8 is built and checked with: ``preprocess``, its ``img_size`` lowered
    (to a multiple of its stride) where its largest input would have more than
    :data:`CALIBRATION_PIXELS` pixels (``keep-aspect``: up to ``MAX_ASPECT`` times the square)."""
    largest = preprocess.img_size ** 2 * (MAX_ASPECT if preprocess.resize == "keep-aspect" else 1)
    if largest <= CALIBRATION_PIXELS:
        return preprocess
    side = int((CALIBRATION_PIXELS / (largest / preprocess.img_size ** 2)) ** 0.5)
    return replace(preprocess, img_size=max(MIN_IMG_SIZE, side // preprocess.stride * preprocess.stride))


def distinct(tensors: Sequence[np.ndarray], source: str) -> list[np.ndarray]:
    """The preprocessed (3, H, W) calibration ``tensors`` less flat images (standard deviation
    under :data:`FLAT`) and near copies of an earlier one (16 x 16 thumbnails within
    :data:`NEAR_COPY` everywhere: a re-encoded or resized copy).

    Raises:
        CamcliError: fewer than :data:`MIN_IMAGES` remain.
    """
    kept: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    flat = copies = 0
    for t in tensors:
        if float(t.std()) < FLAT:
            flat += 1
            continue
        thumb = cv2.resize(t.transpose(1, 2, 0), (16, 16), interpolation=cv2.INTER_AREA)
        if any(np.abs(thumb - other).max() <= NEAR_COPY for other in thumbs):
            copies += 1
            continue
        kept.append(t)
        thumbs.append(thumb)
    if len(kept) < MIN_IMAGES:
        raise CamcliError(f"{source}: only {len(kept)} of {len(tensors)} calibration images are distinct pictures "
                          f"({flat} flat, {copies} copies of another); INT8 calibration needs at least {MIN_IMAGES}: "
                          "pass a folder of varied images like the ones to process")
    return kept


def split(images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibrate, check): every other image, so both halves sample the whole set."""
    return list(images[0::2]), list(images[1::2])


# ---------------------------------------------------------------- the graph

def _data_path(graph) -> list:
    """The nodes that compute on the image's values, in order (not on its shape)."""
    data = {graph.input[0].name}
    nodes = []
    for node in graph.node:
        if node.op_type not in ("Shape", "Size") and any(i in data for i in node.input):
            data.update(node.output)
            nodes.append(node)
    return nodes


def _constant_value(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def same_padding(model):
    """``model`` with each run-time zero Pad before a Conv replaced by ``auto_pad=SAME_UPPER``
    on the Conv, and the shape arithmetic that only fed the Pads removed; None if it has none."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs:
            continue
        conv = users[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        mode = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}.get("mode", b"constant")
        value = _constant_value(graph, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if mode != b"constant" or value is None or np.any(value != 0) or any(attrs.get("pads", [0])) \
                or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        for attr in list(conv.attribute):
            if attr.name == "pads":
                conv.attribute.remove(attr)
        conv.attribute.append(onnx.helper.make_attribute("auto_pad", "SAME_UPPER"))
        conv.input[0] = pad.input[0]
        removed.append(pad)
    if not removed:
        return None
    for pad in removed:
        graph.node.remove(pad)
    while True:  # drop what no longer feeds an output
        used = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return model


def _rewrite_holds(original: bytes, rewritten: bytes) -> bool:
    """Whether the rewritten graph computes what the original does (relative 1e-5) on even and odd sizes."""
    rng = np.random.default_rng(0)
    a, b = OnnxRunner(Path("fp32"), model=original), OnnxRunner(Path("rewritten"), model=rewritten)
    for shape in ((1, 3, 224, 224), (1, 3, 225, 161), (2, 3, 97, 130)):
        x = rng.standard_normal(shape, dtype=np.float32)
        want, got = a(x), b(x)
        if want.shape != got.shape or not np.abs(want - got).max() <= 1e-5 * max(float(np.abs(want).max()), 1e-12):
            return False
    return True


def _probe(model, names: Sequence[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function of one preprocessed (3, H, W) tensor that returns the tensors ``names`` of ``model`` on it."""
    import onnx

    ort = onnxruntime()
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.ClearField("output")
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda tensor: session.run(list(names), {model.graph.input[0].name: tensor[None].astype(np.float32)})


def _groups(conv) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


FP32_SHARE = 0.04  # the first convolutions stay fp32 while together they do at most this share of the multiply-adds


def _multiply_adds(model, convs: Sequence, tensor: np.ndarray) -> list[int]:
    """Each Conv's multiply-adds on one preprocessed (3, H, W) ``tensor``: its output's size times its weights' fan-in."""
    if not convs:
        return []
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = list(dict.fromkeys([c.output[0] for c in convs] + [c.input[1] for c in convs if c.input[1] not in shapes]))
    values = dict(zip(names, _probe(model, names)(tensor)))
    shapes.update((name, values[name].shape) for name in names if name not in shapes)  # weights computed in the graph
    return [int(np.prod(values[c.output[0]].shape[1:])) * int(np.prod(shapes[c.input[1]][1:])) for c in convs]


def fp32_prefix(nodes: Sequence, multiply_adds: Sequence[int]) -> int:
    """How many of the data path's first ``nodes`` stay fp32: the first Conv, which sees the image,
    and the Convs after it while together they do at most :data:`FP32_SHARE` of the Convs'
    ``multiply_adds`` (one per Conv in ``nodes``, in order). The first convolutions see the image
    and its first features, whose int8 error the convolutions after them amplify (measured on
    EfficientNet-Lite0: the median largest logit error 0.26 with every convolution quantized, 0.24
    with the stem fp32, 0.21 with the first depthwise convolution too: 3.7 % of its
    multiply-adds), while VGG16's second convolution alone does 12 % of its work."""
    budget, done, k = FP32_SHARE * sum(multiply_adds), 0, 0
    for index, node in enumerate(nodes):
        if node.op_type == "Conv":
            done += multiply_adds[k]
            k += 1
            if k > 1 and done > budget:
                return index
    return len(nodes)


HESSIAN_POSITIONS = 1024  # output positions per calibration image that the weights' rounding looks at (seeded sample)
MOMENT_BYTES = 1 << 28  # the second moments gathered in one pass over the calibration images (the passes repeat until all are)
MAX_FAN_IN = 4608  # weights per output channel (VGG16's 3x3x512) up to which the rounding feeds errors forward; beyond: to nearest
DAMPING = 0.01  # added to the diagonal of the inputs' second moment, as a share of its mean (GPTQ's default)


def _patches(x: np.ndarray, shape: Sequence[int], attrs: dict, rng: np.random.Generator, limit: int) -> np.ndarray:
    """Up to ``limit`` (seeded) of the input patches a Conv of weight ``shape`` (O, I/g, kh, kw) and
    attributes ``attrs`` multiplies with its weights, from one input ``x`` (C, H, W): (P, C, kh, kw)."""
    kh, kw = shape[2:]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    _, height, width = x.shape
    auto = attrs.get("auto_pad", b"NOTSET")
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        ph = max((-(-height // sh) - 1) * sh + (kh - 1) * dh + 1 - height, 0)
        pw = max((-(-width // sw) - 1) * sw + (kw - 1) * dw + 1 - width, 0)
        first = (ph // 2, pw // 2) if auto == b"SAME_UPPER" else (ph - ph // 2, pw - pw // 2)
        pads = (first[0], first[1], ph - first[0], pw - first[1])
    elif auto == b"VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
    padded = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, ::dh, ::dw]  # (C, OH, OW, kh, kw)
    oh, ow = windows.shape[1:3]
    at = np.arange(oh * ow) if oh * ow <= limit else np.sort(rng.choice(oh * ow, limit, replace=False))
    return windows[:, at // ow, at % ow].transpose(1, 0, 2, 3)


def _input_statistics(model, tensors: Sequence[np.ndarray], convs: Sequence,
                      fed: set[str]) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """For each Conv in ``convs``: the second moment of its input patches per group, (g, d, d) with
    d = I/g * kh * kw (only for the Convs named in ``fed``, else None), and the mean of its input
    per channel, over the calibration ``tensors``."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    inputs = sorted({c.input[0] for c in convs})
    probe = _probe(model, inputs)
    rng = np.random.default_rng(0)
    moments: dict[str, np.ndarray] = {}
    counts = dict.fromkeys((c.name for c in convs), 0)
    means = dict.fromkeys(inputs, 0.0)
    for t in tensors:
        values = dict(zip(inputs, probe(t)))
        for name in inputs:
            means[name] = means[name] + values[name][0].mean(axis=tuple(range(1, values[name].ndim - 1)), dtype=np.float64) / len(tensors)
        for conv in (c for c in convs if c.name in fed):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
            shape, groups = tuple(inits[conv.input[1]].dims), _groups(conv)
            p = _patches(values[conv.input[0]][0], shape, attrs, rng, HESSIAN_POSITIONS)
            p = np.ascontiguousarray(p.reshape(len(p), groups, -1).transpose(1, 2, 0))  # (g, d, P)
            moments[conv.name] = moments.get(conv.name, 0) + p @ p.transpose(0, 2, 1)
            counts[conv.name] += p.shape[2]
    return {c.name: (moments[c.name] / np.float32(counts[c.name]) if c.name in fed else None, means[c.input[0]])
            for c in convs}


def nearest(weight: np.ndarray) -> np.ndarray:
    """``weight`` (O, ...) rounded to nearest on ONNX Runtime's per-channel symmetric int8 grid (scale max|w| / 127)."""
    scale = np.abs(weight).reshape(len(weight), -1).max(axis=1) / 127
    scale = np.where(scale < np.finfo(np.float32).tiny, 1, scale).reshape(-1, *[1] * (weight.ndim - 1))  # all zero: stays zero
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(np.float32)


def rounded_weights(weight: np.ndarray, groups: int, moment: np.ndarray, block: int = 128) -> np.ndarray:
    """``weight`` (O, I/g, kh, kw) on ONNX Runtime's per-channel symmetric int8 grid (scale
    max|w| / 127 per output channel), each weight's rounding error fed forward onto the weights
    of that channel not yet rounded so that the output error on inputs of second moment
    ``moment`` (g, d, d) is least (GPTQ, Frantar et al. 2023, which is OBQ's rule column by
    column). The largest weight of each channel stays at +-127 steps, so that the quantizer,
    which takes the scale from the largest weight, keeps these values exactly."""
    if not np.isfinite(moment).all():  # activations that overflow: nothing to weigh the errors by
        return nearest(weight)
    out = len(weight)
    w = weight.reshape(groups, out // groups, -1).astype(np.float64)  # (g, o, d)
    d = w.shape[2]
    scale = np.abs(w).max(axis=2, keepdims=True) / 127
    dead = scale[:, :, 0] < np.finfo(np.float32).tiny  # all zero (or subnormal: the quantizer stores zeros): stays zero
    w[dead], scale[dead] = 0, 1
    largest = np.where(dead, -1, np.abs(w).argmax(axis=2))
    h, at = moment.astype(np.float64), np.arange(d)
    diagonal = h[:, at, at]
    diagonal[diagonal == 0] = 1  # an input that is always zero: any rounding of its weight is as good
    h[:, at, at] = diagonal + DAMPING * diagonal.mean(axis=1, keepdims=True)
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # (g, d, d), upper triangular
    q = np.empty_like(w)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        errors = np.empty((*w.shape[:2], b1 - b0))
        for i in range(b0, b1):
            steps = np.clip(np.round(w[:, :, i] / scale[:, :, 0]), -127, 127)
            steps = np.where(largest == i, np.copysign(127, weight.reshape(w.shape)[:, :, i]), steps)
            q[:, :, i] = steps * scale[:, :, 0]
            errors[:, :, i - b0] = (w[:, :, i] - q[:, :, i]) / upper[:, i, i][:, None]
            w[:, :, i + 1 : b1] -= errors[:, :, i - b0, None] * upper[:, None, i, i + 1 : b1]
        w[:, :, b1:] -= errors @ upper[:, b0:b1, b1:]
    return q.reshape(weight.shape).astype(np.float32)


def round_weights(model, tensors: Sequence[np.ndarray], convs: set[str]):
    """``model`` with the weights of each Conv named in ``convs`` already on the int8 grid the
    quantizer will use (:func:`rounded_weights`) and its bias shifted by the mean error that
    rounding makes, ``-(W_q - W) . E[x]`` per output channel, E[x] the mean of its input per
    channel over the calibration ``tensors`` (Nagel et al. 2019, empirical bias correction;
    padding ignored). Measured on EfficientNet-Lite0 (benchmarks/int8.py): the median largest
    logit error over 100 photographs 0.54 with plain rounding, 0.30 with the bias correction,
    0.26 with the fed-forward rounding, 0.24 with both."""
    import onnx

    source = model  # the statistics come from the fp32 model, whichever chunk they are gathered in
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "Conv" and n.name in convs and len(n.input) == 3
               and n.input[1] in inits and n.input[2] in inits]
    if not targets:
        return model
    # 2-D convolutions whose fan-in keeps the patches' second moments small feed errors forward; others round to nearest
    fed = {c.name for c in targets if len(inits[c.input[1]].dims) == 4 and int(np.prod(inits[c.input[1]].dims[1:])) <= MAX_FAN_IN}
    chunks: list[list] = [[]]
    size = 0
    for conv in targets:  # a pass over the calibration images for each chunk of at most MOMENT_BYTES of moments
        need = 4 * _groups(conv) * int(np.prod(inits[conv.input[1]].dims[1:])) ** 2 if conv.name in fed else 0
        if chunks[-1] and size + need > MOMENT_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(conv)
        size += need
    done = 0
    progress.report("int8: rounding convolutions", 0, len(targets))
    for chunk in chunks:
        statistics = _input_statistics(source, tensors, chunk, fed)
        for conv in chunk:
            _round_one(conv, inits, *statistics.pop(conv.name))
            done += 1
            progress.report("int8: rounding convolutions", done, len(targets))
    return model


def _round_one(conv, inits: dict, moment: np.ndarray | None, mean: np.ndarray) -> None:
    """Replace ``conv``'s weights and bias initializers by their rounded and corrected values (see :func:`round_weights`)."""
    from onnx import numpy_helper

    w, groups = numpy_helper.to_array(inits[conv.input[1]]), _groups(conv)
    q = rounded_weights(w, groups, moment) if moment is not None else nearest(w)
    error = (q - w).sum(axis=tuple(range(2, w.ndim)), dtype=np.float64)  # (O, I / groups)
    out, per_group = error.shape
    shift = np.einsum("goi,gi->go", error.reshape(groups, out // groups, per_group), mean.reshape(groups, per_group))
    bias = numpy_helper.to_array(inits[conv.input[2]]) - shift.reshape(out).astype(np.float32)
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(q, conv.input[1]))
    inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), conv.input[2]))


def own_initializers(model):
    """``model`` with every initializer used by one node only: an Identity of an initializer (the
    exporter's way of sharing equal tensors, e.g. the zero biases of a randomly initialized VGG16)
    becomes a copy of it, and a tensor two nodes share is copied. ONNX Runtime fuses a quantized
    Conv only when its int32 bias is its own (scaled by its own input and weight scales): shared,
    VGG16 ran slower in INT8 than in fp32."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        inits[copy.name] = copy
        graph.node.remove(node)
    used: set[str] = set()
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                if name in used:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[name])
                    copy.name = f"{name}__{node.name or k}_{len(used)}"
                    graph.initializer.append(copy)
                    node.input[k] = copy.name
                    used.add(copy.name)
                else:
                    used.add(name)
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


class _Reader:
    """ONNX Runtime's calibration data reader: one preprocessed image per step."""

    def __init__(self, name: str, tensors: Sequence[np.ndarray]):
        self.items = progress.counting("int8: calibrating activations", [{name: t[None].astype(np.float32)} for t in tensors])

    def get_next(self):
        return next(self.items, None)


def quantize(fp32: bytes, tensors: Sequence[np.ndarray]) -> bytes:
    """The INT8 (QDQ) model of the fp32 backbone graph ``fp32``, calibrated on preprocessed
    (3, H, W) ``tensors`` (see the module docstring for the recipe).

    Raises:
        MissingExtra: the onnx package is not installed.
        CamcliError: ONNX Runtime's quantizer failed.
    """
    onnx = need("onnx", "building an INT8 model (`precision` int8)")
    onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    try:
        model = own_initializers(onnx.load_from_string(fp32))
        rewritten = same_padding(model)
        if rewritten is not None and _rewrite_holds(fp32, rewritten.SerializeToString()):
            model = rewritten
        path = [n for n in _data_path(model.graph) if n.op_type in _QUANTIZED_OPS]
        convs = [n for n in path if n.op_type == "Conv"]
        quantized = path[fp32_prefix(path, _multiply_adds(model, convs, tensors[0])):]
        model = round_weights(model, tensors, {n.name for n in quantized if n.op_type == "Conv"})
    except CamcliError:
        raise
    except Exception as exc:  # a graph onnx or ONNX Runtime cannot take
        raise CamcliError(f"building the INT8 model failed: {first_line(exc)}") from exc
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(model.graph.input[0].name, tensors)
    with tempfile.TemporaryDirectory(prefix="camcli-int8-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice at WARNING on the root logger
        try:
            quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD), nodes_to_quantize=[n.name for n in quantized])
            return target.read_bytes()
        except Exception as exc:  # the quantizer fails in many ways
            raise CamcliError(f"building the INT8 model failed: {first_line(exc)}") from exc
        finally:
            logging.getLogger().setLevel(level)


TIE_FACTOR = 3.0  # the near-tie margin: this many times the median change INT8 makes to the gaps below fp32's top-1 logit
TIE_PAIRS = 4  # those gaps: fp32's top-1 class against each of the next four, on the calibrating images
MAX_RECHECKED = 0.5  # held-out images run again in fp32 (near ties) above which INT8 is refused: it would be no faster


def _image_logits(runner, weight: np.ndarray, bias: np.ndarray, tensors: Sequence[np.ndarray],
                  ran: Callable[[], None] = lambda: None) -> tuple[np.ndarray, list[np.ndarray]]:
    """((N, K) logits, each image's (C, h, w) features) of preprocessed (3, H, W) tensors, one at a time (sizes may differ)."""
    feats = []
    for t in tensors:
        feats.append(runner(t[None].astype(np.float32))[0])
        ran()
    return np.stack([cam.pooled_logits(f[None], weight, bias)[0] for f in feats]), feats


def tie_margin(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> float:
    """The logit gap under which INT8's top-1 is not trusted: :data:`TIE_FACTOR` times the median
    of how much INT8 changes the gap between fp32's top-1 class and each of the next
    :data:`TIE_PAIRS` (over the images of the (N, K) logits)."""
    if fp32_logits.shape[1] < 2 or not len(fp32_logits):
        return 0.0
    order = np.argsort(-fp32_logits, axis=1, kind="stable")[:, : TIE_PAIRS + 1]
    change = np.take_along_axis(int8_logits.astype(np.float64) - fp32_logits, order, axis=1)
    margin = TIE_FACTOR * float(np.median(np.abs(change[:, :1] - change[:, 1:])))
    return margin if np.isfinite(margin) else float("inf")


def near_ties(logits: np.ndarray, margin: float) -> np.ndarray:
    """Rows of (N, K) logits that INT8 cannot decide: their two largest less than ``margin`` apart,
    or a logit that is not finite (fp32 may give finite ones)."""
    finite = np.isfinite(logits).all(axis=1)
    if logits.shape[1] < 2 or not margin > 0:
        return ~finite
    top = np.partition(np.where(finite[:, None], logits, 0), -2, axis=1)[:, -2:]
    return ~finite | (top[:, 1].astype(np.float64) - top[:, 0] < margin)  # float64: a margin beyond float32's range


@dataclass(frozen=True)
class Check:
    """INT8 against fp32 on held-out images under one head, as camcli runs it: an image whose two
    best INT8 logits are within ``tie_margin`` runs again in fp32 (see :func:`near_ties`)."""

    images: int
    agreement: float  # top-1 agreement
    map_correlation: float  # mean Pearson correlation of fp32's top-1 class's raw map
    int8_agreement: float  # top-1 agreement of INT8 alone (no image run again)
    rechecked: int  # the held-out images run again in fp32
    tie_margin: float  # from the calibrating images (:func:`tie_margin`)

    @property
    def passed(self) -> bool:
        return (self.agreement >= MIN_AGREEMENT and self.map_correlation >= MIN_MAP_CORRELATION
                and self.rechecked <= MAX_RECHECKED * self.images)

    def describe(self) -> str:
        return (f"top-1 agreement {self.agreement:.3f} (needs {MIN_AGREEMENT}; INT8 alone {self.int8_agreement:.3f}) with "
                f"{self.rechecked} near ties (top two logits within {self.tie_margin:.3g}) run in fp32 (allowed: "
                f"{MAX_RECHECKED:.0%}), map correlation {self.map_correlation:.3f} (needs {MIN_MAP_CORRELATION}) on "
                f"{self.images} held-out calibration images")


def agreement(fp32_logits: np.ndarray, fp32_features: Sequence[np.ndarray], int8_logits: np.ndarray,
              int8_features: Sequence[np.ndarray], weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, INT8 against fp32: ((N,) bool, whether the top-1 classes agree; (N,) float, the
    Pearson correlation of fp32's top-1 class's raw map under ``weight`` (K, C) computed from
    each model's (C, h, w) features; 1 or 0 where a map is constant: whether the two are equal)."""
    agree, corr = [], []
    for k, top in enumerate(fp32_logits.argmax(axis=1)):
        agree.append(int(int8_logits[k].argmax()) == top)
        ma, mb = (cam.class_maps(f[k][None], weight[top : top + 1])[0, 0].ravel() for f in (fp32_features, int8_features))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(ma, mb)[0, 1] if ma.size > 1 else float(np.allclose(ma, mb))
        corr.append(float(r) if np.isfinite(r) else float(np.allclose(ma, mb, rtol=1e-3, atol=1e-6)))
    return np.array(agree, bool), np.array(corr, np.float64)


@dataclass
class Probe:
    """INT8 against fp32 on a run's own first inputs (see the module docstring): the check's
    images are the calibration set's, and a set unlike the inputs can pass it."""

    images: int = 0  # inputs compared so far (up to PROBE_IMAGES)
    misses: int = 0  # of them, those whose top-1 class INT8 changed
    correlations: list[float] = field(default_factory=list)  # their top-1 maps' correlations

    @property
    def done(self) -> bool:
        return self.images >= PROBE_IMAGES or self.failed

    @property
    def failed(self) -> bool:
        return self.misses > MAX_PROBE_MISSES or (self.images >= PROBE_IMAGES and self.map_correlation < MIN_MAP_CORRELATION)

    @property
    def map_correlation(self) -> float:
        return float(np.mean(self.correlations)) if self.correlations else 1.0

    def add(self, fp32_logits: np.ndarray, fp32_features: Sequence[np.ndarray], int8_logits: np.ndarray,
            int8_features: Sequence[np.ndarray], weight: np.ndarray) -> None:
        """Compare more inputs (see :func:`agreement`)."""
        agree, corr = agreement(fp32_logits, fp32_features, int8_logits, int8_features, weight)
        self.images += len(agree)
        self.misses += int((~agree).sum())
        self.correlations += corr.tolist()

    def describe(self) -> str:
        return (f"INT8 changed the top-1 class of {self.misses} of the first {self.images} inputs it was checked on "
                f"(allowed: {MAX_PROBE_MISSES} of {PROBE_IMAGES}), map correlation {self.map_correlation:.3f} "
                f"(needs {MIN_MAP_CORRELATION})")


CHECKING = "int8: checking against fp32"  # compare's progress stage (each image through both models)


def compare(fp32, int8, weight: np.ndarray, bias: np.ndarray, calibrate: Sequence[np.ndarray],
            held_out: Sequence[np.ndarray]) -> Check:
    """Run both runners on the preprocessed (3, H, W) tensors and compare under the head (weight
    (K, C), bias (K,)): the near-tie margin from ``calibrate``, the check on ``held_out``."""
    total, done = 2 * (len(calibrate) + len(held_out)), itertools.count(1)
    progress.report(CHECKING, 0, total)

    def ran() -> None:
        progress.report(CHECKING, next(done), total)

    margin = tie_margin(_image_logits(fp32, weight, bias, calibrate, ran)[0], _image_logits(int8, weight, bias, calibrate, ran)[0])
    la, fa = _image_logits(fp32, weight, bias, held_out, ran)
    lb, fb = _image_logits(int8, weight, bias, held_out, ran)
    tie = near_ties(lb, margin)
    agree, corr = agreement(la, fa, lb, fb, weight)
    corr = np.where(tie, 1.0, corr)
    return Check(len(held_out), float(np.mean(agree | tie)), float(np.mean(corr)), float(np.mean(agree)), int(tie.sum()), margin)


# ---------------------------------------------------------------- a checkpoint's calibration entry

ENTRY_IMAGES = 64  # training images a checkpoint carries for INT8 (JPEG at the model's input size: about 1 MB)
ENTRY_QUALITY = 90
MAX_ENTRY_PIXELS = 1 << 22  # an entry's image (2048 x 2048): camcli writes them at the model's input size


def calibration_entry(paths: Sequence[Path], preprocess: Preprocess, seed: int,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict | None:
    """The ``int8_calibration`` entry ``camcli train`` writes: a seeded sample of up to
    :data:`ENTRY_IMAGES` training images, each resized to the model's input size and stored as
    JPEG, as ``{"jpeg": uint8 (bytes,), "offsets": int64 (n + 1,)}``; None when fewer than
    :data:`MIN_IMAGES` can be read (the checkpoint is then written without it)."""
    order = np.random.default_rng(seed).permutation(len(paths))
    chunks: list[bytes] = []
    for i in order:
        if len(chunks) == ENTRY_IMAGES:
            break
        try:
            image = read_image(paths[i], max_pixels)
        except CamcliError:
            continue
        bgr = cv2.cvtColor(preprocess.resized(image), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, ENTRY_QUALITY])
        if ok:
            chunks.append(encoded.tobytes())
    if len(chunks) < MIN_IMAGES:
        return None
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    return {"jpeg": np.frombuffer(b"".join(chunks), np.uint8).copy(), "offsets": offsets}


def entry_calibration(entry: dict, source: str) -> Calibration:
    """The calibration images of a checkpoint's ``int8_calibration`` entry (its shapes checked by
    :func:`camcli.checkpoint.validate_checkpoint`; its offsets and images here, when they are used)."""
    jpeg, offsets = entry["jpeg"], entry["offsets"]
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(offsets)).cast("B"))
    digest.update(memoryview(np.ascontiguousarray(jpeg)).cast("B"))

    def load(preprocess: Preprocess) -> list[np.ndarray]:
        if not (offsets[0] == 0 and bool(np.all(np.diff(offsets) > 0)) and offsets[-1] == len(jpeg)):
            raise CamcliError(f"{source}: its INT8 calibration entry is damaged (its offsets do not cut its bytes into "
                              "images): pass `calibration` (a folder of images like yours)")
        images = []
        for start, end in progress.counting("int8: reading calibration images", list(zip(offsets[:-1], offsets[1:]))[:SAMPLE]):
            buffer = jpeg[start:end]
            header = image_header(buffer)
            if header is None or header.width * header.height > MAX_ENTRY_PIXELS:  # it holds model-input-sized images
                continue
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
            if image is not None:
                images.append(preprocess(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
        if len(images) < MIN_IMAGES:
            raise CamcliError(f"{source}: its INT8 calibration entry holds {len(images)} readable images "
                              f"(needs {MIN_IMAGES}): pass `calibration` (a folder of images like yours)")
        return images

    return Calibration(f"{source} (its calibration images)", digest.hexdigest(), load)


# ---------------------------------------------------------------- the cache

def int8_path(arch: str, facts: dict) -> Path:
    """Where the INT8 model built from ``facts`` is cached (beside the fp32 exports)."""
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "int8" / f"{arch.replace(':', '_').replace('/', '_')}-{digest}.onnx"


def int8_graph(fp32: bytes, arch: str, calibration: Calibration, preprocess: Preprocess, weight: np.ndarray,
               bias: np.ndarray, fp32_runner: OnnxRunner) -> tuple[bytes | None, OnnxRunner | None, Check, str | None]:
    """The INT8 graph of the backbone graph ``fp32`` (run by ``fp32_runner``) and its check under
    the head (weight (K, C), bias (K,)), built and checked at :func:`calibration_preprocess`.

    The graph is taken from the cache, else built (:func:`quantize`) and cached; its check is
    cached per head in the graph's record. A cached graph is used only when ONNX Runtime loads
    it, its inputs and outputs are a backbone's and its features on a fixed input follow fp32's
    (:func:`_follows`); else it is built again, as a record whose check is not numbers is checked again.

    Returns:
        (the graph and an ONNX Runtime runner of it, both None when the check refuses it; the
        check; a one-line note when something was built or checked, or the model refused, else None).

    Raises:
        CamcliError: unreadable or too few distinct calibration images, a failed build;
        MissingExtra: building needs onnx.
    """
    preprocess = calibration_preprocess(preprocess)
    facts = {"recipe": RECIPE, "fp32": hashlib.sha256(fp32).hexdigest(), "calibration": calibration.key,
             "preprocess": preprocess.to_dict()}
    path, head = int8_path(arch, facts), weights_key({"weight": weight, "bias": bias})
    found = cached_record(path, **facts)
    runner = _runner(path, found[0], fp32_runner, preprocess) if found is not None else None
    rebuilt = found is not None and runner is None
    if runner is None:
        found = None  # no cache file, or one that is not this model: built again
    checks = found[1].get("checks") if found is not None else None
    checks = checks if isinstance(checks, dict) else {}
    check = _cached_check(checks.get(head))
    if found is not None and check is not None:
        if not check.passed:
            return None, None, check, f"warning: {_refusal(arch, check)}"
        return found[0], runner, check, None
    tensors = distinct(calibration.load(preprocess), calibration.source)
    calibrate, held_out = split(tensors)
    built = found is None
    data = quantize(fp32, calibrate) if built else found[0]
    runner = OnnxRunner(path, model=data)
    check = compare(fp32_runner, runner, weight, bias, calibrate, held_out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if built:
            atomic_write(path, data)
        kept = dict(list(checks.items())[-(MAX_CHECKS - 1):])  # the latest heads' checks: the record stays small
        record_cache(path, **facts, checks={**kept, head: asdict(check)})
        where = f"cached in {path}"
    except OSError as exc:
        problem = os_error(exc, f"cannot write in {path.parent}")
        where = (f"not cached: {path.parent} is not a folder (remove it, and INT8 models are cached again)"
                 if path.parent.exists() and not path.parent.is_dir() else f"not cached ({problem})")
    except CamcliError as exc:
        where = f"not cached ({exc})"
    if not check.passed:
        return None, None, check, f"warning: {_refusal(arch, check)}"
    what = f"built an INT8 model of {arch} from {calibration.source}" if built else f"checked the INT8 model of {arch} for this head"
    if rebuilt:
        what += " (the cached one did not compute a backbone's features)"
    return data, runner, check, f"{what}: {check.describe()}; {where}"


FOLLOWS = 0.5  # the correlation of a cached INT8 graph's features with fp32's on a fixed input below which it is built again


def _follows(int8: OnnxRunner, fp32: OnnxRunner, preprocess: Preprocess) -> bool:
    """Whether ``int8`` gives features of fp32's shape, finite and correlated with them (at least
    :data:`FOLLOWS`) on one fixed, smooth input at the model's size: a cached graph replaced or
    edited (a sign flipped, channels dropped, another graph) fails; a real INT8 model of it does
    not (measured 0.88 to 0.94 over eleven INT8 models of EfficientNet-Lite0 on a CPU without
    VNNI; a negated output gives -0.9). Two forward passes. Subtler damage is the run's probe's
    to find (:class:`Probe`)."""
    side = preprocess.img_size
    rng = np.random.default_rng(0)
    pattern = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    x = preprocess(pattern)[None]
    try:
        a, b = fp32(x), int8(x)
    except Exception:  # noqa: BLE001 - ONNX Runtime's run errors have no common type: not a model to use
        return False
    if a.shape != b.shape or not np.isfinite(b).all():
        return False
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    return bool(r >= FOLLOWS)


def _runner(path: Path, data: bytes, fp32: OnnxRunner, preprocess: Preprocess) -> OnnxRunner | None:
    """An ONNX Runtime runner of a cached graph, or None when ONNX Runtime cannot load it, its
    inputs and outputs are not the fp32 graph's, or its features do not follow fp32's (:func:`_follows`)."""
    io = {"inputs": [[a.name, len(a.shape)] for a in fp32.session.get_inputs()],
          "outputs": [[a.name, len(a.shape)] for a in fp32.session.get_outputs()]}
    try:
        runner = OnnxRunner(path, model=data, facts=io)
    except Exception:  # noqa: BLE001 - ONNX Runtime's load errors have no common type; the model is built again
        return None
    return runner if _follows(runner, fp32, preprocess) else None


def _cached_check(value: object) -> Check | None:
    """A check as a cache record stores it, or None when it is not exactly that (then it is run again)."""
    if not isinstance(value, dict) or set(value) != {f.name for f in fields(Check)}:
        return None
    images, rechecked = value["images"], value["rechecked"]
    if type(images) is not int or type(rechecked) is not int or not 0 <= rechecked <= images or images < 1:
        return None
    numbers = {k: value[k] for k in ("agreement", "int8_agreement", "map_correlation", "tie_margin")}
    if any(type(v) not in (int, float) or np.isnan(v) or (np.isinf(v) and k != "tie_margin") for k, v in numbers.items()):
        return None  # an infinite margin is a check's own: every image a near tie (an INT8 model that gave non-finite logits)
    if not (0 <= numbers["int8_agreement"] <= numbers["agreement"] <= 1 and -1 <= numbers["map_correlation"] <= 1
            and numbers["tie_margin"] >= 0):
        return None
    return Check(images=images, rechecked=rechecked, **{k: float(v) for k, v in numbers.items()})


def _refusal(arch: str, check: Check) -> str:
    return f"the INT8 model of {arch} is refused, running fp32: {check.describe()}"


def refused(arch: str, check: Check) -> str:
    """Why the INT8 model of ``arch`` was refused, for a command that does not fall back (export)."""
    return f"the INT8 model of {arch} fails its check: {check.describe()}"
