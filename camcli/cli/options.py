"""The option groups, declared once: a command takes a group as one parameter, and the group builds
what the library takes (a spec, a job's values)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from camcli import methods
from camcli.cli.output import progress_bar, say
from camcli.defaults import BACKENDS, BATCH_SIZE, DEVICES, ENGINES, FORMATS, MAX_PIXELS, PAPER_THRESHOLD, PRECISIONS, RESIZE_MODES, TOP_K
from camcli.errors import CamcliError, InputMistake
from camcli.packaged import DEFAULT_ARCH


def a_value(param: typer.CallbackParam, value):
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
# A command takes a group as one parameter; expand_groups gives typer its fields as options and
# packs them back into the dataclass. Each group builds what the library takes (a spec, a job's values).

@dataclass
class ModelOptions:
    """The model to load and how to run it (predict, overlay, evaluate)."""

    checkpoint: Annotated[Optional[Path], typer.Option(callback=a_value, help="A checkpoint from camcli train.")] = None
    arch: Annotated[str, typer.Option(help="Without --checkpoint: a classifier with its own head (torchvision name, timm:NAME). "
        "A GAP + linear head gives exact CAM; any other head (vgg16, convnext, a ViT) gives gradient maps.")] = DEFAULT_ARCH
    weights: Annotated[str, typer.Option(callback=a_value, help="Without --checkpoint: imagenet, or the state dict of a whole "
        "classifier trained elsewhere (give its class names with --classes).")] = "imagenet"
    classes: Annotated[Optional[Path], typer.Option(callback=a_value, help="With --weights PATH: a text file of the head's class "
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
    precision: Annotated[Literal[PRECISIONS], typer.Option(help="fp32, or int8: the backbone in INT8 on ONNX Runtime (CPU; whole "
        "commands 1.7x to 2.6x faster here), built once and checked against fp32 (refused, and fp32 used, when they disagree: "
        "the manual's speed page).")] = "fp32"
    calibration: Annotated[Optional[Path], typer.Option(callback=a_value, help="With --precision int8: a folder of images like "
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


METHOD_CHOICES = "<name>"  # --method's metavar (the help names the choices)


def complete_method(incomplete: str) -> list[str]:
    """Shell completion of --method: the registry's names that start as typed."""
    return [m for m in (methods.AUTO, *methods.NAMES) if m.startswith(incomplete)]


def method_choices(values: list[str] | None) -> list[str] | None:
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
    method: Annotated[Optional[list[str]], typer.Option(callback=method_choices, metavar=METHOD_CHOICES, autocompletion=complete_method,
        help=methods.help_text(), show_default=methods.AUTO)] = None
    aug_smooth: Annotated[bool, typer.Option("--aug-smooth", help="Average the maps of the input flipped or not, times 0.9, "
        "1 and 1.1 (pytorch-grad-cam's aug_smooth: 6 forward passes).")] = False
    eigen_smooth: Annotated[bool, typer.Option("--eigen-smooth", help="Combine each method's per-channel terms by their first "
        "principal component instead of their sum (pytorch-grad-cam's eigen_smooth).")] = False
    top_channels: Annotated[Optional[int], typer.Option(metavar="K", help="With --method scorecam: score only the K channels of "
        "largest activation variance (Faster Score-CAM): K forward passes per image instead of one per channel (the manual's "
        "methods page gives the maps' agreement with exact Score-CAM against K) [default: every channel].")] = None

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
        callback=method_choices, metavar=METHOD_CHOICES, autocompletion=complete_method,
        help="Repeatable: every method's metrics side by side, one row each "
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
        return make_engine(self.engine, self.ray_address, self.ray_workers, self.quiet)


@dataclass
class RowOptions:
    """The result rows of predict and overlay."""

    top_k: Annotated[int, typer.Option(help="Classes per image.")] = TOP_K
    fmt: Annotated[Optional[Literal[FORMATS]], typer.Option("--format", help="Output format [default: from the --output suffix "
        "(.csv, .json, .jsonl), else table on a terminal, else jsonl]. json and table print when all images are done.")] = None
    output: Annotated[Optional[Path], typer.Option(callback=a_value, help="Write results to this file instead of stdout.")] = None
    allow_failures: Annotated[bool, typer.Option("--allow-failures", help="Exit 0 even when some inputs could not be read.")] = False


@dataclass
class VideoOptions:
    """Which frames of the clips among the inputs (predict, overlay)."""

    every: Annotated[int, typer.Option(metavar="N", help="Clips: take every Nth frame.")] = 1
    fps: Annotated[Optional[float], typer.Option(metavar="F", help="Clips: take frames at this rate instead (the frame at or "
        "after each 1/F second).")] = None
    start: Annotated[float, typer.Option(metavar="SECONDS", help="Clips: start this far in.")] = 0.0
    end: Annotated[Optional[float], typer.Option(metavar="SECONDS", help="Clips: stop here [default: the end].")] = None

    def sampling(self):
        from camcli.video import Sampling

        return Sampling(self.every, self.fps, self.start, self.end)

    def note_unused(self, inputs, quiet: bool, **others: bool) -> None:
        """With no clip among ``inputs``, say which clip options (these, and ``others`` given) do nothing."""
        from camcli.video import is_video

        given = [name for name, on in {"--every": self.every != 1, "--fps": self.fps is not None, "--start": self.start != 0,
                                       "--end": self.end is not None, **others}.items() if on]
        if given and not quiet and not any(is_video(i.path) for i in inputs):
            say(f"note: no clip among the inputs: {', '.join(given)} apply only to clips")


def expand_groups(command: Callable) -> Callable:
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


def make_engine(engine: str, address: Optional[str], workers: Optional[int], quiet: bool = False):
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
    return RayEngine(options, None if quiet else say)


def load_model(spec, quiet: bool):
    """The model of a checked spec, ready to run; its one-line note (an export made, a fallback) on stderr."""
    from camcli.factory import build_model

    what = "building and checking an INT8 model (first use of this calibration)…" if spec.precision == "int8" else "loading the model…"
    with progress_bar(quiet, what, announce=False):  # an INT8 build reports its stages
        model = build_model(spec)
        note = model.prepare()
    if note and not quiet:
        say(note)
    return model



Inputs = Annotated[list[str], typer.Argument(metavar="INPUT", help="Image files, folders (recursive), or - to read paths from "
    "stdin.", show_default=False)]
BoxThreshold = Annotated[Optional[float], typer.Option(help="Box around the largest region above this fraction of the normalized map "
    f"[default: the checkpoint's calibrated threshold, else {PAPER_THRESHOLD}].")]


def checked(spec_of: ModelOptions, *jobs_and_more):
    """Every check that needs no model, in one place, before any model loads: the spec's, each job's."""
    spec = spec_of.spec()
    for item in jobs_and_more:
        item.validate()
    return spec




def say_sanity_cost(model, job, quiet: bool) -> None:
    """Before ``evaluate --sanity``: its steps, and what they will cost."""
    from camcli.jobs import method_names
    from camcli.sanity import cascade, seconds_per_image

    if quiet or not job.sanity:
        return
    steps = cascade(model)
    images, names = len(job.sanity_paths), method_names(job.method)
    runs = len(steps.steps) + 1 + job.data_randomization
    comparisons = (runs - 1) * images * len(names)
    seconds = runs * images * seconds_per_image(model, names, job.smooth, job.top_channels, job.cam_sizes)
    say(f"sanity: {len(steps.steps)} randomization steps ({steps.how}){' and a head fitted on shuffled labels' * job.data_randomization}"
        f" x {images} image{'s' * (images != 1)} x {len(names)} method{'s' * (len(names) != 1)}: {runs * images:,} model runs "
        f"and {comparisons:,} map comparisons, about {_duration(seconds)} here (--sanity-images bounds it)")


def say_scorecam_cost(model, job, images: int | None, quiet: bool) -> None:
    """Before a Score-CAM run: what it will cost (one forward pass per channel of every image);
    ``images`` None when the count is not known yet."""
    from camcli.engine import scorecam_cost
    from camcli.jobs import method_names

    if quiet or images == 0 or "scorecam" not in method_names(job.method):
        return
    per_image, passes, seconds = scorecam_cost(model, images, job.top_channels, job.smooth, job.cam_sizes)
    per = "one forward pass per channel of the target layer" if per_image is None else f"up to {per_image:,} forward passes"
    about = "" if passes is None else (f"{images:,} image{'s' * (images != 1)}: up to {passes:,} passes, "
                                       f"about {_duration(passes * seconds)} here")
    if per_image is not None and passes is None:
        about = f"about {_duration(per_image * seconds)} an image here"
    hint = "" if job.top_channels is not None else "--top-channels K bounds it"
    details = "; ".join(part for part in (about, hint) if part)
    say(f"note: Score-CAM scores {per} per image" + (f" ({details})" if details else ""))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
