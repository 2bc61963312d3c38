"""Terminal output: the stderr console, notes, progress bars and the plain progress lines off a terminal."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from camcli import progress
from camcli.defaults import INT8_PROBE_IMAGES
from camcli.errors import flag_names
from camcli.files import printable
from camcli.results import is_tty

# Text from outside (file names, class names, library messages) is never markup: every
# console is made with markup and emoji codes off, and such text passes through `printable`.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def stdout_console(**kwargs) -> Console:
    return Console(highlight=False, markup=False, emoji=False, **kwargs)


def say(text: object) -> None:
    """A note or message on stderr, shown literally (a library note's parameters as flags)."""
    err.print(printable(flag_names(str(text), flag)))


# the library names its parameters (`top_k`); the command line shows its flags (--top-k). Only these names are
# translated, so a backticked word in a file or class name that is no parameter stays as it is
FLAGS = {"class_names": "--class", "class_indices": "--class-index", "cam_sizes": "--cam-size/--cam-scales", "fmt": "--format",
         "class_name": "--class", "all_layers": "--all", "timm_pattern": "--timm"} | {
    name: "--" + name.replace("_", "-") for name in (
        "allow_failures", "alpha", "amp", "arch", "aug_smooth", "augment", "backend", "base", "base_precision", "batch_size",
        "box_threshold", "boxes", "calibrate", "calibration", "cam_scales", "cam_size", "candidate", "candidate_precision",
        "caption", "checkpoint", "class_index", "classes", "colormap", "config", "device", "draw_box", "eigen_smooth", "end",
        "engine", "epochs", "every", "exclude", "exist_ok", "faithfulness", "fps", "frame_images", "img_size", "layer", "lr", "maps",
        "max_pixels", "method", "normalize", "out", "out_dir", "output", "overwrite", "precision", "quiet", "ray_address",
        "ray_workers", "report", "report_limit", "require", "resize", "sanity", "sanity_images", "save_raw", "seed",
        "skip_existing", "start", "temporal_smooth", "top_channels", "top_k", "val_split", "weights", "workers")}


def flag(name: str) -> str:
    return FLAGS.get(name, f"`{name}`")


LAST_PROGRESS: dict = {}  # the latest progress report, for the Ctrl-C message
HEARTBEAT_S = 10.0  # off a terminal, a plain line at least this often while work runs


def unit(stage: str) -> str:
    """What a stage counts: a job's stage counts images (or frames: see :func:`progress_bar`); the
    library's sub-stages name their unit (``int8: rounding convolutions``)."""
    return "" if ":" in stage else f" {LAST_PROGRESS.get('counting', 'images')}"


def _rate(task) -> float | None:
    """Units per second since the stage began (when its bar appeared, or the previous stage last
    reported): the loading and Ray's start before it do not count, and a burst of rows from one
    batch does not make it jump. None before the first unit is done."""
    first_done, first_time = task.fields.get("first", (0, None))
    at = task.fields.get("at")  # when the count last moved
    if first_time is None or at is None or task.completed <= first_done or at <= first_time:
        return None
    return (task.completed - first_done) / (at - first_time)


class Rate(ProgressColumn):
    """The stage's rate: units per second, or seconds per unit when slower than one a second."""

    def render(self, task) -> Text:
        rate = _rate(task)
        if rate is None:
            return Text("")
        return Text(f"{rate:.1f}/s" if rate >= 1 else f"{1 / rate:.1f} s each", style="progress.data.speed")


class Remaining(ProgressColumn):
    """Time left at the stage's rate (rich's own estimate forgets samples older than 30 s, so a
    minute per image would never show one)."""

    def render(self, task) -> Text:
        rate = _rate(task)
        if rate is None or task.total is None:
            return Text("")
        left = max(0.0, (task.total - task.completed) / rate - (time.monotonic() - task.fields["at"]))
        return Text(f"{int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d} left", style="progress.remaining")


class Passes(ProgressColumn):
    """Forward passes since the stage began (every image through the backbone: Score-CAM's masked
    inputs, the faithfulness curves, aug-smooth's copies), read on every refresh, so a screen moves
    while one image takes a minute."""

    def render(self, task) -> Text:
        ran = progress.passes() - task.fields.get("passes", 0)
        return Text(f"{ran:,} passes" if ran > 0 else "", style="progress.data.speed")


def record(stage: str, done: int, total: int | None) -> None:
    LAST_PROGRESS.update(stage=stage, done=done, total=total)


class _Lines:
    """Progress off a terminal (CI logs): a plain line per job stage at every tenth of the way, and
    one at least every :data:`HEARTBEAT_S` seconds while work runs (from a thread; it also tells the
    library's sub-stages, such as an INT8 build's), never animation."""

    def __init__(self, starting: str | None):
        self.starting, self.began = starting, time.monotonic()
        self.last_line, self.shown, self.printed = self.began, {}, {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="camcli-progress", daemon=True)

    def line(self, text: str) -> None:
        self.last_line = time.monotonic()
        err.print(text)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        record(stage, done, total)
        if done == 0 or unit(stage) == "":  # a stage starting, or a library sub-stage (an INT8 build): the heartbeat says them
            return
        step = max(1, total // 10) if total else 1000
        if self.printed.get(stage) == done:  # a result that counts nothing (a clip's own row after its frames)
            return
        if stage not in self.shown or done // step > self.shown[stage] or done == total:
            self.shown[stage], self.printed[stage] = done // step, done
            self.line(f"{stage}: {done}" + (f"/{total} ({done / total:.0%})" if total else "") + unit(stage))

    def _beat(self) -> None:
        while not self.stopped.wait(1.0):
            if time.monotonic() - self.last_line >= HEARTBEAT_S:
                elapsed = f"{time.monotonic() - self.began:.0f} s"
                last = dict(LAST_PROGRESS)  # a copy: the main thread may clear it for the next stage
                if "stage" in last:
                    done, total, stage = last["done"], last["total"], last["stage"]
                    self.line(f"{stage}: {done}" + (f"/{total}" if total else "") + f"{unit(stage)}, "
                              f"{progress.passes():,} forward passes so far, {elapsed}")
                else:
                    self.line(f"{self.starting or 'working'} ({elapsed})")


@contextmanager
def progress_bar(quiet: bool, starting: str | None = None, announce: bool = True,
                 counting: str = "images") -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback: it records how far the job got, and shows it on stderr unless quiet.

    On a terminal: a bar per stage (count, rate, forward passes, elapsed time, time left), drawn
    from the first report (an engine reports 0 when work starts); off a terminal: plain lines (see
    :class:`_Lines`). ``starting``: what happens before the first report, shown until it comes
    (off a terminal: at once when ``announce``, else only in the lines every ten seconds).
    The library's own reports (:func:`camcli.progress.report`: building an INT8 model) go to the
    same callback for the duration. ``counting``: what a job's count counts (``frames``, when
    clips are among the inputs)."""
    LAST_PROGRESS.clear()
    LAST_PROGRESS["counting"] = counting
    if quiet:
        with progress.listening(record):
            yield record
        return
    if not err.is_terminal:
        lines = _Lines(starting)
        if starting and announce:
            lines.line(starting)
        lines.thread.start()
        try:
            with progress.listening(lines):
                yield lines
        finally:
            lines.stopped.set()
            lines.thread.join()  # no line from this stage after it ends
        return
    columns = (TextColumn("{task.description}", markup=False), BarColumn(bar_width=20), MofNCompleteColumn(), Rate(), Passes(),
               TimeElapsedColumn(), Remaining())
    # stdout is routed around the bar only when it is the same terminal: rows for a file or a pipe go there, never to stderr
    with Progress(*columns, console=err, transient=True, redirect_stdout=is_tty(sys.stdout), redirect_stderr=False) as bar:
        BARS.append(bar)
        tasks: dict[str, int] = {}
        counts: dict[str, int] = {}  # each stage's latest count
        waiting = [bar.add_task(starting, total=None, passes=progress.passes())] if starting else []
        last = [time.monotonic()]  # the latest report of any stage: where a new stage's clock starts

        def update(stage: str, done: int, total: int | None) -> None:
            record(stage, done, total)
            while waiting:
                bar.remove_task(waiting.pop())
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, first=(0, last[0]), passes=progress.passes())
            last[0] = time.monotonic()
            moved = {"at": last[0]} if done != counts.get(stage) else {}
            counts[stage] = done
            bar.update(tasks[stage], completed=done, total=total, **moved)

        try:
            with progress.listening(update):
                yield update
        finally:
            BARS.remove(bar)


BARS: list[Progress] = []  # the live progress display, which a table printed at the end replaces


def end_bars() -> None:
    """Clear the progress bars (they are transient) so that what follows starts on its own line."""
    for bar in list(BARS):
        bar.stop()


def probe_failure(model) -> str | None:
    """What the INT8 check of a run's own first inputs found, when it sent the run to fp32 (a
    local run's model; a Ray worker's check stays in the worker, and its rows say fp32)."""
    probe = getattr(model, "int8_probe", None)
    return probe.describe() if probe is not None and probe.failed else None


def say_int8(in_fp32: int, count: int, quiet: bool, probe_failure: str | None = None) -> None:
    """With --precision int8: how many images ran in fp32 (their rows say so): the first inputs,
    which check INT8 on the run's own images, and near ties; with ``probe_failure`` (what that
    check found), every image after it too."""
    if quiet or not in_fp32:
        return
    images = f"{in_fp32} of {count} image{'s' * (count != 1)} ran in fp32"
    if probe_failure:
        say(f"warning: {probe_failure}: {images}; calibrate with images like these (--calibration)")
    else:
        say(f"{images}: the first {INT8_PROBE_IMAGES} check INT8 against fp32 on this run's own inputs, and near ties "
            "(INT8 put their two best classes too close to call) run again")


def reader_gone() -> None:
    """stdout's reader went away (``camcli ... | head``): send what is still written to /dev/null,
    so that neither the rest of the run nor the interpreter's exit fails on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


VERDICT = [0]  # the requirements' exit status (0 or 4), decided before any result goes to stdout (see app.report_errors)


def say_verdicts(verdicts: list[dict]) -> int:
    """One line per requirement on stderr (even with --quiet: they are the run's verdict), before
    any result goes to stdout, so that a reader who closes stdout early cannot hide a failed gate;
    returns the exit status they call for (0, or 4 when one failed), which :func:`verdict_exit` gives."""
    from camcli.gates import describe

    for verdict in verdicts:
        err.print(describe(verdict), markup=False, highlight=False)
    failed = sum(not v["passed"] for v in verdicts)
    if failed:
        err.print(f"{failed} of {len(verdicts)} requirement{'s' * (len(verdicts) != 1)} failed", markup=False, highlight=False)
    VERDICT[0] = 4 if failed else 0
    return VERDICT[0]


def verdict_exit() -> None:
    """Exit 4 when :func:`say_verdicts` found a failed requirement."""
    if VERDICT[0]:
        raise typer.Exit(VERDICT[0])


def finish(count: int, failed: int, allow_failures: bool) -> None:
    """Exit 1 when some inputs failed (each was reported as it came), unless allowed."""
    if failed:
        err.print(f"{failed} of {count} input{'s' * (count != 1)} failed")
        if not allow_failures:
            raise typer.Exit(1)


