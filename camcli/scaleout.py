"""The Ray engine: predict and overlay on Ray Data, with the same rows and files as a local run.

The driver does everything a local run does before the model runs (listing, the output plan
and its checks, ``--skip-existing``) and cuts the work into the batches the local engine would
run. Each batch travels as a few hundred bytes per image (paths and planned output names, never
decoded pixels) to a pool of actors; each actor loads the model once and runs the local
engine's own code on its batches: decoding, the forward pass, maps, and for overlay the atomic
writes and manifest records, to the same paths. Rows come back to the driver in input order
(Ray Data's ``preserve_order``) and are written by the driver as they arrive.

Ray is an optional extra (``pip install 'camcli[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from camcli.errors import CamcliError, EnvironmentProblem, first_line
from camcli.jobs import OverlayOptions

ENGINES = ("local", "ray")
LOCAL_OBJECT_STORE = 256 * 1024 * 1024  # bytes: batches of paths and rows are small


@dataclass
class ModelSpec:
    """How every worker loads the driver's model: the arguments of :func:`camcli.engine.load`,
    with the backend the driver resolved (so every worker computes exactly what the driver would)."""

    source: str
    weights: str = "imagenet"
    classes: list[str] | None = None
    layer: str | None = None
    img_size: int | None = None
    resize: str | None = None
    backend: str = "auto"
    device: str = "auto"
    amp: bool = True
    max_pixels: int | None = None

    def load(self):
        from camcli.engine import load

        model = load(self.source, device=self.device, weights=self.weights, img_size=self.img_size, resize=self.resize,
                     backend=self.backend, amp=self.amp, classes=self.classes, layer=self.layer)
        model.max_pixels = self.max_pixels
        return model


@dataclass
class BackboneSpec:
    """How every worker rebuilds ``camcli train``'s backbone: its checkpoint form (a reference to
    the packaged weights, or the state dict), and the runner the driver resolved."""

    arch: str
    stored: dict
    key: str
    backend: str
    device: str = "auto"
    amp: bool = True

    def load(self) -> _Features:
        return _Features(self)


class _Features:
    def __init__(self, spec: BackboneSpec):
        self.spec, self.runner = spec, None

    def prepare(self) -> None:
        from camcli.backbones import restore_backbone
        from camcli.runtime import make_runner, resolve_device

        spec = self.spec
        self.runner, _ = make_runner(lambda: restore_backbone(spec.arch, spec.stored).features, spec.arch,
                                     resolve_device(spec.device), spec.backend, spec.amp, lambda: spec.key)


@dataclass
class RayOptions:
    """``--ray-address`` (None: start a local instance sized to this machine) and ``--ray-workers``
    (actors; None: one per 2 CPUs of the cluster)."""

    address: str | None = None
    workers: int | None = None


def require_ray():
    """Import Ray, or say in one line how to install it (exit 3)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--engine ray needs Ray Data: pip install 'camcli[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[int]:
    """Join the cluster at ``options.address``, or start a local Ray instance that is gone
    (with its temp folder) when the block ends; yields the number of actors to use."""
    ray = require_ray()
    started = not ray.is_initialized()
    temp = None
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    try:
        if started:
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                      "configure_logging": True}
            if options.address is None:
                os.environ["RAY_AUTH_MODE"] = "disabled"  # a local instance: no token file in the home folder
                temp = tempfile.mkdtemp(prefix="camcli-ray-")
                ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE, _temp_dir=temp, **common)
            else:
                _check_reachable(options.address)
                try:
                    ray.init(address=options.address, **common)
                except Exception as exc:  # noqa: BLE001 - connection errors come in many types
                    why = " ".join(str(exc).split())[:200]
                    raise EnvironmentProblem(f"cannot join the Ray cluster at {options.address}: {why}") from exc
        _quiet_ray_data()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, cpus // 2)
        if workers < 1:
            raise CamcliError(f"--ray-workers must be at least 1, got {workers}")
        yield workers
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing answers (Ray itself retries for minutes)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except ValueError:
        raise CamcliError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}") from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows in input order, as locally
    ctx.enable_progress_bars = False  # camcli draws its own
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):  # Ray Data logs a worker's failure as a traceback; camcli says it in one line
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _Worker:
    """A Ray Data actor: loads the model once, then runs the local engine on each batch it gets."""

    def __init__(self, spec: ModelSpec, job: str, settings: dict, threads: int):
        if os.path.isdir(settings["cwd"]):  # relative paths mean what they mean to the driver
            os.chdir(settings["cwd"])
        os.environ["CAMCLI_THREADS"] = str(threads)  # ONNX Runtime's threads (runtime.OnnxRunner)
        self.model = spec.load()
        self.model.prepare()
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self.job, self.settings, self.threads = job, settings, threads
        self.guard = None
        if job == "overlay":
            from camcli.files import OutputGuard, real_path

            options = settings["options"]
            # the driver checked every planned output against the inputs; a worker checks each
            # path again for folders, devices and files camcli did not write
            self.guard = OutputGuard(set(), options.overwrite, {real_path(p) for p in options.reserved})

    def __call__(self, batch: dict) -> dict:
        out = []
        for payload in batch["payload"]:
            try:
                rows = list(self._run(pickle.loads(payload)))
                out.append(pickle.dumps({"rows": rows}))
            except CamcliError as exc:  # the driver stops with this one line
                out.append(pickle.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return {"result": out}

    def _run(self, work: dict) -> Iterator[dict]:
        from camcli.evaluate import count_images
        from camcli.jobs import overlay_rows, predict_rows

        s = self.settings
        if self.job == "features":
            import numpy as np

            from camcli.train import pooled_features

            parts = pooled_features(self.model.runner, work["paths"], s["preprocess"], s["batch_size"], self.threads)
            return iter([{"features": np.concatenate([p.numpy() for p in parts])}])
        if self.job == "evaluate":
            true, pred, tally = count_images(self.model, work["samples"], s["data"], work["boxes"], s["threshold"], s["cam_sizes"],
                                             s["batch_size"], self.threads, s["method"])
            return iter([{"true": true, "pred": pred, "tally": tally}])
        if self.job == "predict":
            return predict_rows(self.model, work["images"], s["top_k"], s["batch_size"], self.threads, boxes=s["boxes"],
                                box_threshold=s["box_threshold"], cam_sizes=s["cam_sizes"], method=s["method"])
        names = work["names"]
        names.guard = self.guard
        plan = replace(s["plan"], guard=self.guard, names=names, todo=list(range(len(work["images"]))))
        return overlay_rows(self.model, work["images"], s["options"], s["top_k"], s["batch_size"], self.threads, plan=plan)


def run_on_ray(
    spec: ModelSpec | BackboneSpec, job: str, works: Sequence[dict], settings: dict, options: RayOptions, total: int,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Iterator[dict]:
    """Run ``job`` (``predict``, ``overlay``, ``evaluate`` or ``features``) on Ray: ``works`` are
    the local engine's batches (``{"images": [ImageInput, ...], ...}``); their results come back
    in input order as they arrive."""
    ray = require_ray()
    settings = {**settings, "cwd": os.getcwd()}
    with ray_session(options) as workers:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        share = cpus / workers
        # fractional CPUs: actors that claim every CPU starve Ray Data's own tasks (a silent hang)
        resources = {"num_cpus": max(0.25, share * 0.8)}
        if spec.device == "cuda":
            resources["num_gpus"] = 1
        items = [{"payload": pickle.dumps(w)} for w in works]
        dataset = ray.data.from_items(items) if items else None
        done = 0
        if dataset is None:
            return
        with warnings.catch_warnings():
            # max_restarts=0 (Ray Data's named parameters do not have it yet): a worker that dies fails the job
            # with its reason, instead of a restart that Ray warns about on the terminal
            warnings.simplefilter("ignore")
            results = dataset.map_batches(
                _Worker, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))),
                fn_constructor_kwargs={"spec": spec, "job": job, "settings": settings, "threads": max(1, round(share))},
                max_restarts=0, **resources,
            )
        stream = results.iter_rows()
        try:
            for row in stream:
                result = pickle.loads(row["result"])
                if "error" in result:
                    raise (EnvironmentProblem if result["kind"] == "EnvironmentProblem" else CamcliError)(result["error"])
                for r in result["rows"]:
                    done += len(r["true"]) if job == "evaluate" else len(r["features"]) if job == "features" else 1
                    if progress:
                        progress(job, done, total)
                    yield r
        except CamcliError:
            raise
        except Exception as exc:
            cause = _camcli_cause(exc)
            if cause is not None:
                raise cause from None
            raise CamcliError(f"a Ray worker failed: {' '.join(str(exc).split())[:300]}") from exc
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # stops Ray Data's executor before the instance goes (Ctrl-C, a refused output)


def _camcli_cause(exc: BaseException) -> CamcliError | None:
    """The CamcliError a Ray task error wraps (a worker's model failed to load), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, CamcliError):
            return type(exc)(first_line(exc, 400))
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


def ray_predict_rows(
    spec: ModelSpec, images: Sequence, options: RayOptions, top_k: int = 5, batch_size: int = 32,
    progress: Callable[[str, int, int | None], None] | None = None, boxes: bool = False,
    box_threshold: float | None = None, cam_sizes: Sequence[int] = (), method: str = "auto",
) -> Iterator[dict]:
    """:func:`camcli.jobs.predict_rows` on Ray: the same rows in the same order."""
    images = list(images)
    works = [{"images": images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
    settings = {"top_k": top_k, "batch_size": batch_size, "boxes": boxes, "box_threshold": box_threshold,
                "cam_sizes": list(cam_sizes), "method": method}
    yield from run_on_ray(spec, "predict", works, settings, options, len(images), progress)


def ray_overlay_rows(
    spec: ModelSpec, model, images: Sequence, overlay: OverlayOptions, options: RayOptions, top_k: int = 5,
    batch_size: int = 32, progress: Callable[[str, int, int | None], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """:func:`camcli.jobs.overlay_rows` on Ray: planned and checked here (``model`` is the driver's
    copy), written by the workers to the same paths, rows in input order."""
    from camcli.jobs import plan_overlays

    plan = plan_overlays(model, images, overlay, top_k, notify)
    works = []
    for i in range(0, len(plan.todo), batch_size):
        ks = plan.todo[i : i + batch_size]
        works.append({"images": [images[k] for k in ks], "names": plan.names.subset(ks, None)})
    settings = {"top_k": top_k, "batch_size": batch_size, "options": overlay,
                "plan": replace(plan, guard=None, names=None, todo=[])}
    yield from run_on_ray(spec, "overlay", works, settings, options, len(plan.todo), progress)


def ray_counter(spec: ModelSpec, options: RayOptions) -> Callable:
    """A :func:`camcli.evaluate.count_images` that runs on Ray (for ``evaluate(..., counter=)``):
    the local engine's batches on the actors, their counts summed here."""

    def count(samples, data, boxes, threshold, cam_sizes, batch_size, workers, method, progress=None):
        from camcli.evaluate import LocalizationTally

        works = []
        for i in range(0, len(samples), batch_size):
            chunk = list(samples[i : i + batch_size])
            rels = [p.relative_to(data).as_posix() for p, _ in chunk]
            works.append({"samples": chunk, "boxes": {r: boxes[r] for r in rels if r in boxes} if boxes else None})
        settings = {"data": data, "threshold": threshold, "cam_sizes": list(cam_sizes), "batch_size": batch_size, "method": method}
        true, pred, tally = [], [], LocalizationTally(threshold)
        for part in run_on_ray(spec, "evaluate", works, settings, options, len(samples), progress):
            true += part["true"]
            pred += part["pred"]
            tally.merge(part["tally"])
        return true, pred, tally

    return count


def ray_feature_stream(options: RayOptions) -> Callable:
    """For ``camcli train``: pooled backbone features of paths, computed on Ray (see
    :func:`camcli.train.pooled_features`); one (B, C) float32 tensor per batch, in order."""

    def stream(spec: BackboneSpec, paths, preprocess, batch_size, progress=None, stage="features"):
        import torch

        works = [{"paths": list(paths[i : i + batch_size])} for i in range(0, len(paths), batch_size)]
        settings = {"preprocess": preprocess, "batch_size": batch_size}
        for part in run_on_ray(spec, "features", works, settings, options, len(paths),
                               (lambda _, done, total: progress(stage, done, total)) if progress else None):
            yield torch.from_numpy(part["features"])

    return stream
