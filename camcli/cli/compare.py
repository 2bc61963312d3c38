"""camcli compare."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Column, Table

from camcli.cli.app import app, report_errors
from camcli.cli.options import (
    Engine,
    Inputs,
    Quiet,
    RayAddress,
    RayWorkers,
    Workers,
    a_value,
    complete_method,
    load_model,
    make_engine,
    method_choices,
)
from camcli.cli.output import end_bars, finish, progress_bar, reader_gone, say, say_verdicts, stdout_console, verdict_exit
from camcli.cli.rows import guard_output
from camcli.defaults import BATCH_SIZE, DEVICES, PAPER_THRESHOLD, PRECISIONS
from camcli.errors import CamcliError, os_error
from camcli.files import printable
from camcli.results import is_tty

Model = Annotated[str, typer.Option(metavar="MODEL", help="A checkpoint path, or arch:NAME for a classifier with its own "
    "ImageNet head (arch:efficientnet_lite0, arch:timm:resnet50).", show_default=False)]
Precision = Annotated[Literal[PRECISIONS], typer.Option(help="fp32, or int8 (its INT8 backbone, as --precision int8).")]


def model_spec(text: str, side: str, precision: str, calibration: Path | None, device: str):
    """The ModelSpec of ``--base`` or ``--candidate``, checked: ``arch:NAME`` is an architecture, anything else a path."""
    from camcli.factory import ModelSpec

    if text.startswith("arch:"):
        if not text[5:]:
            raise CamcliError(f"`{side}` arch: needs a name, e.g. arch:efficientnet_lite0")
        spec = ModelSpec(arch=text[5:], device=device)
    else:
        spec = ModelSpec(checkpoint=text, device=device)
    spec = replace(spec, precision=precision, calibration=str(calibration) if calibration is not None and precision == "int8" else None)
    spec.validate()
    return spec


@app.command(short_help="Compare two models' rankings and maps on the same images.")
@report_errors
def compare(
    inputs: Inputs,
    base: Model,
    candidate: Model,
    base_precision: Precision = "fp32",
    candidate_precision: Precision = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(callback=a_value, help="With an int8 side: a folder of images like the "
        "ones to process [default: the checkpoint's own].")] = None,
    method: Annotated[Optional[list[str]], typer.Option(callback=method_choices, metavar="<name>", autocompletion=complete_method,
        help="How both maps are made (camcli overlay --help lists them); repeatable: each method compared, the first one's "
        "in the report [default: each model's own: CAM, else Grad-CAM].")] = None,
    top_channels: Annotated[Optional[int], typer.Option(metavar="K", help="With --method scorecam: score the K channels of "
        "largest variance.")] = None,
    box_threshold: Annotated[float, typer.Option(help="The box threshold of map_iou (a fraction of each normalized map).")]
        = PAPER_THRESHOLD,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", callback=a_value, help="Write the per-image rows to this "
        "file (jsonl, csv or json, by suffix or --format).")] = None,
    fmt: Annotated[Optional[Literal["jsonl", "csv", "json"]], typer.Option("--format", help="Rows' format [default: the "
        "--output suffix's; on stdout: jsonl, or only the summary on a terminal].")] = None,
    out: Annotated[Optional[Path], typer.Option(callback=a_value, help="Folder for comparison.json and report.html (the "
        "most-changed images side by side).")] = None,
    report_limit: Annotated[int, typer.Option(help="Images in --out's report.html, most changed first.")] = 24,
    require: Annotated[Optional[list[str]], typer.Option(metavar="'METRIC OP VALUE'", help="A gate on the summary, e.g. "
        "'top1_agreement>=0.98' (repeatable; exit 4 when one fails). METRIC: num_images, top1_agreement, map_spearman_median, "
        "map_spearman_p10, map_iou_median, map_iou_p10, peak_shift_median, peak_shift_p90, num_failed; with several "
        "--method, each method's as by_method.<method>.map_spearman_median, ....")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --output replace a file camcli did not write.")] = False,
    allow_failures: Annotated[bool, typer.Option("--allow-failures", help="Exit 0 even when some inputs failed.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decoded and run together.")] = BATCH_SIZE,
    workers: Workers = None,
    device: Annotated[Literal[DEVICES], typer.Option(help="Where both models run.")] = "auto",
    exclude: Annotated[Optional[list[str]], typer.Option(metavar="GLOB", help="Glob pattern of images to leave out "
        "(repeatable).")] = None,
    engine: Engine = "local",
    ray_address: RayAddress = None,
    ray_workers: RayWorkers = None,
    quiet: Quiet = False,
) -> None:
    """Run a base and a candidate model on the same images: do they rank alike, and do their maps
    of the base's top-1 class still look at the same place (map Spearman, box IoU, peak shift)?

    \b
    Example: camcli compare data/val --base runs/old/best.safetensors --candidate runs/new/best.safetensors \\
             --out runs/compare --require "top1_agreement>=0.98" --require "map_spearman_median>=0.8"
    """
    from camcli import gates
    from camcli.comparison import MAP_SUMMARY, SUMMARY, CompareJob, Summary, write_outputs, write_rows
    from camcli.config import default_workers
    from camcli.data import iter_images
    from camcli.files import OutputGuard, atomic_open
    from camcli.results import choose_format

    requirements = gates.parse_all(require or [])
    names = tuple(dict.fromkeys(method or ["auto"]))
    if report_limit < 0:
        raise CamcliError(f"`report_limit` must be 0 or more, got {report_limit}")
    if calibration is not None and "int8" not in (base_precision, candidate_precision):
        raise CamcliError("`calibration` is for an int8 side (`base_precision` or `candidate_precision` int8)")
    per_method = [f"by_method.{m}.{k}" for m in names for k in MAP_SUMMARY] if len(names) > 1 else []
    gates.check_known(requirements, [*SUMMARY, "num_failed", *per_method], "compare", "see camcli compare --help")
    job = CompareJob(names[0] if len(names) == 1 else names, box_threshold, batch_size,
                     default_workers() if workers is None else workers, top_channels)
    job.validate()
    specs = [model_spec(text, side, precision, calibration, device) for text, side, precision in
             ((base, "base", base_precision), (candidate, "candidate", candidate_precision))]
    runner = make_engine(engine, ray_address, ray_workers, quiet)
    fmt = choose_format(fmt, output, is_tty(sys.stdout))
    guard = guard_output(output, [*inputs, base, candidate], overwrite)
    outputs = OutputGuard({Path(p).resolve() for p in (base, candidate) if not p.startswith("arch:")},
                          remedy="compare replaces only its own earlier results: choose another --out")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise CamcliError(f"cannot write to {out}: {out} is not a folder")
        for name in ("comparison.json", "report.html"):
            if output is not None and output.resolve() == (out / name).resolve():
                raise CamcliError(f"--output {output} is the --out folder's {name}: choose another path for the rows")
            outputs.check(out / name)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, f"cannot write to {out}") from exc
    images = list(iter_images(inputs, exclude=exclude or ()))
    if not images:
        raise CamcliError(f"no images found in {', '.join(inputs)}")
    models = tuple(load_model(spec, quiet) for spec in specs)
    job, work = job.bind(models, images)
    summary = Summary(report_limit if out is not None else 0)

    def rows(progress):
        for row in runner.run(job, models, work, progress):
            summary.add(row)
            if "error" in row and not quiet:
                end_bars()
                say(f"failed: {row['error']}")
            yield row

    with runner, progress_bar(quiet) as progress:
        if output is not None:
            with atomic_open(output, "w", guard.recorder(output) if guard else None) as stream:
                write_rows(rows(progress), fmt, stream, names[1:])
        elif fmt == "table":
            for _ in rows(progress):
                pass
        else:
            write_rows(rows(progress), fmt, _UntilClosed(sys.stdout), names[1:])
    result = summary.result()
    settings = {"base": base, "candidate": candidate, "base_precision": base_precision,
                "candidate_precision": candidate_precision, "method": [m.resolve_method(names[0]) for m in models],
                **({"methods": {n: [m.resolve_method(n) for m in models] for n in names}} if len(names) > 1 else {}),
                "box_threshold": box_threshold, "inputs": [str(i) for i in inputs]}
    if requirements:
        result["requirements"] = gates.verdicts(requirements, result)
    say_verdicts(result.get("requirements", []))  # before the summary goes to stdout
    if out is not None:
        with progress_bar(quiet, "report: the most-changed images, side by side…"):
            write_outputs(out, result, job.most_changed(models, summary.most_changed()), settings, outputs)
    if fmt == "table" or output is not None:
        print_summary(result)
    if not quiet and out is not None:
        say(f"Results saved to {out}")
    failed = result["num_failed"]
    finish(failed + result["num_images"], failed, allow_failures)  # exit 1: failed inputs win over 4
    verdict_exit()


class _UntilClosed:
    """stdout for rows that stops writing once its reader has gone (``| head``): the run goes on
    to the end, so that its requirements are still judged."""

    def __init__(self, stream) -> None:
        self.stream, self.closed = stream, False

    def write(self, text: str) -> None:
        if not self.closed:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self.closed = True
                reader_gone()

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.closed = True


def print_summary(result: dict) -> None:
    table = Table("metric", "value", title=f"{result['num_images']} images compared")
    for key, value in result.items():
        if key not in ("requirements", "by_method"):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    stdout_console().print(table)
    if "by_method" in result:
        from camcli.comparison import MAP_SUMMARY

        by_method = Table(*(k.replace("_", " ") for k in MAP_SUMMARY), title="the maps, by method")
        by_method.columns.insert(0, Column("method", no_wrap=True))
        for name, stats in result["by_method"].items():
            by_method.add_row(printable(name), *(f"{stats[k]:.4f}" for k in MAP_SUMMARY))
        stdout_console().print(by_method)
