"""Hostile and careless input: each test builds the input in tmp_path and checks the exit code,
the one-line message, and that nothing outside the output folder changed."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from camcli.checkpoint import load_checkpoint
from camcli.cli import app
from camcli.errors import CamcliError
from conftest import SAMPLE_DATA, make_image_folder, save_v1, with_class_names, write_image

runner = CliRunner()


def run(*args, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@contextmanager
def deadline(seconds: int = 60):
    """Fail (instead of hanging CI) if the block blocks on a FIFO or reads without end."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _coffee() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(SAMPLE_DATA / "val" / "coffee" / "coffee_00.jpg")), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- decompression bombs

def _png(width: int, height: int, chunks_before_idat: list[tuple[bytes, bytes, int | None]] = ()) -> bytes:
    """An 8-bit RGB PNG of zeros; extra chunks as (type, data, crc or None for the right one)."""
    def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
        crc = zlib.crc32(kind + data) if crc is None else crc
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)

    raw = zlib.compress(b"".join(b"\x00" + bytes(3 * width) for _ in range(height)), 9)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for kind, data, crc in chunks_before_idat:
        out += chunk(kind, data, crc)
    return out + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_a_png_with_a_bad_ancillary_checksum_cannot_bypass_the_pixel_limit(tmp_path, monkeypatch):
    from camcli import data

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(3000, 3000, [(b"tEXt", b"Comment\x00hello", 0x12345678)]))
    decoded = []
    monkeypatch.setattr(data.cv2, "imdecode", lambda *a: decoded.append(a) or None)
    with pytest.raises(CamcliError, match=r"3000x3000 = 9,000,000 pixels, over the limit of 1,000,000 \(max_pixels\)"):
        data.read_image(bomb, max_pixels=1_000_000)
    # a file whose size camcli cannot read from its header is never decoded: PPM bytes behind .png
    ppm = tmp_path / "other.png"
    ppm.write_bytes(b"P6\n3000 3000\n255\n" + bytes(64))
    with pytest.raises(CamcliError, match="not a readable image"):
        data.read_image(ppm, max_pixels=1_000_000)
    assert decoded == []


def test_a_damaged_ancillary_chunk_under_the_limit_still_decodes(tmp_path):
    from camcli.data import read_image

    path = tmp_path / "ok.png"
    path.write_bytes(_png(16, 8, [(b"tEXt", b"Comment\x00hello", 0x12345678)]))
    assert read_image(path).shape == (8, 16, 3)


# ---------------------------------------------------------------- special files and links

def test_a_fifo_among_the_inputs_is_a_failed_input_not_a_hang(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "good.jpg", _coffee())
    os.mkfifo(data / "x.jpg")
    with deadline():
        result = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--workers", "2")
        direct = run("predict", data / "x.jpg", "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["good.jpg"]["predictions"][0]["label"] == "coffee"
    assert "is a FIFO, not a regular file" in rows["x.jpg"]["error"]
    assert direct.exit_code == 1 and "is a FIFO" in direct.stderr


def test_a_planted_manifest_link_redirects_nothing(sample_run, tmp_path):
    victim = tmp_path / "victim.sh"
    victim.write_text("echo hello\n")
    out = tmp_path / "out"
    (out / "in").mkdir(parents=True)
    (out / "in" / ".camcli-outputs.jsonl").symlink_to(victim)
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out)
    line = one_line_error(result)
    assert "is a symbolic link" in line and ".camcli-outputs.jsonl" in line
    assert victim.read_text() == "echo hello\n"
    assert sorted(p.name for p in (out / "in").iterdir()) == [".camcli-outputs.jsonl"]  # nothing written


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_manifest_that_is_a_device_or_fifo_stops_nothing_and_hangs_nothing(sample_run, tmp_path, kind):
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    manifest = data / ".camcli-outputs.jsonl"
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero")
    with deadline():
        result = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    line = one_line_error(result)
    assert ".camcli-outputs.jsonl" in line and ("FIFO" in line or "symbolic link" in line)


def test_box_and_config_files_that_are_fifos_or_devices_are_refused(sample_run, tmp_path):
    fifo = tmp_path / "boxes.json"
    os.mkfifo(fifo)
    with deadline():
        boxes = run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--boxes", fifo,
                    "--out", tmp_path / "e")
        config = run("train", SAMPLE_DATA, "--config", "/dev/zero", "--out", tmp_path / "t")
        ckpt = run("info", "/dev/zero")
    assert "is a FIFO, not a regular file" in one_line_error(boxes)
    assert "is a character device, not a regular file" in one_line_error(config)
    assert "is a character device" in one_line_error(ckpt)


# ---------------------------------------------------------------- text that looks like markup

def test_names_that_look_like_markup_or_escapes_are_printed_literally(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "holiday [copy].jpg", _coffee())
    (data / "[").mkdir()
    (data / "[" / "x] [red]bad.jpg").write_bytes(b"not an image")  # its path holds "[/x] [red]"
    (data / "esc\x1b[31mred.jpg").write_bytes(b"not an image")
    result = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "table")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "holiday [copy].jpg" in result.stdout
    assert "failed: " in result.stderr and "[/x] [red]bad.jpg" in result.stderr
    assert "\x1b" not in result.stderr and "esc\\x1b[31mred.jpg" in result.stderr
    crafted = with_class_names(sample_run, tmp_path / "markup.pt", ["[/x]", "[bold]b", "c", "d", "e"])
    info = run("info", crafted, "--format", "table")
    assert info.exit_code == 0 and "[/x], [bold]b" in info.stdout
    missing = run("predict", tmp_path / "[/x].jpg", "--checkpoint", crafted)
    assert "[/x].jpg" in one_line_error(missing)


# ---------------------------------------------------------------- the manifest under a full disk

def test_a_torn_manifest_line_never_swallows_the_next_record(tmp_path, monkeypatch):
    from camcli import files
    from camcli.errors import EnvironmentProblem

    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.jpg").write_bytes(b"bb")
    real_write = os.write

    def full_disk(fd, data):  # the disk fills half-way through a record
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(EnvironmentProblem, match="No space left on device"):
        files.append_manifest(tmp_path, "a.jpg", (tmp_path / "a.jpg").stat())
    monkeypatch.setattr(files.os, "write", real_write)
    files.append_manifest(tmp_path, "b.jpg", (tmp_path / "b.jpg").stat())
    files.append_manifest(tmp_path, "a.jpg", (tmp_path / "a.jpg").stat())
    assert set(files.read_manifest(tmp_path)) == {"a.jpg", "b.jpg"}


def test_outputs_stay_ours_after_a_torn_line(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    write_image(data / "b.jpg", _coffee())
    first = run("overlay", data / "a.jpg", "--checkpoint", sample_run / "best.safetensors")
    assert first.exit_code == 0, first.output
    with open(data / ".camcli-outputs.jsonl", "ab") as f:
        f.write(b'{"name": "b_cam.jpg", "si')  # killed mid-append
    again = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    assert again.exit_code == 0, again.output
    resumed = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--skip-existing", "--format", "jsonl")
    assert resumed.exit_code == 0 and resumed.stdout == "" and "2 inputs skipped" in resumed.stderr


# ---------------------------------------------------------------- long names

def test_long_input_and_class_names_are_shortened_deterministically(sample_run, tmp_path):
    data = tmp_path / "in"
    long_stem = "p" * 245
    write_image(data / f"{long_stem}.jpg", _coffee())
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--save-raw")
    assert result.exit_code == 0, result.output
    outputs = [Path(p) for p in json.loads(result.stdout)["outputs"]]
    assert all(p.is_file() and len(os.fsencode(p.name)) <= 255 for p in outputs)
    assert [p.suffix for p in outputs] == [".jpg", ".npy"]
    crafted = with_class_names(sample_run, tmp_path / "long.pt", ["x" * 300 + str(i) for i in range(5)])
    maps = run("overlay", data, "--checkpoint", crafted, "--maps", "3", "--out-dir", tmp_path / "o", "--format", "jsonl")
    assert maps.exit_code == 0, maps.output
    names = [Path(p).name for p in json.loads(maps.stdout)["outputs"]]
    assert len(set(names)) == 3 and all(len(os.fsencode(n)) <= 255 for n in names)
    again = run("overlay", data, "--checkpoint", crafted, "--maps", "3", "--out-dir", tmp_path / "o", "--format", "jsonl")
    assert again.exit_code == 0 and [Path(p).name for p in json.loads(again.stdout)["outputs"]] == names


def test_fit_name_keeps_names_distinct():
    from camcli.files import fit_name

    a, b = "é" * 200 + "a.png", "é" * 200 + "b.png"
    assert fit_name("short.png") == "short.png"
    assert fit_name(a) != fit_name(b) and fit_name(a) == fit_name(a)
    assert all(len(os.fsencode(fit_name(n))) <= 255 and fit_name(n).endswith(".png") for n in (a, b))


# ---------------------------------------------------------------- names that are not UTF-8

def test_names_that_are_not_utf8_round_trip_in_every_format(sample_run, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    raw_name = b"caf\xe9 =1.jpg"
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(_coffee(), cv2.COLOR_RGB2BGR))
    (data / os.fsdecode(raw_name)).write_bytes(encoded.tobytes())
    out = tmp_path / "out"
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--format", "csv",
                 "--output", tmp_path / "rows.csv", "--report", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert b"caf\xe9 =1.jpg" in (tmp_path / "rows.csv").read_bytes()
    assert "caf\\xe9 =1.jpg" in (tmp_path / "r.html").read_text(encoding="utf-8")
    table = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "table", "--output", tmp_path / "t.txt")
    assert table.exit_code == 0 and "caf\\xe9" in (tmp_path / "t.txt").read_text()
    jsonl = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    assert os.fsencode(json.loads(jsonl.stdout)["path"]).endswith(raw_name)
    cmd = [sys.executable, "-m", "camcli", "predict", str(data), "--checkpoint", str(sample_run / "best.safetensors"), "--format", "csv"]
    piped = subprocess.run(cmd, capture_output=True, timeout=120)
    assert piped.returncode == 0 and raw_name in piped.stdout, piped.stderr


def test_csv_cells_that_spreadsheets_would_run_get_a_quote(sample_run, tmp_path):
    crafted = with_class_names(sample_run, tmp_path / "formula.pt", ["=HYPERLINK(1)", "+b", "-c", "@d", "coffee"])
    data = tmp_path / "in"
    write_image(data / "=cmd.jpg", _coffee())
    result = run("predict", data, "--checkpoint", crafted, "--format", "csv", "--top-k", "5")
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    assert all(r[0].startswith("'=cmd.jpg") or r[0].endswith("/=cmd.jpg") for r in rows)
    assert not any(cell[:1] in "=+-@" and cell for r in rows for cell in (r[0], r[2]))
    assert {r[2] for r in rows} == {"'=HYPERLINK(1)", "'+b", "'-c", "'@d", "coffee"}


# ---------------------------------------------------------------- crafted checkpoints

def _crafted(sample_run: Path, tmp_path: Path, change) -> Path:
    ckpt = load_checkpoint(sample_run / "best.safetensors")
    change(ckpt)
    path = tmp_path / "crafted.pt"
    save_v1(ckpt, path)
    return path


@pytest.mark.parametrize("change,culprit", [
    (lambda c: c.update(head=[1, 2]), "head must be a mapping"),
    (lambda c: c["preprocess"].update(mean=[0.5, 0.5]), "preprocess.mean must be 3 numbers from -1000 to 1000"),
    (lambda c: c.pop("preprocess"), "is not a camcli checkpoint (expected keys"),
    (lambda c: c.update(class_names=[1, 2, 3, 4, 5]), "class_names must be a list of 1 to"),
    (lambda c: c.update(img_size=100000), "img_size must be an integer from 32 to 2048"),
    (lambda c: c["preprocess"].update(img_size=100000), "preprocess.img_size must be an integer from 32 to 2048"),
    (lambda c: c["preprocess"].update(std=[0.0, 0.5, 0.5]), "preprocess.std must be 3 numbers from 1e-6 to 1000"),
    (lambda c: c["head"]["weight"].__setitem__((0, 0), float("nan")), "head.weight must be a 2-D tensor of finite floats"),
    (lambda c: c.update(format_version="2"), "format_version must be a positive integer"),
    (lambda c: c.update(cam_threshold=7.0), "cam_threshold must be a number in [0, 1)"),
    (lambda c: c.update(backbone={"reference": {"package": "evil"}}), "checkpoint field backbone must be"),
])
def test_every_checkpoint_field_is_checked_before_use(sample_run, tmp_path, change, culprit):
    path = _crafted(sample_run, tmp_path, change)
    values = "finite" in culprit  # info reads metadata and shapes only, never a tensor's values
    commands = [["predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", path]] + ([] if values else [["info", path]])
    for command in commands:
        line = one_line_error(run(*command))
        assert culprit in line and "weights_only" not in line
    if values:
        assert run("info", path).exit_code == 0


def test_a_checkpoint_that_inflates_is_refused(sample_run, tmp_path):
    old = save_v1(load_checkpoint(sample_run / "best.safetensors"), tmp_path / "old.pt")  # camcli 0.1's zip format
    assert run("info", old).exit_code == 0
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(old) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    assert "compressed entries" in one_line_error(run("info", deflated))


def test_an_arch_that_references_packaged_weights_it_cannot_have(sample_run, tmp_path):
    path = _crafted(sample_run, tmp_path, lambda c: c.update(arch="resnet18"))
    line = one_line_error(run("predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", path))
    assert "resnet18" in line and "by reference" in line


# ---------------------------------------------------------------- --output

def test_output_never_replaces_an_input_the_checkpoint_or_a_foreign_file(sample_run, tmp_path):
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes((sample_run / "best.safetensors").read_bytes())
    image = write_image(tmp_path / "a.jpg", _coffee())
    mine = tmp_path / "notes.csv"
    mine.write_text("my notes\n")
    before = {p: p.read_bytes() for p in (ckpt, image, mine)}
    for target in (ckpt, image, mine):
        result = run("predict", image, "--checkpoint", ckpt, "--format", "csv", "--output", target)
        line = one_line_error(result)
        assert str(target) in line
    assert {p: p.read_bytes() for p in before} == before
    ours = tmp_path / "preds.csv"
    assert run("predict", image, "--checkpoint", ckpt, "--output", ours).exit_code == 0
    assert run("predict", image, "--checkpoint", ckpt, "--output", ours).exit_code == 0  # camcli's own: replaced
    assert run("predict", image, "--checkpoint", ckpt, "--output", mine, "--overwrite").exit_code == 0
    assert mine.read_text().startswith("path,")
    stdout = run("predict", image, "--checkpoint", ckpt, "--format", "csv", "--output", "-")  # -: standard output
    assert stdout.exit_code == 0 and stdout.stdout.startswith("path,") and not os.path.lexists("-")


def test_overwrite_onto_a_folder_is_refused_before_anything_is_written(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    write_image(data / "b.jpg", _coffee())
    (data / "b_cam.jpg").mkdir()
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--overwrite")
    assert "is a folder" in one_line_error(result)
    assert not (data / "a_cam.jpg").exists()


@pytest.mark.parametrize("where", ["out-dir", "under"])
def test_an_output_folder_that_is_a_file_is_named_and_the_file_left_alone(sample_run, tmp_path, where):
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    (tmp_path / "taken").write_text("mine")
    out = tmp_path / "taken" if where == "out-dir" else tmp_path / "taken" / "deeper"
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out)
    assert result.exit_code == 2
    assert f"{tmp_path / 'taken'} is not a folder" in one_line_error(result)
    assert (tmp_path / "taken").read_text() == "mine"


# ---------------------------------------------------------------- boxes files and configs

@pytest.mark.parametrize("name,content,message", [
    ("coco.json", {"images": [{"id": 1, "file_name": "cat_00.jpg"}], "annotations": [{"id": 7, "image_id": 1}]},
     "annotation 7 has no bbox"),
    ("coco.json", {"images": [], "annotations": [{"id": 7, "image_id": 3, "bbox": [0, 0, 1, 1]}]},
     "refers to image_id 3"),
    ("b.json", {"cat/cat_00.jpg": 5}, "a box must be [x0, y0, x1, y1], got 5"),
    ("b.json", {"cat/cat_00.jpg": {"x": 1}}, "a box must be [x0, y0, x1, y1]"),
    ("b.json", {"cat/cat_00.jpg": [0, 0, float("inf"), 5]}, "not a finite number"),
    ("b.json", {"cat/cat_00.jpg": [0, 0, float("nan"), 5]}, "not a finite number"),
    ("b.json", {"cat/cat_00.jpg": [-3, 0, 10, 5]}, "negative coordinate"),
    ("b.json", '{"cat/cat_00.jpg": [0, 0, 1' + "0" * 400 + ', 5]}', "not a finite number"),  # too large for a float
    ("b.json", '{"cat/cat_00.jpg": [0, 0, 5, 5], "cat/cat_00.jpg": [1, 1, 5, 5]}', "the key 'cat/cat_00.jpg' appears twice"),
    ("b.json", {"cat/cat_00.jpg": [0, 0, 5, 5], "./cat/cat_00.jpg": [1, 1, 5, 5]}, "name the same image"),
    ("b.json", {"astronaut/cat_00.jpg": [0, 0, 5, 5]}, "no box in"),
    ("coco.json", {"images": [{"id": 1, "file_name": "cat_00.jpg"}],
                   "annotations": [{"id": 1, "image_id": 1, "bbox": [10.5, 10, 10**400, 5]}]}, "not a finite number"),
    ("coco.json", {"images": [{"id": 1, "file_name": "cat_00.jpg"}, {"id": 1, "file_name": "cat_01.jpg"}], "annotations": []},
     "COCO image id 1 is listed twice"),
    ("v.xml", "<annotation><filename>cat_00.jpg</filename><object><bndbox><xmin>-5</xmin><ymin>1</ymin><xmax>5</xmax>"
              "<ymax>5</ymax></bndbox></object></annotation>", "negative coordinate"),  # plain JSON keys are paths: no match by file name
    ("deep.json", "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("v.xml", "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
     "has no <filename>"),
    ("v.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "xxxxxxxxxx"><!ENTITY f "&e;&e;&e;&e;">]><annotation>&f;</annotation>',
     "is not a Pascal VOC annotation"),
    ("bin.json", b"\xff\xfe\x00garbage", "is not UTF-8 text"),
])
def test_malformed_boxes_files_are_one_line(tmp_path, name, content, message):
    from camcli.evaluate import load_boxes

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CamcliError) as info:
        load_boxes(path, SAMPLE_DATA / "val")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_boxes_file_edges_tolerated_and_explained(tmp_path):
    from camcli.evaluate import load_boxes

    voc = tmp_path / "v.xml"  # a 0-based tool's xmin 0 in a 1-based format
    voc.write_text("<annotation><filename>cat_00.jpg</filename><object><bndbox><xmin>0</xmin><ymin>3</ymin><xmax>9</xmax>"
                   "<ymax>9</ymax></bndbox></object></annotation>")
    assert load_boxes(voc, SAMPLE_DATA / "val") == {"cat/cat_00.jpg": [[0.0, 2.0, 9.0, 9.0]]}
    empty = tmp_path / "folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "boxes.json").write_text("{}")
    with pytest.raises(CamcliError, match="holds no Pascal VOC .xml files"):
        load_boxes(empty, SAMPLE_DATA / "val")
    unmatched: list[str] = []
    plain = tmp_path / "b.json"
    plain.write_text(json.dumps({"cat/cat_00.jpg": [0, 0, 5, 5], "cat/typo.jpg": [0, 0, 5, 5]}))
    assert list(load_boxes(plain, SAMPLE_DATA / "val", unmatched)) == ["cat/cat_00.jpg"] and unmatched == ["cat/typo.jpg"]


def test_a_box_outside_its_image_is_reported_not_scored(sample_run, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [0, 0, 5000, 10]}))
    result = run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--boxes", boxes,
                 "--out", tmp_path / "e", "--workers", "0")
    assert "lies outside the" in one_line_error(result)
    height, width = cv2.imread(str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg")).shape[:2]
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [0, 0, width + 0.5, height], "cat/nope.jpg": [0, 0, 4, 4]}))  # rounding
    edge = run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--boxes", boxes,
               "--out", tmp_path / "e2", "--workers", "0", "--format", "json")
    assert edge.exit_code == 0 and json.loads(edge.stdout)["num_images_with_boxes"] == 1, edge.output
    assert "note: 1 of the names in" in edge.stderr and "'cat/nope.jpg'" in edge.stderr
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [width, 0, width + 1, height]}))  # all of it in the tolerated overhang
    assert "lies outside the" in one_line_error(run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors",
                                                    "--boxes", boxes, "--out", tmp_path / "e3", "--workers", "0"))
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [0, 0, 10, 10]}))
    none = run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--boxes", boxes, "--calibrate",
               "--exclude", "*/cat_00.jpg", "--out", tmp_path / "e4", "--workers", "0")
    assert "none of the images to evaluate has a box" in one_line_error(none) and not (tmp_path / "e4").exists()


@pytest.mark.parametrize("text,message", [
    (b"lr: .inf\n", "lr must be a finite number"),
    (b"epochs: \xff\n", "is not UTF-8 text"),
    (b"1: 2\nepochs: 3\n", "unknown key(s) 1"),
    (b"exclude: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
])
def test_configs_that_are_not_configs_are_one_line(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_bytes(text)
    line = one_line_error(run("train", SAMPLE_DATA, "--config", config, "--out", tmp_path / "r"))
    assert message in line
    assert not (tmp_path / "r").exists()


def test_non_finite_scores_make_a_failed_input_never_invalid_json(tmp_path):
    from camcli.data import Preprocess, find_images
    from camcli.engine import CamModel
    from camcli.jobs import PredictJob, run_here
    from camcli.results import write_rows

    head = torch.nn.Linear(3, 2)
    head.load_state_dict({"weight": torch.full((2, 3), 3e38), "bias": torch.zeros(2)})
    model = CamModel("mean", torch.nn.AvgPool2d(32), head, ["a", "b"], Preprocess(32, (0.0,) * 3, (1e-30,) * 3),
                     device="cpu", backend="torch")
    write_image(tmp_path / "x.png", np.full((32, 32, 3), 200, np.uint8))
    stream = io.StringIO()
    write_rows(run_here(PredictJob(), model, find_images([tmp_path])), "jsonl", stream)
    (row,) = [json.loads(line) for line in stream.getvalue().splitlines()]  # strict JSON: no NaN
    assert row["predictions"] == [] and "non-finite scores" in row["error"]


# ---------------------------------------------------------------- helper processes and training splits

def test_nothing_of_camcli_survives_a_sigkill(sample_run, tmp_path):
    data = make_image_folder(tmp_path / "many", per_class=60, size=(120, 160))
    cmd = [sys.executable, "-m", "camcli", "overlay", str(data), "--checkpoint", str(sample_run / "best.safetensors"),
           "--out-dir", str(tmp_path / "out"), "--batch-size", "2", "--workers", "2", "--backend", "torch", "--format", "jsonl"]
    # every descendant inherits this variable, even one that leaves the process group or the session (setsid)
    mark = f"CAMCLI_TEST_MARK={os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    assert proc.stdout.readline()  # mid-run: overlays are being written
    assert _marked(mark) == [proc.pid], "decoding runs in threads: no helper processes"
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == proc.pid]
    assert children == []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    end = time.monotonic() + 5
    while time.monotonic() < end and _marked(mark):
        time.sleep(0.1)
    assert _marked(mark) == [], "a process started by camcli is still alive 5 s after SIGKILL"


def _marked(mark: str) -> list[int]:
    """The live processes whose environment holds ``mark`` (zombies have none)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                if mark.encode() in (proc_dir / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc_dir.name))
            except OSError:
                continue
    return found


def _parent(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_split_that_leaves_a_class_without_training_images(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=3)
    line = one_line_error(run("train", data, "--val-split", "0.99", "--arch", "resnet18", "--weights", "none",
                              "--out", tmp_path / "r"))
    assert "leaves no training images for class" in line


def test_a_reused_run_folder_loses_the_stale_report(tmp_path, monkeypatch):
    from camcli import train
    from camcli.config import resolve_train_config

    data = make_image_folder(tmp_path / "d", per_class=3)
    out = tmp_path / "run"
    config = resolve_train_config(data=str(data), arch="resnet18", weights="none", img_size=32, epochs=1, out=str(out),
                                  exist_ok=True, workers=0)
    train.fit(config)  # the previous run
    assert (out / "report.html").is_file()

    def fails(*_args, **_kwargs):
        raise CamcliError("stopped")

    monkeypatch.setattr(train, "_write_report", fails)
    with pytest.raises(CamcliError, match="stopped"):
        train.fit(config)
    assert not (out / "report.html").exists() and (out / "best.safetensors").is_file()
    # a rerun that diverges at once leaves no checkpoint of the previous run, and not its own config.yaml alone
    monkeypatch.undo()
    monkeypatch.setattr(train, "train_one_epoch", lambda *_args: (float("nan"), 0.0))
    with pytest.raises(CamcliError, match="training diverged at epoch 1"):
        train.fit(config)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []


def test_a_file_written_into_the_run_folder_during_training_is_kept_and_stops_it(tmp_path, monkeypatch):
    from camcli import train
    from camcli.config import resolve_train_config

    data = make_image_folder(tmp_path / "d", per_class=3)
    out = tmp_path / "run"
    config = resolve_train_config(data=str(data), arch="resnet18", weights="none", img_size=32, epochs=1, out=str(out),
                                  exist_ok=True, workers=0)
    train.fit(config)  # the previous run: its files are camcli's
    real = train.cached_pooled_features

    def user_writes_meanwhile(*args, **kwargs):  # between the start's check and the removal of the old run files
        (out / "metrics.csv").write_text("the user's own notes\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "cached_pooled_features", user_writes_meanwhile)
    with pytest.raises(CamcliError, match="metrics.csv exists and was not written by camcli"):
        train.fit(config)
    assert (out / "metrics.csv").read_text() == "the user's own notes\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".removing")]


def test_a_run_file_a_user_writes_while_training_is_never_replaced(tmp_path, monkeypatch):
    from camcli import train
    from camcli.config import resolve_train_config

    data = make_image_folder(tmp_path / "d", per_class=3)
    out = tmp_path / "run"
    config = resolve_train_config(data=str(data), arch="resnet18", weights="none", img_size=32, epochs=2, out=str(out),
                                  workers=0)
    real = train.train_one_epoch

    def user_writes_during_the_first_epoch(*args):
        if not (out / "last.safetensors").exists():
            (out / "last.safetensors").write_text("the user's own file")
        return real(*args)

    monkeypatch.setattr(train, "train_one_epoch", user_writes_during_the_first_epoch)
    with pytest.raises(CamcliError, match="last.safetensors exists and was not written by camcli"):
        train.fit(config)
    assert (out / "last.safetensors").read_text() == "the user's own file"


def test_two_trains_into_one_folder_at_once_are_refused(tmp_path):
    from camcli import train
    from camcli.config import resolve_train_config
    from camcli.files import FolderLock

    data = make_image_folder(tmp_path / "d", per_class=3)
    out = tmp_path / "run"
    out.mkdir()
    held = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(out)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "held"  # another process (a first train) holds the run folder
        config = resolve_train_config(data=str(data), arch="resnet18", weights="none", img_size=32, epochs=1, out=str(out),
                                      exist_ok=True, workers=0)
        with pytest.raises(CamcliError, match="another camcli process is writing the run folder"):
            train.fit(config)
        assert list(out.iterdir()) == []
    finally:
        held.kill()
        held.wait()
    FolderLock(out, "x").release()  # free again once the other process is gone


def test_a_concurrent_run_s_outputs_are_not_foreign(tmp_path):
    from camcli.files import OutputGuard

    early = OutputGuard(set())
    early.check(tmp_path / "a_cam_1_cat.jpg")  # reads the (empty) manifest
    late = OutputGuard(set())
    (tmp_path / "a_cam_1_cat.jpg").write_bytes(b"written by another run")
    late.record(tmp_path / "a_cam_1_cat.jpg", (tmp_path / "a_cam_1_cat.jpg").stat())
    early.check(tmp_path / "a_cam_1_cat.jpg")  # no "exists and was not written by camcli"


# ---------------------------------------------------------------- found by a hostile review

def test_a_class_name_that_is_not_utf8_is_drawn_escaped_not_a_crash(sample_run, tmp_path):
    # a class folder whose name is not UTF-8
    crafted = with_class_names(sample_run, tmp_path / "names.safetensors", ["caf\udce9", "b", "c", "d", "e"])
    data = tmp_path / "in"
    write_image(data / "a.jpg", _coffee())
    result = run("overlay", data, "--checkpoint", crafted, "--class-index", "0", "--format", "jsonl", "--out-dir", tmp_path / "o1")
    assert result.exit_code == 0, result.output
    # the caption drawn is the escaped name: the same pixels as for a class literally named "caf\xe9" (ASCII)
    literal = with_class_names(sample_run, tmp_path / "literal.safetensors", ["caf\\xe9", "b", "c", "d", "e"])
    again = run("overlay", data, "--checkpoint", literal, "--class-index", "0", "--format", "jsonl", "--out-dir", tmp_path / "o2")
    plain = run("overlay", data, "--checkpoint", literal, "--class-index", "0", "--no-caption", "--out-dir", tmp_path / "o3")
    assert again.exit_code == 0 and plain.exit_code == 0
    drawn, expected, uncaptioned = (cv2.imread(str(tmp_path / o / "in" / "a_cam.jpg")) for o in ("o1", "o2", "o3"))
    assert np.array_equal(drawn, expected) and not np.array_equal(drawn, uncaptioned)


def test_the_results_file_cannot_be_one_of_the_overlays(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "cat.jpg", _coffee())
    for extra in ([], ["--maps", "2"]):
        target = data / ("cat_cam.jpg" if not extra else "cat_cam_1_x.jpg")
        result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--output", target, "--format", "json", *extra)
        assert "results file" in one_line_error(result)
        assert not target.exists() and not (data / "cat_cam.jpg").exists()


def test_evaluate_never_replaces_a_file_it_did_not_write(sample_run, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "metrics.json").write_text("mine")
    args = ["evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--workers", "0", "--format", "json"]
    assert "not written by camcli" in one_line_error(run(*args, "--out", out))
    assert (out / "metrics.json").read_text() == "mine"
    ours = tmp_path / "ours"
    assert run(*args, "--out", ours).exit_code == 0
    assert run(*args, "--out", ours).exit_code == 0  # its own files: replaced


@pytest.mark.parametrize("lr", ["1e300", "1e308"])
def test_training_that_diverges_stops_with_one_line_and_leaves_no_run_folder(lr, tmp_path):
    import subprocess
    import sys

    data = make_image_folder(tmp_path / "d", per_class=4)
    (tmp_path / "c.yaml").write_text("weight_decay: 0\n")  # else lr * weight_decay >= 1 is refused before training
    result = subprocess.run([sys.executable, "-m", "camcli", "train", data, "--arch", "resnet18", "--weights", "none",
                             "--img-size", "32", "--lr", lr, "--epochs", "3", "--workers", "0", "--out", tmp_path / "r",
                             "--config", tmp_path / "c.yaml", "--quiet"], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()  # no NumPy RuntimeWarning: one line
    assert result.returncode == 2 and len(lines) == 1 and "training diverged at epoch 1" in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


def test_a_weight_decay_that_would_flip_the_weights_is_refused_before_anything_is_written(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=4)
    (tmp_path / "c.yaml").write_text("weight_decay: 1e300\n")
    line = one_line_error(run("train", data, "--config", tmp_path / "c.yaml", "--out", tmp_path / "r"))
    assert "weight_decay times lr must be below 1" in line and "1e+300 with lr 0.01" in line
    assert not (tmp_path / "r").exists()


def test_links_that_loop_and_names_too_long_for_the_file_system(sample_run, tmp_path):
    data = tmp_path / "in"
    write_image(data / "good.jpg", _coffee())
    (data / "loop1.jpg").symlink_to(data / "loop2.jpg")
    (data / "loop2.jpg").symlink_to(data / "loop1.jpg")
    looped = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    assert looped.exit_code == 1 and "Traceback" not in looped.output and (data / "good_cam.jpg").is_file()
    long = "x" * 300
    for args in (["predict", tmp_path / f"{long}.jpg"], ["overlay", data / "good.jpg", "--out-dir", tmp_path / long, "--overwrite"],
                 ["predict", data / "good.jpg", "--output", tmp_path / f"{long}.csv"]):
        assert "File name too long" in one_line_error(run(*args, "--checkpoint", sample_run / "best.safetensors"))
    assert "File name too long" in one_line_error(run("train", tmp_path / long))


@pytest.mark.parametrize("args,message", [
    (["--max-pixels", "0"], "--max-pixels must be from 1"),
    (["--max-pixels", "99999999999999999999999"], "--max-pixels must be from 1"),
])
def test_option_values_out_of_range(sample_run, args, message):
    result = run("predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", sample_run / "best.safetensors", *args)
    assert message in one_line_error(result)


def test_a_huge_seed_and_yaml_numbers_without_a_dot(tmp_path):
    assert "seed must be from 0" in one_line_error(run("train", SAMPLE_DATA, "--seed", str(10**23), "--out", tmp_path / "r"))
    from camcli.config import resolve_train_config

    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as text
    assert resolve_train_config(config, data="x").lr == 1e-3


def test_stdin_without_newlines_is_refused_not_read_without_end(sample_run):
    result = run("predict", "-", "--checkpoint", sample_run / "best.safetensors", input="a" * 100_000)
    assert "longer than 4096 bytes" in one_line_error(result)


def test_too_many_boxes_for_one_image(tmp_path):
    from camcli.evaluate import load_boxes

    path = tmp_path / "b.json"
    path.write_text(json.dumps({"cat/cat_00.jpg": [[0, 0, 10, 10]] * 1001}))
    with pytest.raises(CamcliError, match="1,001 boxes for cat/cat_00.jpg"):
        load_boxes(path, SAMPLE_DATA / "val")


def test_csv_quotes_a_carriage_return_in_a_name_and_names_keep_their_case(sample_run, tmp_path):
    import csv

    data = tmp_path / "in"
    for name in ("cr\rx.jpg", "a.jpg", "a.JPG", "\u202egpj.exe.jpg"):
        write_image(data / name, _coffee())
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--format", "csv", "--top-k", "1")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert len(rows) == 1 + 4 and all(len(r) == 8 for r in rows)
    assert {Path(r[5]).name for r in rows[1:]} >= {"a_jpg_cam.jpg", "a_JPG_cam.JPG"}
    table = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "table")
    assert "\u202e" not in table.stdout and "\\u202egpj.exe.jpg" in table.stdout
    twice = run("overlay", data / "a.jpg", data / "." / "a.jpg", "--checkpoint", sample_run / "best.safetensors")
    assert "is the same file as" in one_line_error(twice)


# ---------------------------------------------------------------- found by a second hostile review (safetensors, export, cache)

def test_outputs_that_are_fifos_or_devices_are_never_replaced(sample_run, tmp_path):
    fifo, rows = tmp_path / "out.onnx", tmp_path / "rows.csv"
    os.mkfifo(fifo)
    os.mkfifo(rows)
    for args in (["export", sample_run / "best.safetensors", "--out", fifo, "--overwrite"],
                 ["predict", SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", "--checkpoint", sample_run / "best.safetensors",
                  "--output", rows, "--overwrite"]):
        with deadline():
            assert "is a FIFO; camcli replaces only regular files" in one_line_error(run(*args))
    assert fifo.is_fifo() and rows.is_fifo()


def test_an_overlay_batch_in_which_every_image_fails(sample_run, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    result = run("overlay", tmp_path / "empty.jpg", "--checkpoint", sample_run / "best.safetensors", "--out-dir", tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in result.output and "the file is empty" in result.stderr


def test_a_fifo_in_the_onnx_cache_is_replaced_not_waited_on(tmp_path, monkeypatch):
    from torch import nn

    from camcli.runtime import OnnxRunner, make_runner, onnx_path

    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))
    path = onnx_path("tiny", "k")
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with deadline():
        runner, _ = make_runner(lambda: nn.Conv2d(3, 4, 3), "tiny", "cpu", "auto", key=lambda: "k")
    assert isinstance(runner, OnnxRunner) and path.is_file()


def test_an_export_that_gives_nan_is_refused(tmp_path, monkeypatch):
    from torch import nn

    from camcli.runtime import TorchRunner, make_runner

    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))
    conv = nn.Conv2d(3, 4, 3)
    nn.init.constant_(conv.weight, float("nan"))
    runner, note = make_runner(lambda: conv, "nan", "cpu", "auto", key=lambda: "n")
    assert isinstance(runner, TorchRunner) and note.startswith("warning: ONNX Runtime unavailable")


@pytest.mark.parametrize("change,culprit", [
    (lambda c: c["head"].update(weight=c["head"]["weight"].astype(np.float64) * 1e300),
     "head.weight must be a 2-D tensor of finite floats"),
    (lambda c: c.update(arch="resnet18", backbone={"state_dict": {"conv1.weight": np.full((64, 3, 7, 7), np.nan, np.float32)}}),
     "backbone.conv1.weight must be a tensor of finite floats"),
    (lambda c: c["preprocess"].update(std=[1e-308] * 3), "preprocess.std must be 3 numbers from 1e-6 to 1000"),
    (lambda c: c["preprocess"].update(mean=[1e308, 0.0, 0.0]), "preprocess.mean must be 3 numbers from -1000 to 1000"),
])
def test_values_that_overflow_float32_are_refused(sample_run, tmp_path, change, culprit):
    path = _crafted(sample_run, tmp_path, change)
    result = run("predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", path)
    assert culprit in one_line_error(result)


def test_export_of_a_checkpoint_that_does_not_exist(tmp_path):
    assert "checkpoint not found" in one_line_error(run("export", tmp_path / "missing", "--out", tmp_path / "m.onnx"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_an_interrupted_run_keeps_its_rows_and_a_resumed_run_completes_the_file(sample_run, tmp_path, fmt):
    data = tmp_path / "data"
    for i in range(12):
        write_image(data / f"{i:02d}.png", np.full((40, 52, 3), 20 * i, np.uint8))
    out, rows_file = tmp_path / "out", tmp_path / f"rows.{fmt}"
    cmd = [sys.executable, "-m", "camcli", "overlay", str(data), "--checkpoint", str(sample_run / "best.safetensors"),
           "--out-dir", str(out), "--batch-size", "1", "--workers", "0", "--output", str(rows_file), "--skip-existing"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with deadline(120):
            while len(list(out.rglob("*_cam.png"))) < 3:  # a few overlays are written: interrupt in the middle
                time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    done = {p.name.replace("_cam.png", ".png") for p in out.rglob("*_cam.png")}
    assert 3 <= len(done) < 12

    def paths_in(path: Path) -> list[str]:
        text = path.read_text()
        if fmt == "jsonl":
            return [Path(json.loads(line)["path"]).name for line in text.splitlines()]
        if fmt == "json":
            return [Path(row["path"]).name for row in json.loads(text)]
        import csv

        records = list(csv.reader(io.StringIO(text)))
        assert tuple(records[0]) == ("path", "rank", "label", "index", "prob", "outputs", "box", "error")
        return sorted({Path(r[0]).name for r in records[1:]})

    kept = paths_in(rows_file)
    # every finished row, in input order; the overlays the writer threads (2) finished after the last row was sent may lack
    # theirs (the resumed run redoes them)
    assert sorted(kept) == sorted(done)[: len(kept)] and len(done) - 2 <= len(kept) <= len(done)
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    final = paths_in(rows_file)
    assert sorted(final) == [f"{i:02d}.png" for i in range(12)] and len(final) == len(set(final))


# ---------------------------------------------------------------- round three: inputs, names, messages

def test_nul_separated_paths_on_stdin_are_read_as_find_print0_writes_them(sample_run, tmp_path):
    odd = write_image(tmp_path / "a\nb.png", np.full((32, 40, 3), 90, np.uint8))  # a newline in a name: why -print0 exists
    plain = write_image(tmp_path / "c.png", np.full((32, 40, 3), 30, np.uint8))
    stdin = f"{odd}\0{plain}\0"
    result = run("predict", "-", "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", input=stdin)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(odd), str(plain)]
    from camcli.data import stdin_lines

    with pytest.raises(CamcliError, match="mixes newline- and NUL-separated paths"):  # a NUL after lines began
        list(stdin_lines(iter([b"c.png\n", b"a.png\0b.png\n"])))


def test_suggestions_share_a_word_with_the_mistake(sample_run):
    from camcli.errors import suggestions

    imagenet = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "crate", "oxcart", "castle"]
    assert set(suggestions("cat", imagenet, 4)) == {"tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert suggestions("zebra", imagenet) == []  # nothing alike: no guesses that only share letters
    result = run("predict", SAMPLE_DATA / "val" / "cat", "--bach-size", "2")
    assert "Possible options: --batch-size" in one_line_error(result) and "predict --help)" in result.stderr
    line = one_line_error(run("overlay", SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", "--class", "cat", "--out-dir", "/nonexistent"))
    assert "tiger cat" in line and "crate" not in line


def test_input_mistakes_name_the_commands_help(tmp_path):
    line = one_line_error(run("predict", tmp_path / "missing.jpg"))
    assert line == f"error: input not found: {tmp_path / 'missing.jpg'} (see camcli predict --help)"


def test_class_labels_that_hold_no_file_name_character_get_distinct_names(sample_run, tmp_path):
    crafted = with_class_names(sample_run, tmp_path / "dots.safetensors", [".", "..", "***", "cat", "x"])
    image = write_image(tmp_path / "i.png", np.full((40, 40, 3), 100, np.uint8))
    result = run("overlay", image, "--checkpoint", crafted, "--maps", "3", "--out-dir", tmp_path / "o", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    names = [Path(p).name for p in json.loads(result.stdout)["outputs"]]
    assert len(set(names)) == 3 and all(".." not in n.removesuffix(".png") for n in names)
    same = with_class_names(sample_run, tmp_path / "same.safetensors", ["a b", "a_b", "c", "d", "e"])
    line = one_line_error(run("overlay", image, "--checkpoint", same, "--class", "a b", "--class", "a_b", "--out-dir", tmp_path / "p"))
    assert "two classes would write the same output" in line


def test_float_tiffs_decode_and_png_color_profiles_print_nothing(sample_run, tmp_path):
    rgb = np.zeros((24, 32, 3), np.float64)
    rgb[..., 0], rgb[..., 1] = 1.0, 0.5  # red 255, green 128, as a float TIFF in [0, 1]
    tiff = tmp_path / "f64.tiff"
    assert cv2.imwrite(str(tiff), cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2BGR).astype(np.float64))
    from camcli.data import read_image

    assert read_image(tiff)[0, 0].tolist() == [255, 128, 0]
    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 120, np.uint8))
    data = png.tobytes()
    body = b"bad profile\x00\x00" + zlib.compress(b"not an ICC profile" * 4)
    iccp = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    (tmp_path / "iccp.png").write_bytes(data[:33] + iccp + data[33:])
    result = subprocess.run([sys.executable, "-m", "camcli", "predict", str(tmp_path / "iccp.png"), str(tiff), "--checkpoint",
                             str(sample_run / "best.safetensors"), "--format", "jsonl", "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_a_stride_that_is_a_boolean_is_refused(sample_run, tmp_path):
    path = _crafted(sample_run, tmp_path, lambda c: c["preprocess"].update(stride=True))
    assert "preprocess.stride must be an integer from 1 to 1024" in one_line_error(run("info", path))
