"""camcli predict and camcli overlay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from camcli.cli.app import app, report_errors
from camcli.cli.options import (
    BoxThreshold,
    Inputs,
    MapOptions,
    ModelOptions,
    RowOptions,
    RunOptions,
    VideoOptions,
    a_value,
    checked,
    expand_groups,
    load_model,
    say_scorecam_cost,
)
from camcli.cli.output import finish, probe_failure, progress_bar, say, say_int8
from camcli.cli.rows import emit, guard_output, held_interrupts, previous_rows_of, same_file
from camcli.defaults import ALPHA, COLORMAPS, NORMALIZATIONS
from camcli.errors import CamcliError


@app.command(short_help="Rank classes for every image.")
@report_errors
@expand_groups
def predict(
    inputs: Inputs,
    model: ModelOptions,
    mapping: MapOptions,
    run: RunOptions,
    rows: RowOptions,
    video: VideoOptions,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --output replace an existing file camcli did not write.")] = False,
    boxes: Annotated[bool, typer.Option("--boxes", help="Add the top-1 class's CAM box to each row (original-image pixels).")] = False,
    box_threshold: BoxThreshold = None,
) -> None:
    """Rank classes by softmax for every image, and every sampled frame of a clip (mp4, mov, avi,
    mkv, webm, m4v: a row per frame, then the clip's own row of mean probabilities).

    \b
    Example: camcli predict photos/ --checkpoint runs/train/exp/best.safetensors --format jsonl
    """
    from itertools import chain, islice

    from camcli.data import iter_images
    from camcli.jobs import PredictJob
    from camcli.video import is_video

    job = PredictJob(rows.top_k, boxes, box_threshold, mapping.sizes(), mapping.one_method(), run.batch_size, run.threads(),
                     smooth=mapping.smooth(), top_channels=mapping.top_channels, sampling=video.sampling())
    spec, engine = checked(model, job), run.make_engine()
    guard = guard_output(rows.output, [*inputs, model.checkpoint], overwrite)
    walk = iter_images(inputs, exclude=run.exclude or (), videos=True)
    head = list(islice(walk, 1024))  # the rest of the walk streams while the first rows come out
    if not head:
        raise CamcliError(f"no images found in {', '.join(inputs)}")
    if len(head) < 1024:  # the whole walk: a clip later in a longer one is not known yet
        video.note_unused(head, run.quiet)
    loaded = load_model(spec, run.quiet)
    job, work = job.bind(loaded, head if len(head) < 1024 else chain(head, walk))  # a list when the walk is done: known total
    if job.boxes:
        say_scorecam_cost(loaded, job, len(head) if len(head) < 1024 else None, run.quiet)  # a longer walk: not counted yet
    with engine, progress_bar(run.quiet, counting=counting(head)) as progress, held_interrupts(engine):
        count, failed, in_fp32 = emit(engine.run(job, loaded, work, progress), rows, overlay=False, guard=guard,
                                      video=any(is_video(i.path) for i in head))
    say_int8(in_fp32, count - failed, run.quiet, probe_failure(loaded))
    finish(count, failed, rows.allow_failures)


@app.command(short_help="Write CAM heatmap overlays of images.")
@report_errors
@expand_groups
def overlay(
    inputs: Inputs,
    model: ModelOptions,
    mapping: MapOptions,
    class_name: Annotated[Optional[list[str]], typer.Option("--class", metavar="<name>",
                                                         help="Map this class (repeatable) [default: top-1].")] = None,
    class_index: Annotated[Optional[list[int]], typer.Option(metavar="<int>", help="Map this class index (repeatable).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        callback=a_value, help="Write under this folder, each INPUT mirrored as OUT_DIR/<INPUT name>/ [default: "
        "next to each input].")] = None,
    colormap: Annotated[Literal[COLORMAPS], typer.Option(metavar="<name>", help=f"OpenCV colormap: {', '.join(COLORMAPS)}.")] = "jet",
    alpha: Annotated[float, typer.Option(help="Heatmap weight in the blend, 0..1.")] = ALPHA,
    caption: Annotated[bool, typer.Option(help="Draw the label and its probability [default: on].", show_default=False)] = True,
    save_raw: Annotated[bool, typer.Option("--save-raw", help="Also write the raw float32 map at feature "
        "resolution beside each overlay, as .npy (<stem>_cam.npy, ...).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files camcli did not write.")] = False,
    box_threshold: BoxThreshold = None,
    draw_box: Annotated[bool, typer.Option("--draw-box", help="Draw the box on the overlay.")] = False,
    normalize: Annotated[Literal[NORMALIZATIONS], typer.Option(help="Heatmap colour scale: shared (one scale for all the maps of "
        "an image, so their colours compare; a map's hottest spot is not its probability), relu (each map to its own maximum) or "
        "minmax (no ReLU: a class without evidence still shows a hot region); see the manual's overlay page.")] = "shared",
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Resume: only process inputs whose outputs camcli has not "
        "written yet.")] = False,
    maps: Annotated[int, typer.Option("--maps", help="Write the maps of the top-K classes: "
        "<stem>_cam_<rank>_<label>.<ext> (0: the classes of --class, else the top-1's, as <stem>_cam.<ext>).")] = 0,
    report: Annotated[Optional[Path], typer.Option(
        callback=a_value, help="Also write a self-contained HTML report here (replaces a report camcli wrote; another file only with "
        "--overwrite).")] = None,
    report_limit: Annotated[int, typer.Option(help="Images in the report at most; the rest are counted as left out.")] = 500,
    temporal_smooth: Annotated[int, typer.Option(metavar="K", help="Clips: average each frame's map with the previous K-1 "
        "maps of the same class (1: none).")] = 1,
    frame_images: Annotated[bool, typer.Option("--frame-images", help="Clips: write each frame's overlay as a JPEG in a folder "
        "<stem>_cam/ (000123.jpg: frame 123; index.csv, written last: frame, time, file, label, prob) instead of a video.")] = False,
    run: RunOptions = None,
    rows: RowOptions = None,
    video: VideoOptions = None,
) -> None:
    """Write a CAM heatmap blend next to each input image (<stem>_cam.<ext>), and for each clip
    (mp4, mov, avi, mkv, webm, m4v) a video of its sampled frames' blends (<stem>_cam.<ext>).

    \b
    Example: camcli overlay photos/ --checkpoint runs/train/exp/best.safetensors --out-dir runs/overlay
    """
    from camcli.data import find_images
    from camcli.jobs import OverlayJob
    from camcli.report import write_overlay_report
    from camcli.video import is_video

    previous = previous_rows_of(rows) if skip_existing else None  # a resumed run completes its --output file
    job = OverlayJob(class_name or (), class_index or (), alpha, colormap, caption, save_raw, out_dir, overwrite, mapping.sizes(),
                     box_threshold, draw_box, skip_existing, maps, [rows.output] if rows.output else [], mapping.one_method(), normalize,
                     rows.top_k, run.batch_size, run.threads(),
                     rows_kept=None if previous is None else frozenset(same_file(p) for p, _ in previous), smooth=mapping.smooth(),
                     top_channels=mapping.top_channels, sampling=video.sampling(), temporal_smooth=temporal_smooth,
                     frame_images=frame_images)
    spec, engine = checked(model, job), run.make_engine()
    if report_limit < 1:
        raise CamcliError(f"--report-limit must be at least 1, got {report_limit}")
    images = find_images(inputs, skip=[out_dir] if out_dir else (), exclude=run.exclude or (), videos=True)
    video.note_unused(images, run.quiet, **{"--temporal-smooth": temporal_smooth != 1, "--frame-images": frame_images})
    guard = guard_output(rows.output, [*inputs, *(i.path for i in images), model.checkpoint, report], overwrite)
    # the report is an output like the others: replaced when camcli wrote it, or with --overwrite
    report_guard = guard_output(report, [*inputs, *(i.path for i in images), model.checkpoint, rows.output], overwrite, results=False)
    loaded = load_model(spec, run.quiet)
    job, work = job.bind(loaded, images, None if run.quiet else say)
    say_scorecam_cost(loaded, job, len(work), run.quiet)
    kept: list[dict] = []  # the rows of the report
    written = clips = partial = 0

    def tallied(results: Iterator[dict]) -> Iterator[dict]:
        nonlocal written, clips, partial
        for row in results:
            written += len(row.get("outputs", []))
            clips += row.get("kind") == "clip"
            partial += "error" in row and bool(row.get("outputs"))  # a clip cut short: its video holds the frames before
            if report is not None and len(kept) < report_limit and "kind" not in row:  # images: the report shows no video
                kept.append(row)
            yield row

    with engine, progress_bar(run.quiet, counting=counting(images)) as progress, held_interrupts(engine):
        # kept: every previous row (a clip's frames, a csv's ranks) of this run's inputs that it does not redo, in order (a
        # deleted input's row, or a row no input names, goes); paths compared as files, whatever their spelling
        redo, inputs = {same_file(i.path) for i in work}, {same_file(i.path) for i in images}
        carried = None if previous is None else [item for p, item in previous if same_file(p) in inputs and same_file(p) not in redo]
        count, failed, in_fp32 = emit(tallied(engine.run(job, loaded, work, progress)), rows, overlay=True, guard=guard,
                                      carried=carried, video=any(is_video(i.path) for i in images))
    if report is not None:
        write_overlay_report(report, kept, count - clips, report_guard.recorder(report))  # images: the report shows no clip
        if not run.quiet:
            say(f"Report saved to {report}")
    if not run.quiet:
        done = count - failed
        noun = "input" if any(is_video(i.path) for i in images) else "image"
        whom = [f"{done} {noun}{'s' * (done != 1)}"] if done or not partial else []
        whom += [f"{partial} clip{'s' * (partial != 1)} stopped partway"] if partial else []
        say(f"{written} file{'s' * (written != 1)} written for {' and '.join(whom)}"
             + (f" under {out_dir}" if out_dir else " next to the inputs"))
    say_int8(in_fp32, count - failed, run.quiet, probe_failure(loaded))
    finish(count, failed, rows.allow_failures)


def counting(inputs) -> str:
    """What progress counts: frames of clips, images, or both."""
    from camcli.video import is_video

    clips = sum(is_video(i.path) for i in inputs)
    return "images" if not clips else "frames" if clips == len(inputs) else "images and frames"
