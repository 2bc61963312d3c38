"""``camcli export``: one self-contained ONNX model per checkpoint, for production without camcli.

The graph takes ``image`` (N, 3, H, W), preprocessed as its metadata says, and returns
``probabilities`` (N, K), the softmax of the GAP + linear head, and ``maps`` (N, K, h, w), the
raw class activation maps M_c = sum_k W[c, k] F[k] (before any normalization). The head and
the CAM are appended to the backbone's own ONNX graph (the one camcli ships for the default
backbone, or its cached export), so making the file needs the ``onnx`` package but no PyTorch,
and ONNX Runtime alone (Python, C++, a browser) runs it.

Metadata (``metadata_props``): ``camcli_version``, ``arch``, ``class_names`` (JSON list),
``preprocess`` (JSON: img_size, mean, std, resize, stride, interpolation, color,
exif_orientation; see docs/checkpoint.md), ``outputs`` (a one-line description),
and ``precision`` = int8 in an INT8 model (the backbone's static INT8 graph, see
:mod:`camcli.quantize`; an fp32 file is as it was before INT8 existed), with ``int8_tie_margin``:
the logit gap between the two best classes under which camcli runs an image again in fp32 (the
file is INT8 alone: near ties are the user's to re-run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from camcli import __version__, cam
from camcli.engine import CamModel
from camcli.errors import CamcliError, first_line, need
from camcli.files import atomic_write
from camcli.quantize import refused
from camcli.runtime import ONNX_TOLERANCE, OnnxRunner, backbone_onnx

OUTPUTS = "probabilities (N, K): softmax of the head; maps (N, K, h, w): raw class activation maps"
PREFIX = "camcli_head/"  # names of the appended nodes and tensors, apart from the backbone's


def export_model(model: CamModel, path: Path, before_rename: Callable[[os.stat_result], None] | None = None) -> dict:
    """Write ``model`` as one ONNX graph (image -> probabilities, maps) to ``path``, atomically,
    after checking that ONNX Runtime reproduces camcli's own numbers on two input shapes.

    Returns:
        {"path", "max_prob_error", "max_map_error", "note"}: what the check measured (absolute
        error of probabilities, error of the maps relative to their largest magnitude), and a
        one-line note when the backbone had to be exported first (else None).

    Raises:
        CamcliError: the export failed or does not reproduce camcli; MissingExtra: no ``onnx``
            package, or the backbone has no ONNX graph yet and PyTorch is missing.
    """
    onnx = need("onnx", "camcli export")
    if model.precision == "int8":
        note = model.prepare()
        if model.int8_graph is None:  # refused by its check: an fp32 file under an int8 request would mislead
            raise CamcliError(f"no INT8 model written: {refused(model.arch, model.int8_check)}")
        backbone = model.int8_graph
    else:
        _, backbone, note = backbone_onnx(model.features_module, model.arch, model.weights_id())
    try:
        proto = _with_head(onnx.load_from_string(backbone), model.weight, model.bias)
        int8 = {"precision": "int8", "int8_tie_margin": repr(model.int8_check.tie_margin)} if model.precision == "int8" else {}
        meta = {"camcli_version": __version__, "arch": model.arch, "class_names": json.dumps(model.class_names),
                "preprocess": json.dumps(model.preprocess.to_dict()), "outputs": OUTPUTS, **int8}
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
        measured = _check(model, data)
    except CamcliError:
        raise
    except Exception as exc:  # the onnx package and the runtime fail in many ways
        raise CamcliError(f"ONNX export failed: {first_line(exc)}") from exc
    atomic_write(Path(path), data, before_rename)
    return {"path": str(path), **measured, "note": note}


def _with_head(proto, weight: np.ndarray, bias: np.ndarray):
    """The backbone graph ``proto`` (image -> features) with the GAP + linear head and the class
    maps appended: features -> ReduceMean over h, w -> Gemm (W, b) -> Softmax = probabilities;
    features -> 1x1 Conv with W = maps (sum_k W[c, k] F[k] at every position)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    features = graph.output[0].name
    k, c = weight.shape
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), PREFIX + "weight"),
        numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), PREFIX + "bias"),
        numpy_helper.from_array(np.ascontiguousarray(weight, np.float32).reshape(k, c, 1, 1), PREFIX + "kernel"),
    ])
    if opset >= 18:  # ReduceMean's axes became an input
        graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), PREFIX + "axes"))
        pool = helper.make_node("ReduceMean", [features, PREFIX + "axes"], [PREFIX + "pooled"], keepdims=0)
    else:
        pool = helper.make_node("ReduceMean", [features], [PREFIX + "pooled"], axes=[2, 3], keepdims=0)
    graph.node.extend([
        pool,
        helper.make_node("Gemm", [PREFIX + "pooled", PREFIX + "weight", PREFIX + "bias"], [PREFIX + "logits"], transB=1),
        helper.make_node("Softmax", [PREFIX + "logits"], ["probabilities"], axis=1),
        helper.make_node("Conv", [features, PREFIX + "kernel"], ["maps"], kernel_shape=[1, 1]),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", k]),
        helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["n", k, "fh", "fw"]),
    ])
    return proto


def _check(model: CamModel, data: bytes) -> dict:
    """Run the exported graph and camcli's own path on two random inputs; refuse a mismatch."""
    session = OnnxRunner(Path("the exported model"), model=data).session
    rng = np.random.default_rng(0)
    prob_error = map_error = 0.0
    for shape in ((2, 3, 224, 224), (1, 3, 224, 320)):
        x = rng.standard_normal(shape, dtype=np.float32)
        probs, maps = session.run(None, {"image": x})
        logits, feats, sizes = model.forward(list(x))
        ref_maps = cam.class_maps(feats, model.weight)
        prob_error = max(prob_error, float(np.abs(probs - cam.softmax(logits)).max()))
        map_error = max(map_error, float(np.abs(maps - ref_maps).max() / max(float(np.abs(ref_maps).max()), 1e-12)))
    if not (prob_error <= 1e-5 and map_error <= ONNX_TOLERANCE):  # NaN fails too
        raise CamcliError(f"the exported model does not reproduce camcli (probabilities {prob_error:.1e}, maps {map_error:.1e})")
    return {"max_prob_error": prob_error, "max_map_error": map_error}
