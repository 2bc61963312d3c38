"""camcli evaluate."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from camcli.cli.app import app, report_errors
from camcli.cli.options import (
    CompareMapOptions,
    ModelOptions,
    RunOptions,
    a_value,
    checked,
    expand_groups,
    load_model,
    say_sanity_cost,
    say_scorecam_cost,
)
from camcli.cli.output import progress_bar, say, say_int8, say_verdicts, stdout_console, verdict_exit
from camcli.defaults import PAPER_THRESHOLD, SANITY_IMAGES
from camcli.files import printable
from camcli.results import is_tty, json_safe


@app.command(short_help="Measure accuracy and CAM localization.")
@report_errors
@expand_groups
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labeled ImageFolder: DATA/<class>/*, class folders named as in the "
        "checkpoint (with --faithfulness alone, any folder of images).", show_default=False)],
    model: ModelOptions,
    mapping: CompareMapOptions,
    boxes: Annotated[Optional[Path], typer.Option(
        callback=a_value, help="Ground-truth boxes: JSON {rel/path: [x0,y0,x1,y1] or a list}, COCO JSON, or "
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
        callback=a_value, help="Folder for metrics.json and the box-accuracy plot [default: "
        "runs/evaluate/expN].")] = None,
    sanity: Annotated[bool, typer.Option("--sanity", help="Also check that each method's maps depend on the model (Adebayo et "
        "al. 2018): the head, then the backbone's layers top down, randomized one step at a time, and a head fitted on "
        "shuffled labels; the maps compared with the trained model's (Spearman, SSIM, HOG) in sanity.png and metrics.json. "
        "A method passes when, every layer randomized, its maps' Spearman correlation with the trained ones is within "
        "±0.5; one that fails gives exit 4 "
        "(baselines are shown, not judged). Not with --precision int8.")] = False,
    sanity_images: Annotated[int, typer.Option(help="Images --sanity checks at each step, spread over DATA.")] = SANITY_IMAGES,
    require: Annotated[Optional[list[str]], typer.Option(metavar="'METRIC OP VALUE'", help="A gate on a number in "
        "metrics.json, by its dotted path, e.g. 'accuracy>=0.95' or 'by_method.cam.pointing_game > 0.8' (OP: >=, <=, >, <, "
        "==; repeatable). Each prints PASS or FAIL on stderr; exit 4 when one fails.")] = None,
    run: RunOptions = None,
) -> None:
    """Measure classification and, with --boxes, CAM localization (pointing game, MaxBoxAcc, MaxBoxAccV2);
    with --faithfulness, how faithful the maps are without boxes.

    \b
    Example: camcli evaluate data/val --checkpoint runs/train/exp/best.safetensors --boxes boxes.json --calibrate
    """
    import json

    from camcli.errors import CamcliError
    from camcli.evaluate import load_boxes
    from camcli.gates import parse_all
    from camcli.jobs import EvaluateJob

    requirements = parse_all(require or [])  # a malformed one: exit 2 before anything loads
    if sanity and model.precision == "int8":
        raise CamcliError("--sanity runs the model again with randomized weights, which INT8 would quantize again at every "
                          "step: leave out --precision int8")
    unmatched: list[str] = []
    truth = load_boxes(boxes, data, unmatched) if boxes is not None else None
    job = EvaluateJob(data, truth, model.checkpoint, box_threshold, mapping.sizes(), calibrate, out, run.exclude or (),
                      mapping.methods(), run.batch_size, run.threads(), faithfulness, smooth=mapping.smooth(),
                      top_channels=mapping.top_channels, requirements=requirements, sanity=sanity, sanity_images=sanity_images)
    spec, engine = checked(model, job), run.make_engine()
    if unmatched and not run.quiet:
        say(f"note: {len(unmatched)} of the names in {boxes} match no image under {data} (first: {unmatched[0]!r}); "
             "their boxes are not scored")
    loaded = load_model(spec, run.quiet)
    job, samples = job.bind(loaded, notify=None if run.quiet else say)
    say_scorecam_cost(loaded, job, len(samples), run.quiet)
    say_sanity_cost(loaded, job, run.quiet)
    with engine, progress_bar(run.quiet) as progress:
        result = job.finish(loaded, engine.run(job, loaded, samples, progress), progress)
    say_verdicts(result.get("requirements", []))  # before stdout: a closed pipe cannot hide a failed gate
    if fmt == "json":
        typer.echo(json.dumps(json_safe({k: v for k, v in result.items() if k != "box_acc_curve"})))
    else:
        print_evaluation(result)
    if not run.quiet and (boxes is not None or faithfulness):  # the maps of the evaluation itself (not --sanity's)
        say("seconds per image: " + "; ".join(
            f"{m} " + ", ".join(f"{what.replace('_', ' ')} {spent:.3f}" for what, spent in costs.items())
            for m, costs in result["seconds_per_image"].items()))
    say_int8(result["settings"].get("images_in_fp32", 0), result["num_images"], run.quiet,
             result["settings"].get("int8_probe", {}).get("failure"))
    if not run.quiet:
        if calibrate:
            chosen = result["calibration"]
            tried = ", ".join(f"{s} {acc:.3f}" for s, acc in chosen["max_box_acc_by_cam_size"].items())
            say(f"calibrated: map size {chosen['cam_size']} and box threshold {chosen['threshold']:.2f} (MaxBoxAcc by map size: "
                f"{tried}) saved in {job.run_dir / 'calibrated.safetensors'}; overlay, predict --boxes and evaluate with that "
                "checkpoint use both unless given --cam-size or --box-threshold")
        say(f"Results saved to {job.run_dir}")
    verdict_exit()


def print_evaluation(result: dict) -> None:
    console = stdout_console(**({} if is_tty(sys.stdout) else {"width": 200}))  # a file gets whole rows, not 80 columns
    n = result["num_images"]
    summary = Table("metric", "value", title=f"{n} image{'s' * (n != 1)}")
    if "accuracy" in result:
        summary.add_row("accuracy", f"{result['accuracy']:.4f}")
    if "max_box_acc" in result:
        summary.add_row("images with boxes", str(result["num_images_with_boxes"]))
    if summary.row_count:
        console.print(summary)
    for table in method_tables(result) if "by_method" in result else ():
        console.print(table)
    if "per_class" not in result:  # a folder without labels (--faithfulness only)
        return
    per_class = Table("class", "precision", "recall", "support")
    for name, m in result["per_class"].items():
        per_class.add_row(printable(name), f"{m['precision']:.3f}", "n/a" if m["recall"] != m["recall"] else f"{m['recall']:.3f}",
                          str(m["support"]))
    console.print(per_class)
    labels = result["confusion"]["labels"]
    confusion = Table("true \\ predicted", *map(printable, labels), title="confusion matrix")
    for label, row in zip(labels, result["confusion"]["matrix"]):
        confusion.add_row(printable(label), *map(str, row))
    console.print(confusion)


def is_baseline(method: str) -> bool:
    from camcli import methods

    return methods.get(method).baseline


def method_tables(result: dict) -> list[Table]:
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
    if "sanity" in first:
        limit = first["sanity"]["max_spearman"]
        n = first["sanity"]["num_images"]
        tables.append((f"sanity: Spearman to the trained model's maps ({n} image{'s' * (n != 1)}; a method passes below {limit:g} "
                       "in magnitude when every layer is randomized)", [
            ("head randomized", lambda m: f"{m['sanity']['head']['spearman']:.3f}"),
            ("all randomized", lambda m: f"{m['sanity']['final']['spearman']:.3f}"),
            ("SSIM", lambda m: f"{m['sanity']['final']['ssim']:.3f}"),
            ("HOG", lambda m: f"{m['sanity']['final']['hog']:.3f}"),
            *([("shuffled labels", lambda m: f"{m['sanity']['data_randomization']['spearman']:.3f}")]
              if "data_randomization" in first["sanity"] else []),
            ("verdict", lambda m: ("pass" if m["sanity"]["passed"] else "FAIL") + (" (baseline)" if is_baseline(m["method"]) else ""))]))
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


