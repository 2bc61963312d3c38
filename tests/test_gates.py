"""Gates (``--require``): parsing without evaluating, each operator at its boundary, NaN and missing
metrics failing, unknown metrics refused before any image, exit 4, and the CI example."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from camcli import gates
from camcli.cli import app
from camcli.errors import CamcliError
from conftest import SAMPLE_DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, metric, op, value", [
    ("accuracy>=0.95", "accuracy", ">=", 0.95),
    ("accuracy >= 0.95", "accuracy", ">=", 0.95),
    ("  pointing_game<.5 ", "pointing_game", "<", 0.5),
    ("max_box_acc>1e-3", "max_box_acc", ">", 0.001),
    ("by_method.gradcam++.faithfulness.deletion_auc <= 0.2", "by_method.gradcam++.faithfulness.deletion_auc", "<=", 0.2),
    ("faithfulness.road_morf==-0.25", "faithfulness.road_morf", "==", -0.25),
    ("per_class.tiger-cat.recall>=1", "per_class.tiger-cat.recall", ">=", 1.0),
])
def test_a_requirement_is_metric_op_value_with_optional_spaces(text, metric, op, value):
    assert gates.parse(text) == gates.Requirement(metric, op, value)


@pytest.mark.parametrize("text", [
    "", "accuracy", ">=0.5", "accuracy => 0.5", "accuracy = 0.5", "accuracy >= abc", "accuracy >= 0.5 and 1",
    "accuracy>=nan", "accuracy>=inf", "accuracy >= 1e999", "accuracy >= 1e-999", "accuracy>=0.5\nrm -rf /", "x" * 400 + ">=1",
    "accuracy>=0x10", "accuracy>=1_000", "accuracy>=\u0661", "accu\x1bracy>=1",
])
def test_anything_else_is_refused_in_one_line_and_never_evaluated(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CamcliError) as refused:
        gates.parse(text)
    message = str(refused.value)
    assert len(message.splitlines()) == 1, message
    assert "METRIC OP VALUE" in message or "must be a finite number" in message or "at most 300" in message, message


def test_a_metric_name_is_any_text_up_to_the_operator_and_is_only_ever_looked_up(tmp_path, monkeypatch):
    """Class names hold spaces, dots and accents; code-like names parse and are refused as unknown metrics, never run."""
    monkeypatch.chdir(tmp_path)
    result = {"per_class": {"Egyptian cat": {"recall": 0.75}, "café.au lait": {"recall": 1.0}}}
    spaced, accented = gates.parse("per_class.Egyptian cat.recall >= 0.7"), gates.parse("per_class.café.au lait.recall==1")
    assert [v["passed"] for v in gates.verdicts([spaced, accented], result)] == [True, True]
    for text in ("__import__('os').system('touch pwned')>=1", "a;b>=1", "$(touch pwned) > 0"):
        with pytest.raises(CamcliError, match="computes no metric"):
            gates.check_known([gates.parse(text)], gates.numbers(result))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("op, below, equal, above", [
    (">=", False, True, True), ("<=", True, True, False), (">", False, False, True), ("<", True, False, False),
    ("==", False, True, False),
])
def test_each_operator_at_its_boundary_and_nan_or_missing_fail(op, below, equal, above):
    requirement = gates.Requirement("m", op, 0.5)
    for got, expected in ((0.25, below), (0.5, equal), (0.75, above)):
        (verdict,) = gates.verdicts([requirement], {"m": got})
        assert verdict == {"metric": "m", "op": op, "value": 0.5, "got": got, "passed": expected}
    (nan,) = gates.verdicts([requirement], {"m": math.nan})
    (missing,) = gates.verdicts([requirement], {"other": 0.5})
    assert nan == {**nan, "got": None, "passed": False} and missing["passed"] is False
    assert gates.describe(nan).startswith("FAIL m nan ")
    close = gates.verdicts([gates.parse("m>=0.95")], {"m": 0.94996})[0]
    assert gates.describe(close) == "FAIL m 0.94996 >= 0.95"  # enough digits to see why it failed


def test_the_gateable_numbers_are_every_number_by_dotted_path_but_settings_and_timings():
    result = {"accuracy": 0.9, "num_images": 40, "flag": True, "curve": [0.1, 0.2], "settings": {"img_size": 224},
              "seconds_per_image": {"cam": {"maps": 0.01}}, "by_method": {"gradcam++": {"faithfulness": {"road_morf": -0.1}}}}
    assert gates.numbers(result) == {"accuracy": 0.9, "num_images": 40.0, "by_method.gradcam++.faithfulness.road_morf": -0.1}
    with pytest.raises(CamcliError, match=r"computes no metric 'acuracy' \(nearest: accuracy"):
        gates.check_known([gates.parse("acuracy>0")], gates.numbers(result))


def _evaluate(sample_run, tmp_path, *requirements: str, extra=()):
    return CliRunner().invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), "--checkpoint", str(sample_run / "best.safetensors"),
                                    "--boxes", str(SAMPLE_DATA / "val_boxes.json"), "--out", str(tmp_path / "ev"), "-q",
                                    *[a for r in requirements for a in ("--require", r)], *extra])


def test_evaluate_passes_fails_and_records_each_requirement(sample_run, tmp_path):
    result = _evaluate(sample_run, tmp_path, "accuracy>=0.9", "by_method.cam.pointing_game >= 0.5", "num_images==40",
                       extra=["--format", "json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert json.loads(result.stdout)["requirements"] == metrics["requirements"]
    assert [r["passed"] for r in metrics["requirements"]] == [True, True, True]
    assert metrics["requirements"][0] == {"metric": "accuracy", "op": ">=", "value": 0.9, "got": metrics["accuracy"], "passed": True}
    lines = result.stderr.strip().splitlines()
    assert lines == [f"PASS accuracy {metrics['accuracy']:.10g} >= 0.9",
                     f"PASS by_method.cam.pointing_game {metrics['by_method']['cam']['pointing_game']:.10g} >= 0.5",
                     "PASS num_images 40 == 40"]
    failing = _evaluate(sample_run, tmp_path, "accuracy>=0.9", f"max_box_acc > {metrics['max_box_acc']}")
    assert failing.exit_code == 4, failing.output
    assert failing.stderr.strip().splitlines()[-2:] == [
        f"FAIL max_box_acc {metrics['max_box_acc']:.10g} > {metrics['max_box_acc']:.10g}", "1 of 2 requirements failed"]
    assert [r["passed"] for r in json.loads((tmp_path / "ev" / "metrics.json").read_text())["requirements"]] == [True, False]


def test_a_malformed_requirement_is_refused_before_the_model_loads(tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), "--checkpoint", str(tmp_path / "missing.safetensors"),
                                      "--require", "accuracy => 0.9"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--require 'accuracy => 0.9' is not METRIC OP VALUE" in lines[0], lines  # not the checkpoint


def test_a_metric_the_run_will_not_compute_is_refused_before_any_image(sample_run, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), "--checkpoint", str(sample_run / "best.safetensors"),
                                      "--out", str(tmp_path / "ev"), "--require", "pointing_game>=0.8"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "computes no metric 'pointing_game'" in lines[0] and "need --boxes" in lines[0], result.stderr
    assert not (tmp_path / "ev" / "metrics.json").exists() and "evaluate:" not in result.stderr  # no image was processed


def test_the_ci_example_gates_a_model_by_its_exit_status(tmp_path):
    """docs/ci.md's worked example: train, evaluate with requirements, act on the exit status."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = [str(ROOT / "examples" / "ci.sh"), str(SAMPLE_DATA), str(tmp_path / "ci")]
    passed = subprocess.run(["bash", *run], capture_output=True, text=True, env=env)
    assert passed.returncode == 0, passed.stderr
    assert "gate passed" in passed.stdout and "PASS accuracy" in passed.stderr
    strict = subprocess.run(["bash", *run], capture_output=True, text=True, env={**env, "MIN_POINTING_GAME": "1.01"})
    assert strict.returncode == 4 and "FAIL pointing_game" in strict.stderr and "gate failed" in strict.stderr


def test_the_ci_example_compares_the_new_model_with_the_one_in_production(sample_run, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = ["bash", str(ROOT / "examples" / "ci.sh"), str(SAMPLE_DATA), str(tmp_path / "ci"), str(sample_run / "best.safetensors")]
    passed = subprocess.run(run, capture_output=True, text=True, env=env)
    assert passed.returncode == 0, passed.stderr
    assert "PASS top1_agreement" in passed.stderr and "PASS map_spearman_median" in passed.stderr
    assert (tmp_path / "ci" / "compare" / "report.html").is_file()
    moved = subprocess.run(run, capture_output=True, text=True, env={**env, "MIN_MAP_SPEARMAN": "1.01"})
    assert moved.returncode == 4 and "FAIL map_spearman_median" in moved.stderr and "gate failed" in moved.stderr
