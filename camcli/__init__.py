"""camcli: Class Activation Mapping for PyTorch image classifiers.

The public API::

    import camcli
    model = camcli.load("runs/train/exp/best.pt")   # or an arch name: camcli.load("efficientnet_lite0")
    rows = model.predict(["cat.jpg"], top_k=3)        # [{"path", "predictions": [{"label", "index", "prob"}]}]
    maps = model.maps(["cat.jpg"])                    # float32 (N, K, h, w), raw CAMs
    overlay = camcli.render_overlay(image_rgb, maps[0, 0], alpha=0.5, colormap="jet")
"""

__version__ = "0.1.0"

from camcli.cam import class_maps, normalize_maps, pooled_logits, upsample_to  # noqa: E402
from camcli.engine import CamModel, load  # noqa: E402
from camcli.errors import CamcliError  # noqa: E402
from camcli.render import render_overlay  # noqa: E402

__all__ = [
    "CamModel",
    "CamcliError",
    "__version__",
    "class_maps",
    "load",
    "normalize_maps",
    "pooled_logits",
    "render_overlay",
    "upsample_to",
]
