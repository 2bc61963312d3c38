"""``camcli export``: one self-contained ONNX model per checkpoint, for production without camcli.

The graph takes ``image`` (N, 3, H, W), preprocessed as its metadata says, and returns
``probabilities`` (N, K), the softmax of the GAP + linear head, and ``maps`` (N, K, h, w), the
raw class activation maps M_c = sum_k W[c, k] F[k] (before any normalization). The head and
the CAM are folded into the graph, so ONNX Runtime alone (Python, C++, a browser) runs it.

Metadata (``metadata_props``): ``camcli_version``, ``arch``, ``class_names`` (JSON list),
``preprocess`` (JSON: img_size, mean, std, resize, stride, interpolation, color,
exif_orientation; see README "Checkpoint format"), ``outputs`` (a one-line description).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from camcli import __version__, cam
from camcli.engine import CamModel
from camcli.errors import CamcliError, EnvironmentProblem
from camcli.runtime import ONNX_OPSET, ONNX_TOLERANCE, OnnxRunner

OUTPUTS = "probabilities (N, K): softmax of the head; maps (N, K, h, w): raw class activation maps"


def export_model(model: CamModel, path: Path, before_rename: Callable[[os.stat_result], None] | None = None) -> dict:
    """Write ``model`` as one ONNX graph (image -> probabilities, maps) to ``path``, atomically,
    after checking that ONNX Runtime reproduces camcli's own numbers on two input shapes.

    Returns:
        {"path", "max_prob_error", "max_map_error"}: what the check measured (absolute error
        of probabilities, error of the maps relative to their largest magnitude).

    Raises:
        CamcliError: the export failed or does not reproduce camcli.
    """
    import onnx
    import torch
    from torch import nn

    class CamGraph(nn.Module):
        def __init__(self, features: nn.Module, weight: np.ndarray, bias: np.ndarray):
            super().__init__()
            self.features = features
            self.register_buffer("weight", torch.from_numpy(weight.copy()))
            self.register_buffer("bias", torch.from_numpy(bias.copy()))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.features(image)
            logits = feats.mean(dim=(2, 3)) @ self.weight.T + self.bias
            maps = torch.einsum("kc,nchw->nkhw", self.weight, feats)
            return torch.softmax(logits, dim=1), maps

    path = Path(path)
    graph = CamGraph(model.features_module().to("cpu", memory_format=torch.contiguous_format), model.weight, model.bias).eval()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".camcli-export-", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write to {path.parent}: {exc.strerror or exc}") from exc
    try:
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (torch.zeros(1, 3, 224, 224),), tmp, input_names=["image"], output_names=["probabilities", "maps"],
                dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "probabilities": {0: "n"}, "maps": {0: "n", 2: "fh", 3: "fw"}},
                opset_version=ONNX_OPSET, dynamo=False,
            )
        proto = onnx.load(tmp)
        meta = {"camcli_version": __version__, "arch": model.arch, "class_names": json.dumps(model.class_names),
                "preprocess": json.dumps(model.preprocess.to_dict()), "outputs": OUTPUTS}
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, tmp)
        measured = _check(model, Path(tmp))
        if before_rename is not None:
            before_rename(os.stat(tmp))
        os.replace(tmp, path)
    except CamcliError:
        raise
    except Exception as exc:  # exporters and runtimes fail in many ways
        raise CamcliError(f"ONNX export failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return {"path": str(path), **measured}


def _check(model: CamModel, path: Path) -> dict:
    """Run the exported graph and camcli's own path on two random inputs; refuse a mismatch."""
    session = OnnxRunner(path).session
    rng = np.random.default_rng(0)
    prob_error = map_error = 0.0
    for shape in ((2, 3, 224, 224), (1, 3, 224, 320)):
        x = rng.standard_normal(shape, dtype=np.float32)
        probs, maps = session.run(None, {"image": x})
        logits, feats, sizes = model.forward(list(x))
        ref_maps = cam.class_maps(feats, model.weight)
        prob_error = max(prob_error, float(np.abs(probs - cam.softmax(logits)).max()))
        map_error = max(map_error, float(np.abs(maps - ref_maps).max() / max(float(np.abs(ref_maps).max()), 1e-12)))
    if prob_error > 1e-5 or map_error > ONNX_TOLERANCE:
        raise CamcliError(f"the exported model does not reproduce camcli (probabilities {prob_error:.1e}, maps {map_error:.1e})")
    return {"max_prob_error": prob_error, "max_map_error": map_error}
