"""The Ray engine: any job on Ray Data, with the same results and files as a local run.

The driver does everything a local run does before the model runs (listing, the job's checks
and ``bind``: the output plan, ``skip_existing``) and cuts the work into the batches the local
engine would run (``job.slice``). Each slice travels as a few hundred bytes per image (paths
and planned output names, never decoded pixels) to a pool of actors; each actor builds the model
once from the driver's :class:`camcli.factory.ModelSpec` and runs ``job.run`` on its slices:
decoding, the forward pass, maps, and for overlay the atomic writes and manifest records, to
the same paths. Results come back to the driver in input order (Ray Data's ``preserve_order``).

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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from camcli.errors import CamcliError, EnvironmentProblem, first_line
from camcli.factory import ModelSpec, build_model
from camcli.files import stderr_quiet
from camcli.jobs import Interrupts, counted
from camcli.video import is_video

LOCAL_OBJECT_STORE = 256 * 1024 * 1024  # bytes: batches of paths and rows are small


@dataclass
class RayOptions:
    """``address`` of the cluster to join (None: start a local instance sized to this machine)
    and ``workers`` (actors; None: one per 2 CPUs of the cluster)."""

    address: str | None = None
    workers: int | None = None

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise CamcliError(f"`ray_workers` must be at least 1, got {self.workers}")


def require_ray():
    """Import Ray, or say in one line how to install it (exit 3)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("`engine` ray needs Ray Data: pip install 'camcli[ray]'") from None
    return ray


CONNECT_SECONDS = 30.0  # joining a cluster takes 2-5 s; an address that is not a Ray cluster never answers


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[int]:
    """Join the cluster at ``options.address``, or start a local Ray instance that is gone
    (with its processes and temp folder, even after Ctrl-C) when the block ends; yields the
    number of actors to use."""
    ray = require_ray()
    started = not ray.is_initialized()
    temp = None
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    joined = False
    try:
        if started:
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                      "configure_logging": True}
            if options.address is None:
                os.environ["RAY_AUTH_MODE"] = "disabled"  # a local instance: no token file in the home folder
                temp = tempfile.mkdtemp(prefix="camcli-ray-", dir=_short_temp_base())
                # in this thread: Ray's processes die with the thread that started them (PR_SET_PDEATHSIG)
                ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE, _temp_dir=temp, **common)
            else:
                _check_reachable(options.address)
                _init_bounded(ray, f"join the Ray cluster at {options.address}", address=options.address, **common)
            joined = True
        _quiet_ray_data()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = options.workers or max(1, cpus // 2)
        yield workers
    finally:
        with _sigint_deferred():  # a second Ctrl-C must not cut the cleanup short
            if started and joined:
                with contextlib.suppress(Exception):
                    ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if temp is not None:
                _stop_processes_of(temp)
                shutil.rmtree(temp, ignore_errors=True)


def _short_temp_base() -> str | None:
    """The temp folder, or /tmp when its path is too long for Ray: Ray puts Unix sockets about 85
    bytes deep inside the session folder, and a socket path has at most 107 bytes."""
    base = tempfile.gettempdir()
    return "/tmp" if len(os.fsencode(base)) > 20 and os.path.isdir("/tmp") else None


def _init_bounded(ray, what: str, **kwargs) -> None:
    """``ray.init`` of a cluster address, bounded as a whole: it runs in a thread and is given up
    after ``CONNECT_SECONDS`` (an address that accepts TCP but is not a Ray cluster makes Ray retry
    for minutes; Ray also dials the node's own address for 127.0.0.1, so probing the address
    alone cannot tell). Joining starts no process here, so the thread may end."""
    import threading

    box: dict = {}

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=init, name="camcli-ray-init", daemon=True)
    with stderr_quiet():  # Ray's C++ core prints each connection retry on the terminal; camcli says it in one line
        thread.start()
        thread.join(CONNECT_SECONDS)
    if thread.is_alive():
        problem = EnvironmentProblem(f"cannot {what}: no answer within {CONNECT_SECONDS:.0f} s "
                                     "(is it the address of a Ray head node, HOST:6379 by default?)")
        problem.exit_now = True  # the thread stays in Ray's native code: the process cannot finalize normally
        raise problem
    if "error" in box:
        why = " ".join(str(box["error"]).split())[:200]
        raise EnvironmentProblem(f"cannot {what}: {why}") from box["error"]


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C during the block is held back and raised (once) after it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: hits.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt


def _stop_processes_of(temp: str, wait: float = 10.0) -> None:
    """Stop every process that still runs from the local instance's temp folder (Ray's agents
    may outlive ``ray.shutdown`` for a minute, and write into the folder as it is removed)."""
    import signal
    import time

    def remaining() -> list[int]:
        pids = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError):
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if temp.encode() in f.read():
                            pids.append(int(entry))
        return pids

    deadline = time.monotonic() + wait
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in remaining():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 2.0
        if not remaining():
            return


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
        raise CamcliError(f"`ray_address` must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}") from None
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
    """A Ray Data actor: builds the driver's model from its spec once, then runs each job slice it
    gets with the local engine's own code (``job.run``), whatever the job."""

    def __init__(self, spec: ModelSpec | tuple[ModelSpec, ...], cwd: str, threads: int):
        if os.path.isdir(cwd):  # relative paths mean what they mean to the driver
            os.chdir(cwd)
        os.environ["CAMCLI_THREADS"] = str(threads)  # ONNX Runtime's threads (runtime.OnnxRunner)
        models = tuple(build_model(one) for one in (spec if isinstance(spec, tuple) else (spec,)))
        for model in models:
            model.prepare()
        self.model = models if isinstance(spec, tuple) else models[0]  # compare's job runs on a pair
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self.threads = threads

    def __call__(self, batch: dict) -> dict:
        out = []
        for payload in batch["payload"]:
            job, work = pickle.loads(payload)
            try:
                results = list(replace(job, workers=self.threads).run(self.model, work))
                out.append(pickle.dumps({"results": results, "node": _node_id()}))
            except CamcliError as exc:  # the driver stops with this one line
                out.append(pickle.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return {"result": out}


def _as_run(model) -> ModelSpec:
    """The spec of a model as the driver runs it: the backend and the precision it chose (an INT8
    model refused by its check runs fp32 everywhere)."""
    return replace(model.spec, backend=getattr(getattr(model, "runner", None), "name", "torch"), precision=model.precision,
                   calibration=model.spec.calibration if model.precision == "int8" else None)


def _node_id() -> str:
    """The Ray node this worker runs on (the two-node test checks that both nodes worked)."""
    import ray

    return ray.get_runtime_context().get_node_id()


class RayEngine:
    """Runs a bound job on a Ray cluster: the same results, in the same order, as
    :class:`camcli.jobs.LocalEngine`. Use as a context manager: one Ray session for every job
    run inside it (``camcli train`` runs two feature passes in one)."""

    name = "ray"

    def __init__(self, options: RayOptions, notify: Callable[[str], None] | None = None):
        self.options = options
        self.notify = notify  # told that Ray is starting (it takes several seconds)
        self.nodes: set[str] = set()  # the nodes whose workers returned results
        self._session: contextlib.ExitStack | None = None
        self.workers = 0
        self.interrupts = Interrupts()  # where a Ctrl-C lands, as in the local engine (see camcli.cli.rows.held_interrupts)

    def __enter__(self) -> RayEngine:
        self._session = contextlib.ExitStack()
        if self.notify:
            address = self.options.address
            self.notify("starting a local Ray instance…" if address is None else f"joining the Ray cluster at {address}…")
        self.workers = self._session.enter_context(ray_session(self.options))
        return self

    def __exit__(self, *exc) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def run(self, job, model, work, progress: Callable[[str, int, int | None], None] | None = None) -> Iterator:
        """``job``'s results on ``work``, cut into the slices the local engine would run batch by
        batch; each slice goes to an actor as a pickle of the job slice and its work (paths and
        planned names, never pixels)."""
        if self._session is None:
            raise ValueError("RayEngine.run needs the engine's session: use `with RayEngine(options) as engine:`")
        with self.interrupts.running():  # a walk of a large tree, clip headers: Ctrl-C stops it at once
            work = list(work)
            spec = tuple(map(_as_run, model)) if isinstance(model, tuple) else _as_run(model)  # compare's job: a pair
            items = [{"payload": pickle.dumps(job.slice(work, start, stop))} for start, stop in slice_bounds(work, job.batch_size)]
            total = job.total(work) if hasattr(job, "total") else len(work)
        return counted(job, self.interrupts.guarded(self._results(spec, items)), total, progress)

    def _results(self, spec: ModelSpec | tuple[ModelSpec, ...], items: list[dict]) -> Iterator:
        if not items:
            return
        ray = require_ray()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        share = cpus / self.workers
        # fractional CPUs: actors that claim every CPU starve Ray Data's own tasks (a silent hang)
        resources = {"num_cpus": max(0.25, share * 0.8)}
        if any(one.device == "cuda" for one in (spec if isinstance(spec, tuple) else (spec,))):
            resources["num_gpus"] = 1
        with warnings.catch_warnings():
            # max_restarts=0 (Ray Data's named parameters do not have it yet): a worker that dies fails the job
            # with its reason, instead of a restart that Ray warns about on the terminal
            warnings.simplefilter("ignore")
            results = ray.data.from_items(items).map_batches(
                # two slices in flight per actor (one running, one queued): the work spreads over every actor and node
                _Worker, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(items)), max_tasks_in_flight_per_actor=2),
                fn_constructor_kwargs={"spec": spec, "cwd": os.getcwd(), "threads": max(1, round(share))},
                max_restarts=0, **resources,
            )
        stream = iter(results.iter_rows())
        try:
            yield from unpacked(stream, self.nodes, self.interrupts)
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # stops Ray Data's executor before the instance goes (Ctrl-C, a refused output)


def unpacked(rows: Iterable[dict], nodes: set[str], interrupts: Interrupts | None = None) -> Iterator:
    """The job's results from the workers' rows (``nodes``: the nodes that sent them).

    A Ctrl-C thrown in (see :class:`camcli.jobs.Interrupts`) first gives the rest of the slice at
    hand: its worker finished that work (an overlay's files are written). A worker's CamcliError
    stops the run with its line; any other failure is one line too, but a failure that follows a
    Ctrl-C is that Ctrl-C: Ray Data shuts its executor down when the interrupt reaches it, and an
    error of that shutdown replaced the interrupt (exit 1 instead of 130)."""
    try:
        for row in rows:
            result = pickle.loads(row["result"])
            if "error" in result:
                raise (EnvironmentProblem if result["kind"] == "EnvironmentProblem" else CamcliError)(result["error"])
            nodes.add(result["node"])
            finished = deque(result["results"])
            try:
                while finished:
                    yield finished.popleft()
            except KeyboardInterrupt:
                yield from finished
                raise
    except CamcliError:
        raise
    except Exception as exc:
        if _interrupted(exc) or (interrupts is not None and interrupts.seen):
            raise KeyboardInterrupt from None
        cause = _camcli_cause(exc)
        if cause is not None:
            raise cause from None
        raise CamcliError(f"a Ray worker failed: {' '.join(str(exc).split())[:300]}") from exc


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions ``exc`` was raised from or while handling
    (a Ray task error's ``cause`` too: a task interrupted in its worker)."""
    seen: set[int] = set()
    todo: list = [exc]
    while todo:
        one = todo.pop()
        if not isinstance(one, BaseException) or id(one) in seen or len(seen) > 50:
            continue
        seen.add(id(one))
        if isinstance(one, KeyboardInterrupt):
            return True
        todo += [one.__context__, one.__cause__, getattr(one, "cause", None)]
    return False


def slice_bounds(work: list, size: int) -> list[tuple[int, int]]:
    """Where the work is cut into tasks: ``size`` inputs a task, and each clip a task of its own
    (a clip is many frames: a folder of clips spreads over every worker, one clip per task)."""
    bounds, start = [], 0
    for i, item in enumerate(work):
        if is_video(Path(getattr(item, "path", ""))):
            if start < i:
                bounds.append((start, i))
            bounds.append((i, i + 1))
            start = i + 1
        elif i + 1 - start == size:
            bounds.append((start, i + 1))
            start = i + 1
    if start < len(work):
        bounds.append((start, len(work)))
    return bounds


def _camcli_cause(exc: BaseException) -> CamcliError | None:
    """The CamcliError a Ray task error wraps (a worker's model failed to load), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, CamcliError):
            return type(exc)(first_line(exc, 400))
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None
