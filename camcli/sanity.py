"""``evaluate --sanity``: do the maps depend on the model? (Adebayo et al. 2018, "Sanity Checks
for Saliency Maps".)

*Model-parameter randomization*, cascading from the top: the head is drawn again as ``train``
draws it (:meth:`camcli.headfit.LinearHead.init`), then the backbone's layers, top down, one step
at a time and cumulatively; the maps of each image's class (the trained model's top-1) are made
again after each step and compared with the trained model's. On the default path (the shipped
ONNX graph) a step is a block of the graph (:data:`camcli.packaged.GRAPH_BLOCKS`): BatchNorm is
folded into its convolutions there. A block's convolutions get weights drawn as PyTorch's
``Conv2d.reset_parameters`` draws them (uniform in ±1/sqrt(fan-in)) and biases 0 (what resetting
the folded BatchNorm to its identity gives: the backbone's convolutions have no bias of their
own), handed to ONNX Runtime in place of the graph's (``SessionOptions.add_initializer``), so the
light install runs it. On PyTorch (another
backbone, the torch backend, a GPU, a ``layer``), Quantus's MPRT cascade: every module that has
``reset_parameters``, in reverse ``named_modules`` order, one per step, each after
``torch.manual_seed(seed + 1)``.

*Data randomization*: the head fitted again on DATA's features with its labels shuffled (the
checkpoint's epochs, learning rate, weight decay, batch size and seed), and its maps compared with
the trained head's.

The similarities (:mod:`camcli.similarity`), on maps upsampled to the model input's resolution:
Spearman's rank correlation of the signed maps and of the absolute ones, and, on the absolute maps
divided by their maximum, SSIM and the Pearson correlation of their HOG descriptors. Each is the
mean over the images checked. A method passes when, with every layer randomized, the magnitude of
the Spearman correlation of its maps (``end_similarity``: a map turned upside down is as tied to
the trained one as a kept one) is below :data:`~camcli.defaults.SANITY_MAX_SPEARMAN`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from camcli import cam, methods, similarity
from camcli.defaults import SANITY_MAX_SPEARMAN
from camcli.engine import CamModel, Model, scorecam_cost
from camcli.errors import CamcliError
from camcli.headfit import LinearHead, fit_head

MEASURES = ("spearman", "spearman_abs", "ssim", "hog")
PROBE = np.linspace(-1, 1, 3 * 64 * 64, dtype=np.float32).reshape(1, 3, 64, 64)  # shows whether a block's weights changed
Progress = Callable[[str, int, int | None], None]


def chosen_images(samples: Sequence, count: int) -> list[int]:
    """The positions of at most ``count`` samples spread evenly over them (every class folder of
    a sorted ImageFolder takes its share)."""
    if len(samples) <= count:
        return list(range(len(samples)))
    return np.unique(np.linspace(0, len(samples) - 1, count).round().astype(np.int64)).tolist()


# ---------------------------------------------------------------- the cascade

@dataclass
class Cascade:
    """The randomization steps of a model, top down.

    Attributes:
        steps: each step's name (``head``, then blocks or modules, top down).
        how: one line: what a step randomizes.
        models: yields the model after each step, in order (each step adds to the ones before).
    """

    steps: list[str]
    how: str
    models: Callable[[], Iterator[Model]]


def cascade(model: Model, seed: int = 0) -> Cascade:
    """The randomization cascade of ``model`` (see the module docstring)."""
    from camcli.runtime import OnnxRunner

    if isinstance(model, CamModel):
        model.prepare()
        head = LinearHead.init(model.weight.shape[1], model.num_classes, seed=seed)
        if isinstance(model.runner, OnnxRunner) and _shipped(model):
            return _onnx_cascade(model, head, seed)
        return _torch_cascade(model, head, seed)
    return _grad_cascade(model, seed)


def _shipped(model: CamModel) -> bool:
    from camcli.packaged import shipped_graph

    return shipped_graph(model.arch, model.weights_id()) is not None


def _onnx_cascade(model: CamModel, head: LinearHead, seed: int) -> Cascade:
    from camcli.packaged import graph_blocks, shipped_graph
    from camcli.runtime import OnnxRunner

    blocks = graph_blocks()[::-1]

    def models() -> Iterator[Model]:
        randomized = model.with_head((head.weight, head.bias), model.class_names, model.preprocess)
        yield randomized
        path, graph = shipped_graph(model.arch, model.weights_id())
        drawn: dict[str, np.ndarray] = {}
        before = model.runner(PROBE)
        for block, convs in blocks:
            rng = np.random.default_rng(seed + 1)  # as Quantus seeds each module's draw
            for weight, bias, shape in convs:
                bound = 1.0 / np.sqrt(np.prod(shape[1:]))  # Conv2d.reset_parameters: 1 / sqrt(fan-in)
                drawn[weight] = rng.uniform(-bound, bound, shape).astype(np.float32)
                drawn[bias] = np.zeros(shape[0], np.float32)  # the folded BatchNorm reset: mean 0, variance 1, shift 0
            step = model.with_head((head.weight, head.bias), model.class_names, model.preprocess)
            step.runner = OnnxRunner(path, model=graph, initializers=drawn)
            seen = step.runner(PROBE)
            if np.array_equal(seen, before):  # a runtime that ignored the values given would make every map pass as moved
                raise CamcliError(f"`sanity`: ONNX Runtime ran {block} of {model.arch} with its trained weights, not the "
                                  "randomized ones: this version of onnxruntime cannot run the check")
            before = seen
            yield step

    return Cascade(["head", *(name for name, _ in blocks)],
                   "the head, then the ONNX graph's blocks top down, BatchNorm folded into their convolutions", models)


def _reset_order(module, skip: Sequence[str] = ()) -> list[tuple[str, object]]:
    """Quantus's order: the modules with ``reset_parameters``, in reverse ``named_modules`` order."""
    return [(name, m) for name, m in module.named_modules() if hasattr(m, "reset_parameters") and name not in skip][::-1]


def _reset(module, seed: int) -> None:
    import torch

    torch.manual_seed(seed + 1)
    module.reset_parameters()


def _torch_cascade(model: CamModel, head: LinearHead, seed: int) -> Cascade:
    from camcli.errors import need
    from camcli.runtime import TorchRunner

    need("torch", "`sanity` on this backbone (its layers are randomized in PyTorch)")
    order = _reset_order(model.features_module())

    def models() -> Iterator[Model]:
        randomized = model.with_head((head.weight, head.bias), model.class_names, model.preprocess)
        yield randomized
        features = copy.deepcopy(model.features_module())
        step = model.with_head((head.weight, head.bias), model.class_names, model.preprocess)
        step.runner = TorchRunner(features, model.device, model.amp)
        modules = dict(features.named_modules())
        for name, _ in order:
            _reset(modules[name], seed)
            yield step

    return Cascade(["head", *(name for name, _ in order)],
                   "the head, then each module with reset_parameters, top down (Quantus's MPRT order)", models)


def _grad_cascade(model: Model, seed: int) -> Cascade:
    from camcli.gradients import GradModel, _GapLinear

    if not isinstance(model, GradModel):
        raise CamcliError(f"`sanity` does not know how to randomize a {type(model).__name__}")
    whole = model.classifier.model
    camcli_head = isinstance(whole, _GapLinear)  # a camcli checkpoint's head: drawn as train draws it
    order = _reset_order(whole, skip=("head",) if camcli_head else ())

    def models() -> Iterator[Model]:
        import torch

        randomized = copy.deepcopy(whole)
        step = GradModel(replace(model.classifier, model=randomized), model.class_names, model.preprocess, model.layer,
                         model.device, model.amp)
        modules = dict(randomized.named_modules())
        if camcli_head:
            head = LinearHead.init(randomized.head.in_features, randomized.head.out_features, seed=seed)
            with torch.no_grad():
                randomized.head.weight.copy_(torch.from_numpy(head.weight))
                randomized.head.bias.copy_(torch.from_numpy(head.bias))
            yield step
        for name, _ in order:
            _reset(modules[name], seed)
            yield step

    names = (["head"] if camcli_head else []) + [name or "(the model)" for name, _ in order]
    return Cascade(names, "each module with reset_parameters, top down (Quantus's MPRT order)"
                   + (", after the head" if camcli_head else ""), models)


# ---------------------------------------------------------------- the check

@dataclass
class _Reference:
    """One image's trained-model map of one method, prepared for comparing."""

    signed: np.ndarray  # upsampled raw map
    ranks: np.ndarray
    ranks_abs: np.ndarray
    scaled: np.ndarray  # absolute map / its maximum
    hog: np.ndarray


def _scaled(m: np.ndarray) -> np.ndarray:
    top = float(np.abs(m).max())
    return np.abs(m).astype(np.float64) / top if top > 0 else np.zeros(m.shape)


def _ranks(m: np.ndarray) -> np.ndarray:
    return similarity.average_ranks(np.ravel(m))


def _reference(m: np.ndarray) -> _Reference:
    scaled = _scaled(m)
    return _Reference(m, _ranks(m), _ranks(np.abs(m)), scaled, similarity.hog(scaled))


def _rank_similarity(ref_map: np.ndarray, ref_ranks: np.ndarray, m: np.ndarray) -> float:
    flat = np.ravel(ref_map)
    if bool(np.all(flat == flat[0])) or bool(np.all(m == m.flat[0])):
        return similarity.spearman(ref_map, m)
    return similarity.pearson(ref_ranks, _ranks(m))


def compare(ref: _Reference, m: np.ndarray) -> dict[str, float]:
    """The similarities of an upsampled map ``m`` to the trained model's (see the module docstring)."""
    scaled = _scaled(m)
    signed = _rank_similarity(ref.signed, ref.ranks, m)
    same_sign = bool((ref.signed >= 0).all() and (m >= 0).all())  # a ReLU'd method: the absolute map is the map
    return {"spearman": signed,
            "spearman_abs": signed if same_sign else _rank_similarity(np.abs(ref.signed), ref.ranks_abs, np.abs(m)),
            "ssim": similarity.ssim(ref.scaled, scaled), "hog": similarity.pearson(ref.hog, similarity.hog(scaled))}


@dataclass
class SanityCheck:
    """The checks of :mod:`camcli.sanity` on some images, for each method.

    Attributes:
        paths: the images checked.
        methods: the resolved method names.
        smooth, top_channels: as the evaluation's.
        seed: of the randomization (the head's draw is ``LinearHead.init(seed=seed)``; each
            layer's is drawn after seeding with ``seed + 1``, as Quantus does).
    """

    paths: list[Path]
    methods: tuple[str, ...]
    batch_size: int
    workers: int = 0
    smooth: Sequence[str] = ()
    top_channels: int | None = None
    cam_sizes: Sequence[int] = ()
    seed: int = 0
    targets: list[int] = field(default_factory=list)
    _references: dict[str, list[_Reference]] = field(default_factory=dict, repr=False)

    def _maps(self, model: Model) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Each image's upsampled map of its target class, by method (the targets: the first
        model's top-1, set on the first call)."""
        at = 0
        for batch in model.batches(self.paths, self.batch_size, self.workers, keep_images=bool(self.cam_sizes), for_maps=True,
                                   cam_sizes=self.cam_sizes):
            if batch.failures:
                raise CamcliError(f"`sanity`: {batch.failures[0][1]}")
            if len(self.targets) < len(self.paths):
                self.targets += batch.logits.argmax(axis=1).tolist()
            classes = np.array(self.targets[at : at + len(batch.positions)], np.int64)[:, None]
            by_method = {m: model.batch_maps(batch, classes, self.cam_sizes, m, self.smooth, self.top_channels)
                         for m in self.methods}
            for b in range(len(batch.positions)):
                size = batch.inputs[b].shape[1:]
                yield at + b, {m: cam.upsample_to(maps[b][0], size).astype(np.float64) for m, maps in by_method.items()}
            at += len(batch.positions)

    def reference(self, model: Model) -> None:
        """The trained model's maps, which every step is compared with."""
        self._references = {m: [] for m in self.methods}
        for _, maps in self._maps(model):
            for m, got in maps.items():
                self._references[m].append(_reference(got))

    def similarities(self, model: Model) -> dict[str, dict[str, float]]:
        """The mean similarity of ``model``'s maps to the trained model's, by method and measure."""
        sums = {m: dict.fromkeys(MEASURES, 0.0) for m in self.methods}
        for i, maps in self._maps(model):
            for m, got in maps.items():
                for key, value in compare(self._references[m][i], got).items():
                    sums[m][key] += value
        n = max(len(self.paths), 1)
        return {m: {k: v / n for k, v in s.items()} for m, s in sums.items()}

    def run(self, model: Model, data_head: tuple[np.ndarray, np.ndarray] | None = None,
            progress: Progress | None = None) -> dict[str, dict]:
        """The whole check: ``sanity`` of each method (see :func:`skeleton`); ``data_head``:
        the head fitted on shuffled labels (data randomization), if any."""
        steps = cascade(model, self.seed)
        total = (len(steps.steps) + 1 + (data_head is not None)) * len(self.paths)
        done = 0

        def advance() -> None:
            nonlocal done
            done += len(self.paths)
            if progress:
                progress("sanity", done, total)

        if progress:
            progress("sanity", 0, total)
        self.reference(model)
        advance()
        curves = {m: {k: [1.0] for k in MEASURES} for m in self.methods}
        for step_model in steps.models():
            for m, scores in self.similarities(step_model).items():
                for k, v in scores.items():
                    curves[m][k].append(v)
            advance()
        data = None
        if data_head is not None:
            data = self.similarities(model.with_head(data_head, model.class_names, model.preprocess))
            advance()
        out = {}
        for m in self.methods:
            curve = curves[m]
            final = {k: curve[k][-1] for k in MEASURES}
            end = abs(final["spearman"])
            out[m] = {"num_images": len(self.paths), "steps": ["trained", *steps.steps], "randomized": steps.how,
                      "curve": curve, "head": {k: curve[k][1] for k in MEASURES}, "final": final,
                      **({"data_randomization": data[m]} if data is not None else {}),
                      "end_similarity": end, "max_spearman": SANITY_MAX_SPEARMAN, "passed": bool(end < SANITY_MAX_SPEARMAN)}
        return out


def skeleton(shuffled: bool) -> dict:
    """The numbers of a method's ``sanity`` result, all NaN (the names ``--require`` may use)."""
    nan = dict.fromkeys(MEASURES, float("nan"))
    return {"num_images": 0, "head": dict(nan), "final": dict(nan), **({"data_randomization": dict(nan)} if shuffled else {}),
            "end_similarity": float("nan"), "max_spearman": SANITY_MAX_SPEARMAN}


def shuffled_head(features: np.ndarray, labels: np.ndarray, num_classes: int, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """Data randomization's head: fitted as ``train`` fits one (``config``: the checkpoint's
    training settings), on pooled ``features`` (N, C) with ``labels`` (N,) shuffled by its seed."""
    seed = int(config["seed"])
    shuffled = np.random.default_rng(seed).permutation(np.asarray(labels, np.int64))
    head = fit_head(np.asarray(features, np.float32), shuffled, num_classes, int(config["epochs"]), float(config["lr"]),
                    float(config["weight_decay"]), int(config["batch_size"]), seed)
    return head.weight, head.bias


def refit_settings(model: Model) -> dict | None:
    """The checkpoint's training settings data randomization fits with, or None (no camcli
    checkpoint, or a model whose head is not a fitted GAP + linear head)."""
    config = (model.checkpoint or {}).get("config") or {}
    keys = ("seed", "epochs", "lr", "weight_decay", "batch_size")
    if not isinstance(model, CamModel) or not all(isinstance(config.get(k), (int, float)) and not isinstance(config.get(k), bool)
                                                  for k in keys):
        return None
    return {k: config[k] for k in keys}


def seconds_per_image(model: Model, names: Sequence[str], smooth: Sequence[str] = (), top_channels: int | None = None,
                      cam_sizes: Sequence[int] = ()) -> float:
    """About how long one model run of one image takes here with every method's map and its
    comparison, timed on one noise image (Score-CAM by its passes, not run: each would cost its
    hundreds of passes before the check starts)."""
    import time

    side = max(cam_sizes) if cam_sizes else model.preprocess.img_size
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    model.forward([model.preprocess(image)], False)  # set-up (ONNX Runtime's arena) is not timed
    clock = time.perf_counter()
    batch = next(model.batches([image], 1, 0, keep_images=bool(cam_sizes), for_maps=True, cam_sizes=cam_sizes))
    seconds = time.perf_counter() - clock
    size = batch.inputs[0].shape[1:]
    for name in names:
        if methods.get(model.resolve_method(name)).many_passes:
            passes, _, per_pass = scorecam_cost(model, 1, top_channels, smooth, cam_sizes)
            seconds += (passes or 0) * per_pass
            raw = np.linspace(-1, 1, 49).reshape(7, 7)
        else:
            clock = time.perf_counter()
            raw = model.batch_maps(batch, np.zeros((1, 1), np.int64), cam_sizes, name, smooth, top_channels)[0][0]
            seconds += time.perf_counter() - clock
        clock = time.perf_counter()
        up = cam.upsample_to(raw, size).astype(np.float64)
        compare(_reference(up), up[::-1].copy())
        seconds += time.perf_counter() - clock
    return seconds
