"""One model spec, one factory: what to load, and the single place that turns it into a model.

A :class:`ModelSpec` is small, frozen and picklable: the command line builds it from its options,
``camcli.load`` builds it from its arguments, and the Ray actors receive it. :func:`build_model`
is the one place that decides checkpoint vs architecture name, CAM vs gradient model, and keeps
the ImageNet head cache. PyTorch (backbones, gradients) is imported only when a model needs it,
so a model whose export is cached starts without it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from camcli.checkpoint import SUFFIX, load_checkpoint
from camcli.data import DEFAULT_RESIZE, Preprocess
from camcli.defaults import BACKENDS, DEVICES, MAX_IMG_SIZE, MAX_PIXELS, MIN_IMG_SIZE, PRECISIONS, RESIZE_MODES
from camcli.engine import CamModel, Model
from camcli.errors import CamcliError, MissingExtra, missing_extra, need
from camcli.packaged import DEFAULT_ARCH, IMAGENET_HEAD, asset, check_reference, default_model_row, reference_key
from camcli.quantize import entry_calibration, folder_calibration
from camcli.runtime import torch_installed, weights_key

CHECKPOINT_SUFFIXES = (SUFFIX, ".pt", ".pth", ".onnx")  # a name with one of these is a file, never an arch
MAX_PIXELS_LIMIT = 1 << 40


@dataclass(frozen=True)
class ModelSpec:
    """What model to load and how to run it.

    Attributes:
        checkpoint: a checkpoint file (from ``camcli train``, or a camcli 0.1 ``.pt``); None: ``arch``.
        arch: without a checkpoint, a classifier with its own head (``efficientnet_lite0``,
            ``vgg16``, ``resnet50``, ``timm:NAME``); its maps are exact CAM where the head is
            GAP + linear, else gradient maps.
        weights: for an arch: ``imagenet`` or a state dict path of the whole classifier.
        classes: for an arch: its head's class names, in index order.
        layer: the target layer of gradient maps; None: the last spatial map (CAM where it can).
        img_size, resize: input geometry; None: the checkpoint's, else 224 and keep-aspect.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        backend: ``auto``, ``torch`` or ``onnxruntime``.
        amp: autocast on CUDA.
        max_pixels: images whose header declares more pixels are refused before decoding.
        backbone: ``camcli train``'s feature pass: the backbone alone as a checkpoint stores it
            (see :func:`camcli.backbones.backbone_state`), no head.
        precision: ``fp32``, or ``int8``: the backbone's static INT8 model on ONNX Runtime (the CPU),
            checked against fp32 before use (see :mod:`camcli.quantize`).
        calibration: with ``int8``, a folder of images like the ones to process; None: the
            checkpoint's own calibration images (``camcli train`` stores them).
    """

    checkpoint: str | None = None
    arch: str = DEFAULT_ARCH
    weights: str = "imagenet"
    classes: tuple[str, ...] | None = None
    layer: str | None = None
    img_size: int | None = None
    resize: str | None = None
    device: str = "auto"
    backend: str = "auto"
    amp: bool = True
    max_pixels: int = MAX_PIXELS
    backbone: dict | None = field(default=None, compare=False)
    precision: str = "fp32"
    calibration: str | None = None

    @classmethod
    def of(cls, checkpoint_or_arch: str | Path | ModelSpec, **settings) -> ModelSpec:
        """A spec from ``camcli.load``'s first argument: a path (a checkpoint suffix, a folder
        separator, or a file that exists) is a checkpoint, anything else an arch name."""
        if isinstance(checkpoint_or_arch, ModelSpec):
            return replace(checkpoint_or_arch, **settings)
        text = str(checkpoint_or_arch)
        if Path(text).suffix in CHECKPOINT_SUFFIXES or "/" in text or os.sep in text or os.path.lexists(text):
            return cls(checkpoint=text, **settings)
        return cls(arch=text, **settings)

    def validate(self) -> None:
        """Every check that needs no model (the command line runs it before any model loads)."""
        if self.checkpoint is not None:
            if self.classes is not None:
                raise CamcliError("`classes` names the classes of `weights`; a checkpoint holds its own")
            if self.weights != "imagenet":
                raise CamcliError("`weights` is for a model given by `arch`; a checkpoint holds its own weights")
            if not os.path.lexists(self.checkpoint):
                raise CamcliError(f"checkpoint not found: {self.checkpoint}")
        elif self.backbone is None and self.weights == "none":
            raise CamcliError("a randomly initialized head ranks nothing: use `weights` imagenet, or train a head with `camcli train`")
        elif self.weights not in ("imagenet", "none") and not os.path.lexists(self.weights):
            raise CamcliError(f"`weights` is imagenet or a state dict file; no file {self.weights} exists")
        if self.backend == "torch" and not torch_installed():
            raise missing_extra("torch", "`backend` torch")
        if self.classes is not None and not self.classes:
            raise CamcliError("the `classes` file names no class")
        if self.layer is not None and not self.layer.strip():
            raise CamcliError("`layer` needs a layer name (`camcli layers` lists them)")
        if self.img_size is not None and not MIN_IMG_SIZE <= self.img_size <= MAX_IMG_SIZE:
            raise CamcliError(f"`img_size` must be from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, got {self.img_size}")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise CamcliError(f"`resize` must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.device not in DEVICES:
            raise CamcliError(f"`device` must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise CamcliError(f"`backend` must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise CamcliError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp32" and self.calibration is not None:
            raise CamcliError("`calibration` is for `precision` int8 (fp32 needs no calibration images)")
        if self.precision == "int8":
            if self.backend == "torch" or self.device not in ("auto", "cpu"):
                raise CamcliError("`precision` int8 runs on ONNX Runtime on the CPU: use `backend` auto or onnxruntime and the "
                                  "cpu device (on a GPU, fp32 runs with autocast)")
            if self.layer is not None:
                raise CamcliError("`precision` int8 runs the backbone on ONNX Runtime, which has no backward pass: gradient maps "
                                  "at a chosen `layer` need fp32")
            if self.calibration is not None and not os.path.isdir(self.calibration):
                what = f"{self.calibration} is a file, not a folder" if os.path.lexists(self.calibration) else \
                    f"calibration folder not found: {self.calibration}"
                raise CamcliError(f"{what} (pass `calibration`: a folder of images like the ones to process)")
        if not 1 <= self.max_pixels <= MAX_PIXELS_LIMIT:
            raise CamcliError(f"`max_pixels` must be from 1 to {MAX_PIXELS_LIMIT:,}, got {self.max_pixels}")


def load(
    checkpoint_or_arch: str | Path | ModelSpec = DEFAULT_ARCH, device: str = "auto", weights: str = "imagenet",
    img_size: int | None = None, resize: str | None = None, backend: str = "auto", amp: bool = True,
    classes: Sequence[str] | None = None, layer: str | None = None, precision: str = "fp32",
    calibration: str | Path | None = None,
) -> Model:
    """Load a trained checkpoint, or a whole classifier with its own head: ImageNet's, or one
    trained elsewhere (``weights`` a state dict of the whole model, ``classes`` its names).

    A GAP + linear head gives a :class:`camcli.engine.CamModel` (exact CAM, no backward pass);
    any other head, or a chosen ``layer``, gives a :class:`camcli.gradients.GradModel`
    (gradient maps in PyTorch). The arguments are :class:`ModelSpec`'s; a spec is accepted
    as it is (the other arguments then replace its fields only when given).

    Raises:
        CamcliError: unreadable checkpoint or weights, unknown layer.
    """
    if isinstance(checkpoint_or_arch, ModelSpec):
        return build_model(checkpoint_or_arch)
    return build_model(ModelSpec.of(
        checkpoint_or_arch, device=device, weights=weights, img_size=img_size, resize=resize, backend=backend, amp=amp,
        classes=tuple(classes) if classes is not None else None, layer=layer, precision=precision,
        calibration=str(calibration) if calibration is not None else None,
    ))


def build_model(spec: ModelSpec) -> Model:
    """The model a spec describes (see :class:`ModelSpec`); the model keeps its spec (``model.spec``)."""
    spec.validate()
    if spec.backbone is not None:
        model: Model = backbone_model(spec)
    elif spec.checkpoint is not None:
        # the checkpoint's INT8 calibration images are read only when an INT8 build takes them
        own_images = spec.precision == "int8" and spec.calibration is None
        model = _from_checkpoint(load_checkpoint(Path(spec.checkpoint), calibration_images=own_images), spec)
        if spec.layer is not None:
            model = _gradient_model(model, spec)
    else:
        model = _from_arch(spec)
    model.spec, model.max_pixels = spec, spec.max_pixels
    if spec.precision == "int8":
        model.precision, model.calibration = "int8", _calibration(model, spec)
    return model


def _calibration(model: CamModel, spec: ModelSpec):
    """The INT8 calibration images: ``spec.calibration``'s folder, else the checkpoint's entry."""
    if spec.calibration is not None:
        return folder_calibration(spec.calibration, spec.max_pixels)
    entry = (model.checkpoint or {}).get("int8_calibration")
    if entry is None:
        where = "this checkpoint carries none (train it again with this camcli)" if model.checkpoint else \
            "a model without a checkpoint has none"
        raise CamcliError(f"`precision` int8 needs calibration images: pass `calibration` (a folder of images like the ones "
                          f"to process; {where})")
    return entry_calibration(entry, spec.checkpoint)


def _stored_key(stored: dict) -> str:
    """The ONNX cache key of a stored backbone: its packaged file's sha256, or a hash of its state."""
    return reference_key(stored["reference"]) if "reference" in stored else weights_key(stored["state_dict"])


def backbone_model(spec: ModelSpec, features=None) -> CamModel:
    """``spec.backbone`` as a headless model, for pooled features (``camcli train``): its runner is
    what :func:`camcli.engine.extract_features` runs. ``features``: the module already built."""
    stored = spec.backbone

    def build():  # PyTorch, only when the backbone runs or exports in it
        if features is not None:
            return features
        return _torch_backbones(spec.arch).restore_backbone(spec.arch, stored).features

    model = CamModel(spec.arch, build, (np.zeros((0, 0), np.float32), np.zeros(0, np.float32)), [], None, spec.device,
                     backend=spec.backend, amp=spec.amp, weights_id=_stored_key(stored))
    model.spec = spec
    return model


def _from_checkpoint(ckpt: dict, spec: ModelSpec) -> CamModel:
    """A CamModel of a loaded checkpoint; ``spec.img_size`` and ``spec.resize`` override the
    recorded preprocessing. The backbone is restored in PyTorch only if PyTorch runs it or exports it."""
    arch, stored = ckpt["arch"], ckpt["backbone"]
    weight = ckpt["head"]["weight"]
    if "reference" in stored:
        check_reference(arch, stored["reference"])

    def build():
        backbone = _torch_backbones(arch).restore_backbone(arch, stored)
        if weight.shape[1] != backbone.num_features:
            raise CamcliError(f"checkpoint head expects {weight.shape[1]} features but {arch} gives {backbone.num_features}")
        return backbone.features

    overrides = {k: v for k, v in (("img_size", spec.img_size), ("resize", spec.resize)) if v is not None}
    preprocess = replace(Preprocess.from_dict(ckpt["preprocess"]), **overrides)
    return CamModel(arch, build, (weight, ckpt["head"]["bias"]), ckpt["class_names"], preprocess, spec.device, ckpt,
                    spec.backend, spec.amp, weights_id=_stored_key(stored))


def need_torch_for_arch(arch: str, what: str):
    """``camcli.backbones`` (PyTorch) for a model other than the shipped default: one line naming the
    extra when PyTorch is missing; a near miss of the default's name (``efficientnet-lite0``) is
    said to be one (exit 2) rather than sent to install PyTorch."""
    if arch != DEFAULT_ARCH and not torch_installed() and difflib.get_close_matches(arch, [DEFAULT_ARCH], 1, 0.9):
        raise CamcliError(f"unknown `arch` {arch!r}: did you mean {DEFAULT_ARCH}? (other models need PyTorch: "
                          "pip install 'camcli[torch]')")
    return need("camcli.backbones", what)


def _torch_backbones(arch: str):
    """``camcli.backbones`` (PyTorch), for building or exporting ``arch``: one line naming the extra when PyTorch is missing."""
    return need("camcli.backbones", f"{arch}'s first run with these weights (its export to ONNX, or running it in PyTorch)")


def _from_arch(spec: ModelSpec) -> Model:
    """A classifier by name with its own head: CAM where the head is GAP + linear, else gradient maps.

    The default backbone's ImageNet head ships with camcli as a checkpoint (``camcli/assets``), so
    ``camcli predict photo.jpg`` needs no PyTorch; every other classifier is built in PyTorch."""
    arch, classes = spec.arch, spec.classes
    if arch == DEFAULT_ARCH and spec.weights == "imagenet" and classes is None and spec.layer is None:
        path, _ = asset(IMAGENET_HEAD)  # checked against the sha256 it shipped with
        model = _from_checkpoint(load_checkpoint(path), spec)
        model.checkpoint = None
        return model
    what = (f"`arch` {arch}" if arch != DEFAULT_ARCH else "`weights` from a file" if spec.weights != "imagenet"
            else "`layer` (gradient maps)" if spec.layer is not None else "`classes`")
    backbones = need_torch_for_arch(arch, what)
    if arch.startswith("vgg") and arch.endswith(backbones.VGG_GAP_SUFFIX):
        raise CamcliError(f"{arch} has no pretrained head of its own: train one with `camcli train DATA --arch {arch}`")
    classifier = backbones.build_classifier(arch, spec.weights, len(classes) if classes else None)
    if classes is not None:
        classifier.class_names = list(classes)
    backbone = None if spec.layer is not None else backbones.gap_linear_backbone(classifier, spec.weights)
    if backbone is None:
        return _gradient_model(classifier, spec)
    if classes is not None and len(classes) != backbone.head.out_features:
        raise CamcliError(f"{arch}'s head has {backbone.head.out_features} outputs but {len(classes)} class names were given")
    if backbone.class_names is None:
        backbone.class_names = [f"class_{i}" for i in range(backbone.head.out_features)]
    preprocess = Preprocess(spec.img_size or 224, backbone.mean, backbone.std, spec.resize or DEFAULT_RESIZE, backbone.stride)
    return CamModel(arch, backbone.features, backbone.head, backbone.class_names, preprocess, spec.device, None, spec.backend,
                    spec.amp, weights_id=reference_key(backbone.reference) if backbone.reference else None)


def _gradient_model(source, spec: ModelSpec) -> Model:
    """A GradModel of a CamModel (at another layer) or of a whole classifier (PyTorch)."""
    if spec.precision == "int8":
        raise CamcliError(f"`precision` int8: the head of {source.arch} is not GAP + linear, so its maps need gradients, and INT8 "
                          "runs on ONNX Runtime, which has no backward pass: use fp32")
    if spec.backend == "onnxruntime":
        raise CamcliError("gradient maps run in PyTorch (ONNX Runtime has no backward pass): use `backend` auto or torch")
    gradients = need("camcli.gradients", "`layer` (gradient maps)" if spec.layer else f"`arch` {source.arch} (gradient maps of its head)")
    GradModel, whole_classifier = gradients.GradModel, gradients.whole_classifier
    if isinstance(source, CamModel):
        return GradModel(whole_classifier(source), source.class_names, source.preprocess, spec.layer, source.device, source.amp,
                         source.checkpoint)
    classifier = source
    if classifier.input_size is not None:
        h, w = classifier.input_size
        if (spec.img_size not in (None, h) or h != w) or spec.resize not in (None, "squash"):
            raise CamcliError(f"{classifier.arch} takes {h}x{w} inputs only: leave out `img_size` and `resize`")
        preprocess = Preprocess(h, classifier.mean, classifier.std, "squash")
    else:
        preprocess = Preprocess(spec.img_size or 224, classifier.mean, classifier.std, spec.resize or DEFAULT_RESIZE)
    names = classifier.class_names
    if names is None:
        import torch

        with torch.no_grad():
            side = preprocess.img_size
            count = classifier.model(torch.zeros(1, 3, side, side)).shape[-1]
        names = [f"class_{i}" for i in range(count)]
    model = GradModel(classifier, names, preprocess, spec.layer, spec.device, spec.amp)
    if spec.backend == "auto" and model.device == "cpu":
        model.note = f"{classifier.arch}: gradient maps run in PyTorch (ONNX Runtime has no backward pass)"
    return model


def list_layers(checkpoint_or_arch: str | Path | ModelSpec, img_size: int = 224, is_checkpoint: bool | None = None) -> list[dict]:
    """The layers of a model that ``layer`` can name, in the order they run on one image.

    Args:
        checkpoint_or_arch: a checkpoint path or an arch name (its weights do not matter here).
        img_size: the probe image's side (a fixed-size transformer uses its own).
        is_checkpoint: whether it is a checkpoint; default: as :meth:`ModelSpec.of` decides.

    Returns:
        rows ``{"name", "type", "output": shape without the batch, "grid": [h, w] or None
        (None: not a spatial map, or run more than once, so not a target), "default": bool}``.
    """
    gradients = need("camcli.gradients", "camcli layers")
    text = str(checkpoint_or_arch)
    spec = ModelSpec.of(checkpoint_or_arch) if is_checkpoint is None else (
        ModelSpec(checkpoint=text) if is_checkpoint else ModelSpec(arch=text))
    if spec.checkpoint is not None:
        classifier = gradients.whole_classifier(build_model(replace(spec, device="cpu", backend="torch")))
    else:
        classifier = need("camcli.backbones", "camcli layers").build_classifier(spec.arch, "none")
    return gradients.layer_rows(classifier, img_size)


def available_models(timm_pattern: str | None = None) -> tuple[list[dict], str | None]:
    """The models ``arch`` can name (:func:`camcli.backbones.available_models`) and a note, or None:
    without PyTorch, the default backbone only, and the note says how to get the others."""
    try:
        backbones = need("camcli.backbones", "listing torchvision's and timm's models")
    except MissingExtra as exc:
        if timm_pattern:
            raise missing_extra("timm", "listing timm models (`timm`)") from None
        return [default_model_row()], str(exc)
    return backbones.available_models(timm_pattern), None
