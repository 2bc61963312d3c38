"""Fitting the GAP + linear head on a frozen backbone.

The backbone is frozen and in eval mode and training uses no random augmentation, so
each image's pooled features never change: they are extracted once, and every epoch
runs on them. That makes ten epochs cost about one forward pass over the data.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from camcli.cam import softmax
from camcli.checkpoint import SUFFIX, make_checkpoint, save_checkpoint
from camcli.config import TrainConfig
from camcli.data import Preprocess, load_image_folder
from camcli.engine import CamModel
from camcli.errors import CamcliError, need, os_error
from camcli.evaluate import classification_metrics
from camcli.factory import ModelSpec, backbone_model, need_torch_for_arch
from camcli.files import MANIFEST_NAME, FolderLock, OutputGuard, atomic_write, next_run_dir, real_path, remove_if_ours
from camcli.headfit import AdamW, LinearHead, evaluate, shuffled_batches, train_one_epoch
from camcli.jobs import FeatureJob, LocalEngine
from camcli.packaged import BACKBONE_GRAPH, DEFAULT_ARCH, asset, backbone_facts, lite0_reference
from camcli.quantize import calibration_entry
from camcli.render import draw_caption, render_overlay
from camcli.report import write_train_report
from camcli.runtime import cache_dir, cached_bytes, record_cache, torch_installed

Progress = Callable[[str, int, int], None]
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class TrainResult:
    """Where a run was saved and how it did.

    Attributes:
        run_dir: the run's folder (best.safetensors, last.safetensors, metrics.csv, config.yaml, report.html).
        history: one dict per epoch with METRIC_COLUMNS.
        best: the history row of the best epoch (by val accuracy, then val loss).
        class_names: the classes in index order.
        num_train, num_val: the split sizes.
    """

    run_dir: Path
    history: list[dict]
    best: dict
    class_names: list[str]
    num_train: int
    num_val: int


def feature_cache_file(paths: list[Path], weights_id: str, preprocess: Preprocess, backend: str) -> Path:
    """Where the pooled features of ``paths`` are cached: keyed by each file's path, size and
    mtime, the backbone weights, the preprocessing (its size, resize, mean and std) and the backend."""
    files = []
    for p in paths:
        stat = p.stat()
        files.append([str(real_path(p)), stat.st_size, stat.st_mtime_ns])
    key = json.dumps({"files": files, "weights": weights_id, "preprocess": preprocess.to_dict(), "backend": backend, "v": 2})
    return cache_dir() / "features" / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"


def train_backbone(arch: str, weights: str, seed: int) -> tuple[dict, dict, object | None]:
    """What training needs of the backbone: (what a checkpoint stores of it, its facts
    ``{num_features, stride, mean, std}``, its PyTorch features module or None).

    The default backbone with its packaged weights needs no PyTorch: its facts
    (:data:`camcli.packaged.LITE0_FACTS`) and its ONNX graph come with camcli. Any other backbone, or other
    weights, is built in PyTorch (``seed`` makes a random init reproducible).
    """
    if arch == DEFAULT_ARCH and weights == "imagenet":
        return {"reference": lite0_reference()}, backbone_facts(), None
    backbones = need("camcli.backbones", _needs_pytorch(arch, weights))
    need("torch", "training").manual_seed(seed)
    backbone = backbones.build_backbone(arch, weights)
    facts = {"num_features": backbone.num_features, "stride": backbone.stride, "mean": backbone.mean, "std": backbone.std}
    return backbones.backbone_state(backbone), facts, backbone.features


def _needs_pytorch(arch: str, weights: str, sources: dict[str, str] | None = None) -> str | None:
    """What in a training request needs PyTorch (for its one-line error), or None; ``sources``:
    where each value came from (see :meth:`camcli.config.TrainConfig.validate`): a config file's
    value is named as the file's, not as a flag."""
    if arch == DEFAULT_ARCH and weights == "imagenet":
        return None
    name = "arch" if arch != DEFAULT_ARCH else "weights"
    where = (sources or {}).get(name, "option")
    subject = f"`{name}`" if where == "option" else f"config {where}: {name}"
    return f"{subject} {arch}" if name == "arch" else f"{subject} none" if weights == "none" else f"{subject} from a file"


def check_extras(config: TrainConfig) -> None:
    """Refuse, before anything is written, a training request that needs PyTorch in an install
    without it (another backbone or weights, `device` cuda or mps, `backend` torch), and a damaged
    shipped backbone.

    Raises:
        MissingExtra, EnvironmentProblem: one line naming the extra, or saying to reinstall.
    """
    if torch_installed():  # PyTorch can run anything, and takes over from a damaged graph
        return
    what = _needs_pytorch(config.arch, config.weights, getattr(config, "sources", None))
    if what is None:
        what = f"`device` {config.device}" if config.device in ("cuda", "mps") else "`backend` torch" if config.backend == "torch" else None
    if what is not None:
        need_torch_for_arch(config.arch, what)
    asset(BACKBONE_GRAPH)  # checked against its sha256 here, before the run folder is made


def cached_pooled_features(
    paths: list[Path], preprocess: Preprocess, weights_id: str, backend: str, compute: Callable[[], Iterable[np.ndarray]],
) -> tuple[np.ndarray, bool]:
    """(N, C) pooled features of ``paths`` from the feature cache, computing them with ``compute``
    (one (B, C) array per batch, in order: a :class:`camcli.jobs.FeatureJob` on an engine) and
    caching them on a miss. A cache file is used only as its record says it was written (its
    sha256, the weights it came from, its shape: see :func:`camcli.runtime.cached_bytes`).
    Returns (features, whether they came from the cache)."""
    path = feature_cache_file(paths, weights_id, preprocess, backend)
    facts = {"weights": weights_id, "rows": len(paths)}
    data = cached_bytes(path, **facts)
    if data is not None:
        with contextlib.suppress(ValueError, OSError, EOFError):  # a file camcli did not write is recomputed
            cached = np.load(io.BytesIO(data), allow_pickle=False)
            if cached.ndim == 2 and len(cached) == len(paths) and cached.dtype == np.float32:
                return cached, True
    feats = np.concatenate(list(compute())).astype(np.float32, copy=False)
    with contextlib.suppress(CamcliError):  # a cache that cannot be written only costs time
        buffer = io.BytesIO()
        np.save(buffer, feats, allow_pickle=False)
        atomic_write(path, buffer.getvalue())
        record_cache(path, **facts)
    return feats, False


RUN_FILES = ("config.yaml", f"best{SUFFIX}", f"last{SUFFIX}", "metrics.csv", "report.html")


def prepare_run_dir(config: TrainConfig) -> tuple[Path, OutputGuard, FolderLock]:
    """The run folder: ``--out`` (an existing run there needs ``exist_ok``) or the next
    ``runs/train/expN``, made and locked (a second train into it is refused while this one
    runs), and the guard of its files: with ``exist_ok``, a run's file that camcli did not write
    (not in the folder's manifest as it is now) stops training before anything is written."""
    guard = OutputGuard(set(), remedy="train replaces only a previous run's files: choose another `out`")
    run_dir = next_run_dir() if config.out is None else Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise CamcliError(f"`out` {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not config.exist_ok:
        raise CamcliError(f"`out` {run_dir} already holds files; choose another folder or pass `exist_ok`")
    for name in RUN_FILES:
        guard.check(run_dir / name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"cannot make the run folder {run_dir}") from exc
    return run_dir, guard, FolderLock(run_dir, "the run folder")


def fit(
    config: TrainConfig, progress: Progress | None = None, on_epoch: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None, engine=None, dataset: tuple | None = None,
) -> TrainResult:
    """Train a head on ``config.data`` and save the run (best.safetensors, last.safetensors, metrics.csv, config.yaml,
    report.html).

    Without ``augment``, pooled features come from the feature cache (computed once per
    data, weights, preprocessing and backend), so more epochs cost no more forward passes.
    ``notify`` receives one-line notes for the user (cache use, backend fallback).
    ``engine`` computes the cache's features (a :class:`camcli.jobs.FeatureJob`; default here,
    :class:`camcli.scaleout.RayEngine` on a cluster, entered by the caller); augmented epochs run here.
    ``dataset``: :func:`camcli.data.load_image_folder`'s result for ``config``, when the caller has it.
    """
    config.validate()
    check_extras(config)
    train_set, val_set, class_names = dataset or load_image_folder(Path(config.data), config.val_split, config.seed, config.exclude)
    made = not os.path.lexists(config.out) if config.out is not None else True  # next_run_dir() is always new
    run_dir, guard, lock = prepare_run_dir(config)
    try:
        return _fit_in(config, run_dir, guard, train_set, val_set, class_names, progress, on_epoch, notify, engine)
    except BaseException:
        if made:  # a run that stopped before keeping anything leaves no folder behind (its manifest alone goes too)
            with contextlib.suppress(OSError):
                if [p.name for p in run_dir.iterdir()] == [MANIFEST_NAME]:
                    (run_dir / MANIFEST_NAME).unlink()
                run_dir.rmdir()  # only an empty folder
        raise
    finally:
        lock.release()


def _fit_in(config: TrainConfig, run_dir: Path, guard: OutputGuard, train_set: list, val_set: list, class_names: list[str],
            progress, on_epoch, notify, engine) -> TrainResult:
    engine = engine or LocalEngine()
    stored_backbone, facts, module = train_backbone(config.arch, config.weights, config.seed)
    preprocess = Preprocess(config.img_size, tuple(facts["mean"]), tuple(facts["std"]), config.resize, facts["stride"])
    spec = ModelSpec(arch=config.arch, device=config.device, backend=config.backend, amp=config.amp, backbone=stored_backbone)
    features = backbone_model(spec, module)
    note = features.prepare()
    say = notify or (lambda _: None)
    if note:
        say(note)

    def extract(samples: list[tuple[Path, int]], stage: str) -> tuple[np.ndarray, np.ndarray]:
        paths = [p for p, _ in samples]
        job = FeatureJob(preprocess, config.batch_size, config.workers, stage=stage)
        feats, hit = cached_pooled_features(paths, preprocess, features.weights_id(), features.runner.name,
                                            lambda: engine.run(job, features, paths, progress))
        if hit:
            say(f"{stage}: {len(samples)} images from the feature cache")
        return feats, np.array([y for _, y in samples], np.int64)

    train_y = np.array([y for _, y in train_set], np.int64)
    if config.augment:
        say("`augment`: random resized crops and flips, so features are computed every epoch (no feature cache)")
    else:
        train_x, train_y = extract(train_set, "train features")
    val_x, val_y = extract(val_set, "val features")

    # what `precision` int8 calibrates on later: a seeded sample of the training images, at the model's input size
    int8_calibration = calibration_entry([p for p, _ in train_set], preprocess, config.seed)
    rng = np.random.default_rng(config.seed)  # the head's init, then each epoch's order
    head = LinearHead.init(facts["num_features"], len(class_names), seed=config.seed)
    optimizer = AdamW(lr=config.lr, weight_decay=config.weight_decay)
    train_paths = [p for p, _ in train_set]

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not config.augment:
            return shuffled_batches(train_x, train_y, config.batch_size, rng)
        order = rng.permutation(len(train_paths))
        job = FeatureJob(preprocess, config.batch_size, config.workers, augment=True, seed=config.seed * 100_003 + epoch,
                         stage=f"epoch {epoch} (augmented)")
        feats = LocalEngine().run(job, features, [train_paths[i] for i in order], progress)
        labels = train_y[order]
        return zip(feats, (labels[i : i + config.batch_size] for i in range(0, len(labels), config.batch_size)))

    # a reused run folder (--exist-ok): the previous run's files go first, so a run that stops early never leaves a
    # mix of two runs (its config.yaml beside the previous run's checkpoints); each is checked to be camcli's in the
    # step that removes it (a file written there since the start is kept, and stops the run)
    for name in RUN_FILES:
        remove_if_ours(run_dir / name, guard)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False),
                 guard.recorder(run_dir / "config.yaml", recheck=True))
    history: list[dict] = []
    best: dict | None = None
    for epoch in range(1, config.epochs + 1):
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging fit is found below and said in one line
            train_loss, train_acc = train_one_epoch(head, epoch_batches(epoch), optimizer)
            val_loss, val_acc, _ = evaluate(head, val_x, val_y)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss) and bool(np.isfinite(head.weight).all())):
            if epoch == 1:  # nothing to keep: the run folder goes as it came (its config.yaml too)
                remove_if_ours(run_dir / "config.yaml", guard)
            raise CamcliError(
                f"training diverged at epoch {epoch} (the loss is not a finite number): lower lr (now {config.lr:g})"
                + (f"; {run_dir} keeps the checkpoints of epoch{'s 1-' if epoch > 2 else ' '}{epoch - 1}" if epoch > 1 else "")
            )
        row = dict(zip(METRIC_COLUMNS, (epoch, train_loss, train_acc, val_loss, val_acc)))
        history.append(row)
        checkpoint = make_checkpoint(config.arch, head.weight.copy(), head.bias.copy(), class_names,
                                     preprocess, config.to_dict(), row, stored_backbone, int8_calibration)
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            best, best_checkpoint = row, checkpoint
            save_checkpoint(checkpoint, run_dir / f"best{SUFFIX}", guard.recorder(run_dir / f"best{SUFFIX}", recheck=True))
        save_checkpoint(checkpoint, run_dir / f"last{SUFFIX}", guard.recorder(run_dir / f"last{SUFFIX}", recheck=True))
        _write_metrics(run_dir / "metrics.csv", history, guard.recorder(run_dir / "metrics.csv", recheck=True))
        if on_epoch:
            on_epoch(row)
    _write_report(run_dir, best_checkpoint, features, preprocess, config, val_x, val_y, val_set, class_names, history,
                  before_rename=guard.recorder(run_dir / "report.html", recheck=True))
    return TrainResult(run_dir, history, best, class_names, len(train_set), len(val_set))



def _write_report(
    run_dir: Path, checkpoint: dict, features: CamModel, preprocess: Preprocess, config: TrainConfig,
    val_x: np.ndarray, val_y: np.ndarray, val_set: list[tuple[Path, int]], class_names: list[str],
    history: list[dict], per_kind: int = 6, before_rename=None,
) -> None:
    """RUN_DIR/report.html for the best epoch: curves, confusion matrix, and validation
    overlays of up to ``per_kind`` correct and ``per_kind`` misclassified images."""
    head = LinearHead(checkpoint["head"]["weight"], checkpoint["head"]["bias"])
    _, _, preds = evaluate(head, val_x, val_y)
    confusion = classification_metrics(val_y.tolist(), preds.tolist(), class_names)["confusion"]["matrix"]
    def spread(indices: list[int]) -> list[int]:
        """Up to ``per_kind`` indices, taking the classes in turn."""
        seen: dict[int, int] = {}
        keyed = []
        for i in indices:
            label = int(val_y[i])
            keyed.append((seen.get(label, 0), label, i))
            seen[label] = seen.get(label, 0) + 1
        return [i for _, _, i in sorted(keyed)][:per_kind]

    right = spread([i for i in range(len(val_set)) if preds[i] == val_y[i]])
    wrong = spread([i for i in range(len(val_set)) if preds[i] != val_y[i]])
    chosen = right + wrong
    examples = []
    if chosen:
        model = features.with_head((head.weight, head.bias), class_names, preprocess)
        paths = [val_set[i][0] for i in chosen]
        for batch in model.batches(paths, config.batch_size, 0, keep_images=True):
            top = batch.logits.argmax(axis=1)[:, None]
            probs = softmax(batch.logits)
            for b, (pos, maps) in enumerate(zip(batch.positions, model.batch_maps(batch, top))):
                predicted, prob = class_names[int(top[b, 0])], float(probs[b, top[b, 0]])
                overlay = draw_caption(render_overlay(batch.originals[b], maps[0]), f"{predicted} {prob:.1%}")
                examples.append((overlay, class_names[val_set[chosen[pos]][1]], predicted, prob))
    best = checkpoint["metrics"]
    summary = (f"{config.arch}, {len(val_set)} validation images, {len(class_names)} classes; best epoch {best['epoch']} "
               f"of {len(history)}: val accuracy {best['val_acc']:.3f}, val loss {best['val_loss']:.4f}")
    write_train_report(run_dir / "report.html", history, class_names, confusion, examples, summary, before_rename)


def _write_metrics(path: Path, history: list[dict], before_rename=None) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue(), before_rename)
