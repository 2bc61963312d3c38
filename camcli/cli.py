"""The ``camcli`` command line: parse options, call one library function, show the result.

Only this module talks to the terminal. Library errors become a one-line message and an
exit status in one place, :func:`_report_errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from camcli import __version__, methods
from camcli.defaults import (
    ALPHA,
    BACKENDS,
    BATCH_SIZE,
    COLORMAPS,
    DEVICES,
    ENGINES,
    FORMATS,
    MAX_PIXELS,
    NORMALIZATIONS,
    PAPER_THRESHOLD,
    PRECISIONS,
    RESIZE_MODES,
    TOP_K,
    TRAIN,
)
from camcli.errors import (
    CamcliError,
    InputMistake,
    first_line,
    flag_names,
    missing_extra,
    os_error,
    suggestions,
)
from camcli.files import atomic_open, guard_output_file, printable, read_text, real_path
from camcli.packaged import DEFAULT_ARCH
from camcli.results import MODEL_SUFFIXES, choose_format, is_tty, previous_rows, table_cells, write_rows

# click's exception classes (typer vendors click, and exports only some of them)
_ClickException, _UsageError = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                 for name in ("ClickException", "UsageError"))


class _OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value outside the choices) in one line, exit 2, as every
    other camcli error; click would print the usage, a hint and the error on four lines."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `camcli` or `camcli predict`: the help
                exc.show()
            else:
                named = [a for a in (sys.argv[1:] if args is None else args) if a in self.commands][:1]
                command = exc.ctx.command_path if exc.ctx is not None else " ".join([prog_name or "camcli", *named])
                if type(exc).__name__ == "NoSuchOption" and exc.ctx is not None:  # click's guesses share letters, not words
                    known = [o for p in exc.ctx.command.params for o in p.opts if o.startswith("--")]
                    exc.possibilities = suggestions(exc.option_name, known)
                message = " ".join(exc.format_message().replace("Value error, ", "").split())
                err.print(Text.assemble(("error:", "red"), " ", printable(f"{message} (see {command} --help)")))
            sys.exit(exc.exit_code)
        except _ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("Aborted!")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Class Activation Mapping for PyTorch image classifiers: train a GAP + linear head, "
    "rank classes, and see where the model looks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help text is plain text: "[default: 30]" and "[x0,y0,x1,y1]" stay as written
)
# Text from outside (file names, class names, library messages) is never markup: every
# console is made with markup and emoji codes off, and such text passes through `printable`.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def _stdout_console(**kwargs) -> Console:
    return Console(highlight=False, markup=False, emoji=False, **kwargs)


def _say(text: object) -> None:
    """A note or message on stderr, shown literally (a library note's parameters as flags)."""
    err.print(printable(flag_names(str(text), _flag)))


def _report_errors(command: Callable) -> Callable:
    """Map library failures to one line on stderr and an exit status (the only place that does)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            # the reader went away (camcli predict ... | head): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except (CamcliError, OSError, ImportError) as exc:
            if isinstance(exc, ImportError):  # an optional dependency no library call checked for: still one line
                exc = missing_extra(exc.name or first_line(exc), f"camcli {command.__name__}")
            if isinstance(exc, OSError):  # a file-system failure no library call turned into a CamcliError
                exc = os_error(exc, f"cannot use {exc.filename}" if exc.filename else "a file operation failed")
            usage = f" (see camcli {command.__name__} --help)" if isinstance(exc, InputMistake) else ""
            err.print(Text.assemble(("error:", "red"), " ", printable(flag_names(str(exc), _flag) + usage)))
            if getattr(exc, "exit_now", False):  # a thread stuck in native code (Ray's connection) would crash the exit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            stage, done, total = _LAST_PROGRESS.get("stage"), _LAST_PROGRESS.get("done", 0), _LAST_PROGRESS.get("total")
            where = f" during {stage}: {done}" + (f" of {total}" if total else "") + " images done" if stage else ""
            err.print(f"interrupted{where}{_AFTER_INTERRUPT.get(command.__name__, '')}")
            raise typer.Exit(130) from None

    return wrapper


# the library names its parameters (`top_k`); the command line shows its flags (--top-k). Only these names are
# translated, so a backticked word in a file or class name that is no parameter stays as it is
_FLAGS = {"class_names": "--class", "class_indices": "--class-index", "cam_sizes": "--cam-size/--cam-scales"} | {
    name: "--" + name.replace("_", "-") for name in (
        "alpha", "arch", "aug_smooth", "augment", "backend", "batch_size", "box_threshold", "boxes", "calibrate", "calibration",
        "checkpoint",
        "classes", "eigen_smooth", "faithfulness",
        "colormap", "device", "engine", "exclude", "exist_ok", "img_size", "layer", "maps", "max_pixels", "method", "normalize",
        "out", "out_dir", "output", "overwrite", "precision", "ray_address", "ray_workers", "report", "resize", "skip_existing", "top_k",
        "val_split", "weights", "workers")}


def _flag(name: str) -> str:
    return _FLAGS.get(name, f"`{name}`")


_LAST_PROGRESS: dict = {}  # the latest progress report, for the Ctrl-C message
_AFTER_INTERRUPT = {  # what a Ctrl-C leaves behind, per command
    "train": "; the run is incomplete: train again (with --exist-ok for the same --out)",
    "predict": "; the rows written so far are complete (rerun the rest: there is no resume)",
    "overlay": "; every file on disk is complete (overlay --skip-existing resumes)",
    "evaluate": "; nothing was written (metrics are written at the end)",
    "export": "; nothing was written",
}


class _Rate(ProgressColumn):
    """Images per second since the stage began (when the bar appeared, or the previous stage last
    reported): the loading and Ray's start before it do not count, and a burst of rows from one
    batch does not make it jump."""

    def render(self, task) -> Text:
        first_done, first_time = task.fields.get("first", (0, None))
        now = task.finished_time + task.start_time if task.finished and task.finished_time else time.monotonic()
        if first_time is None or task.completed <= first_done or now <= first_time:
            return Text("")
        return Text(f"{(task.completed - first_done) / (now - first_time):.1f} img/s", style="progress.data.speed")


def _record(stage: str, done: int, total: int | None) -> None:
    _LAST_PROGRESS.update(stage=stage, done=done, total=total)


@contextmanager
def _progress(quiet: bool, starting: str | None = None) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback: it records how far the job got, and draws bars on stderr unless
    quiet or stderr is not a terminal. ``starting``: what happens before the first report,
    shown (a spinner line, or one plain line off a terminal) until it comes."""
    _LAST_PROGRESS.clear()
    if quiet:
        yield _record
        return
    if not err.is_terminal:
        # CI logs: no animation, a plain line per stage at every tenth of the way
        if starting:
            err.print(starting)
        shown: dict[str, int] = {}

        def plain(stage: str, done: int, total: int | None) -> None:
            _record(stage, done, total)
            step = max(1, (total or 0) // 10) if total else 1000
            if done // step > shown.get(stage, -1) or done == total:
                shown[stage] = done // step
                err.print(f"{stage}: {done}" + (f"/{total} ({done / total:.0%})" if total else "") + " images")

        yield plain
        return
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn())
    # stdout is routed around the bar only when it is the same terminal: rows for a file or a pipe go there, never to stderr
    with Progress(*columns, console=err, transient=True, redirect_stdout=is_tty(sys.stdout), redirect_stderr=False) as bar:
        _BARS.append(bar)
        tasks: dict[str, int] = {}
        waiting = [bar.add_task(starting, total=None)] if starting else []
        last = [time.monotonic()]  # the latest report of any stage: where a new stage's clock starts

        def update(stage: str, done: int, total: int | None) -> None:
            _record(stage, done, total)
            while waiting:
                bar.remove_task(waiting.pop())
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, first=(0, last[0]))
            last[0] = time.monotonic()
            bar.update(tasks[stage], completed=done)

        try:
            yield update
        finally:
            _BARS.remove(bar)


@contextmanager
def _status(text: str, quiet: bool) -> Iterator[None]:
    """A transient spinner line on a terminal (nothing otherwise) while something slow happens."""
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(text):
        yield


_BARS: list[Progress] = []  # the live progress display, which a table printed at the end replaces


def _end_bars() -> None:
    """Clear the progress bars (they are transient) so that what follows starts on its own line."""
    for bar in list(_BARS):
        bar.stop()


def _a_value(param: typer.CallbackParam, value):
    """A path option's value that is an option (`--out --exist-ok`) is a forgotten value, not a path;
    `-` is standard output for --output and refused elsewhere (it is not a file here)."""
    if isinstance(value, (str, Path)) and str(value) == "-":
        if param.name == "output":
            return None  # stdout, as without --output
        raise typer.BadParameter("- (standard input or output) is not a file this option can use; give a path")
    if isinstance(value, (str, Path)) and str(value).startswith("-"):
        raise typer.BadParameter(f"{str(value)!r} looks like an option, not a value (a file of that name: give a path with "
                                 f"its folder, e.g. $PWD/{value})")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"camcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """camcli: see where an image classifier looks."""


Device = Annotated[Literal[DEVICES], typer.Option(help="Where to run; auto takes CUDA, then MPS, then the CPU.")]
Backend = Annotated[Literal[BACKENDS], typer.Option(help="auto is ONNX Runtime on the CPU (the default backbone's graph ships "
    "with camcli; others are exported on first use and cached) and PyTorch on a GPU.")]
Amp = Annotated[bool, typer.Option(help="Autocast to float16 on CUDA [default: on].", show_default=False)]
Workers = Annotated[Optional[int], typer.Option(help="Image decoding threads [default: the CPU count, at most 4].")]
Engine = Annotated[Literal[ENGINES], typer.Option(help="local, or ray: run on a Ray cluster (pip install 'camcli[ray]'; the output "
    "tree must be on storage every node reaches).")]
RayAddress = Annotated[Optional[str], typer.Option(help="With --engine ray: the cluster to join, e.g. ray://head:10001 or auto "
    "[default: start a local Ray instance for this command].")]
RayWorkers = Annotated[Optional[int], typer.Option(help="With --engine ray: model actors [default: one per 2 CPUs of the cluster].")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")]


# ---------------------------------------------------------------- option groups, declared once
# A command takes a group as one parameter; _expand_groups gives typer its fields as options and
# packs them back into the dataclass. Each group builds what the library takes (a spec, a job's values).

@dataclass
class ModelOptions:
    """The model to load and how to run it (predict, overlay, evaluate)."""

    checkpoint: Annotated[Optional[Path], typer.Option(callback=_a_value, help="A checkpoint from camcli train.")] = None
    arch: Annotated[str, typer.Option(help="Without --checkpoint: a classifier with its own head (torchvision name, timm:NAME). "
        "A GAP + linear head gives exact CAM; any other head (vgg16, convnext, a ViT) gives gradient maps.")] = DEFAULT_ARCH
    weights: Annotated[str, typer.Option(callback=_a_value, help="Without --checkpoint: imagenet, or the state dict of a whole "
        "classifier trained elsewhere (give its class names with --classes).")] = "imagenet"
    classes: Annotated[Optional[Path], typer.Option(callback=_a_value, help="With --weights PATH: a text file of the head's class "
        "names, one a line, in index order.")] = None
    layer: Annotated[Optional[str], typer.Option(help="Target layer of gradient maps (names: camcli layers --arch NAME) "
        "[default: the last spatial map].")] = None
    img_size: Annotated[Optional[int], typer.Option(help="Input size: the side with squash, the shorter side with keep-aspect "
        "[default: the checkpoint's, else 224].")] = None
    resize: Annotated[Optional[Literal[RESIZE_MODES]], typer.Option(help="squash (whole image to img-size x img-size) or keep-aspect "
        "(shorter side to img-size) [default: the checkpoint's, else keep-aspect].")] = None
    device: Device = "auto"
    backend: Backend = "auto"
    amp: Amp = True
    max_pixels: Annotated[int, typer.Option(help="Refuse images whose header declares more pixels (decompression bombs), before "
        "decoding.")] = MAX_PIXELS
    precision: Annotated[Literal[PRECISIONS], typer.Option(help="fp32, or int8: the backbone's static INT8 model on ONNX Runtime "
        "(CPU; about 2.5x faster), built once from calibration images and checked against fp32 on held-out ones (refused, "
        "and fp32 used, below 97 % top-1 agreement or 0.98 map correlation).")] = "fp32"
    calibration: Annotated[Optional[Path], typer.Option(callback=_a_value, help="With --precision int8: a folder of images like "
        "the ones to process (a seeded sample of up to 128 is used) [default: the checkpoint's own, stored by camcli "
        "train].")] = None

    def spec(self):
        """The ModelSpec, checked (before any model loads)."""
        from camcli.data import read_class_names
        from camcli.factory import ModelSpec

        # a classes file beside a checkpoint is refused by the spec's check, unread
        names = None if self.classes is None else () if self.checkpoint is not None else tuple(read_class_names(self.classes))
        spec = ModelSpec(str(self.checkpoint) if self.checkpoint is not None else None, self.arch, self.weights, names, self.layer,
                         self.img_size, self.resize, self.device, self.backend, self.amp, self.max_pixels,
                         precision=self.precision, calibration=str(self.calibration) if self.calibration is not None else None)
        spec.validate()
        return spec


_METHOD_CHOICES = "<" + "|".join((methods.AUTO, *methods.NAMES)) + ">"  # --method's metavar: the choices, as for a Literal


def _method_choices(values: list[str] | None) -> list[str] | None:
    """A repeated --method's values, each a method (click's message for a bad one)."""
    choices = (methods.AUTO, *methods.NAMES)
    for value in values or ():
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, choices))}.")
    return values


@dataclass
class MapOptions:
    """How the maps are made (predict --boxes, overlay, evaluate)."""

    cam_size: Annotated[Optional[int], typer.Option(help="Compute the maps at this input size (the ranking stays at "
        "--img-size).")] = None
    cam_scales: Annotated[Optional[str], typer.Option(help="Fuse maps computed at several input sizes, e.g. 224,320 (mean of "
        "normalized maps).")] = None
    method: Annotated[Optional[list[str]], typer.Option(callback=_method_choices, metavar=_METHOD_CHOICES,
        help=methods.help_text(), show_default=methods.AUTO)] = None
    aug_smooth: Annotated[bool, typer.Option("--aug-smooth", help="Average the maps of the input flipped or not, times 0.9, "
        "1 and 1.1 (pytorch-grad-cam's aug_smooth: 6 forward passes).")] = False
    eigen_smooth: Annotated[bool, typer.Option("--eigen-smooth", help="Combine each method's per-channel terms by their first "
        "principal component instead of their sum (pytorch-grad-cam's eigen_smooth).")] = False

    def smooth(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("aug", self.aug_smooth), ("eigen", self.eigen_smooth)) if on)

    def one_method(self) -> str:
        """The method (a repeated --method is for evaluate, which compares them)."""
        if self.method and len(self.method) > 1:
            raise InputMistake("--method takes one method here (evaluate compares several side by side)")
        return self.method[0] if self.method else methods.AUTO

    def sizes(self) -> list[int]:
        if self.cam_size is not None and self.cam_scales is not None:
            raise CamcliError("give --cam-size or --cam-scales, not both")
        if self.cam_size is not None:
            return [self.cam_size]
        try:
            return [int(s) for s in self.cam_scales.split(",")] if self.cam_scales is not None else []
        except ValueError:
            raise CamcliError(f"--cam-scales must be sizes separated by commas, e.g. 224,320; got {self.cam_scales!r}") from None


@dataclass
class CompareMapOptions(MapOptions):
    """MapOptions whose --method repeats: evaluate compares methods side by side."""

    method: Annotated[Optional[list[str]], typer.Option(
        callback=_method_choices, metavar=_METHOD_CHOICES, help="Repeatable: every method's metrics side by side, one row each "
        "(the baselines random, center and sobel show what a map that knows nothing of the model scores). "
        + methods.help_text(),
        show_default=methods.AUTO)] = None

    def methods(self) -> tuple[str, ...]:
        return tuple(self.method or (methods.AUTO,))


@dataclass
class RunOptions:
    """Batches, threads, the engine, what to leave out, and how much to say (predict, overlay, evaluate)."""

    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = BATCH_SIZE
    workers: Workers = None
    engine: Engine = "local"
    ray_address: RayAddress = None
    ray_workers: RayWorkers = None
    exclude: Annotated[Optional[list[str]], typer.Option(metavar="<glob>", help="Leave out paths matching this glob, e.g. "
        "'*/tmp/*' (repeatable).")] = None
    quiet: Quiet = False

    def threads(self) -> int:
        from camcli.config import default_workers

        return default_workers() if self.workers is None else self.workers

    def make_engine(self):
        return _make_engine(self.engine, self.ray_address, self.ray_workers, self.quiet)


@dataclass
class RowOptions:
    """The result rows of predict and overlay."""

    top_k: Annotated[int, typer.Option(help="Classes per image.")] = TOP_K
    fmt: Annotated[Optional[Literal[FORMATS]], typer.Option("--format", help="Output format [default: from the --output suffix "
        "(.csv, .json, .jsonl), else table on a terminal, else jsonl]. json and table print when all images are done.")] = None
    output: Annotated[Optional[Path], typer.Option(callback=_a_value, help="Write results to this file instead of stdout.")] = None
    allow_failures: Annotated[bool, typer.Option("--allow-failures", help="Exit 0 even when some inputs could not be read.")] = False


def _expand_groups(command: Callable) -> Callable:
    """Give typer each option group's fields as the command's options; call the command with the groups."""
    hints = typing.get_type_hints(command, include_extras=True)
    params, groups = [], {}
    for p in inspect.signature(command).parameters.values():
        kind = hints[p.name]
        if dataclasses.is_dataclass(kind):
            groups[p.name] = kind
            field_hints = typing.get_type_hints(kind, include_extras=True)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=field_hints[f.name])
                       for f in dataclasses.fields(kind)]
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=kind))

    @functools.wraps(command)
    def wrapper(**kwargs):
        for name, kind in groups.items():
            kwargs[name] = kind(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(kind)})
        return command(**kwargs)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _make_engine(engine: str, address: Optional[str], workers: Optional[int], quiet: bool = False):
    """The engine a command runs its job on, checked before any work."""
    from camcli.jobs import LocalEngine

    if engine == "local":
        if address is not None or workers is not None:
            raise CamcliError("--ray-address and --ray-workers go with --engine ray")
        return LocalEngine()
    from camcli.scaleout import RayEngine, RayOptions, require_ray

    options = RayOptions(address, workers)
    options.validate()
    require_ray()
    return RayEngine(options, None if quiet else _say)


def _load(spec, quiet: bool):
    """The model of a checked spec, ready to run; its one-line note (an export made, a fallback) on stderr."""
    from camcli.factory import build_model

    with _status("loading the model…", quiet):
        model = build_model(spec)
        note = model.prepare()
    if note and not quiet:
        _say(note)
    return model


@app.command(short_help="Train a CAM head on an ImageFolder dataset.")
@_report_errors
def train(
    data: Annotated[Optional[Path], typer.Argument(help="ImageFolder: DATA/train/<class>/*, DATA/val/<class>/* or "
        "DATA/<class>/*.", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="YAML file of options; flags override it.")] = None,
    arch: Annotated[Optional[str], typer.Option(help=f"Backbone [default: {DEFAULT_ARCH}]: a torchvision CNN name or timm:NAME.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        callback=_a_value, help="Backbone weights: imagenet, none, or a state dict path "
        f"[default: {TRAIN['weights']}].")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Epochs [default: {TRAIN['epochs']}].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Batch size [default: {TRAIN['batch_size']}].")] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"AdamW learning rate [default: {TRAIN['lr']}].")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input size: the side with squash, the shorter side with keep-aspect "
        f"[default: {TRAIN['img_size']}].")] = None,
    resize: Annotated[Optional[Literal[RESIZE_MODES]], typer.Option(help="squash (whole image to img_size x img_size) or keep-aspect "
        f"(shorter side to img_size) [default: {TRAIN['resize']}].")] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Validation fraction for a flat DATA/<class>/* "
        f"[default: {TRAIN['val_split']}].")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed [default: {TRAIN['seed']}].")] = None,
    device: Annotated[Optional[Literal[DEVICES]], typer.Option(help="Where to run; auto takes CUDA, then MPS, then the CPU "
        f"[default: {TRAIN['device']}].")] = None,
    backend: Annotated[Optional[Literal[BACKENDS]], typer.Option(help="Feature extraction runtime (see predict --help) "
        f"[default: {TRAIN['backend']}].")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Autocast to float16 on CUDA [default: "
        "on].", show_default=False)] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random resized crops and flips; turns the feature "
        "cache off [default: off].", show_default=False)] = None,
    workers: Workers = None,
    out: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="Run folder [default: runs/train/expN, never overwritten].")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Allow --out to hold a previous run.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option(metavar="<glob>", help="Leave out images matching this glob, as "
        "'<DATA name>/<path inside>' (repeatable).")] = None,
    engine: Annotated[Literal[ENGINES], typer.Option(help="local, or ray: compute the backbone features on a Ray cluster (the epochs "
        "run here; --augment epochs too).")] = "local",
    ray_address: RayAddress = None,
    ray_workers: RayWorkers = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result and errors.")] = False,
) -> None:
    """Train the GAP + linear head of a frozen backbone on an ImageFolder dataset.

    \b
    Example: camcli train sample_data --epochs 20
    """
    from camcli.config import resolve_train_config
    from camcli.data import load_image_folder

    cfg = resolve_train_config(
        config, data=str(data) if data else None, arch=arch, weights=weights, epochs=epochs, batch_size=batch_size,
        lr=lr, img_size=img_size, resize=resize, val_split=val_split, seed=seed, device=device, backend=backend, amp=amp,
        augment=augment, workers=workers, out=str(out) if out else None, exist_ok=exist_ok or None, exclude=exclude or None,
    )

    def on_epoch(row: dict) -> None:
        if not quiet:
            err.print(f"epoch {row['epoch']:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                      f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}")

    dataset = load_image_folder(Path(cfg.data), cfg.val_split, cfg.seed, cfg.exclude)  # a bad DATA is said at once
    from camcli.train import check_extras, fit

    check_extras(cfg)

    starting = f"train: loading {cfg.arch}…"
    with _make_engine(engine, ray_address, ray_workers, quiet) as runner, _progress(quiet, starting) as progress:
        result = fit(cfg, progress=progress, on_epoch=on_epoch, notify=None if quiet else _say, engine=runner, dataset=dataset)
    if not quiet:
        err.print(f"{result.num_train} train / {result.num_val} val images, {len(result.class_names)} classes; "
                  f"best val acc {result.best['val_acc']:.3f} (epoch {result.best['epoch']})")
    typer.echo(printable(f"Results saved to {result.run_dir}"))


def _near_ties(near_ties: int, count: int, quiet: bool) -> None:
    """With --precision int8: how many images were near ties that ran again in fp32 (their rows say so)."""
    if near_ties and not quiet:
        _say(f"{near_ties} of {count} image{'s' * (count != 1)} ran again in fp32: INT8 put their two best classes "
             "too close to call")


def _finish(count: int, failed: int, allow_failures: bool) -> None:
    """Exit 1 when some inputs failed (each was reported as it came), unless allowed."""
    if failed:
        err.print(f"{failed} of {count} inputs failed")
        if not allow_failures:
            raise typer.Exit(1)


def _emit(rows: Iterator[dict], options: RowOptions, overlay: bool, guard=None, carried: list | None = None) -> tuple[int, int, int]:
    """Write rows in the chosen format; report each failed input on stderr as it comes.

    Interrupted (Ctrl-C) or stopped by an error, an ``--output`` file still gets every row finished
    before, whole (then the interruption or the error goes on). ``carried``: rows of the previous ``--output`` file to keep
    (see :func:`_previous_rows`), written first.

    Returns:
        (rows written, inputs that failed, INT8 near ties that ran in fp32).
    """
    failed = near_ties = 0
    interrupted: list[BaseException] = []

    def reported(source: Iterator[dict]) -> Iterator[dict]:
        nonlocal failed, near_ties
        try:
            for row in source:
                near_ties += row.get("precision") == "fp32"
                if "error" in row:  # a message about one input (its name shown as it is): no flags to translate
                    failed += 1
                    err.print(Text.assemble(("failed:", "red"), " ", printable(row["error"])))
                yield row
        except (KeyboardInterrupt, CamcliError) as exc:  # Ctrl-C, or an error that stops the run (a manifest replaced)
            if options.output is None:
                raise
            interrupted.append(exc)  # the rows so far are written and the file is closed first

    fmt, output = choose_format(options.fmt, options.output, is_tty(sys.stdout)), options.output
    if output is None:  # on a terminal, csv cells show control characters escaped (names can hold escape sequences)
        shown = printable if is_tty(sys.stdout) else None
        count = (_print_table(reported(rows), overlay, None) if fmt == "table"
                 else write_rows(reported(rows), fmt, sys.stdout, shown=shown))
        return count, failed, near_ties
    with atomic_open(output, "w", guard.recorder(output) if guard else None) as stream:
        count = _print_table(reported(rows), overlay, stream) if fmt == "table" else write_rows(reported(rows), fmt, stream, carried)
    if interrupted:
        raise interrupted[0]
    return count, failed, near_ties


def _same_file(path: str | Path) -> str:
    """A key for a path that is the same for every spelling of one file (see files.real_path)."""
    return str(real_path(Path(path)))


def _previous_rows(options: RowOptions) -> list[tuple[str, object]] | None:
    """The rows of an existing ``--output`` file, for a resumed run (see results.previous_rows);
    None without one (or for a table, which is not read back)."""
    output = options.output
    fmt = choose_format(options.fmt, output, is_tty(sys.stdout))
    if output is None or fmt == "table" or not output.is_file():
        return None
    try:
        return previous_rows(read_text(output, 1 << 30, "--output"), fmt)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CamcliError(f"--output {output} does not hold {fmt} rows as camcli writes them, so --skip-existing cannot "
                          "complete it: choose another --output") from exc


def _guard_output(output: Optional[Path], protected: list, overwrite: bool, results: bool = True):
    """Check --output (the results file, or export's model) before any work (see files.guard_output_file);
    None without --output."""
    if output is None:
        return None
    if results and output.suffix.lower() in MODEL_SUFFIXES:
        raise CamcliError(f"--output {output}: results are text (table, csv, json, jsonl); {output.suffix} names a model or "
                          "array file, which results would replace")
    return guard_output_file(output, [Path(p) for p in protected if p is not None and str(p) != "-"], overwrite)


def _print_table(rows: Iterator[dict], overlay: bool, stream=None) -> int:
    table = Table()
    table.add_column("path", overflow="fold", ratio=3)
    table.add_column("top-1", overflow="fold", ratio=1)
    table.add_column("prob", justify="right", no_wrap=True)
    table.add_column("others", overflow="fold", ratio=2)
    if overlay:
        table.add_column("outputs", overflow="fold", ratio=3)
    count = 0
    for row in rows:
        count += 1
        cells, failed = table_cells(row, overlay)
        shown = [printable(c) for c in cells]
        table.add_row(*shown[:1], Text("failed", style="red") if failed else shown[1], *shown[2:])
    _end_bars()  # the table follows the finished bar, on its own line
    # off a terminal (a pipe, a file) nothing wraps: each column is as wide as its longest cell
    if stream is None and is_tty(sys.stdout):
        _stdout_console(soft_wrap=False).print(table)
    else:
        _stdout_console(file=stream, width=100_000).print(table)
    return count


Inputs = Annotated[list[str], typer.Argument(metavar="input", help="Image files, folders (recursive), or - to read paths from "
    "stdin.", show_default=False)]
BoxThreshold = Annotated[Optional[float], typer.Option(help="Box around the largest region above this fraction of the normalized map "
    f"[default: the checkpoint's calibrated threshold, else {PAPER_THRESHOLD}].")]


def _checked(spec_of: ModelOptions, *jobs_and_more):
    """Every check that needs no model, in one place, before any model loads: the spec's, each job's."""
    spec = spec_of.spec()
    for item in jobs_and_more:
        item.validate()
    return spec


@app.command(short_help="Rank classes for every image.")
@_report_errors
@_expand_groups
def predict(
    inputs: Inputs,
    model: ModelOptions,
    mapping: MapOptions,
    run: RunOptions,
    rows: RowOptions,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --output replace an existing file camcli did not write.")] = False,
    boxes: Annotated[bool, typer.Option("--boxes", help="Add the top-1 class's CAM box to each row (original-image pixels).")] = False,
    box_threshold: BoxThreshold = None,
) -> None:
    """Rank classes by softmax for every image.

    \b
    Example: camcli predict photos/ --checkpoint runs/train/exp/best.safetensors --format jsonl
    """
    from itertools import chain, islice

    from camcli.data import iter_images
    from camcli.jobs import PredictJob

    job = PredictJob(rows.top_k, boxes, box_threshold, mapping.sizes(), mapping.one_method(), run.batch_size, run.threads(),
                     smooth=mapping.smooth())
    spec, engine = _checked(model, job), run.make_engine()
    guard = _guard_output(rows.output, [*inputs, model.checkpoint], overwrite)
    walk = iter_images(inputs, exclude=run.exclude or ())
    head = list(islice(walk, 1024))  # the rest of the walk streams while the first rows come out
    if not head:
        raise CamcliError(f"no images found in {', '.join(inputs)}")
    loaded = _load(spec, run.quiet)
    job, work = job.bind(loaded, head if len(head) < 1024 else chain(head, walk))  # a list when the walk is done: known total
    with engine, _progress(run.quiet) as progress:
        count, failed, near_ties = _emit(engine.run(job, loaded, work, progress), rows, overlay=False, guard=guard)
    _near_ties(near_ties, count - failed, run.quiet)
    _finish(count, failed, rows.allow_failures)


@app.command(short_help="Write CAM heatmap overlays of images.")
@_report_errors
@_expand_groups
def overlay(
    inputs: Inputs,
    model: ModelOptions,
    mapping: MapOptions,
    class_name: Annotated[Optional[list[str]], typer.Option("--class", metavar="<name>",
                                                         help="Map this class (repeatable) [default: top-1].")] = None,
    class_index: Annotated[Optional[list[int]], typer.Option(metavar="<int>", help="Map this class index (repeatable).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="Write under this folder, each INPUT mirrored as OUT_DIR/<INPUT name>/ [default: "
        "next to each input].")] = None,
    colormap: Annotated[Literal[COLORMAPS], typer.Option(metavar="<name>", help=f"OpenCV colormap: {', '.join(COLORMAPS)}.")] = "jet",
    alpha: Annotated[float, typer.Option(help="Heatmap weight in the blend, 0..1.")] = ALPHA,
    caption: Annotated[bool, typer.Option(help="Draw the label and its probability [default: on].", show_default=False)] = True,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write the raw float32 map at feature "
        "resolution beside each overlay, as .npy (<stem>_cam.npy, ...).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files camcli did not write.")] = False,
    box_threshold: BoxThreshold = None,
    draw_box: Annotated[bool, typer.Option("--draw-box", help="Draw the box on the overlay.")] = False,
    normalize: Annotated[Literal[NORMALIZATIONS], typer.Option(help="Heatmap scale: shared (ReLU, one scale for all maps of an "
        "image, so weak classes look weak: cam's maps share the logit's scale; a gradient method's map is scaled to its own "
        "maximum times its probability relative to the most probable mapped class), relu (ReLU, each map to its own maximum) "
        "or minmax (each map on its own, no ReLU: the "
        "original tutorial's, where a class without evidence still shows a hot region). Boxes always threshold the min-max "
        "map.")] = "shared",
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Resume: only process inputs whose outputs camcli has not "
        "written yet.")] = False,
    maps: Annotated[int, typer.Option("--maps", help="Write the maps of the top-K classes: "
        "<stem>_cam_<rank>_<label>.<ext> (0: the classes of --class, else the top-1's, as <stem>_cam.<ext>).")] = 0,
    report: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="Also write a self-contained HTML report here (never overwrites a file).")] = None,
    report_limit: Annotated[int, typer.Option(help="Images in the report at most; the rest are counted as left out.")] = 500,
    run: RunOptions = None,
    rows: RowOptions = None,
) -> None:
    """Write a CAM heatmap blend next to each input image (<stem>_cam.<ext>).

    \b
    Example: camcli overlay photos/ --checkpoint runs/train/exp/best.safetensors --out-dir runs/overlay
    """
    from camcli.data import find_images
    from camcli.jobs import OverlayJob
    from camcli.report import check_report_path, write_overlay_report

    previous = _previous_rows(rows) if skip_existing else None  # a resumed run completes its --output file
    job = OverlayJob(class_name or (), class_index or (), alpha, colormap, caption, save_raw, out_dir, overwrite, mapping.sizes(),
                     box_threshold, draw_box, skip_existing, maps, [rows.output] if rows.output else [], mapping.one_method(), normalize,
                     rows.top_k, run.batch_size, run.threads(),
                     rows_kept=None if previous is None else frozenset(_same_file(p) for p, _ in previous), smooth=mapping.smooth())
    spec, engine = _checked(model, job), run.make_engine()
    if report_limit < 1:
        raise CamcliError(f"--report-limit must be at least 1, got {report_limit}")
    if report is not None:
        check_report_path(report)
    images = find_images(inputs, skip=[out_dir] if out_dir else (), exclude=run.exclude or ())
    guard = _guard_output(rows.output, [*inputs, *(i.path for i in images), model.checkpoint], overwrite)
    loaded = _load(spec, run.quiet)
    job, work = job.bind(loaded, images, None if run.quiet else _say)
    kept: list[dict] = []  # the rows of the report
    written = 0

    def tallied(results: Iterator[dict]) -> Iterator[dict]:
        nonlocal written
        for row in results:
            written += len(row.get("outputs", []))
            if report is not None and len(kept) < report_limit:
                kept.append(row)
            yield row

    with engine, _progress(run.quiet) as progress:
        # kept: the previous rows of this run's inputs that it does not redo, the last row of each (a deleted input's row,
        # or a row no input names, goes); paths compared as files, whatever their spelling (relative, absolute, links)
        redo, inputs = {_same_file(i.path) for i in work}, {_same_file(i.path) for i in images}
        by_file = {} if previous is None else {_same_file(p): item for p, item in previous}
        carried = None if previous is None else [item for key, item in by_file.items() if key in inputs and key not in redo]
        count, failed, near_ties = _emit(tallied(engine.run(job, loaded, work, progress)), rows, overlay=True, guard=guard,
                                         carried=carried)
    if report is not None:
        write_overlay_report(report, kept, count)
        if not run.quiet:
            _say(f"Report saved to {report}")
    if not run.quiet:
        done = count - failed
        _say(f"{written} file{'s' * (written != 1)} written for {done} image{'s' * (done != 1)}"
             + (f" under {out_dir}" if out_dir else " next to the inputs"))
    _near_ties(near_ties, count - failed, run.quiet)
    _finish(count, failed, rows.allow_failures)


@app.command(short_help="Measure accuracy and CAM localization.")
@_report_errors
@_expand_groups
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labeled ImageFolder: DATA/<class>/*, class folders named as in the "
        "checkpoint (with --faithfulness alone, any folder of images).", show_default=False)],
    model: ModelOptions,
    mapping: CompareMapOptions,
    boxes: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="Ground-truth boxes: JSON {rel/path: [x0,y0,x1,y1] or a list}, COCO JSON, or "
        "Pascal VOC XML (file or folder).")] = None,
    box_threshold: Annotated[Optional[float], typer.Option(help="Threshold for GT-known and top-1 localization [default: the "
        f"checkpoint's calibrated threshold, else {PAPER_THRESHOLD}].")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Also write OUT/calibrated.safetensors: the checkpoint with the best "
        "box threshold, which overlay then uses.")] = False,
    faithfulness: Annotated[bool, typer.Option("--faithfulness", help="Also score the map of each image's predicted class "
        "without boxes: average drop and increase in confidence (the input multiplied by the map), deletion and insertion "
        "areas (20 steps, zero baseline), ROAD (needs SciPy: camcli[faithfulness]); about 60 forward passes and 18 sparse "
        "solves per image and method. DATA may then be a plain folder of images.")] = False,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", help="Output format.")] = "table",
    out: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="Folder for metrics.json and the box-accuracy plot [default: "
        "runs/evaluate/expN].")] = None,
    run: RunOptions = None,
) -> None:
    """Measure classification and, with --boxes, CAM localization (pointing game, MaxBoxAcc, MaxBoxAccV2);
    with --faithfulness, how faithful the maps are without boxes.

    \b
    Example: camcli evaluate data/val --checkpoint runs/train/exp/best.safetensors --boxes boxes.json --calibrate
    """
    import json

    from camcli.evaluate import load_boxes
    from camcli.jobs import EvaluateJob

    unmatched: list[str] = []
    truth = load_boxes(boxes, data, unmatched) if boxes is not None else None
    job = EvaluateJob(data, truth, model.checkpoint, box_threshold, mapping.sizes(), calibrate, out, run.exclude or (),
                      mapping.methods(), run.batch_size, run.threads(), faithfulness, smooth=mapping.smooth())
    spec, engine = _checked(model, job), run.make_engine()
    if unmatched and not run.quiet:
        _say(f"note: {len(unmatched)} of the names in {boxes} match no image under {data} (first: {unmatched[0]!r}); "
             "their boxes are not scored")
    loaded = _load(spec, run.quiet)
    job, samples = job.bind(loaded, notify=None if run.quiet else _say)
    with engine, _progress(run.quiet) as progress:
        result = job.finish(loaded, engine.run(job, loaded, samples, progress))
    if fmt == "json":
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "box_acc_curve"}))
    else:
        _print_evaluation(result)
    if not run.quiet and ("by_method" in result):
        _say("seconds per image: " + "; ".join(
            f"{m} " + ", ".join(f"{what.replace('_', ' ')} {spent:.3f}" for what, spent in costs.items())
            for m, costs in result["seconds_per_image"].items()))
    _near_ties(result["settings"].get("near_ties_in_fp32", 0), result["num_images"], run.quiet)
    if not run.quiet:
        if calibrate:
            _say(f"calibrated box threshold {result['best_threshold']:.2f} saved in {job.run_dir / 'calibrated.safetensors'} "
                 "(overlay and predict --boxes with that checkpoint use it)")
        _say(f"Results saved to {job.run_dir}")


def _print_evaluation(result: dict) -> None:
    console = _stdout_console(**({} if is_tty(sys.stdout) else {"width": 200}))  # a file gets whole rows, not 80 columns
    n = result["num_images"]
    summary = Table("metric", "value", title=f"{n} image{'s' * (n != 1)}")
    if "accuracy" in result:
        summary.add_row("accuracy", f"{result['accuracy']:.4f}")
    if "max_box_acc" in result:
        summary.add_row("images with boxes", str(result["num_images_with_boxes"]))
    if summary.row_count:
        console.print(summary)
    for table in _method_tables(result) if "by_method" in result else ():
        console.print(table)
    if "per_class" not in result:  # a folder without labels (--faithfulness only)
        return
    per_class = Table("class", "precision", "recall", "support")
    for name, m in result["per_class"].items():
        per_class.add_row(printable(name), f"{m['precision']:.3f}", f"{m['recall']:.3f}", str(m["support"]))
    console.print(per_class)
    labels = result["confusion"]["labels"]
    confusion = Table("true \\ predicted", *map(printable, labels), title="confusion matrix")
    for label, row in zip(labels, result["confusion"]["matrix"]):
        confusion.add_row(printable(label), *map(str, row))
    console.print(confusion)


def _method_tables(result: dict) -> list[Table]:
    """One row per method: a table of localization (with boxes), one of faithfulness (with --faithfulness)."""
    first = next(iter(result["by_method"].values()))
    tables: list[tuple[str, list[tuple[str, Callable[[dict], str]]]]] = []
    if "max_box_acc" in first:
        tables.append((f"localization ({first['num_images_with_boxes']} images with boxes; higher is better)", [
            ("pointing game", lambda m: f"{m['pointing_game']:.3f}"),
            (f"GT-known loc @ {first['threshold']:.2f}", lambda m: f"{m['gt_known_loc']:.3f}"),
            (f"top-1 loc @ {first['threshold']:.2f}", lambda m: f"{m['top1_loc']:.3f}"),
            ("MaxBoxAcc (threshold)", lambda m: f"{m['max_box_acc']:.3f} ({m['best_threshold']:.2f})"),
            ("MaxBoxAccV2", lambda m: f"{m['max_box_acc_v2']:.3f}")]))
    if "faithfulness" in first:
        tables.append(("faithfulness (lower is better: average drop, deletion, ROAD MoRF; higher: the others)", [
            ("average drop", lambda m: f"{m['faithfulness']['average_drop']:.2f} %"),
            ("increase", lambda m: f"{m['faithfulness']['increase_in_confidence']:.1f} %"),
            ("deletion", lambda m: f"{m['faithfulness']['deletion_auc']:.3f}"),
            ("insertion", lambda m: f"{m['faithfulness']['insertion_auc']:.3f}"),
            ("ROAD MoRF", lambda m: f"{m['faithfulness']['road_morf']:.3f}"),
            ("ROAD LeRF", lambda m: f"{m['faithfulness']['road_lerf']:.3f}"),
            ("ROAD combined", lambda m: f"{m['faithfulness']['road_combined']:.3f}")]))
    out = []
    for title, columns in tables:
        table = Table(title=title)
        table.add_column("method", no_wrap=True)
        for name, _ in columns:
            table.add_column(name)
        for scores in result["by_method"].values():
            table.add_row(printable(scores["method"]), *(cell(scores) for _, cell in columns))
        out.append(table)
    return out


@app.command(short_help="Write a checkpoint as one ONNX model.")
@_report_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from camcli train.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        callback=_a_value, help="The ONNX file to write [default: the checkpoint's path with .onnx].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file camcli did not write.")] = False,
    precision: Annotated[Literal[PRECISIONS], typer.Option(help="fp32, or int8: the backbone's static INT8 model, checked "
        "against fp32 as predict --precision int8 does (refused below the bars: nothing is written).")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(callback=_a_value, help="With --precision int8: a folder of images like "
        "the ones to process [default: the checkpoint's own].")] = None,
    quiet: Quiet = False,
) -> None:
    """Write one self-contained ONNX model: image -> class probabilities and class maps, preprocessing in its metadata.

    \b
    Example: camcli export runs/train/exp/best.safetensors --out model.onnx
    """
    from camcli.export import export_model
    from camcli.factory import ModelSpec, build_model

    spec = ModelSpec(checkpoint=str(checkpoint), device="cpu", precision=precision,
                     calibration=str(calibration) if calibration is not None else None)
    spec.validate()
    out = out or checkpoint.with_suffix(".onnx")
    guard = _guard_output(out, [checkpoint], overwrite, results=False)
    with _status(f"exporting {checkpoint} to ONNX…", quiet):
        measured = export_model(build_model(spec), out, guard.recorder(out))
    if measured["note"] and not quiet:
        _say(measured["note"])
    if not quiet:
        _say(f"checked against camcli: max |Δprob| {measured['max_prob_error']:.1e}, "
             f"max map error {measured['max_map_error']:.1e} (relative)")
    typer.echo(printable(f"Results saved to {out}"))


@app.command(short_help="List the models --arch can name.")
@_report_errors
def models(
    timm_pattern: Annotated[Optional[str], typer.Option("--timm", help="Also list timm models matching this pattern, e.g. "
        "'resnet*'.")] = None,
    fmt: Listing = None,
) -> None:
    """List the models, what their own head gives without a checkpoint (cam or gradcam), and whether
    their pretrained weights are on this machine (no network needed).

    \b
    Example: camcli models --timm 'efficientnet*'
    """

    from camcli.factory import available_models

    fmt = _listing_format(fmt)
    rows, note = available_models(timm_pattern)
    if note:
        _say(note)
    if fmt != "table":
        return _echo_json_rows(rows, fmt)
    table = Table(title=f"{len(rows)} model{'s' if len(rows) != 1 else ''}")
    for column in ("--arch", "source", "maps of its own head", "weights offline", "weights file"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["source"], r["maps"], "yes" if r["weights_offline"] else "no", printable(r["weights_path"]))
    _stdout_console(soft_wrap=False, width=None if is_tty(sys.stdout) else 400).print(table)


Listing = Annotated[Optional[Literal["table", "jsonl", "json"]], typer.Option("--format", help="Output format: jsonl is one JSON "
    "object a line, json one JSON array (info: one object either way) [default: table on a terminal, else jsonl].")]


def _listing_format(fmt: Optional[str]) -> str:
    """models, layers, info: a table on a terminal, JSON lines otherwise."""

    return fmt or ("table" if is_tty(sys.stdout) else "jsonl")


def _echo_json_rows(rows: list[dict], fmt: str) -> None:
    import json

    if fmt == "json":
        typer.echo(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(json.dumps(r))


@app.command(short_help="List the layers --layer can name.")
@_report_errors
def layers(
    arch: Annotated[str, typer.Option(help="A classifier by name (torchvision name, timm:NAME).")] = DEFAULT_ARCH,
    checkpoint: Annotated[Optional[Path], typer.Option(callback=_a_value, help="A checkpoint from camcli train (its layers are "
        "features.*).")] = None,
    all_layers: Annotated[bool, typer.Option("--all", help="Also list layers that cannot be a target (no spatial map).")] = False,
    fmt: Listing = None,
) -> None:
    """List the layers --layer can name: each one's output and map size, the default marked.

    \b
    Example: camcli layers --arch vgg16
    """

    from camcli.factory import ModelSpec, list_layers

    fmt = _listing_format(fmt)
    spec = ModelSpec(checkpoint=str(checkpoint)) if checkpoint is not None else ModelSpec(arch=arch)
    spec.validate()
    rows = [r for r in list_layers(spec) if all_layers or r["grid"]]
    if fmt != "table":
        return _echo_json_rows(rows, fmt)
    table = Table(title=printable(f"{len(rows)} layers of {checkpoint or arch}, in the order they finish"))
    for column in ("--layer", "type", "output", "map", "default"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(printable(r["name"]), printable(r["type"]), "x".join(map(str, r["output"] or [])) or "-",
                      "x".join(map(str, r["grid"] or [])) or "-", "yes" if r["default"] else "")
    _stdout_console(soft_wrap=False).print(table)


@app.command(short_help="Show what a checkpoint holds.")
@_report_errors
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from camcli train.", show_default=False)],
    fmt: Listing = None,
) -> None:
    """Show a checkpoint's arch, classes, input size, training metrics and config.

    \b
    Example: camcli info runs/train/exp/best.safetensors --format json
    """
    import json

    from camcli.checkpoint import describe, load_checkpoint

    fmt = _listing_format(fmt)
    facts = describe(load_checkpoint(checkpoint, tensors=False))
    if fmt != "table":
        typer.echo(json.dumps(facts))
        return
    table = Table("key", "value", title=printable(checkpoint), show_header=False)
    for key, value in facts.items():
        shown = (", ".join(value) if key == "class_names" else json.dumps(value) if isinstance(value, dict)
                 else "-" if value is None else str(value))
        table.add_row(key, printable(shown))
    _stdout_console().print(table)


def main() -> None:
    """Console-script entry point."""
    # file names that are not UTF-8 reach stdout (csv, jsonl) as the bytes they are on disk
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="surrogateescape")
    app(prog_name="camcli")
