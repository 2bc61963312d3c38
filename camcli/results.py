"""Result formats, in one place: table, csv, json and jsonl rows; the format an ``--output``
suffix names; the terminal rule; the CSV formula guard.

A row is ``{"path": str, "predictions": [{"label", "index", "prob"}, ...]}``; overlay rows add
``"outputs"`` and ``"box"``, failed inputs ``"error"``. Readers must ignore keys they do not know.
The table is drawn by the command line (rich); its cells come from :func:`table_cells`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

FORMATS_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".csv": "csv"}
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".onnx", ".npy")  # files results must never replace


def choose_format(fmt: str | None, output: Path | None, stdout_is_tty: bool) -> str:
    """The format asked for; else the one ``output``'s suffix names; else ``table`` for a person
    at a terminal and ``jsonl`` for a pipe or file."""
    if fmt is None and output is not None:
        fmt = FORMATS_BY_SUFFIX.get(output.suffix.lower())
    return fmt or default_format(output is None and stdout_is_tty)


def default_format(stdout_is_tty: bool) -> str:
    """``table`` for a person at a terminal, ``jsonl`` for a pipe or file."""
    return "table" if stdout_is_tty else "jsonl"


def is_tty(stream: object) -> bool:
    try:
        return os.isatty(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


CSV_COLUMNS = ("path", "rank", "label", "index", "prob", "outputs", "box", "error")
# with clips among the inputs: which row (image, frame, clip), the frame's index and time, a clip's top-1 share
VIDEO_CSV_COLUMNS = ("path", "kind", "frame", "time", "rank", "label", "index", "prob", "top1_share", "outputs", "box", "error")


def json_safe(value: object) -> object:
    """``value`` with every float that is not finite (NaN: a metric with nothing to measure) as
    None, so that ``json.dumps`` writes standard JSON (``null``), not ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def csv_cell(text: str) -> str:
    """Text from outside (paths, labels) for a CSV cell: a leading ``'`` where a spreadsheet
    would take the cell for a formula (OWASP's CSV-injection rule: = + - @ tab CR), and before a
    leading ``'`` too, so that the quote can be taken off again without doubt (:func:`_uncell`)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else text


def write_rows(rows: Iterator[dict], fmt: str, stream, carried: list | None = None,
               shown: Callable[[str], str] | None = None, video: bool = False) -> int:
    """Write rows to a text stream as csv, json or jsonl; returns how many were written.

    jsonl and csv stream (flushed per row); json needs every row and writes at the end.
    ``carried``: a previous results file's rows to keep, written first (see :func:`previous_rows`).
    ``shown``: applied to csv's text cells (a terminal's: control characters escaped; JSON
    escapes them itself). ``video``: clips are among the inputs: csv gets
    :data:`VIDEO_CSV_COLUMNS` (without clips, rows of images are what they always were).
    """
    count = 0
    cell = csv_cell if shown is None else (lambda text: shown(csv_cell(text)))
    carried = carried or []
    if fmt == "json":
        everything = carried + list(rows)
        stream.write(json.dumps(everything, indent=2) + "\n")
        return len(everything) - len(carried)
    # RFC 4180's CRLF: a field holding a CR or LF (a file name may) is then always quoted
    writer = csv.writer(stream, lineterminator="\r\n") if fmt == "csv" else None
    if writer:
        writer.writerow(VIDEO_CSV_COLUMNS if video else CSV_COLUMNS)
        writer.writerows(carried)
    else:
        stream.writelines(carried)
    for row in rows:
        if writer:
            box = row.get("box")
            where = [row.get("kind", "image"), row.get("frame", ""), row.get("time", "")] if video else []
            for rank, p in enumerate(row["predictions"], start=1):
                share = [f"{p['top1_share']:.6g}" if "top1_share" in p else ""] if video else []
                writer.writerow([
                    cell(row["path"]), *where, rank, cell(p["label"]), p["index"], f"{p['prob']:.6g}", *share,
                    cell(";".join(row.get("outputs", []))), " ".join(map(str, box)) if box else "", "",
                ])
            if "error" in row:
                writer.writerow([cell(row["path"]), *where, "", "", "", "", *([""] if video else []), "", "", cell(row["error"])])
        elif fmt == "jsonl":
            stream.write(json.dumps(row) + "\n")
        else:
            raise ValueError(f"unknown format {fmt!r}")
        stream.flush()
        count += 1
    return count


def previous_rows(text: str, fmt: str) -> list[tuple[str, object]]:
    """The rows of a previous results file (``text``, in ``fmt``) as (input path, what
    :func:`write_rows` takes as ``carried``: a jsonl line, a csv record or a json row), so that a
    resumed run (``skip_existing``) completes the file.

    Raises:
        ValueError: the text is not ``fmt`` rows as camcli writes them.
    """
    if fmt == "jsonl":
        return [(str(json.loads(line)["path"]), line + "\n") for line in text.splitlines() if line.strip()]
    if fmt == "json":
        rows = json.loads(text) if text.strip() else []
        if not isinstance(rows, list):
            raise ValueError("not a list of rows")
        return [(str(row["path"]), row) for row in rows]
    if fmt == "csv":
        records = list(csv.reader(text.splitlines(keepends=True)))
        if records and tuple(records[0]) not in (CSV_COLUMNS, VIDEO_CSV_COLUMNS):
            raise ValueError("not camcli's csv columns")
        width = len(records[0]) if records else len(CSV_COLUMNS)
        return [(_uncell(r[0]), r) for r in records[1:] if len(r) == width]
    raise ValueError(f"{fmt} rows cannot be carried over")


def _uncell(cell: str) -> str:
    """A path as it was before :func:`csv_cell` (which quotes every cell that starts with a formula
    character or a quote)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@", "\t", "\r", "'") else cell


def table_cells(row: dict, overlay: bool) -> tuple[list[str], bool]:
    """One row's table cells (path, top-1, prob, others[, outputs]) and whether it failed."""
    path = f"{row['path']} ({row['frames']:,} frame{'s' * (row['frames'] != 1)})" if row.get("kind") == "clip" else row["path"]
    if "error" in row:
        return [path, "failed", "", row["error"], *([""] if overlay else [])], True
    first, *others = row["predictions"]
    extra = ", ".join(f"{p['label']} {p['prob']:.1%}" for p in others)
    return [path, first["label"], f"{first['prob']:.1%}", extra, *([", ".join(row["outputs"])] if overlay else [])], False
