"""Gradient-weighted maps of a whole classifier, in PyTorch: any head (VGG's fully connected
layers, MobileNetV3's hidden layer, ConvNeXt's LayerNorm, a vision transformer's class
token, a classifier trained elsewhere) and any target layer.

The target layer's output is replaced, through a forward hook, by a detached copy that
requires grad. Autograd then records only what runs after the layer: a backward pass costs
what the rest of the network costs (for the default layer, the head), and nothing before the
layer keeps activations. Images of a batch are independent in eval mode, so the gradient of
the sum of each image's target logit gives every image its own gradient in one backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from camcli import cam, methods, progress
from camcli.backbones import Classifier
from camcli.data import Preprocess
from camcli.engine import CamModel, Model, scorecam_maps
from camcli.errors import CamcliError

CPU_CHUNK = 8  # images per forward pass on the CPU (see GradModel.forward)


@dataclass
class _Group:
    """The images of one shape in one forward pass."""

    rows: list[int]  # their rows in the batch
    input_hw: tuple[int, int]  # their preprocessed size
    logits: torch.Tensor  # (m, K), with the graph back to ``leaf``
    leaf: torch.Tensor  # the target layer's output, requires grad
    acts: np.ndarray | None = None  # (m, C, h, w) float32, made on first use


@dataclass
class Graph:
    """What a batch's forward pass keeps for its maps. ``graph[keep]`` keeps some rows (as
    :meth:`camcli.engine.Model.batches` does with images whose scores are not finite)."""

    groups: list[_Group]
    rows: np.ndarray = field(default=None)  # batch rows still in the batch, in order

    def __getitem__(self, keep) -> Graph:
        return Graph(self.groups, self.rows[keep])


class GradModel(Model):
    """A whole classifier whose maps are gradient-weighted (Grad-CAM, Grad-CAM++, LayerCAM).

    Args:
        classifier: from :func:`camcli.backbones.build_classifier` (or :func:`whole_classifier`).
        class_names: K names in class-index order.
        preprocess: its preprocessing.
        layer: the target layer's name in ``classifier.model.named_modules()``; default the
            classifier's ``default_layer``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        amp: autocast to float16 on CUDA.
        checkpoint: the loaded checkpoint, if the model came from one.
    """

    default_method = "gradcam"

    def __init__(self, classifier: Classifier, class_names: list[str], preprocess: Preprocess, layer: str | None = None,
                 device: str = "auto", amp: bool = True, checkpoint: dict | None = None):
        super().__init__(classifier.arch, class_names, preprocess, device, checkpoint)
        self.classifier = classifier
        classifier.model.eval().requires_grad_(False)  # so autograd records nothing before the target layer
        self.layer = layer or classifier.default_layer
        self.amp = amp
        self.backend = "torch"
        names = dict(classifier.model.named_modules())
        self.listing = "camcli layers --checkpoint CKPT" if checkpoint is not None else f"camcli layers --arch {self.arch}"
        if self.layer not in names or not self.layer:
            close = _close_names(self.layer, [n for n in names if n])
            raise CamcliError(f"{self.arch} has no layer {self.layer!r}{close}; list them with `{self.listing}`")
        self._target = names[self.layer]
        self._ready = False
        self.note: str | None = None  # said once, by the first prepare()

    def resolve_method(self, method: str) -> str:
        method = super().resolve_method(method)
        entry = methods.get(method)
        if method == "ablationcam":
            raise CamcliError("`method` ablationcam runs on a GAP + linear head at its last feature map (there its drops are "
                              "exact, in closed form); for this head or a chosen `layer` use `method` scorecam, gradcam or "
                              "another gradient method")
        if not (entry.gradients or entry.baseline or entry.perturbation):
            first, *others = methods.gradient_methods()
            raise CamcliError(f"`method` {method} is the map of a GAP + linear head at its last feature map; for this head or a "
                              f"chosen `layer` use `method` {first} (or {', '.join(others)})")
        return method

    def prepare(self) -> str | None:
        """Move the model to the device and check the target layer on one blank image."""
        if self._ready:
            return None
        self.classifier.model.to(torch.device(self.device))
        side = self.preprocess.img_size
        probe = np.zeros((3, *(self.classifier.input_size or (side, side))), np.float32)
        self._ready = True
        try:
            self.forward([probe])
        except BaseException:
            self._ready = False
            raise
        return self.note

    def forward(self, tensors: list[np.ndarray], maps: bool = True, exact=None) -> tuple[np.ndarray, Graph, list[tuple[int, int]]]:
        """Preprocessed (3, H_i, W_i) images -> ((N, K) logits, the graph for the maps, each image's grid size).

        Images of one shape run together (see :func:`camcli.engine.extract_features`). Without
        ``maps`` no graph is kept (a ranking only: about half the memory). ``exact`` is for INT8
        models (:meth:`camcli.engine.Model.forward`): a gradient model runs in fp32 always."""
        self.prepare()
        fixed = self.classifier.input_size
        if fixed is not None and any(tuple(t.shape[-2:]) != tuple(fixed) for t in tensors):
            raise CamcliError(f"{self.arch} takes {fixed[0]}x{fixed[1]} inputs only: leave out `cam_sizes`")
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            shapes.setdefault(tuple(t.shape), []).append(i)
        logits = np.zeros((len(tensors), self.num_classes), np.float32)
        sizes: list[tuple[int, int]] = [(0, 0)] * len(tensors)
        groups = []
        # on the CPU a few images per pass: overlay of 32 VGG16 images at 224 peaks at 2.2 GB of RSS
        # in passes of 32, 1.6 GB in passes of 8 (8% slower), 1.5 GB in passes of 4 (23% slower)
        step = CPU_CHUNK if self.device == "cpu" else len(tensors)
        chunks = [(shape, rows[i : i + step]) for shape, rows in shapes.items() for i in range(0, len(rows), step)]
        for shape, rows in chunks:
            group = self._run(np.stack([tensors[i] for i in rows]), maps)
            progress.add_passes(len(rows))
            if group.logits.shape[-1] != self.num_classes:
                raise CamcliError(f"{self.arch} gives {group.logits.shape[-1]} scores per image but {self.num_classes} class names "
                                  "were given")
            group.rows = rows
            logits[rows] = group.logits.detach().float().cpu().numpy()
            h, w = self._grid(group.leaf, group.input_hw).shape[-2:]
            for i in rows:
                sizes[i] = (h, w)
            groups.append(group)
        return logits, Graph(groups, np.arange(len(tensors))), sizes

    def _run(self, x: np.ndarray, maps: bool = True) -> _Group:
        device = torch.device(self.device)
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        if device.type in ("cpu", "cuda"):
            batch = batch.contiguous(memory_format=torch.channels_last)
        kept: list[torch.Tensor] = []

        def swap(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise CamcliError(f"layer {self.layer!r} gives a {type(output).__name__}, not a tensor: choose another "
                                  f"({self.listing})")
            if not maps:
                kept.append(output.detach())
                return None
            leaf = output.detach().requires_grad_(True)
            kept.append(leaf)
            return leaf + 0  # not the leaf itself: an in-place op after the layer (ReLU(inplace=True)) must not change it

        handle = self._target.register_forward_hook(swap)
        try:
            with torch.set_grad_enabled(maps), torch.autocast(device.type, enabled=self.amp and device.type == "cuda"):
                logits = self.classifier.model(batch)
        finally:
            handle.remove()
        if not kept:
            raise CamcliError(f"layer {self.layer!r} is not used when {self.arch} classifies an image: choose another "
                              f"({self.listing})")
        if len(kept) > 1:
            raise CamcliError(f"layer {self.layer!r} runs {len(kept)} times per image: choose a layer that runs once "
                              f"({self.listing})")
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise CamcliError(f"{self.arch} does not give one row of scores per image")
        return _Group([], tuple(x.shape[-2:]), logits, kept[0])

    def _grid(self, t: torch.Tensor, input_hw: Sequence[int]) -> torch.Tensor:
        """A layer's (m, ...) output as an (m, C, h, w) grid, or a one-line refusal."""
        c = self.classifier
        if t.ndim == 4:
            grid = t.permute(0, 3, 1, 2) if _channels_last(t, input_hw, c.layout == "NHWC") else t
            if grid.shape[-2:] == (1, 1):
                raise CamcliError(f"layer {self.layer!r} gives a 1x1 map (a pooled vector): choose a layer before the pooling "
                                  f"({self.listing})")
            return grid
        if t.ndim == 3:
            tokens = t.shape[1] - c.prefix_tokens
            h, w = input_hw[0] // c.patch, input_hw[1] // c.patch
            if c.layout == "NLC" and tokens == h * w:
                return t[:, c.prefix_tokens:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
            side = math.isqrt(max(tokens, 0))
            if c.layout == "NLC" and side * side == tokens and tokens > 0:
                return t[:, c.prefix_tokens:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
            raise CamcliError(f"layer {self.layer!r} gives {tuple(t.shape[1:])} tokens that do not form a grid of "
                              f"{h}x{w} patches: choose a layer inside the blocks ({self.listing})")
        raise CamcliError(f"layer {self.layer!r} gives {t.ndim}-D outputs {tuple(t.shape[1:])}, not a spatial map: choose a "
                          f"layer before the head ({self.listing})")

    def _maps(self, graph: Graph, sizes: list[tuple[int, int]], classes: np.ndarray, method: str,
              inputs: list[np.ndarray] | None = None, eigen_smooth: bool = False, exact=None,
              top_channels: int | None = None) -> list[np.ndarray]:
        if method == "scorecam":
            return self._scorecam_maps(graph, classes, inputs, eigen_smooth, top_channels)
        if not methods.get(method).gradients:
            raise ValueError(f"not a gradient method: {method!r}")
        if any(not g.leaf.requires_grad for g in graph.groups):
            raise ValueError("maps of a batch made without a graph: pass for_maps=True to batches()")
        finer = methods.get(method).target == "finer"
        out: list[list[np.ndarray]] = [[] for _ in graph.rows]
        where = {int(row): i for i, row in enumerate(graph.rows)}
        for group in graph.groups:
            members = [(k, where[row]) for k, row in enumerate(group.rows) if row in where]
            if not members:
                continue
            ks = torch.tensor([k for k, _ in members], device=group.logits.device)
            acts = self._activations(group)
            for j in range(classes.shape[1]):
                targets = torch.tensor([int(classes[i, j]) for _, i in members], device=group.logits.device)
                score = _finer_score(group.logits[ks].float(), targets) if finer else group.logits[ks, targets].float().sum()
                (grad,) = torch.autograd.grad(score, group.leaf, retain_graph=True, allow_unused=True)
                if grad is None:  # the scores do not depend on this layer: no gradient, an empty map
                    grad = torch.zeros_like(group.leaf)
                grads = self._grid(grad, group.input_hw).float().cpu().numpy()
                for (k, i) in members:
                    out[i].append(cam.gradient_map(acts[k], grads[k], method, eigen_smooth))
        return [np.stack(maps).astype(np.float32) for maps in out]

    def _scorecam_maps(self, graph: Graph, classes: np.ndarray, inputs: list[np.ndarray] | None,
                       eigen_smooth: bool, top_channels: int | None = None) -> list[np.ndarray]:
        """Score-CAM at the target layer: its activations mask the input, the whole classifier
        scores the masked inputs (see :func:`camcli.engine.scorecam_maps`)."""
        if inputs is None:
            raise ValueError("scorecam needs the batch's inputs (Batch.inputs)")
        out: list[np.ndarray | None] = [None] * len(graph.rows)
        where = {int(row): i for i, row in enumerate(graph.rows)}
        for group in graph.groups:
            acts = self._activations(group)
            for k, row in enumerate(group.rows):
                if row in where:
                    i = where[row]
                    out[i] = scorecam_maps(acts[k], inputs[i], classes[i], lambda xs: self.forward(xs, maps=False)[0],
                                           eigen_smooth, top_channels).astype(np.float32)
        return out

    def _activations(self, group: _Group) -> np.ndarray:
        """The group's target-layer activations as an (m, C, h, w) float32 grid, made once."""
        if group.acts is None:
            group.acts = self._grid(group.leaf.detach(), group.input_hw).float().cpu().numpy()
        return group.acts


def _finer_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """FinerCAM's score summed over rows: sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9), the
    comparison classes j from :func:`camcli.cam.finer_classes` (see
    :func:`camcli.cam.finer_score_gradient`, its gradient on a GAP + linear head)."""
    total = logits.new_zeros(())
    values = logits.detach().cpu().numpy()
    for row, c in enumerate(targets.tolist()):
        others = torch.as_tensor(cam.finer_classes(values[row], c), device=logits.device)
        p = torch.softmax(logits[row], dim=-1)[others]
        total = total + (p * (logits[row, c] - cam.FINER_ALPHA * logits[row, others])).sum() / (p.sum() + 1e-9)
    return total


def _channels_last(t: torch.Tensor, input_hw: Sequence[int], default: bool) -> bool:
    """Whether a 4-D layer output is (N, h, w, C): the layout whose two spatial sides shrink
    the input by the same factor. Swin and ConvNeXt mix layouts from layer to layer; when both
    or neither fit, the model family's layout decides."""
    if len(input_hw) != 2:
        return default

    def fits(h: int, w: int) -> bool:
        sh, sw = input_hw[0] / h, input_hw[1] / w
        return abs(sh - sw) <= 0.15 * max(sh, sw)

    first, last = fits(t.shape[2], t.shape[3]), fits(t.shape[1], t.shape[2])
    return default if first == last else last


def _close_names(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


class _GapLinear(torch.nn.Module):
    """A frozen backbone and a GAP + linear head as one module (names ``features.*`` and ``head``)."""

    def __init__(self, features: torch.nn.Module, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.features = features
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
            self.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def whole_classifier(model: CamModel) -> Classifier:
    """A :class:`camcli.engine.CamModel` as one module, for gradient maps at another layer."""
    pre = model.preprocess
    return Classifier(model.arch, _GapLinear(model.features_module(), model.weight, model.bias).eval().requires_grad_(False),
                      "features", mean=tuple(pre.mean), std=tuple(pre.std))


def layer_rows(classifier: Classifier, img_size: int = 224) -> list[dict]:
    """The layers of ``classifier`` that a target layer can name, in the order they run on one
    blank image (see :func:`camcli.factory.list_layers`)."""
    side = classifier.input_size or (img_size, img_size)
    probe = GradModel(classifier, [], Preprocess(side[0], classifier.mean, classifier.std, "squash"), device="cpu")
    outputs: dict[str, object] = {}
    calls: dict[str, int] = {}

    def record(name: str, out) -> None:
        outputs.setdefault(name, out)
        calls[name] = calls.get(name, 0) + 1

    modules = dict(classifier.model.named_modules())
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: record(name, out)) for name, m in modules.items() if name]
    try:
        with torch.no_grad():
            classifier.model(torch.zeros(1, 3, *side))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, out in outputs.items():
        grid = None
        if isinstance(out, torch.Tensor) and calls[name] == 1:  # a module run twice is no single target
            probe.layer = name
            try:  # the same checks as --layer
                grid = list(probe._grid(out, side).shape[-2:])
            except CamcliError:
                grid = None
        rows.append({"name": name, "type": type(modules[name]).__name__,
                     "output": list(out.shape[1:]) if isinstance(out, torch.Tensor) else None,
                     "grid": grid, "default": name == classifier.default_layer})
    return rows
