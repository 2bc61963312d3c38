"""Batched inference shared by train, predict and overlay.

A :class:`CamModel` is a frozen backbone (image -> (N, C, h, w) features) and a linear
head (K x C). One forward pass gives the logits and the features the maps are made of.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from camcli import cam, methods
from camcli.data import DEFAULT_MAX_PIXELS, ImageDataset, Preprocess, collate
from camcli.defaults import BATCH_SIZE, MAX_FORWARD_PIXELS, TOP_K
from camcli.errors import CamcliError, suggestions
from camcli.quantize import PROBE_IMAGES, Calibration, Check, Probe, int8_graph, near_ties
from camcli.runtime import OnnxRunner, TorchRunner, backbone_onnx, make_runner, module_state, resolve_device, weights_key

Image = Path | str | np.ndarray
Exact = np.ndarray | bool | None  # images an INT8 model runs in fp32: a (N,) bool array, or one bool for all


@dataclass
class Batch:
    """One batch of results.

    Attributes:
        positions: index of each image in the input sequence.
        logits: (B, K) float32.
        features: (B, C, h, w) float32; image i is valid in its top-left
            ``sizes[i]`` region and zero elsewhere (keep-aspect batches mix shapes).
        sizes: each image's feature-map (h_i, w_i).
        originals: the decoded RGB images when asked for, else Nones.
        failures: (position, one-line reason) of the images of this batch that could not be read.
        inputs: the preprocessed (3, H_i, W_i) model inputs of the images.
    """

    positions: list[int]
    logits: np.ndarray
    features: np.ndarray | None
    sizes: list[tuple[int, int]]
    originals: list[np.ndarray | None]
    failures: list[tuple[int, str]]
    inputs: list[np.ndarray] | None = None  # the preprocessed (3, H, W) inputs (perturbation methods score them)
    fp32: np.ndarray | None = None  # (B,) bool, INT8 only: the images run again in fp32 (near ties, see CamModel.ranked)

    def take(self, rows: Sequence[int]) -> Batch:
        """The batch of the images at ``rows`` (indices into this batch) alone, without failures:
        what a job maps one image at a time when an image costs many forward passes."""
        rows = list(rows)
        if rows == list(range(len(self.positions))):
            return replace(self, failures=[])
        pick = np.asarray(rows, np.int64)

        def some(values):
            return None if values is None else [values[b] for b in rows]

        return Batch([self.positions[b] for b in rows], self.logits[pick],
                     None if self.features is None else self.features[pick], [self.sizes[b] for b in rows],
                     some(self.originals), [], some(self.inputs), None if self.fp32 is None else self.fp32[pick])


def map_groups(count: int, method: str, smooth: Sequence[str] = (), one_at_a_time: bool = False) -> list[list[int]]:
    """The rows of a batch of ``count`` images, in the groups a job maps together: one image at a
    time when each costs many forward passes (``method`` Score-CAM, aug-smooth, or
    ``one_at_a_time``: the faithfulness curves), so results and progress come per image; else the
    whole batch at once."""
    if one_at_a_time or "aug" in smooth or methods.get(method).many_passes:
        return [[b] for b in range(count)]
    return [list(range(count))]


SMOOTHING = ("aug", "eigen")  # batch_maps' smooth options (pytorch-grad-cam's aug_smooth and eigen_smooth)


def check_smooth(smooth: Sequence[str]) -> None:
    """``smooth`` names only :data:`SMOOTHING` options, or one line that lists them."""
    unknown = set(smooth) - set(SMOOTHING)
    if unknown:
        raise CamcliError(f"`smooth` takes {', '.join(SMOOTHING)}, got {', '.join(sorted(unknown))}")


PREFETCH_BATCHES = 2  # batches decoded ahead of the model: bounds memory whatever the job's size
KEPT_PIXELS = 1 << 26  # decoded originals kept (overlay, boxes) per batch, and decoded ahead: 64 Mpixels (192 MB of RGB)


def image_batches(
    images: Sequence[Image], preprocess: Preprocess, batch_size: int, workers: int,
    keep_images: bool = False, augment: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, seed: int = 0,
    other_sizes: Sequence[int] = (),
) -> Iterator[tuple[list[np.ndarray], list[int], list[np.ndarray | None], list[tuple[int, str]]]]:
    """Decode and preprocess images in ``workers`` threads; yield (tensors, positions,
    originals) of the readable images and (position, reason) of the others, batch by batch.

    Threads, not processes: OpenCV and NumPy release the GIL while they decode and resize,
    and a thread cannot outlive camcli (a worker process could, after a SIGKILL). At most
    ``PREFETCH_BATCHES`` batches are decoded ahead. With ``keep_images`` (the decoded originals
    come with the batch: overlay, boxes) memory is bounded by pixels, not by count: a batch ends
    early once its originals reach :data:`KEPT_PIXELS`, and no more images are decoded ahead than
    the largest original seen so far allows within that budget. ``augment`` applies a random
    resized crop and horizontal flip (drawn from ``seed`` and the image's position) before the
    preprocessing. An image whose input (at the preprocessing's size or any of ``other_sizes``)
    would exceed ``MAX_FORWARD_PIXELS`` is a failure, found before it is resized.
    """
    if batch_size < 1:
        raise CamcliError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise CamcliError(f"workers must be 0 or more, got {workers}")
    dataset = ImageDataset(images, preprocess, keep_images, augment, max_pixels, seed, other_sizes)
    largest = [1]  # the most pixels of any original decoded so far

    def kept(item) -> int:
        original = item[2]
        return 0 if original is None else original.shape[0] * original.shape[1]

    def decoded() -> Iterator:
        """The dataset's items in order, decoded ahead in threads."""
        if workers == 0 or len(dataset) <= 1:
            yield from (dataset[i] for i in range(len(dataset)))
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(dataset)), thread_name_prefix="camcli-decode") as pool:
            ahead: deque[Future] = deque()
            try:
                for i in range(len(dataset)):
                    window = PREFETCH_BATCHES * batch_size
                    if keep_images:
                        window = max(1, min(window, KEPT_PIXELS // largest[0]))
                    while len(ahead) >= window:
                        yield ahead.popleft().result()
                    ahead.append(pool.submit(dataset.__getitem__, i))
                while ahead:
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()

    batch, pixels = [], 0
    for item in decoded():
        size = kept(item)
        largest[0] = max(largest[0], size)
        if batch and pixels + size > KEPT_PIXELS:  # this original would take the batch past the budget
            yield collate(batch)
            batch, pixels = [], 0
        batch.append(item)
        pixels += size
        if len(batch) == batch_size:  # full: out at once, before the next image is read
            yield collate(batch)
            batch, pixels = [], 0
    if batch:
        yield collate(batch)


def _rows(exact: Exact, n: int) -> np.ndarray:
    """``exact`` (see :meth:`Model.forward`) as a (n,) bool array."""
    return np.broadcast_to(np.asarray(False if exact is None else exact, bool), (n,))


def _place(feats: np.ndarray, rows: np.ndarray, part: np.ndarray, sizes: list[tuple[int, int]]) -> None:
    """Put packed features ``part`` (of images of ``sizes``) into rows ``rows`` of packed ``feats``, zero-padded."""
    feats[rows] = 0
    for k, (i, (h, w)) in enumerate(zip(rows, sizes)):
        feats[i, :, :h, :w] = part[k, :, :h, :w]


def extract_features(
    runner: Callable[[np.ndarray], np.ndarray], tensors: list[np.ndarray]
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Run the backbone on images of possibly different shapes.

    Images of one shape run together, at most ``MAX_FORWARD_PIXELS`` input pixels per run
    (memory grows with them); the results are packed top-left into one
    zero-padded array. (Padding the *inputs* instead would change every feature whose
    receptive field reaches the padding, so an image would not get the features it gets
    when run alone.)

    Args:
        runner: maps a (N, 3, H, W) batch to (N, C, h, w) float32 features (see runtime.py).
        tensors: (3, H_i, W_i) preprocessed images.

    Returns:
        ((N, C, h_max, w_max) float32 features, each image's (h_i, w_i)).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    outputs: list[np.ndarray | None] = [None] * len(tensors)
    for shape, members in groups.items():
        step = max(1, MAX_FORWARD_PIXELS // (shape[-2] * shape[-1]))
        for start in range(0, len(members), step):
            part = members[start : start + step]
            for i, f in zip(part, runner(np.stack([tensors[i] for i in part]))):
                outputs[i] = f
    sizes = [tuple(f.shape[-2:]) for f in outputs]
    if len(groups) == 1:
        return np.stack(outputs), sizes
    h_max, w_max = max(h for h, _ in sizes), max(w for _, w in sizes)
    packed = np.zeros((len(outputs), outputs[0].shape[0], h_max, w_max), np.float32)
    for i, (f, (h, w)) in enumerate(zip(outputs, sizes)):
        packed[i, :, :h, :w] = f
    return packed, sizes


class Model:
    """A classifier whose every prediction comes with its class activation maps.

    The ranking, the batching and the maps' sizes are shared; a subclass says how a batch of
    preprocessed images becomes logits and what its maps are made of (:meth:`forward`,
    :meth:`_maps`): :class:`CamModel` for a GAP + linear head (exact, no backward pass, ONNX
    Runtime or PyTorch), :class:`camcli.gradients.GradModel` for any other head (PyTorch).
    """

    default_method = "cam"
    precision = "fp32"  # the backbone's arithmetic: fp32, or int8 (a CamModel on ONNX Runtime, see camcli.quantize)

    def __init__(self, arch: str, class_names: list[str], preprocess: Preprocess, device: str = "auto",
                 checkpoint: dict | None = None):
        self.arch = arch
        self.device = resolve_device(device)
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.checkpoint = checkpoint
        self.max_pixels: int | None = DEFAULT_MAX_PIXELS  # images declaring more pixels are refused
        self.spec = None  # the camcli.factory.ModelSpec it was built from, if any (what a Ray worker rebuilds)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def resolve_method(self, method: str) -> str:
        """The method a map is made with: ``auto`` is this model's default (``cam`` for a GAP + linear head)."""
        if method == methods.AUTO:
            return self.default_method
        return methods.get(method).name

    def prepare(self) -> str | None:
        """Get ready to run; returns a one-line note for the user (an export made, a fallback) or None."""
        raise NotImplementedError

    def forward(self, tensors: list[np.ndarray], maps: bool = True, exact: Exact = None
                ) -> tuple[np.ndarray, object, list[tuple[int, int]]]:
        """Preprocessed (3, H_i, W_i) images -> ((N, K) logits, what the maps are made of, each image's map size).

        The middle value is indexable by an array of rows (``feats[keep]``) and passed back to
        :meth:`_maps` (when ``maps``: a model may skip what only maps need). ``exact``: the
        images (a (N,) bool array, or True for all) an INT8 model runs in fp32 (near ties, see
        :meth:`ranked`); an fp32 model runs every image in fp32 anyway.
        """
        raise NotImplementedError

    def ranked(self, tensors: list[np.ndarray], maps: bool = True
               ) -> tuple[np.ndarray, object, list[tuple[int, int]], np.ndarray | None]:
        """:meth:`forward` for the ranking pass, and which images it ran in fp32 when the model is
        INT8 (None otherwise; see :meth:`CamModel.ranked`)."""
        return *self.forward(tensors, maps), None

    def _maps(self, feats, sizes: list[tuple[int, int]], classes: np.ndarray, method: str,
              inputs: list[np.ndarray] | None = None, eigen_smooth: bool = False, exact: Exact = None,
              top_channels: int | None = None) -> list[np.ndarray]:
        """Per image (J, h_i, w_i) raw maps of ``classes`` (B, J) from :meth:`forward`'s middle value
        (``inputs``: the images' model inputs, which perturbation methods score; ``eigen_smooth``:
        see :func:`camcli.cam.combine`; ``exact``: as :meth:`forward`, for the methods that run it;
        ``top_channels``: Score-CAM on that many channels, see :func:`scorecam_maps`)."""
        raise NotImplementedError

    def _method_maps(self, feats, sizes: list[tuple[int, int]], classes: np.ndarray, method: str,
                     inputs: list[np.ndarray] | None = None, eigen_smooth: bool = False, exact: Exact = None,
                     top_channels: int | None = None) -> list[np.ndarray]:
        """:meth:`_maps`, or a baseline's map (from each image's input alone, the same for every
        class; see :mod:`camcli.methods`)."""
        entry = methods.get(method)
        if not entry.baseline:
            return self._maps(feats, sizes, classes, method, inputs, eigen_smooth, exact, top_channels)
        if inputs is None:
            raise ValueError(f"{method} needs the batch's inputs (Batch.inputs)")
        make = getattr(cam, entry.function)
        return [np.repeat(make(x, size)[None], classes.shape[1], axis=0) for x, size in zip(inputs, sizes)]

    def batches(
        self, images: Sequence[Image], batch_size: int = BATCH_SIZE, workers: int = 0, keep_images: bool = False,
        for_maps: bool | None = None, cam_sizes: Sequence[int] = (),
    ) -> Iterator[Batch]:
        """Run the model over images (paths or RGB uint8 arrays), one batch at a time.

        An image whose scores come out non-finite (NaN or infinity) is a failure of its batch:
        no row ever carries a NaN probability. ``for_maps`` (default ``keep_images``): the
        batches will be passed to :meth:`batch_maps` (a gradient model then keeps its graph);
        ``cam_sizes``: the input sizes they will be mapped at (an image too large at any of them
        for one forward pass fails here, see :func:`camcli.data.forward_too_large`).
        """
        for_maps = keep_images if for_maps is None else for_maps
        self.prepare()
        for tensors, positions, originals, failures in image_batches(
            images, self.preprocess, batch_size, workers, keep_images, max_pixels=self.max_pixels, other_sizes=cam_sizes
        ):
            if tensors:
                logits, feats, sizes, fp32 = self.ranked(tensors, for_maps)
                finite = np.isfinite(logits).all(axis=1)
                failures = failures + [(positions[b], f"{_name(images[positions[b]])}: the model gave non-finite scores "
                                        "(NaN or infinity) for this image") for b in np.flatnonzero(~finite)]
                keep = np.flatnonzero(finite)
                if len(keep) < len(positions):
                    positions, originals, sizes = [positions[b] for b in keep], [originals[b] for b in keep], [sizes[b] for b in keep]
                    logits, feats, tensors = logits[keep], feats[keep], [tensors[b] for b in keep]
                    fp32 = fp32[keep] if fp32 is not None else None
            if not tensors or not positions:
                yield Batch([], np.empty((0, self.num_classes), np.float32), None, [], [], failures)
                continue
            yield Batch(positions, logits, feats, sizes, originals, failures, tensors, fp32)

    def batch_maps(
        self, batch: Batch, classes: np.ndarray, cam_sizes: Sequence[int] = (), method: str = "auto", smooth: Sequence[str] = (),
        top_channels: int | None = None,
    ) -> list[np.ndarray]:
        """Class activation maps for each image of a batch.

        Args:
            batch: from :meth:`batches` (with ``keep_images=True`` when ``cam_sizes`` is given).
            classes: (B, J) class indices to map per image.
            cam_sizes: input sizes (``img_size`` values, same resize mode) to compute the maps
                at; empty means the ranking pass's own features.
            method: ``auto`` (the model's :attr:`default_method`), ``cam`` (the raw M_c, no ReLU),
                or ``gradcam``, ``gradcam++``, ``layercam`` (see :func:`camcli.cam.gradient_map`;
                the gradients of a GAP + linear head are exact and need no backward pass, see
                :func:`camcli.cam.head_gradients`).

            smooth: ``eigen`` (each method's per-channel terms combined by their first principal
                component, see :func:`camcli.cam.combine`) and/or ``aug`` (test-time augmentation
                as pytorch-grad-cam's ``aug_smooth``: the input flipped or not, times 0.9, 1 and
                1.1; the six maps, flipped back and min-max normalized, averaged).

        Returns:
            per image a float32 (J, h, w) array. From the ranking pass or one cam size: the raw
            maps (with ``aug``: their normalized mean). From several cam sizes: the mean of the
            min-max normalized maps, each upsampled to the largest one's resolution.
        """
        classes = np.asarray(classes, dtype=np.int64)
        method = self.resolve_method(method)
        check_smooth(smooth)
        eigen, aug = "eigen" in smooth, "aug" in smooth
        exact = batch.fp32  # INT8's near ties: every pass of theirs runs in fp32, as their ranking did
        if not cam_sizes and not aug:
            return self._method_maps(batch.features, batch.sizes, classes, method, batch.inputs, eigen, exact, top_channels)
        if cam_sizes and any(o is None for o in batch.originals):
            raise ValueError("cam_sizes needs batches made with keep_images=True")
        per_scale = []
        for size in cam_sizes or [None]:
            if size is None:
                inputs = batch.inputs
            else:
                pre = replace(self.preprocess, img_size=size)
                inputs = [pre(o) for o in batch.originals]
            if aug:
                per_scale.append(self._augmented_maps(inputs, classes, method, eigen, exact, top_channels))
                continue
            _, feats, sizes = self.forward(inputs, exact=exact)
            per_scale.append(self._method_maps(feats, sizes, classes, method, inputs, eigen, exact, top_channels))
        if len(per_scale) == 1:
            return per_scale[0]
        fused = []
        for maps in zip(*per_scale):
            h = max(m.shape[-2] for m in maps)
            w = max(m.shape[-1] for m in maps)
            fused.append(np.mean([cam.upsample_to(cam.normalize_maps(m), (h, w)) for m in maps], axis=0))
        return fused

    def _augmented_maps(self, inputs: list[np.ndarray], classes: np.ndarray, method: str, eigen: bool,
                        exact: Exact = None, top_channels: int | None = None) -> list[np.ndarray]:
        """pytorch-grad-cam's ``aug_smooth``: the mean of the normalized maps of the inputs flipped
        or not (horizontally) times 0.9, 1 and 1.1, each flipped back."""
        total: list[np.ndarray] | None = None
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                augmented = [np.ascontiguousarray((x[:, :, ::-1] if flip else x) * np.float32(factor)) for x in inputs]
                _, feats, sizes = self.forward(augmented, exact=exact)
                maps = self._method_maps(feats, sizes, classes, method, augmented, eigen, exact, top_channels)
                maps = [cam.normalize_maps(m[..., ::-1] if flip else m) for m in maps]
                total = maps if total is None else [t + m for t, m in zip(total, maps)]
        return [(t / 6).astype(np.float32) for t in total]

    def class_index(self, name: str) -> int:
        """Index of a class name; raises CamcliError listing close names when absent."""
        if name in self.class_names:
            return self.class_names.index(name)
        close = suggestions(name, self.class_names, 4)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        if self.num_classes <= 20:
            raise CamcliError(f"unknown class {name!r} ({hint}the classes are: {', '.join(self.class_names)})")
        raise CamcliError(f"unknown class {name!r} ({hint}{self.num_classes} classes; `class_indices` takes an index)")

    def rank(self, logits: np.ndarray, top_k: int) -> list[list[dict]]:
        """Softmax ranking: for each row of (N, K) logits the top-k {label, index, prob}."""
        if top_k < 1:
            raise CamcliError(f"top_k must be at least 1, got {top_k}")
        probs = cam.softmax(np.asarray(logits))
        order = np.argsort(-probs, axis=1, kind="stable")[:, : min(top_k, self.num_classes)]
        return [
            [{"label": self.class_names[i], "index": int(i), "prob": float(row[i])} for i in top]
            for row, top in zip(probs, order)
        ]

    def predict(
        self, images: Sequence[Image], top_k: int = TOP_K, batch_size: int = BATCH_SIZE, workers: int = 0, progress: bool = False
    ) -> list[dict]:
        """Rank classes for each image (``progress``: a tqdm bar, a widget in notebooks).

        Returns:
            one row per image, in order: ``{"path": str | None, "predictions": [{"label", "index", "prob"}, ...]}``
            sorted by prob descending; ``path`` is None for array inputs.
        """
        rows: list[dict | None] = [None] * len(images)
        for batch in _with_bar(self.batches(images, batch_size, workers), len(images), "predict", progress):
            for pos, preds in zip(batch.positions, self.rank(batch.logits, top_k)):
                item = images[pos]
                rows[pos] = {"path": None if isinstance(item, np.ndarray) else str(item), "predictions": preds}
            for pos, why in batch.failures:
                rows[pos] = {"path": _name(images[pos]), "predictions": [], "error": why}
        return rows

    def video(
        self, path: str | Path, every: int = 1, fps: float | None = None, start: float = 0.0, end: float | None = None,
        top_k: int = TOP_K, batch_size: int = BATCH_SIZE,
    ) -> Iterator[dict]:
        """Rank classes for the sampled frames of a clip, as :meth:`predict` does for images: one
        row per frame, in order, as the frames are decoded (a batch at a time: memory does not
        grow with the clip).

        Args:
            every, fps, start, end: which frames (see :class:`camcli.video.Sampling`).

        Returns:
            rows ``{"path", "frame": index in the clip, "time": seconds, "predictions": [...]}``
            (a frame the model cannot score: ``"predictions": []`` and ``"error"``).

        Raises:
            CamcliError: a clip that cannot be read, over the pixel budget, with no frame in the
                range, or cut short (after the rows of its frames; see :func:`camcli.video.frames`).
        """
        from camcli.video import Sampling, frames

        sampling = Sampling(every, fps, start, end)
        sampling.validate()

        def ranked(chunk: list) -> Iterator[dict]:
            rows: list[dict | None] = [None] * len(chunk)
            for batch in self.batches([f.rgb for f in chunk], batch_size):
                for pos, preds in zip(batch.positions, self.rank(batch.logits, top_k)):
                    rows[pos] = {"predictions": preds}
                for pos, why in batch.failures:
                    rows[pos] = {"predictions": [], "error": f"{path} frame {chunk[pos].index}: {why.split(': ', 1)[-1]}"}
            for frame, row in zip(chunk, rows):
                yield {"path": str(path), "frame": frame.index, "time": frame.time, **row}

        chunk = []
        for frame in frames(Path(path), sampling, self.max_pixels if self.max_pixels is not None else 1 << 62):
            chunk.append(frame)
            if len(chunk) == batch_size:
                yield from ranked(chunk)
                chunk = []
        if chunk:
            yield from ranked(chunk)

    def maps(
        self, images: Sequence[Image], classes: Sequence[int] | None = None, batch_size: int = BATCH_SIZE, method: str = "auto",
        progress: bool = False, smooth: Sequence[str] = (),
    ) -> np.ndarray:
        """Raw class activation maps (before normalization) at feature resolution.

        Args:
            images: paths or RGB uint8 (H, W, 3) arrays.
            classes: class indices to map (the same for every image); None maps all K.
            method: ``auto`` or a registered method (see :mod:`camcli.methods`, :meth:`batch_maps`).
            progress: show a tqdm progress bar (a widget in notebooks).
            smooth: ``aug`` and/or ``eigen`` (see :meth:`batch_maps`).

        Returns:
            float32 array (N, K or len(classes), h, w).
        """
        chosen = None
        if classes is not None:
            bad = [c for c in classes if not 0 <= int(c) < self.num_classes]
            if bad:
                raise CamcliError(f"class index {bad[0]} out of range 0..{self.num_classes - 1}")
            chosen = np.asarray(list(classes), dtype=np.int64)
        out: list[np.ndarray] = []
        for batch in _with_bar(self.batches(images, batch_size, for_maps=True), len(images), "maps", progress):
            if batch.failures:
                raise CamcliError(batch.failures[0][1])
            every = np.arange(self.num_classes) if chosen is None else chosen
            out += self.batch_maps(batch, np.broadcast_to(every, (len(batch.positions), len(every))), method=method, smooth=smooth)
        if len({m.shape for m in out}) > 1:
            raise CamcliError(
                "keep-aspect maps of differently shaped images cannot form one array: "
                "pass images of one shape, or load(..., resize=\"squash\")"
            )
        return np.stack(out).astype(np.float32, copy=False)




class CamModel(Model):
    """A frozen backbone and a GAP + linear head: the maps are the CAM identity's M_c.

    Args:
        arch: backbone name.
        backbone: the PyTorch module mapping (N, 3, H, W) to (N, C, h, w), or a function with
            no arguments that builds it: it is called only if PyTorch runs the backbone or
            exports it, so a model whose export is cached never imports PyTorch.
        head: the GAP + linear classifier: a ``torch.nn.Linear``, or (weight (K, C), bias (K,)) arrays.
        class_names: K names in class-index order.
        preprocess: the preprocessing the head was trained with.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        checkpoint: the loaded checkpoint, if the model came from one.
        backend: ``auto``, ``torch`` or ``onnxruntime`` (see :func:`camcli.runtime.make_runner`).
        amp: autocast on CUDA.
        weights_id: identifies the backbone's weights (the ONNX cache key); default: a hash
            of the module's state.
    """

    def __init__(
        self, arch: str, backbone, head, class_names: list[str], preprocess: Preprocess, device: str = "auto",
        checkpoint: dict | None = None, backend: str = "auto", amp: bool = True, weights_id: str | None = None,
    ):
        super().__init__(arch, class_names, preprocess, device, checkpoint)
        self._backbone = backbone
        self.backend, self.amp, self._weights_id = backend, amp, weights_id
        self.runner: TorchRunner | OnnxRunner | None = None
        self.precision = "fp32"  # int8: the backbone's INT8 model (set with ``calibration`` by camcli.factory)
        self.calibration: Calibration | None = None
        self.int8_graph: bytes | None = None  # the INT8 graph the runner runs, once prepared
        self.int8_check: Check | None = None  # how it compared with fp32, once prepared
        self.int8_probe = Probe()  # INT8 against fp32 on this run's first inputs (see CamModel.ranked)
        self._fp32_runner: OnnxRunner | None = None  # INT8: fp32's runner, for near ties and the probe
        weight, bias = (head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy()) \
            if hasattr(head, "weight") else head
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)

    def features_module(self):
        """The backbone as a PyTorch module (built on first use when given as a function)."""
        if not hasattr(self._backbone, "state_dict"):
            self._backbone = self._backbone()
        return self._backbone.eval().requires_grad_(False)

    def weights_id(self) -> str:
        """The backbone weights' key: the packaged file's sha256, else a hash of the state dict."""
        if self._weights_id is None:
            self._weights_id = weights_key(module_state(self.features_module()))
        return self._weights_id

    def with_head(self, head, class_names: list[str], preprocess: Preprocess) -> CamModel:
        """This backbone with another head (``(weight (K, C), bias (K,))``), sharing its runner."""
        model = CamModel(self.arch, self._backbone, head, class_names, preprocess, self.device, None, self.backend, self.amp,
                         self._weights_id)
        model.precision, model.calibration = self.precision, self.calibration
        if self.precision == "fp32":  # an INT8 model is checked under each head (its near-tie margin is the head's)
            model.runner = self.runner
        return model

    def prepare(self) -> str | None:
        """Build the runner; returns a one-line note for the user (an export made, a fallback) or None."""
        if self.runner is not None:
            return None
        if self.precision == "int8":
            return self._prepare_int8()
        self.runner, note = make_runner(self.features_module, self.arch, self.device, self.backend, self.amp, self.weights_id)
        return note

    def _prepare_int8(self) -> str | None:
        """The INT8 runner, or fp32's when the INT8 model fails its check (``precision`` then says fp32)."""
        if self.calibration is None:
            raise ValueError("an int8 CamModel needs its calibration images (camcli.factory sets them)")
        path, fp32, export_note = backbone_onnx(self.features_module, self.arch, self.weights_id())
        self._fp32_runner = OnnxRunner(path, model=fp32)
        graph, runner, self.int8_check, note = int8_graph(fp32, self.arch, self.calibration, self.preprocess, self.weight,
                                                          self.bias, self._fp32_runner)
        if graph is None:
            self.precision = "fp32"
            self.runner = self._fp32_runner
        else:
            self.int8_graph, self.runner = graph, runner
        return "; ".join(n for n in (export_note, note) if n) or None

    def ranked(self, tensors: list[np.ndarray], maps: bool = True
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], np.ndarray | None]:
        """:meth:`forward`; on the INT8 model, these images run again on the fp32 graph, and their
        logits and features replace INT8's:

        - those whose two best logits are within the check's near-tie margin
          (:func:`camcli.quantize.near_ties`: where INT8's rounding could swap fp32's ranking);
        - the run's first :data:`~camcli.quantize.PROBE_IMAGES` others, which check INT8 on what it
          is used on (:class:`~camcli.quantize.Probe`); once it fails, every image from there on.

        Returns:
            as :meth:`forward`, then (N,) bool: the images run in fp32 (None when not INT8).
        """
        if self.precision == "int8" and self.int8_probe.failed:
            return *self.forward(tensors, maps, exact=True), np.ones(len(tensors), bool)
        logits, feats, sizes = self.forward(tensors, maps)
        if self.precision != "int8":
            return logits, feats, sizes, None
        again = near_ties(logits, self.int8_check.tie_margin)
        probed = np.flatnonzero(~again)[: 0 if self.int8_probe.done else PROBE_IMAGES - self.int8_probe.images]
        int8 = (logits[probed], [feats[i, :, :h, :w].copy() for i in probed for h, w in [sizes[i]]])
        again[probed] = True
        exact = self._run_again(tensors, np.flatnonzero(again), logits, feats, maps)
        if len(probed):
            self.int8_probe.add(logits[probed], [exact[i] for i in probed], *int8, self.weight)
            if self.int8_probe.failed:  # the rest of this batch too, and every batch after it (above)
                self._run_again(tensors, np.flatnonzero(~again), logits, feats, maps)
                again[:] = True
        return logits, feats, sizes, again

    def _run_again(self, tensors: list[np.ndarray], rows: np.ndarray, logits: np.ndarray, feats: np.ndarray,
                   maps: bool) -> dict[int, np.ndarray]:
        """Run ``rows`` of the images on the fp32 graph and put their logits and features into
        ``logits`` and ``feats`` (in place); returns each row's fp32 (C, h, w) features."""
        if not len(rows):
            return {}
        exact_logits, exact_feats, exact_sizes = self.forward([tensors[i] for i in rows], maps, exact=True)
        logits[rows] = exact_logits
        _place(feats, rows, exact_feats, exact_sizes)
        return {int(i): exact_feats[k, :, :h, :w] for k, (i, (h, w)) in enumerate(zip(rows, exact_sizes))}

    def forward(self, tensors: list[np.ndarray], maps: bool = True, exact: Exact = None
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Preprocessed (3, H_i, W_i) images -> ((N, K) logits, (N, C, h, w) features, sizes).

        See :func:`extract_features` for how images of different shapes are packed; ``exact``:
        see :meth:`Model.forward` (on the INT8 model those images run on the fp32 graph).
        """
        self.prepare()
        exact = _rows(exact, len(tensors))
        if self.precision != "int8" or not exact.any():
            feats, sizes = extract_features(self.runner, tensors)
        else:  # (prepare made the fp32 runner with the INT8 one)
            parts = [(rows, *extract_features(runner, [tensors[i] for i in rows]))
                     for runner, rows in ((self.runner, np.flatnonzero(~exact)), (self._fp32_runner, np.flatnonzero(exact))) if len(rows)]
            sizes = [(0, 0)] * len(tensors)
            for rows, _, part_sizes in parts:
                for i, size in zip(rows, part_sizes):
                    sizes[i] = size
            feats = np.zeros((len(tensors), parts[0][1].shape[1], max(h for h, _ in sizes), max(w for _, w in sizes)), np.float32)
            for rows, part, part_sizes in parts:
                _place(feats, rows, part, part_sizes)
        if feats.shape[1] != self.weight.shape[1]:
            raise CamcliError(f"checkpoint head expects {self.weight.shape[1]} features but {self.arch} gives {feats.shape[1]}")
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite scores become failed inputs (batches)
            return cam.pooled_logits(feats, self.weight, self.bias, sizes), feats, sizes

    def _maps(self, feats: np.ndarray, sizes: list[tuple[int, int]], classes: np.ndarray, method: str,
              inputs: list[np.ndarray] | None = None, eigen_smooth: bool = False, exact: Exact = None,
              top_channels: int | None = None) -> list[np.ndarray]:
        """Per image (J, h_i, w_i) maps of ``classes`` from packed (N, C, h, w) features."""
        if methods.get(method).perturbation:
            return self._perturbation_maps(feats, sizes, classes, method, inputs, eigen_smooth, exact, top_channels)
        if not methods.get(method).gradients:
            if not eigen_smooth:
                return _crop(cam.class_maps(feats, self.weight, classes), sizes)
            return [np.stack([cam.combine(self.weight[int(c)][:, None, None] * feats[i, :, :h, :w], True) for c in classes[i]])
                    .astype(np.float32) for i, (h, w) in enumerate(sizes)]
        finer = methods.get(method).target == "finer"
        out = []
        for i, (h, w) in enumerate(sizes):
            acts = feats[i, :, :h, :w]
            logits = cam.pooled_logits(acts[None], self.weight, self.bias, [(h, w)])[0] if finer else None
            out.append(np.stack([cam.gradient_map(acts, self._head_gradients(int(c), acts.shape, logits), method, eigen_smooth)
                                 for c in classes[i]]).astype(np.float32))
        return out

    def _head_gradients(self, c: int, shape: tuple[int, int, int], logits: np.ndarray | None) -> np.ndarray:
        """The exact gradients of class ``c``'s logit, or (``logits`` given: FinerCAM) of its
        score against its most similar classes, d s / d A = W^T (d s / d y) / (h w)."""
        if logits is None:
            return cam.head_gradients(self.weight, c, shape)
        row = (cam.finer_score_gradient(logits, c) @ self.weight.astype(np.float64)).astype(np.float32)
        return np.broadcast_to((row / (shape[1] * shape[2]))[:, None, None], shape)

    def _perturbation_maps(self, feats: np.ndarray, sizes: list[tuple[int, int]], classes: np.ndarray, method: str,
                           inputs: list[np.ndarray] | None, eigen_smooth: bool = False, exact: Exact = None,
                           top_channels: int | None = None) -> list[np.ndarray]:
        """Score-CAM (the input masked by each channel, scored in chunks through :meth:`forward`, so
        on ONNX Runtime or PyTorch) and Ablation-CAM (closed form through the head, see
        :func:`camcli.cam.ablationcam_map`)."""
        out = []
        exact = _rows(exact, len(sizes))
        for i, (h, w) in enumerate(sizes):
            acts = feats[i, :, :h, :w]
            if method == "ablationcam":
                logits = cam.pooled_logits(acts[None], self.weight, self.bias, [(h, w)])[0]
                out.append(np.stack([cam.ablationcam_map(acts, self.weight[int(c)], float(logits[int(c)]), eigen_smooth)
                                     for c in classes[i]]))
                continue
            if inputs is None:
                raise ValueError("scorecam needs the batch's inputs (Batch.inputs)")
            out.append(scorecam_maps(acts, inputs[i], classes[i], lambda xs, e=bool(exact[i]): self.forward(xs, False, e)[0],
                                     eigen_smooth, top_channels))
        return out


def scorecam_cost(model: Model, images: int | None, top_channels: int | None = None, smooth: Sequence[str] = (),
                  cam_sizes: Sequence[int] = ()) -> tuple[int | None, int | None, float]:
    """What Score-CAM will cost, before the run: (at most how many forward passes per image, and on
    ``images`` images (None when the count is not known yet: a walk still running), both None
    when the target layer's channel count is not known before a pass (a gradient model); about how
    many seconds a pass takes here, timed on 4 blank inputs at the size the maps are made at).
    Each ``cam_sizes`` size and ``aug`` smoothing's six copies multiply the passes."""
    size = max(cam_sizes) if cam_sizes else model.preprocess.img_size
    blank = [np.zeros((3, size, size), np.float32)] * 4
    model.forward(blank[:1], False)  # a first run pays for set-up (ONNX Runtime's arena): not timed
    clock = time.perf_counter()
    model.forward(blank, False)
    seconds = (time.perf_counter() - clock) / len(blank)
    weight = getattr(model, "weight", None)
    if getattr(model, "layer", None) is not None or weight is None:
        return None, None, seconds
    channels = int(weight.shape[1]) if top_channels is None else min(int(weight.shape[1]), top_channels)
    per_image = channels * max(1, len(cam_sizes)) * (6 if "aug" in smooth else 1)
    return per_image, None if images is None else per_image * images, seconds


SCORECAM_CHUNK = 32  # masked inputs per forward call: bounds memory (each is a whole input image)


def scorecam_maps(acts: np.ndarray, x: np.ndarray, classes: np.ndarray, logits_of: Callable[[list[np.ndarray]], np.ndarray],
                  eigen_smooth: bool = False, top_channels: int | None = None) -> np.ndarray:
    """Score-CAM maps (J, h, w) of one image's ``classes`` (J,): ``acts`` (C, h, w) the target
    layer's activations, ``x`` (3, H, W) its input, ``logits_of`` a list of inputs -> (N, K) logits.

    A channel that is constant over the grid (after a ReLU, most often all zeros: about half of
    EfficientNet-Lite0's 1280 on a photograph) has an all-zero mask, so every such channel scores
    the same all-zero input: it is scored once. The masks of the others are made and scored
    :data:`SCORECAM_CHUNK` at a time, in float32, so memory does not grow with the channel count.

    ``top_channels``: Faster Score-CAM (Wang et al. 2020's follow-up; tf-keras-vis's ``max_N``):
    only the K channels of largest activation variance over the grid are scored and weighed (the
    softmax runs over them), K forward passes instead of up to C.
    """
    if top_channels is not None and top_channels < len(acts):
        variance = acts.reshape(len(acts), -1).astype(np.float64).var(axis=1)
        acts = acts[np.sort(np.argsort(-variance, kind="stable")[:top_channels])]
    scores = np.empty((len(acts), len(classes)), np.float32)
    constant: list[int] = []
    for start in range(0, len(acts), SCORECAM_CHUNK):
        masks = cam.scorecam_masks(acts[start : start + SCORECAM_CHUNK], x.shape[-2:])
        varying = masks.reshape(len(masks), -1).max(axis=1) > 0
        constant += (start + np.flatnonzero(~varying)).tolist()
        if varying.any():
            masked = x[None] * masks[varying, None]  # (m, 3, H, W) float32
            scores[start + np.flatnonzero(varying)] = logits_of(list(masked))[:, classes]
    if constant:
        scores[constant] = logits_of([np.zeros(x.shape, np.float32)])[0, classes]
    return np.stack([cam.scorecam_map(acts, scores[:, j], eigen_smooth) for j in range(len(classes))])


def _with_bar(batches: Iterator[Batch], total: int, what: str, enabled: bool) -> Iterator[Batch]:
    """The batches, counted on a tqdm.auto bar when ``enabled`` (the command line draws its own with rich)."""
    if not enabled:
        yield from batches
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=what, unit="img") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch.positions) + len(batch.failures))


def _name(image: Image) -> str:
    return "an image array" if isinstance(image, np.ndarray) else str(image)


def _crop(maps: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each image's valid (J, h_i, w_i) region of packed (N, J, h, w) maps, as float32 arrays."""
    return [np.ascontiguousarray(maps[i, :, :h, :w], dtype=np.float32) for i, (h, w) in enumerate(sizes)]
