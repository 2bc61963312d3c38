"""camcli export, models, layers and info."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from camcli.cli.app import app, report_errors
from camcli.cli.options import Quiet, a_value
from camcli.cli.output import progress_bar, say, stdout_console
from camcli.cli.rows import guard_output
from camcli.defaults import PRECISIONS
from camcli.files import printable
from camcli.packaged import DEFAULT_ARCH
from camcli.results import is_tty


@app.command(short_help="Write a checkpoint as one ONNX model.")
@report_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from camcli train.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        callback=a_value, help="The ONNX file to write [default: the checkpoint's path with .onnx].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file camcli did not write.")] = False,
    precision: Annotated[Literal[PRECISIONS], typer.Option(help="fp32, or int8: the backbone's static INT8 model, checked "
        "against fp32 as predict --precision int8 does (refused below the bars: nothing is written).")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(callback=a_value, help="With --precision int8: a folder of images like "
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
    guard = guard_output(out, [checkpoint], overwrite, results=False)
    with progress_bar(quiet, f"exporting {checkpoint} to ONNX…", announce=False):  # an INT8 build reports its stages
        measured = export_model(build_model(spec), out, guard.recorder(out))
    if measured["note"] and not quiet:
        say(measured["note"])
    if not quiet:
        say(f"checked against camcli: max |Δprob| {measured['max_prob_error']:.1e}, "
             f"max map error {measured['max_map_error']:.1e} (relative)")
    typer.echo(printable(f"Results saved to {out}"))


@app.command(short_help="List the models --arch can name.")
@report_errors
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

    fmt = listing_format(fmt)
    rows, note = available_models(timm_pattern)
    if note:
        say(note)
    if fmt != "table":
        return echo_json_rows(rows, fmt)
    table = Table(title=f"{len(rows)} model{'s' if len(rows) != 1 else ''}")
    for column in ("--arch", "source", "maps of its own head", "weights offline", "weights file"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["source"], r["maps"], "yes" if r["weights_offline"] else "no", printable(r["weights_path"]))
    stdout_console(soft_wrap=False, width=None if is_tty(sys.stdout) else 400).print(table)


Listing = Annotated[Optional[Literal["table", "jsonl", "json"]], typer.Option("--format", help="Output format: jsonl is one JSON "
    "object a line, json one JSON array [default: table on a terminal, else jsonl].")]
Facts = Annotated[Optional[Literal["table", "jsonl", "json"]], typer.Option("--format", help="Output format: jsonl and json both "
    "give one JSON object [default: table on a terminal, else jsonl].")]


def listing_format(fmt: Optional[str]) -> str:
    """models, layers, info: a table on a terminal, JSON lines otherwise."""

    return fmt or ("table" if is_tty(sys.stdout) else "jsonl")


def echo_json_rows(rows: list[dict], fmt: str) -> None:
    import json

    if fmt == "json":
        typer.echo(json.dumps(rows))
    else:
        for r in rows:
            typer.echo(json.dumps(r))


@app.command(short_help="List the layers --layer can name.")
@report_errors
def layers(
    arch: Annotated[str, typer.Option(help="A classifier by name (torchvision name, timm:NAME).")] = DEFAULT_ARCH,
    checkpoint: Annotated[Optional[Path], typer.Option(callback=a_value, help="A checkpoint from camcli train (its layers are "
        "features.*).")] = None,
    all_layers: Annotated[bool, typer.Option("--all", help="Also list layers that cannot be a target (no spatial map).")] = False,
    fmt: Listing = None,
) -> None:
    """List the layers --layer can name: each one's output and map size, the default marked.

    \b
    Example: camcli layers --arch vgg16
    """

    from camcli.factory import ModelSpec, list_layers

    fmt = listing_format(fmt)
    spec = ModelSpec(checkpoint=str(checkpoint)) if checkpoint is not None else ModelSpec(arch=arch)
    spec.validate()
    rows = [r for r in list_layers(spec) if all_layers or r["grid"]]
    if fmt != "table":
        return echo_json_rows(rows, fmt)
    table = Table(title=printable(f"{len(rows)} layers of {checkpoint or arch}, in the order they finish"))
    for column in ("--layer", "type", "output", "map", "default"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(printable(r["name"]), printable(r["type"]), "x".join(map(str, r["output"] or [])) or "-",
                      "x".join(map(str, r["grid"] or [])) or "-", "yes" if r["default"] else "")
    stdout_console(soft_wrap=False).print(table)


@app.command(short_help="Show what a checkpoint holds.")
@report_errors
def info(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from camcli train.", show_default=False)],
    fmt: Facts = None,
) -> None:
    """Show a checkpoint's arch, classes, input size, training metrics and config.

    \b
    Example: camcli info runs/train/exp/best.safetensors --format json
    """
    import json

    from camcli.checkpoint import describe, load_checkpoint

    fmt = listing_format(fmt)
    facts = describe(load_checkpoint(checkpoint, tensors=False))
    if fmt != "table":
        typer.echo(json.dumps(facts))
        return
    table = Table("key", "value", title=printable(checkpoint), show_header=False)
    for key, value in facts.items():
        shown = (", ".join(value) if key == "class_names" else json.dumps(value) if isinstance(value, dict)
                 else "-" if value is None else str(value))
        table.add_row(key, printable(shown))
    stdout_console().print(table)

