"""Terminal output: the stderr console, notes, progress bars and the plain progress lines off a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

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
FLAGS = {"class_names": "--class", "class_indices": "--class-index", "cam_sizes": "--cam-size/--cam-scales"} | {
    name: "--" + name.replace("_", "-") for name in (
        "alpha", "arch", "aug_smooth", "augment", "backend", "batch_size", "box_threshold", "boxes", "calibrate", "calibration",
        "checkpoint",
        "classes", "eigen_smooth", "faithfulness",
        "colormap", "device", "engine", "exclude", "exist_ok", "img_size", "layer", "maps", "max_pixels", "method", "normalize",
        "out", "out_dir", "output", "overwrite", "precision", "ray_address", "ray_workers", "report", "resize", "skip_existing", "top_k",
        "val_split", "weights", "workers")}


def flag(name: str) -> str:
    return FLAGS.get(name, f"`{name}`")


LAST_PROGRESS: dict = {}  # the latest progress report, for the Ctrl-C message

class Rate(ProgressColumn):
    """Images per second since the stage began (when the bar appeared, or the previous stage last
    reported): the loading and Ray's start before it do not count, and a burst of rows from one
    batch does not make it jump."""

    def render(self, task) -> Text:
        first_done, first_time = task.fields.get("first", (0, None))
        now = task.finished_time + task.start_time if task.finished and task.finished_time else time.monotonic()
        if first_time is None or task.completed <= first_done or now <= first_time:
            return Text("")
        return Text(f"{(task.completed - first_done) / (now - first_time):.1f} img/s", style="progress.data.speed")


def record(stage: str, done: int, total: int | None) -> None:
    LAST_PROGRESS.update(stage=stage, done=done, total=total)


@contextmanager
def progress_bar(quiet: bool, starting: str | None = None) -> Iterator[Callable[[str, int, int | None], None]]:
    """A progress callback: it records how far the job got, and draws bars on stderr unless
    quiet or stderr is not a terminal. ``starting``: what happens before the first report,
    shown (a spinner line, or one plain line off a terminal) until it comes."""
    LAST_PROGRESS.clear()
    if quiet:
        yield record
        return
    if not err.is_terminal:
        # CI logs: no animation, a plain line per stage at every tenth of the way
        if starting:
            err.print(starting)
        shown: dict[str, int] = {}

        def plain(stage: str, done: int, total: int | None) -> None:
            record(stage, done, total)
            step = max(1, (total or 0) // 10) if total else 1000
            if done // step > shown.get(stage, -1) or done == total:
                shown[stage] = done // step
                err.print(f"{stage}: {done}" + (f"/{total} ({done / total:.0%})" if total else "") + " images")

        yield plain
        return
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    # stdout is routed around the bar only when it is the same terminal: rows for a file or a pipe go there, never to stderr
    with Progress(*columns, console=err, transient=True, redirect_stdout=is_tty(sys.stdout), redirect_stderr=False) as bar:
        BARS.append(bar)
        tasks: dict[str, int] = {}
        waiting = [bar.add_task(starting, total=None)] if starting else []
        last = [time.monotonic()]  # the latest report of any stage: where a new stage's clock starts

        def update(stage: str, done: int, total: int | None) -> None:
            record(stage, done, total)
            while waiting:
                bar.remove_task(waiting.pop())
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, first=(0, last[0]))
            last[0] = time.monotonic()
            bar.update(tasks[stage], completed=done)

        try:
            yield update
        finally:
            BARS.remove(bar)


@contextmanager
def status(text: str, quiet: bool) -> Iterator[None]:
    """A transient spinner line on a terminal (nothing otherwise) while something slow happens."""
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(text):
        yield


BARS: list[Progress] = []  # the live progress display, which a table printed at the end replaces


def end_bars() -> None:
    """Clear the progress bars (they are transient) so that what follows starts on its own line."""
    for bar in list(BARS):
        bar.stop()


def say_near_ties(near_ties: int, count: int, quiet: bool) -> None:
    """With --precision int8: how many images were near ties that ran again in fp32 (their rows say so)."""
    if near_ties and not quiet:
        say(f"{near_ties} of {count} image{'s' * (count != 1)} ran again in fp32: INT8 put their two best classes "
             "too close to call")


def finish(count: int, failed: int, allow_failures: bool) -> None:
    """Exit 1 when some inputs failed (each was reported as it came), unless allowed."""
    if failed:
        err.print(f"{failed} of {count} inputs failed")
        if not allow_failures:
            raise typer.Exit(1)


