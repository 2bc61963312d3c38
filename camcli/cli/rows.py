"""Result rows of predict and overlay: written as they come, kept whole on Ctrl-C, read back to resume."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from camcli.cli.options import RowOptions
from camcli.cli.output import end_bars, err, stdout_console
from camcli.errors import CamcliError
from camcli.files import atomic_open, guard_output_file, printable, read_text, real_path
from camcli.results import MODEL_SUFFIXES, choose_format, is_tty, previous_rows, table_cells, write_rows


def emit(rows: Iterator[dict], options: RowOptions, overlay: bool, guard=None, carried: list | None = None,
         video: bool = False) -> tuple[int, int, int]:
    """Write rows in the chosen format; report each failed input on stderr as it comes (``video``:
    clips are among the inputs, see :func:`camcli.results.write_rows`; a table shows a clip's own
    row, not its frames').

    Interrupted (Ctrl-C) or stopped by an error, an ``--output`` file still gets every row finished
    before, whole (then the interruption or the error goes on). ``carried``: rows of the previous ``--output`` file to keep
    (see :func:`previous_rows_of`), written first.

    Returns:
        (inputs: rows written but a clip's frame rows, inputs that failed, INT8 images or frames that ran in fp32).
    """
    failed = in_fp32 = frames = 0
    interrupted: list[BaseException] = []
    fmt = choose_format(options.fmt, options.output, is_tty(sys.stdout))

    def reported(source: Iterator[dict]) -> Iterator[dict]:
        nonlocal failed, in_fp32, frames
        try:
            for row in source:
                if "kind" in row and fmt == "csv" and not video:  # its rows need columns the header has not got
                    raise CamcliError(f"{row['path']}: a clip found after the first 1,024 inputs, when the csv's columns were "
                                      "chosen; its frames need the frame and time columns: use --format jsonl, or name the clips "
                                      "first (the rows before it are kept)")
                frames += row.get("kind") == "frame"
                in_fp32 += row.get("precision") == "fp32"
                if "error" in row:  # a message about one input (its name shown as it is): no flags to translate
                    failed += 1
                    err.print(Text.assemble(("failed:", "red"), " ", printable(row["error"])))
                yield row
        except (KeyboardInterrupt, CamcliError) as exc:  # Ctrl-C, or an error that stops the run (a manifest replaced)
            if options.output is None:
                raise  # (stdout has every row so far already)
            interrupted.append(exc)  # the rows so far are written and the file is closed first

    output = options.output
    if output is None:  # on a terminal, csv cells show control characters escaped (names can hold escape sequences)
        shown = printable if is_tty(sys.stdout) else None
        count = (print_table(reported(rows), overlay, None) if fmt == "table"
                 else write_rows(reported(rows), fmt, sys.stdout, shown=shown, video=video))
        return count - frames, failed, in_fp32
    with atomic_open(output, "w", guard.recorder(output) if guard else None) as stream:
        count = (print_table(reported(rows), overlay, stream) if fmt == "table"
                 else write_rows(reported(rows), fmt, stream, carried, video=video))
        if interrupted and not count and not carried:
            raise interrupted[0]  # stopped before the first row: no file (an earlier one stays as it was)
    if interrupted:
        raise interrupted[0]
    return count - frames, failed, in_fp32


@contextlib.contextmanager
def held_interrupts(engine) -> Iterator[None]:
    """While the engine's rows are written: a Ctrl-C lands in the job, never between a row's
    production and its writing (see :class:`camcli.jobs.Interrupts`; an engine without one takes
    Ctrl-C as Python does). One that comes after the job's last step is raised on exit."""
    interrupts = getattr(engine, "interrupts", None)
    if (interrupts is None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):  # Ctrl-C ignored (``trap '' INT``) or handled
        yield
        return
    interrupts.pending = interrupts.seen = False  # an engine that ran before starts afresh
    previous = signal.signal(signal.SIGINT, interrupts.handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupts.pending:
        interrupts.pending = False
        raise KeyboardInterrupt


def same_file(path: str | Path) -> str:
    """A key for a path that is the same for every spelling of one file (see files.real_path)."""
    return str(real_path(Path(path)))


def previous_rows_of(options: RowOptions) -> list[tuple[str, object]] | None:
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


def guard_output(output: Optional[Path], protected: list, overwrite: bool, results: bool = True):
    """Check --output (the results file, or export's model) before any work (see files.guard_output_file);
    None without --output."""
    if output is None:
        return None
    if results and output.suffix.lower() in MODEL_SUFFIXES:
        raise CamcliError(f"--output {output}: results are text (table, csv, json, jsonl); {output.suffix} names a model or "
                          "array file, which results would replace")
    return guard_output_file(output, [Path(p) for p in protected if p is not None and str(p) != "-"], overwrite)


class PathCell:
    """A path in a table cell that wraps at its separators (``/``, and ``, `` between paths), so
    a narrow terminal breaks it between names, never inside one (a name wider than the column
    still folds)."""

    def __init__(self, text: str):
        self.text = text

    def _parts(self) -> list[str]:
        return re.findall(r"[^/,]*(?:/|, ?|$)", self.text)[:-1] or [self.text]

    def __rich_measure__(self, console, options) -> Measurement:
        return Measurement(min(max(map(len, self._parts())), options.max_width), len(self.text))

    def __rich_console__(self, console, options):
        width, line = max(1, options.max_width), ""
        for part in self._parts():
            if line and len(line) + len(part) > width:
                yield from Text(line.rstrip(), overflow="fold").wrap(console, width)
                line = ""
            line += part
        if line:
            yield from Text(line.rstrip(), overflow="fold").wrap(console, width)


def print_table(rows: Iterator[dict], overlay: bool, stream=None) -> int:
    table = Table()
    table.add_column("path")  # a PathCell: wraps between names
    table.add_column("top-1", overflow="fold", ratio=1)
    table.add_column("prob", justify="right", no_wrap=True)
    table.add_column("others", overflow="fold", ratio=2)
    if overlay:
        table.add_column("outputs")
    count = 0
    for row in rows:
        count += 1
        if row.get("kind") == "frame":  # a clip's table row is its own summary
            continue
        cells, failed = table_cells(row, overlay)
        shown = [printable(c) for c in cells]
        paths = [PathCell(shown[0]), *([PathCell(shown[4])] if overlay else [])]
        table.add_row(paths[0], Text("failed", style="red") if failed else shown[1], *shown[2:4], *paths[1:])
    end_bars()  # the table follows the finished bar, on its own line
    # off a terminal (a pipe, a file) nothing wraps: each column is as wide as its longest cell
    if stream is None and is_tty(sys.stdout):
        stdout_console(soft_wrap=False).print(table)
    else:
        stdout_console(file=stream, width=100_000).print(table)
    return count

