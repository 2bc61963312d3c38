"""The HTML overlay report: self-contained, never overwriting, and rendered by a real browser."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from camcli.cli import app
from conftest import SAMPLE_DATA

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(sample_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "report.html"
    result = runner.invoke(app, [
        "overlay", str(SAMPLE_DATA / "val"), "--checkpoint", str(sample_run / "best.safetensors"), "--out-dir", str(tmp / "ov"),
        "--draw-box", "--report", str(path), "--report-limit", "12", "--format", "jsonl", "--workers", "0",
    ])
    assert result.exit_code == 0, result.output
    return path, [json.loads(line) for line in result.stdout.splitlines()]


def test_report_is_self_contained_and_counts_what_it_left_out(report):
    path, rows = report
    page = path.read_text()
    total = len(list((SAMPLE_DATA / "val").rglob("*.jpg")))
    assert len(rows) == total and f"12 of {total} images; {total - 12} left out (--report-limit)" in page
    assert page.count('<div class="card"') == 12
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 24 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for row in rows[:12]:
        assert row["path"] in page and row["predictions"][0]["label"] in page


def test_a_report_is_replaced_as_every_other_output(sample_run, tmp_path):
    existing = tmp_path / "r.html"
    existing.write_text("mine")
    args = ["overlay", str(SAMPLE_DATA / "val" / "cat"), "--checkpoint", str(sample_run / "best.safetensors"),
            "--out-dir", str(tmp_path / "o"), "--report", str(existing)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and "camcli overlay --help" in result.stderr
    assert existing.read_text() == "mine" and not (tmp_path / "o").exists()  # refused before any work
    forced = runner.invoke(app, [*args, "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert "<html" in existing.read_text().lower()
    again = runner.invoke(app, args)  # camcli's own report: replaced as the overlays are, with or without --overwrite
    assert again.exit_code == 0, again.output
    rerun = runner.invoke(app, [*args, "--overwrite"])
    assert rerun.exit_code == 0, rerun.output
    assert "cat_00.jpg" in existing.read_text()


def _render(path: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """(the <body> tag after load, console lines) of a page rendered by headless Chromium."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Debian's chromium (installed by .ci/run) for the report test")
        pytest.skip("chromium not installed here (CI installs it and never skips this test)")
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return re.search(r"<body[^>]*>", out.stdout).group(0), console


def test_report_renders_in_headless_chromium(report, tmp_path):
    body, console = _render(report[0], tmp_path)
    assert 'data-images="24"' in body and 'data-loaded="24"' in body  # every image decoded and displayed
    assert console == []


def test_train_report_has_curves_confusion_and_overlays_and_renders(sample_run, tmp_path):
    page = (sample_run / "report.html").read_text()
    assert page.count("<svg") == 2 and "Validation confusion matrix" in page
    assert "<h3>Correct</h3>" in page and "<h3>Misclassified</h3>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    images = int(re.search(r'data-images="(\d+)"', page).group(1))
    assert 1 <= images <= 12 and page.count("<img") == images
    body, console = _render(sample_run / "report.html", tmp_path)
    assert f'data-loaded="{images}"' in body and console == []


def test_an_int8_report_says_which_images_ran_in_fp32(report, tmp_path):
    from camcli.report import write_overlay_report

    _, rows = report
    rows = [{**row, "precision": "fp32" if i == 1 else "int8"} for i, row in enumerate(rows[:3])]
    write_overlay_report(tmp_path / "int8.html", rows, 3)
    page = (tmp_path / "int8.html").read_text()
    assert "INT8 backbone (checked against fp32), 1 near tie run again in fp32" in page
    cards = page.split('<div class="card"')[1:]
    assert ["fp32 backbone (a near tie under INT8)" in c for c in cards] == [False, True, False]
    assert ["; INT8 backbone" in c for c in cards] == [True, False, True]
    write_overlay_report(tmp_path / "fp32.html", [{k: v for k, v in r.items() if k != "precision"} for r in rows], 3)
    assert "INT8" not in (tmp_path / "fp32.html").read_text()
