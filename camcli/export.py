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

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from camcli import __version__, cam
from camcli.engine import CamModel
from camcli.errors import CamcliError
from camcli.runtime import ONNX_TOLERANCE, OnnxRunner, export_verified

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

    def add_metadata(tmp: str) -> None:
        proto = onnx.load(tmp)
        meta = {"camcli_version": __version__, "arch": model.arch, "class_names": json.dumps(model.class_names),
                "preprocess": json.dumps(model.preprocess.to_dict()), "outputs": OUTPUTS}
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, tmp)

    graph = CamGraph(model.features_module(), model.weight, model.bias)
    outputs = {"probabilities": {0: "n"}, "maps": {0: "n", 2: "fh", 3: "fw"}}
    measured = export_verified(graph, Path(path), outputs, lambda tmp: _check(model, tmp), add_metadata, before_rename)
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
    if not (prob_error <= 1e-5 and map_error <= ONNX_TOLERANCE):  # NaN fails too
        raise CamcliError(f"the exported model does not reproduce camcli (probabilities {prob_error:.1e}, maps {map_error:.1e})")
    return {"max_prob_error": prob_error, "max_map_error": map_error}
