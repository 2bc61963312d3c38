"""camcli compare: the similarities against independent references, a model against itself, against
its head refit on shuffled labels, against its INT8 self, classes in another order, another input
size, and the hostile cases (one line, the documented exit status)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from camcli import comparison
from camcli.checkpoint import load_checkpoint, save_checkpoint
from camcli.cli import app
from conftest import SAMPLE_DATA, write_image

VAL = SAMPLE_DATA / "val"


def run(*args: object):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_map_similarity_by_hand():
    a = np.zeros((7, 7), np.float32)
    a[1:3, 1:3] = 1.0  # a blob top-left
    b = np.zeros((7, 7), np.float32)
    b[4:6, 4:6] = 1.0  # the same blob bottom-right
    same = comparison.map_similarity(a, a, (70, 70), 0.5)
    assert same == {"map_spearman": 1.0, "map_iou": 1.0, "peak_shift": 0.0}
    moved = comparison.map_similarity(a, b, (70, 70), 0.5)
    assert moved["map_iou"] == 0.0 and moved["map_spearman"] < 0
    assert moved["peak_shift"] == pytest.approx(np.hypot(30, 30) / np.hypot(70, 70), abs=0.03)  # 3 cells of 10 px each way
    assert comparison.common_grid(3000, 4000) == (194, 259) and comparison.common_grid(100, 50) == (100, 50)


def test_a_model_against_itself_agrees_everywhere(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    result = run(VAL, "--base", ckpt, "--candidate", ckpt, "--out", tmp_path / "c", "--output", tmp_path / "rows.jsonl",
                 "--require", "top1_agreement>=1", "--require", "map_spearman_p10 == 1", "--require", "map_iou_p10>=1", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert summary["num_images"] == 40 and summary["top1_agreement"] == 1.0
    assert summary["map_spearman_median"] == summary["map_spearman_p10"] == 1.0 and summary["map_iou_p10"] == 1.0
    assert summary["peak_shift_p90"] == 0.0 and [r["passed"] for r in summary["requirements"]] == [True] * 3
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(r["base"] == r["candidate"] and r["candidate_prob_of_base_top1"] == r["base"]["prob"]
                                   for r in rows)
    page = (tmp_path / "c" / "report.html").read_text()
    assert page.count("<figure>") == 3 * 24  # --report-limit's default: 24 images, three pictures each


def _shuffled_head(sample_run: Path, tmp_path: Path) -> Path:
    """The sample run's data with every training label shuffled (same epochs and seed): a head that learned nothing."""
    from camcli.config import resolve_train_config
    from camcli.data import load_image_folder
    from camcli.train import fit

    config = resolve_train_config(data=str(SAMPLE_DATA), epochs=3, out=str(tmp_path / "shuffled"), workers=0)
    train, val, names = load_image_folder(SAMPLE_DATA, config.val_split, config.seed, config.exclude)
    labels = [y for _, y in train]
    random.Random(0).shuffle(labels)
    fit(config, dataset=([(p, y) for (p, _), y in zip(train, labels)], val, names))
    return tmp_path / "shuffled" / "best.safetensors"


def test_a_head_refit_on_shuffled_labels_moves_the_maps_and_fails_the_gate(sample_run, tmp_path):
    result = run(VAL, "--base", sample_run / "best.safetensors", "--candidate", _shuffled_head(sample_run, tmp_path),
                 "--out", tmp_path / "c", "--require", "map_spearman_median>=0.8", "--require", "top1_agreement>=0.98",
                 "--format", "jsonl")
    assert result.exit_code == 4, result.output
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert summary["top1_agreement"] < 0.5 and summary["map_spearman_median"] < 0.8, summary
    assert [line for line in result.stderr.splitlines() if line.startswith(("PASS", "FAIL"))] == [
        f"FAIL map_spearman_median {summary['map_spearman_median']:.10g} >= 0.8",
        f"FAIL top1_agreement {summary['top1_agreement']:.10g} >= 0.98"]


def test_several_methods_each_compared_and_a_model_free_map_never_moves(sample_run, tmp_path):
    """cam moves with the shuffled head; sobel, which knows nothing of the model, stays at 1 on every image."""
    shuffled = _shuffled_head(sample_run, tmp_path)
    result = run(VAL / "cat", VAL / "rocket", "--base", sample_run / "best.safetensors", "--candidate", shuffled,
                 "--method", "cam", "--method", "sobel", "--method", "cam", "--out", tmp_path / "c", "-o", tmp_path / "rows.csv",
                 "--require", "by_method.sobel.map_spearman_p10 == 1", "--require", "by_method.cam.map_spearman_median >= 0.8")
    assert result.exit_code == 4, result.output
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert list(summary["by_method"]) == ["cam", "sobel"]  # a method given twice is compared once
    assert summary["by_method"]["cam"]["map_spearman_median"] == summary["map_spearman_median"] < 0.8
    assert summary["by_method"]["sobel"]["map_spearman_p10"] == 1.0 and summary["by_method"]["sobel"]["peak_shift_p90"] == 0.0
    assert summary["settings"]["methods"] == {"cam": ["cam", "cam"], "sobel": ["sobel", "sobel"]}
    verdicts = [line.split()[:2] for line in result.stderr.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert verdicts == [["PASS", "by_method.sobel.map_spearman_p10"], ["FAIL", "by_method.cam.map_spearman_median"]]
    import csv

    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert len(rows) == 16 and list(rows[0])[-4:] == ["sobel.map_spearman", "sobel.map_iou", "sobel.peak_shift", "error"]
    assert all(float(r["sobel.map_spearman"]) == 1.0 for r in rows)
    assert np.median([float(r["map_spearman"]) for r in rows]) == pytest.approx(summary["map_spearman_median"])
    # the per-method names exist only when several methods are compared
    one = run(VAL / "cat", "--base", sample_run / "best.safetensors", "--candidate", shuffled, "--require",
              "by_method.cam.map_spearman_median>0")
    assert one.exit_code == 2 and "computes no metric" in one.output


def test_fp32_against_int8_agrees_at_least_as_int8_alone_does(sample_run, tmp_path):
    from camcli.data import read_image
    from camcli.factory import ModelSpec, build_model

    ckpt = sample_run / "best.safetensors"
    result = run(VAL, "--base", ckpt, "--candidate", ckpt, "--candidate-precision", "int8", "--out", tmp_path / "c", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    fp32 = build_model(ModelSpec(checkpoint=str(ckpt), device="cpu"))
    int8 = build_model(ModelSpec(checkpoint=str(ckpt), device="cpu", precision="int8"))
    int8.prepare()
    tensors = [fp32.preprocess(read_image(p)) for p in sorted(VAL.rglob("*.jpg"))]
    alone = np.mean([fp32.forward([t])[0].argmax() == int8.forward([t])[0].argmax() for t in tensors])  # no near tie in fp32
    assert summary["num_images"] == 40 and summary["top1_agreement"] >= alone
    assert summary["map_spearman_median"] > 0.9  # the same model, rounded


def test_classes_in_another_order_are_matched_by_name(sample_run, tmp_path):
    checkpoint = load_checkpoint(sample_run / "best.safetensors")
    order = [3, 0, 4, 1, 2]
    checkpoint["head"] = {k: v[order] for k, v in checkpoint["head"].items()}
    checkpoint["class_names"] = [checkpoint["class_names"][i] for i in order]
    save_checkpoint(checkpoint, tmp_path / "reordered.safetensors")
    result = run(VAL / "cat", "--base", sample_run / "best.safetensors", "--candidate", tmp_path / "reordered.safetensors",
                 "--out", tmp_path / "c", "-q", "--require", "map_spearman_p10>=1", "--require", "top1_agreement>=1")
    assert result.exit_code == 0, result.output


def test_another_input_size_compares_on_the_input_images_grid(sample_run, tmp_path):
    checkpoint = load_checkpoint(sample_run / "best.safetensors")
    checkpoint["preprocess"] = {**checkpoint["preprocess"], "img_size": 320}
    checkpoint["img_size"] = 320
    save_checkpoint(checkpoint, tmp_path / "larger.safetensors")
    result = run(VAL / "cat", "--base", sample_run / "best.safetensors", "--candidate", tmp_path / "larger.safetensors",
                 "--out", tmp_path / "c", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert summary["num_images"] == 8 and summary["top1_agreement"] == 1.0 and 0.3 < summary["map_spearman_median"] < 1.0


@pytest.mark.parametrize("args, words", [
    (["--candidate", "arch:efficientnet_lite0"], "the two models' classes differ (base 5, candidate 1000"),
    (["--candidate", "{ckpt}", "--require", "__import__('os').system('id')>=1"], "compare computes no metric \"__import__("),
    (["--candidate", "{ckpt}", "--require", "top1_agreement => 1"], "is not METRIC OP VALUE"),
    (["--candidate", "{ckpt}", "--require", "accuracy>=1"], "compare computes no metric 'accuracy'"),
    (["--candidate", "arch:"], "arch: needs a name"),
    (["--candidate", "{tmp}/missing.safetensors"], "checkpoint not found"),
    (["--candidate", "{ckpt}", "--calibration", "{tmp}"], "--calibration is for an int8 side"),
    (["--candidate", "{ckpt}", "--box-threshold", "1"], "--box-threshold must be from 0 to below 1"),
])
def test_mistakes_are_one_line_with_exit_2(args, words, sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    result = run(VAL / "cat", "--base", ckpt, *(a.format(ckpt=ckpt, tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_failed_inputs_exit_1_and_a_requirement_on_nan_fails(sample_run, tmp_path):
    folder = tmp_path / "in"
    (folder).mkdir()
    (folder / "broken.jpg").write_bytes(b"not an image")
    write_image(folder / "flat.png", np.zeros((60, 80, 3), np.uint8))
    ckpt = sample_run / "best.safetensors"
    result = run(folder, "--base", ckpt, "--candidate", ckpt, "--format", "jsonl", "--require", "top1_agreement>=0.5")
    assert result.exit_code == 1, result.output  # a failed input wins over the verdict
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [("error" in r) for r in rows] == [True, False]
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "broken.jpg").write_bytes(b"not an image")
    nothing = run(only_broken, "--base", ckpt, "--candidate", ckpt, "--format", "jsonl", "--require", "top1_agreement>=0.5",
                  "--allow-failures")
    assert nothing.exit_code == 4 and "FAIL top1_agreement nan >= 0.5" in nothing.stderr, nothing.output
    with_out = run(only_broken, "--base", ckpt, "--candidate", ckpt, "--out", tmp_path / "c", "--report-limit", "0", "-q",
                   "--require", "top1_agreement>=0.5", "--allow-failures")
    assert with_out.exit_code == 4, with_out.output  # no row for the report: still judged, and written
    assert json.loads((tmp_path / "c" / "comparison.json").read_text())["top1_agreement"] is None  # JSON has no NaN


def test_outputs_are_checked_before_any_model_loads(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    (tmp_path / "afile").write_text("mine")
    not_folder = run(VAL / "cat", "--base", ckpt, "--candidate", ckpt, "--out", tmp_path / "afile")
    assert not_folder.exit_code == 2 and "is not a folder" in not_folder.stderr and "compare:" not in not_folder.stderr
    inside = run(VAL / "cat", "--base", ckpt, "--candidate", ckpt, "--out", tmp_path / "c", "-o", tmp_path / "c" / "report.html")
    assert inside.exit_code == 2 and "is the --out folder's report.html" in inside.stderr
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_closed_stdout_cannot_hide_a_failed_gate(sample_run):
    import subprocess
    import sys

    ckpt = sample_run / "best.safetensors"
    for command in (["compare", VAL, "--base", ckpt, "--candidate", ckpt, "--format", "jsonl", "-q"],
                    ["evaluate", VAL, "--checkpoint", ckpt, "--format", "json", "-q", "--out", sample_run.parent / "ev-pipe"]):
        shell = f"{sys.executable} -m camcli {' '.join(map(str, command))} --require 'num_images>1000' | head -c 10 > /dev/null"
        result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True)
        assert result.returncode == 4 and "FAIL num_images 40 > 1000" in result.stderr, (command[0], result.stderr)


@pytest.mark.parametrize("method", __import__("camcli.methods").methods.NAMES)
def test_every_registry_method_compares_a_model_with_itself_exactly(method, sample_run):
    ckpt = sample_run / "best.safetensors"
    faster = ["--top-channels", "8"] if method == "scorecam" else []
    result = run(VAL / "cat" / "cat_00.jpg", "--base", ckpt, "--candidate", ckpt, "--method", method, *faster, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["map_spearman"] == 1.0 and row["peak_shift"] == 0.0 and row["agree"], row


def test_the_ray_engine_gives_the_local_engines_rows_and_summary(sample_run, tmp_path):
    """Ray's actors hold the pair of models and run the same job slices; the report is made here."""
    ckpt = sample_run / "best.safetensors"
    args = ["--base", ckpt, "--candidate", ckpt, "--candidate-precision", "int8", "--batch-size", "3", "-q"]
    local = run(VAL / "cat", *args, "--output", tmp_path / "local.jsonl", "--out", tmp_path / "local")
    ray = run(VAL / "cat", *args, "--output", tmp_path / "ray.jsonl", "--out", tmp_path / "ray", "--engine", "ray",
              "--ray-workers", "2")
    assert local.exit_code == ray.exit_code == 0, ray.output
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    summaries = [json.loads((tmp_path / side / "comparison.json").read_text()) for side in ("local", "ray")]
    assert summaries[0] == summaries[1] and summaries[0]["num_images"] == 8
    assert (tmp_path / "ray" / "report.html").read_text().count("<figure>") == 3 * 8


def test_classes_must_be_the_same_set_without_repeats_on_either_side():
    assert comparison.class_mapping(["a", "b", "c"], ["c", "a", "b"]).tolist() == [1, 2, 0]
    for base, candidate in ((["a", "b", "a"], ["a", "b"]), (["a", "b"], ["a", "b", "a"]), (["a", "a"], ["a", "a"]),
                            (["a", "b"], ["a", "c"])):
        with pytest.raises(comparison.CamcliError, match="the two models' classes differ"):
            comparison.class_mapping(base, candidate)
