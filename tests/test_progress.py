"""The screen on slow work: a bar from the start, counts per image, something that moves at least
once a second on a terminal and a line at least every ten seconds off one; rows of every finished
image kept on Ctrl-C, whatever the method and batch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_DATA, on_a_terminal

# Score-CAM made cheap enough for a test: a small input and 200 channels (a few seconds an image here)
SLOW_SCORECAM = ["--method", "scorecam", "--top-channels", "200", "--img-size", "128"]


@pytest.fixture
def three(tmp_path: Path) -> Path:
    folder = tmp_path / "three"
    folder.mkdir()
    for name in ("astronaut_00.jpg", "astronaut_01.jpg", "astronaut_02.jpg"):
        (folder / name).write_bytes((SAMPLE_DATA / "val" / "astronaut" / name).read_bytes())
    return folder


def _screen_checks(chunks: list[tuple[float, bytes]], stage: str, total: int) -> None:
    """Counts per image appear before the end, and the terminal never goes quiet for more than 3 s."""
    shown = [(t, re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", c)) for t, c in chunks]  # escape sequences dropped
    text = b"".join(c for _, c in shown).decode(errors="replace")
    end = chunks[-1][0]
    for done in range(1, total):
        seen = [t for t, c in shown if re.search(rf"{stage} .* {done}/{total} ".encode(), c)]
        assert seen and seen[0] < end - 0.5, f"{done}/{total} never shown before the end:\n{text[-2000:]}"
    times = [0.0] + [t for t, _ in chunks]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 3.0, f"the terminal was silent for {max(gaps):.1f} s"
    assert "passes" in text  # the forward passes move while an image takes several seconds


def test_overlay_with_scorecam_counts_each_image_on_a_terminal(sample_run, three, tmp_path):
    code, chunks = on_a_terminal(["overlay", three, "--checkpoint", sample_run / "best.safetensors", *SLOW_SCORECAM,
                                    "--out-dir", tmp_path / "out"])
    assert code == 0, b"".join(c for _, c in chunks).decode(errors="replace")[-2000:]
    _screen_checks(chunks, "overlay", 3)
    assert b"note: Score-CAM scores up to 200 forward passes per image" in b"".join(c for _, c in chunks)


def test_evaluate_faithfulness_counts_each_image_on_a_terminal(sample_run, three, tmp_path):
    code, chunks = on_a_terminal(["evaluate", three, "--checkpoint", sample_run / "best.safetensors", "--faithfulness",
                                    "--img-size", "128", "--out", tmp_path / "eval"])
    assert code == 0, b"".join(c for _, c in chunks).decode(errors="replace")[-2000:]
    _screen_checks(chunks, "evaluate", 3)


def test_off_a_terminal_a_line_comes_at_least_every_heartbeat(sample_run, three, tmp_path):
    # the heartbeat scaled down to 1 s in the child, so that a few seconds of work show it
    code = ("import sys\nimport camcli.cli.output as output\noutput.HEARTBEAT_S = 1.0\nfrom camcli.cli import main\n"
            "sys.argv = ['camcli', *sys.argv[1:]]\nmain()")
    proc = subprocess.Popen([sys.executable, "-c", code, "overlay", str(three), "--checkpoint", str(sample_run / "best.safetensors"),
                             "--method", "scorecam", "--top-channels", "640", "--img-size", "128", "--batch-size", "3",
                             "--out-dir", str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start, arrivals = time.monotonic(), []
    for line in proc.stderr:
        arrivals.append((time.monotonic() - start, line.rstrip()))
    assert proc.wait() == 0, arrivals
    beats = [line for _, line in arrivals if "forward passes so far" in line]
    assert beats, arrivals
    assert all(re.fullmatch(r"overlay: \d/3 images, [\d,]+ forward passes so far, \d+ s", b) for b in beats), beats
    work = [t for t, line in arrivals if line.startswith("overlay:")]
    assert max(b - a for a, b in zip(work, work[1:])) < 2.5  # a line at least every (scaled) heartbeat
    assert "\x1b[" not in "".join(line for _, line in arrivals)  # no animation in a log


@pytest.mark.parametrize("batch", ["1", "32"])
def test_ctrl_c_keeps_a_row_for_every_overlay_written(sample_run, three, tmp_path, batch):
    out, rows = tmp_path / "out", tmp_path / "sc.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "camcli", "overlay", str(three), "--checkpoint", str(sample_run / "best.safetensors"),
                             *SLOW_SCORECAM, "--batch-size", batch, "--out-dir", str(out), "--output", str(rows)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*_cam.jpg")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    written = sorted(p.name.replace("_cam.jpg", ".jpg") for p in out.rglob("*_cam.jpg"))
    assert 0 < len(written) < 3, "the run must be stopped part-way"
    kept = sorted(Path(json.loads(line)["path"]).name for line in rows.read_text().splitlines())
    assert kept == written  # one whole row for each overlay on disk, and none for an image without one
    assert re.search(r"interrupted during overlay: \d of 3 images done", stderr) and "Traceback" not in stderr


def test_ctrl_c_before_the_first_row_leaves_no_rows_file(sample_run, three, tmp_path):
    rows = tmp_path / "sc.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "camcli", "overlay", str(three), "--checkpoint", str(sample_run / "best.safetensors"),
                             "--method", "scorecam", "--out-dir", str(tmp_path / "out"), "--output", str(rows)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the cost note comes once the model is loaded, before the first image is mapped
        if "Score-CAM scores" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert not rows.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_a_narrow_table_breaks_paths_between_names():
    from rich.console import Console
    from rich.table import Table

    from camcli.cli.rows import PathCell

    path = "/data/photos/2026/summer/holiday_at_the_lake_0001.jpg"
    table = Table("path", "top-1")
    table.add_row(PathCell(path), "cat")
    console = Console(width=40, record=True, color_system=None)
    console.print(table)
    cells = [line.split("│")[1].strip() for line in console.export_text().splitlines() if line.startswith("│")]
    assert "".join(cells) == path and len(cells) > 1
    assert all(cell.endswith("/") for cell in cells[:-1])  # every break falls after a separator
    narrow = Console(width=20, record=True, color_system=None)
    narrow.print(PathCell(path))  # a name wider than the screen still shows whole, folded
    assert "".join(narrow.export_text().split()) == path


def test_the_first_int8_build_says_what_it_does_and_shows_its_stages(sample_run, three, tmp_path):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, path in enumerate(sorted((SAMPLE_DATA / "train").rglob("*.jpg"))[::3][:16]):
        (calibration / f"{i:02d}.jpg").write_bytes(path.read_bytes())
    code, chunks = on_a_terminal(["predict", three, "--checkpoint", sample_run / "best.safetensors", "--precision", "int8",
                                    "--calibration", calibration, "--img-size", "128", "--format", "jsonl"],
                                   env={"CAMCLI_CACHE_DIR": str(tmp_path / "cache")})  # an empty cache: the model is built
    shown = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", b"".join(c for _, c in chunks)).decode(errors="replace")
    assert code == 0, shown[-2000:]
    assert "building and checking an INT8 model" in shown
    for stage in ("int8: reading calibration images", "int8: rounding convolutions", "int8: calibrating activations",
                  "int8: checking against fp32"):
        assert re.search(rf"{stage} .* \d+/\d+", shown), stage
    times = [0.0] + [t for t, _ in chunks]
    assert max(b - a for a, b in zip(times, times[1:])) <= 3.0


def test_a_ctrl_c_between_two_rows_is_thrown_into_the_job_which_gives_its_finished_rows():
    from camcli.jobs import Interrupts

    def job():
        finished = []
        try:
            for i in range(100):
                finished.append(i)
                yield {"row": i}
        except KeyboardInterrupt:
            yield {"row": "drained"}  # what the job finished but had not given yet
            raise

    interrupts = Interrupts()
    rows = interrupts.guarded(job())
    assert next(rows) == {"row": 0}
    interrupts.handler(2, None)  # while the row is written out: held, not raised here
    assert interrupts.pending
    assert next(rows) == {"row": "drained"}  # thrown into the job at its next step
    with pytest.raises(KeyboardInterrupt):
        next(rows)
    live = Interrupts()
    live.live = True
    with pytest.raises(KeyboardInterrupt):  # inside the job's own code: at once
        live.handler(2, None)
    held = Interrupts()
    held.handler(2, None)
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C while one is held: at once
        held.handler(2, None)


def test_ctrl_c_held_only_where_python_would_raise_it():
    from camcli.cli.rows import held_interrupts
    from camcli.jobs import LocalEngine

    engine = LocalEngine()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's ``trap '' INT``: Ctrl-C is not for this run
    try:
        with held_interrupts(engine):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with held_interrupts(engine):
            assert signal.getsignal(signal.SIGINT) == engine.interrupts.handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt), held_interrupts(engine):  # held after the job's last step: raised on the way out
            engine.interrupts.handler(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


class _Counting:
    """The least job an engine runs: it counts its work (and, for Ray, is cut into slices)."""

    batch_size = 4

    def total(self, work):
        return len(work)

    def slice(self, work, start, stop):
        return self, work[start:stop]


@pytest.mark.parametrize("engine_name", ["local", "ray"])
def test_ctrl_c_while_an_engine_reads_its_work_stops_it_at_once(engine_name):
    import contextlib

    from camcli.cli.rows import held_interrupts
    from camcli.jobs import LocalEngine
    from camcli.scaleout import RayEngine, RayOptions

    engine = LocalEngine() if engine_name == "local" else RayEngine(RayOptions())
    if engine_name == "ray":
        engine._session = contextlib.ExitStack()  # no Ray instance: the work is read before any task starts
    read = []

    class Work(list):  # the local engine reads its total eagerly; Ray lists the whole walk first
        def __iter__(self):
            for i, item in enumerate(super().__iter__()):
                if i == 3:
                    engine.interrupts.handler(signal.SIGINT, None)  # Ctrl-C while the work is read
                read.append(item)
                yield item

        def __len__(self):
            return len(list(iter(self)))

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), held_interrupts(engine):
            engine.run(_Counting(), None, Work(range(100)))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert read == [0, 1, 2]  # stopped at once, not held until the whole work was read


def test_a_ctrl_c_held_by_an_earlier_run_is_not_taken_for_one_of_this_run():
    from camcli.cli.rows import held_interrupts
    from camcli.jobs import LocalEngine

    engine = LocalEngine()
    engine.interrupts.seen = engine.interrupts.pending = True  # an API user's earlier run, outside any held_interrupts
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with held_interrupts(engine):
            assert not engine.interrupts.pending and not engine.interrupts.seen
    finally:
        signal.signal(signal.SIGINT, previous)
