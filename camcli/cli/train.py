"""camcli train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from camcli.cli.app import app, report_errors
from camcli.cli.options import RayAddress, RayWorkers, Workers, a_value, make_engine
from camcli.cli.output import err, progress_bar, say
from camcli.defaults import BACKENDS, DEVICES, ENGINES, RESIZE_MODES, TRAIN
from camcli.files import printable
from camcli.packaged import DEFAULT_ARCH


@app.command(short_help="Train a CAM head on an ImageFolder dataset.")
@report_errors
def train(
    data: Annotated[Optional[Path], typer.Argument(help="ImageFolder: DATA/train/<class>/*, DATA/val/<class>/* or "
        "DATA/<class>/*.", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option(
        callback=a_value, help="YAML file of options; flags override it.")] = None,
    arch: Annotated[Optional[str], typer.Option(help=f"Backbone [default: {DEFAULT_ARCH}]: a torchvision CNN name or timm:NAME.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        callback=a_value, help="Backbone weights: imagenet, none, or a state dict path "
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
        callback=a_value, help="Run folder [default: runs/train/expN, never overwritten].")] = None,
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
    with make_engine(engine, ray_address, ray_workers, quiet) as runner, progress_bar(quiet, starting) as progress:
        result = fit(cfg, progress=progress, on_epoch=on_epoch, notify=None if quiet else say, engine=runner, dataset=dataset)
    if not quiet:
        err.print(f"{result.num_train} train / {result.num_val} val images, {len(result.class_names)} classes; "
                  f"best val acc {result.best['val_acc']:.3f} (epoch {result.best['epoch']})")
    typer.echo(printable(f"Results saved to {result.run_dir}"))

