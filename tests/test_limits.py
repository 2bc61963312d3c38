"""Memory and time are bounded by what camcli checked, before the work starts (hardening round
three). Each test builds the hostile file, runs the command in a child process and asserts the
refusal (one line, its exit code) and the child's own peak memory (``getrusage``): under 1 GB,
where the hostile inputs made camcli take 3 to 8.5 GB before."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from camcli import engine, files
from camcli.data import MAX_ASPECT
from camcli.defaults import MAX_FORWARD_PIXELS
from conftest import SAMPLE_DATA, run_measured, write_image

PEAK_MB = 1024
CAT = SAMPLE_DATA / "val" / "cat"


def _meta(arch: str = "efficientnet_lite0", stored: bool = True, **extra) -> dict:
    return {"format_version": 2, "arch": arch, "class_names": ["a", "b"], "img_size": 224,
            "preprocess": {"img_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"},
            "backbone": {"stored": "tensors"} if stored else {"reference": {"package": "x", "file": "y", "sha256": "z"}},
            **extra}


def _safetensors(path, meta: dict, entries: dict, data_bytes: int = 0, tail: bytes = b""):
    """A safetensors file written by hand: ``entries`` name -> (dtype, shape, start, end) as
    declared, followed by ``data_bytes`` of data (a sparse hole: no disk space) or ``tail``."""
    header = {"__metadata__": {"camcli": json.dumps(meta)}}
    header.update({k: {"dtype": d, "shape": list(s), "data_offsets": [a, b]} for k, (d, s, a, b) in entries.items()})
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + tail)
        if data_bytes:
            f.truncate(8 + len(raw) + data_bytes)
    return path


def _head(offset: int = 0) -> dict:
    return {"head.weight": ("F32", (2, 4), offset, offset + 32), "head.bias": ("F32", (2,), offset + 32, offset + 40)}


def _refused(result, peak: float, words: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert words in lines[0], lines[0]
    assert peak < PEAK_MB, f"peak {peak:.0f} MB"
    print(f"refused at {peak:.0f} MB peak: {lines[0][:110]}")  # the manual's reliability figures (docs/reliability.md) (pytest -s)
    return lines[0]


def test_a_tiny_checkpoint_naming_a_huge_architecture_is_refused_before_it_is_built(tmp_path):
    # 846 M parameters (3.4 GB in float32): laid out on the meta device and compared, never allocated
    path = _safetensors(tmp_path / "huge.safetensors", _meta("timm:convnext_xxlarge"),
                        {**_head(), "backbone.stem.weight": ("F32", (3,), 40, 52)}, tail=bytes(52))
    assert path.stat().st_size < 2000
    result, peak = run_measured("predict", CAT, "--checkpoint", path)
    _refused(result, peak, "does not hold timm:convnext_xxlarge")
    none = _safetensors(tmp_path / "none.safetensors", _meta("timm:convnext_xxlarge"), _head(), tail=bytes(40))
    result, peak = run_measured("predict", CAT, "--checkpoint", none)
    _refused(result, peak, "holds no backbone tensor")


def test_a_foreign_tensor_in_a_sparse_2_gib_checkpoint_is_refused_from_the_header(tmp_path):
    path = _safetensors(tmp_path / "sparse.safetensors", _meta(stored=False),
                        {**_head(), "junk": ("F32", (1 << 29,), 40, 40 + (2 << 30))}, data_bytes=40 + (2 << 30))
    for command in (["info", path], ["predict", CAT, "--checkpoint", path]):
        result, peak = run_measured(*command)
        _refused(result, peak, "a tensor camcli does not write ('junk')")


def test_info_reads_no_tensor_and_predict_refuses_a_backbone_that_does_not_fit(tmp_path):
    # a 2 GiB stored backbone, declared consistently (a sparse file): info reads the header only
    path = _safetensors(tmp_path / "big.safetensors", _meta(),
                        {**_head(), "backbone.model.conv_stem.weight": ("F32", (1 << 29,), 40, 40 + (2 << 30))},
                        data_bytes=40 + (2 << 30))
    result, peak = run_measured("info", path, "--format", "json")
    assert result.returncode == 0 and json.loads(result.stdout)["num_features"] == 4, result.stderr
    assert peak < 200, f"info took {peak:.0f} MB"
    print(f"info of a 2 GiB checkpoint: {peak:.0f} MB peak")
    result, peak = run_measured("predict", CAT, "--checkpoint", path)
    # it reads the 2 GiB tensor it would use (memory in proportion to the file), then refuses it
    assert result.returncode == 2 and "does not hold efficientnet_lite0" in result.stderr
    assert peak < 2048 + PEAK_MB


def test_a_million_empty_tensors_are_refused_before_they_become_objects(tmp_path):
    entries = {f"backbone.t{i}": ("F32", (0,), 40, 40) for i in range(1_000_000)}
    path = _safetensors(tmp_path / "many.safetensors", _meta(), {**_head(), **entries}, tail=bytes(40))
    result, peak = run_measured("info", path)
    # refused by the first bound it meets: 180,000 JSON objects and arrays (2 a tensor), before the parse reaches 20,000 tensors
    _refused(result, peak, "its header opens more than 180,000 JSON objects and arrays")
    fewer = {f"backbone.t{i}": ("F32", (0,), 40, 40) for i in range(25_000)}  # under that bound: the tensor count refuses it
    path = _safetensors(tmp_path / "fewer.safetensors", _meta(), {**_head(), **fewer}, tail=bytes(40))
    result, peak = run_measured("info", path)
    _refused(result, peak, "more than 20,000 tensors")


@pytest.mark.parametrize("declared", [100_000_001, 104_857_600])
def test_a_header_over_the_safetensors_limit_is_called_that_not_damaged(tmp_path, declared):
    path = tmp_path / "big_header.safetensors"
    path.write_bytes(struct.pack("<Q", declared) + b"{" + bytes(100))
    result, peak = run_measured("info", path)
    line = _refused(result, peak, "over the safetensors limit of 100,000,000")
    assert "damaged" not in line


def test_overlapping_and_out_of_file_offsets_are_refused(tmp_path):
    overlapping = _safetensors(tmp_path / "o.safetensors", _meta(stored=False),
                               {"head.weight": ("F32", (2, 4), 0, 32), "head.bias": ("F32", (2,), 8, 16)}, tail=bytes(32))
    outside = _safetensors(tmp_path / "x.safetensors", _meta(stored=False), _head(), tail=bytes(20))
    for path, words in ((overlapping, "share bytes"), (outside, "lies outside the file")):
        result, peak = run_measured("info", path)
        _refused(result, peak, words)


def test_weights_files_go_through_the_bounded_reader(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(1000)))
    state = {"w": torch.zeros(64 << 20, dtype=torch.uint8)}  # 64 MB of zeros: a few hundred KB deflated
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    assert deflated.stat().st_size < 1 << 20
    result, peak = run_measured("predict", CAT, "--arch", "resnet18", "--weights", deflated, "--classes", labels)
    _refused(result, peak, "compressed entries")
    for name, tensor in (("complex", torch.zeros(4, dtype=torch.complex64)), ("sparse", torch.eye(3).to_sparse())):
        path = tmp_path / f"{name}.pth"
        torch.save({"fc.weight": tensor}, path)
        for extra in ([], ["--layer", "layer4"]):  # a CAM model and a gradient model
            result, peak = run_measured("predict", CAT, "--arch", "resnet18", "--weights", path, "--classes", labels, *extra)
            _refused(result, peak, "dense real tensors only")


def test_an_input_too_large_for_one_forward_pass_is_refused_before_it_is_resized(tmp_path):
    wide = write_image(tmp_path / "wide.png", np.full((100, int(100 * MAX_ASPECT)), 128, np.uint8)[..., None].repeat(3, 2))
    small = write_image(tmp_path / "small.png", np.full((64, 64, 3), 90, np.uint8))
    for args in (["predict", wide, "--img-size", "2048"], ["overlay", wide, "--cam-size", "2048", "--out-dir", tmp_path / "o"],
                 ["predict", wide, "--boxes", "--cam-scales", "224,2048"]):
        result, peak = run_measured(*args, "--format", "jsonl")
        row = json.loads(result.stdout)
        assert result.returncode == 1 and peak < PEAK_MB, (args, peak)
        print(f"refused at {peak:.0f} MB peak: {' '.join(map(str, args[2:]))}")
        assert "2048x8192 = 16,777,216 pixels" in row["error"] and "lower the input size" in row["error"]
    # the limit is per image: a square image at the largest size still runs beside the refused one
    result, _ = run_measured("predict", wide, small, "--img-size", "2048", "--format", "jsonl")
    rows = [json.loads(r) for r in result.stdout.splitlines()]
    assert result.returncode == 1 and "error" in rows[0] and rows[1]["predictions"]


def test_a_batch_is_split_by_its_pixels():
    seen = []

    def runner(x):
        seen.append(x.shape[0] * x.shape[2] * x.shape[3])
        return np.ones((x.shape[0], 2, x.shape[2] // 32, x.shape[3] // 32), np.float32)

    side = 1024  # four of these fill one forward pass
    tensors = [np.zeros((3, side, side), np.float32)] * 10 + [np.zeros((3, 64, 64), np.float32)] * 3
    feats, sizes = engine.extract_features(runner, tensors)
    assert max(seen) <= MAX_FORWARD_PIXELS and sum(seen) == 10 * side * side + 3 * 64 * 64
    assert sorted(seen) == [3 * 64 * 64, 2 * side * side, 4 * side * side, 4 * side * side]
    assert feats.shape == (13, 2, 32, 32) and sizes[-1] == (2, 2)


# ---------------------------------------------------------------- the output manifest

def _overlays(sample_run, data, out, *extra):
    return run_measured("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--format", "jsonl",
                        *extra)


def test_a_large_manifest_is_read_once_and_compacted(sample_run, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(5):
        write_image(data / f"{i}.png", np.full((48, 64, 3), 40 * i, np.uint8))
    out = tmp_path / "out"
    assert _overlays(sample_run, data, out)[0].returncode == 0
    folder = out / "data"
    for i in range(1, 5):
        (folder / f"{i}_cam.png").unlink()
    manifest = folder / files.MANIFEST_NAME
    with open(manifest, "ab") as f:  # 400,000 stale records (files written and deleted since)
        f.write(b"".join(b'{"name": "gone%d.png", "size": 1, "mtime_ns": 1}\n' % i for i in range(400_000)))
    assert manifest.stat().st_size > 15 << 20
    reads = []
    real = files._read_records

    def counted(path, start=0, known=None):
        reads.append(start)
        return real(path, start, known)

    monkeypatch.setattr(files, "_read_records", counted)
    from typer.testing import CliRunner

    from camcli.cli import app

    result = CliRunner().invoke(app, ["overlay", str(data), "--checkpoint", str(sample_run / "best.safetensors"), "--out-dir", str(out),
                                      "--skip-existing", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert len([r for r in result.stdout.splitlines() if r.strip()]) == 4  # the four deleted ones; 0.png's is there
    assert 0 < reads.count(0) <= 4  # compaction's two reads, the run's own, the folder walk's: never one per output
    assert manifest.stat().st_size < 8192  # the live records, and the last 4 KB's records of files not there (in flight)
    live = {n for n in files.read_manifest(folder) if not n.startswith("gone")}
    assert live == {f"{i}_cam.png" for i in range(5)} and len(files.read_manifest(folder)) < 100


def test_a_hard_linked_manifest_is_copied_before_camcli_appends(sample_run, tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        write_image(data / f"{i}.png", np.full((48, 64, 3), 60 * i, np.uint8))
    out = tmp_path / "out"
    assert _overlays(sample_run, data, out)[0].returncode == 0
    snapshot = tmp_path / "snapshot"  # cp -al: every file of the snapshot is a hard link
    (snapshot / "data").mkdir(parents=True)
    for p in (out / "data").iterdir():
        os.link(p, snapshot / "data" / p.name)
    (snapshot / "data" / "1_cam.png").unlink()
    before = (out / "data" / files.MANIFEST_NAME).read_bytes()
    result, _ = _overlays(sample_run, data, snapshot, "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # the snapshot resumed: 0.png's overlay is still camcli's
    assert (snapshot / "data" / files.MANIFEST_NAME).stat().st_nlink == 1
    assert (out / "data" / files.MANIFEST_NAME).read_bytes() == before  # the other link kept its content
    assert (out / "data" / files.MANIFEST_NAME).stat().st_nlink == 1
    assert sorted(files.read_manifest(snapshot / "data")) == ["0_cam.png", "1_cam.png"]


# ---------------------------------------------------------------- the hostile review of round three

def test_expanded_views_in_pytorch_files_are_refused_before_any_copy(tmp_path):
    head = torch.zeros(1).expand(5, 1 << 27)  # 3 KB on disk, 2.7 GB as a contiguous copy
    v1 = tmp_path / "v1.pt"
    torch.save(dict(_meta(stored=False), format_version=1, backbone={"reference": {"package": "x", "file": "y", "sha256": "z"}},
                    head={"weight": head, "bias": torch.zeros(5)}), v1)
    assert v1.stat().st_size < 10_000  # torch.save keeps the view (conftest's save_v1 would copy it)
    result, peak = run_measured("info", v1)
    _refused(result, peak, "declares more elements than its storage holds")
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(1, dtype=torch.float16).expand(1000, 512)}, weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(1000)))
    result, peak = run_measured("predict", CAT, "--arch", "resnet18", "--weights", weights, "--classes", labels)
    _refused(result, peak, "declares more elements than its storage holds")


def test_zip_entry_counts_pickles_and_keys_are_bounded(tmp_path):
    many = tmp_path / "many.pt"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_STORED) as z:
        for i in range(30_000):
            z.writestr(f"archive/data/{i}", b"")
    result, peak = run_measured("info", many)
    _refused(result, peak, "declares 30,000 entries")
    pickle = tmp_path / "pickle.pt"
    with zipfile.ZipFile(pickle, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02](" + b"}" * (9 << 20) + b"e.")
    result, peak = run_measured("info", pickle)
    _refused(result, peak, "its pickle is")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(1000)))
    intkey = tmp_path / "intkey.pth"
    torch.save({5: torch.zeros(1)}, intkey)
    result, peak = run_measured("predict", CAT, "--arch", "resnet18", "--weights", intkey, "--classes", labels)
    _refused(result, peak, "does not hold a state dict (a dict of tensors by name)")


def test_safetensors_headers_bounded_in_arrays_and_dims(tmp_path):
    meta = _meta(stored=False, config={"junk": [[] for _ in range(300_000)]})
    path = _safetensors(tmp_path / "arrays.safetensors", meta, _head(), tail=bytes(40))
    result, peak = run_measured("info", path)
    _refused(result, peak, "opens more than")
    huge = _safetensors(tmp_path / "dims.safetensors", _meta(stored=False),
                        {"head.weight": ("F32", (0, 1 << 64), 0, 0), "head.bias": ("F32", (2,), 0, 8)}, tail=bytes(8))
    for command in (["info", huge], ["predict", CAT, "--checkpoint", huge]):
        result, peak = run_measured(*command)
        _refused(result, peak, "is inconsistent")


def test_a_resume_spelled_otherwise_and_rows_of_deleted_inputs(sample_run, tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        write_image(data / f"{i}.png", np.full((40, 48, 3), 50 * i, np.uint8))
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out"
    first, _ = run_measured("overlay", "data", "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--output", rows,
                            cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (data / "3.png").unlink()  # an input gone
    (out / "data" / "1_cam.png").unlink()  # an output gone: redone
    again, _ = run_measured("overlay", data.resolve(), "--checkpoint", sample_run / "best.safetensors", "--out-dir", out,
                            "--output", rows, "--skip-existing")  # the same folder, spelled as an absolute path
    assert again.returncode == 0, again.stderr
    names = [Path(json.loads(line)["path"]).name for line in rows.read_text().splitlines()]
    assert sorted(names) == ["0.png", "1.png", "2.png"]


def test_an_error_that_stops_a_run_still_writes_the_finished_rows(sample_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from camcli import jobs
    from camcli.cli import app
    from camcli.errors import CamcliError

    data = tmp_path / "data"
    for i in range(5):
        write_image(data / f"{i}.png", np.full((40, 48, 3), 40 * i, np.uint8))
    real, calls = jobs.write_overlays, []

    def fails_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise CamcliError("the output folder went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "write_overlays", fails_third)
    rows = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(app, ["overlay", str(data), "--checkpoint", str(sample_run / "best.safetensors"), "--out-dir",
                                      str(tmp_path / "o"), "--output", str(rows), "--batch-size", "1", "--workers", "0"])
    assert result.exit_code == 2 and "the output folder went away" in result.stderr
    assert [Path(json.loads(line)["path"]).name for line in rows.read_text().splitlines()] == ["0.png", "1.png"]


def test_csv_quotes_round_trip_and_a_terminal_sees_no_escape_sequence(sample_run, tmp_path):
    from camcli.results import csv_cell, previous_rows

    for name in ("=1+1.jpg", "'=1+1.jpg", "'plain.jpg", "plain.jpg"):
        text = "path,rank,label,index,prob,outputs,box,error\r\n" + f"{csv_cell(name)},1,a,0,1,,,\r\n"
        assert previous_rows(text, "csv")[0][0] == name
    assert csv_cell("=1+1.jpg") != csv_cell("'=1+1.jpg")
    image = write_image(tmp_path / "\x1b]0;PWNED\x07x.png", np.full((32, 32, 3), 90, np.uint8))
    from test_cli import _on_a_terminal

    code, terminal = _on_a_terminal(["predict", image, "--checkpoint", sample_run / "best.safetensors", "--format", "csv", "-q"])
    assert code == 0 and b"\x1b]0;PWNED" not in terminal and b"\\x1b]0;PWNED" in terminal


def test_a_folder_nested_deeper_than_pythons_recursion_limit_is_walked(tmp_path):
    from camcli.data import find_images

    deep = folder = tmp_path / "deep"
    deep.mkdir()
    for _ in range(1100):  # Python 3.11's recursive os.walk raised a RecursionError here (so would os.makedirs)
        folder = folder / "d"
        folder.mkdir()
    write_image(folder / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_image(deep / "top.png", np.zeros((8, 8, 3), np.uint8))
    (deep / "more.jpg").symlink_to(folder, target_is_directory=True)  # a link to a folder is a folder, not followed
    try:
        assert [i.path.name for i in find_images([deep])] == ["top.png", "x.png"]
    finally:  # removed bottom up here: shutil.rmtree (pytest's clean-up of old temporary folders) recurses too
        (folder / "x.png").unlink()
        while folder != deep:
            folder.rmdir()
            folder = folder.parent


def test_exclude_patterns_are_compiled_once_and_capped(sample_run, tmp_path):
    import time

    from camcli.data import MAX_EXCLUDES, excluded

    patterns = [f"*/nothing_{i}/*" for i in range(MAX_EXCLUDES)] + ["*_00.jpg"]
    start = time.perf_counter()
    hits = [excluded(Path(f"val/cat/cat_{i:02d}.jpg"), patterns[-MAX_EXCLUDES:]) for i in range(200)]
    assert hits == [i == 0 for i in range(200)]
    assert time.perf_counter() - start < 20  # (a bound, not a timing: 10,000 patterns a file recompiled took minutes)
    config = tmp_path / "many.yaml"
    config.write_text("exclude:\n" + "".join(f"  - '*/n{i}/*'\n" for i in range(MAX_EXCLUDES + 1)))
    result, peak = run_measured("train", SAMPLE_DATA, "--config", config, "--out", tmp_path / "run", "--epochs", "1")
    _refused(result, peak, f"over the limit of {MAX_EXCLUDES:,}")


def test_a_cache_file_that_grew_is_rebuilt_without_being_read(tmp_path, monkeypatch):
    from camcli import runtime

    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))
    path = tmp_path / "thing.bin"
    path.write_bytes(b"x" * 100)
    runtime.record_cache(path, kind="test")
    assert runtime.cached_bytes(path, kind="test") == b"x" * 100
    with open(path, "r+b") as f:  # a sparse 3 GiB file now: reading it whole would take 3 GiB
        f.truncate(3 << 30)
    reads = []
    monkeypatch.setattr(runtime, "read_bytes", lambda p, limit, *a, **k: reads.append(limit) or files.read_bytes(p, limit, *a, **k))
    assert runtime.cached_bytes(path, kind="test") is None
    assert reads[-1] == 100  # the cache file was opened with the record's size as its limit: refused from fstat


def test_kept_originals_are_bounded_by_pixels_across_a_batch_not_by_count(monkeypatch):
    """Overlay keeps each batch's decoded originals: 100 photos of 12 Mpixels took 3.1 GB at the
    default batch of 32. A batch now ends once its originals reach KEPT_PIXELS (scaled down here),
    and decoding runs no further ahead than that budget allows (the window is the budget over the
    largest original seen)."""
    from camcli.data import Preprocess

    monkeypatch.setattr(engine, "KEPT_PIXELS", 3 * 200 * 300)  # three originals of the largest size below
    sizes = [(200, 300), (100, 100), (200, 300), (200, 300), (200, 300), (50, 60), (200, 300)]
    images = [np.zeros((h, w, 3), np.uint8) for h, w in sizes]
    batches = list(engine.image_batches(images, Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"), 32, 2, keep_images=True))
    positions = [p for _, pos, _, _ in batches for p in pos]
    assert positions == list(range(len(images)))
    for _, _, originals, _ in batches:
        pixels = sum(o.shape[0] * o.shape[1] for o in originals)
        assert pixels <= engine.KEPT_PIXELS or len(originals) == 1
    assert len(batches) > 1  # cut by pixels, although the batch size (32) holds them all
    plain = list(engine.image_batches(images, Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"), 32, 2))
    assert len(plain) == 1  # without originals, the batch size alone


def test_the_int8_calibration_entry_is_bounded_and_read_only_for_an_int8_build(sample_run, tmp_path):
    from camcli.checkpoint import MAX_INT8_JPEG_BYTES, checkpoint_bytes, load_checkpoint

    huge = 3_500_000_000  # a 28 KB sparse file declaring 3.5 GB of calibration JPEGs made plain predict take 3.44 GB
    entries = {**_head(), "int8.offsets": ("I64", (2,), 40, 56), "int8.jpeg": ("U8", (huge,), 56, 56 + huge)}
    sparse = _safetensors(tmp_path / "sparse.safetensors", _meta(stored=False), entries, data_bytes=56 + huge)
    result, peak = run_measured("predict", CAT / "cat_00.jpg", "--checkpoint", sparse, "--format", "jsonl")
    _refused(result, peak, f"int8_calibration.jpeg must be at most {MAX_INT8_JPEG_BYTES:,} bytes")

    ckpt = load_checkpoint(sample_run / "best.safetensors")
    size = 200 << 20  # within the bound: read by an INT8 build only, never by an fp32 command
    ckpt["int8_calibration"] = {"jpeg": np.zeros(size, np.uint8), "offsets": np.array([0, size], np.int64)}
    heavy = tmp_path / "heavy.safetensors"
    heavy.write_bytes(checkpoint_bytes(ckpt))
    plain, plain_peak = run_measured("predict", CAT / "cat_00.jpg", "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl")
    result, peak = run_measured("predict", CAT / "cat_00.jpg", "--checkpoint", heavy, "--format", "jsonl")
    assert result.returncode == 0 and plain.returncode == 0, result.stderr
    assert result.stdout == plain.stdout
    assert peak < plain_peak + 100, (peak, plain_peak)  # the 200 MB entry was not read


def test_scorecam_masks_are_made_and_scored_a_chunk_at_a_time(monkeypatch):
    """Score-CAM built every channel's upsampled mask in float64, and every masked input, before
    scoring any (one 400x1600 photograph: 4.0 GB): now a chunk of channels at a time, in float32."""
    from camcli import cam

    made, scored = [], []
    original = cam.scorecam_masks
    monkeypatch.setattr(cam, "scorecam_masks", lambda acts, size: made.append(original(acts, size)) or made[-1])
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.standard_normal((300, 4, 16)), 0).astype(np.float32)
    acts[::3] = 0  # constant channels: one zero input scores them all
    x = rng.standard_normal((3, 64, 256)).astype(np.float32)

    def logits_of(inputs):
        scored.append(len(inputs))
        batch = np.stack(inputs)
        return np.stack([batch.mean(axis=(1, 2, 3)), batch.std(axis=(1, 2, 3))], axis=1)

    maps = engine.scorecam_maps(acts, x, np.array([0, 1]), logits_of)
    assert maps.shape == (2, 4, 16) and np.isfinite(maps).all()
    assert all(m.dtype == np.float32 and len(m) <= engine.SCORECAM_CHUNK for m in made)
    assert max(scored) <= engine.SCORECAM_CHUNK and sum(scored) == 200 + 1  # the varying channels, then one zero input
    whole = original(acts, x.shape[-2:])  # the maps equal those of all the masks at once
    scores = logits_of(list(x[None] * whole[:, None]))[:, [0, 1]]
    expected = np.stack([cam.scorecam_map(acts, scores[:, j]) for j in range(2)])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


def test_an_int8_build_is_bounded_by_the_calibration_pixels_whatever_the_input_size(tmp_path):
    """``--img-size 2048 --resize squash`` built INT8 from calibration tensors at 2048 x 2048: 9 GB
    in 98 s (1.4 GB in fp32). The build and its check now run at CALIBRATION_PIXELS per image at
    most (448 x 448: about 1.5 GB for 128 images; scaled down to 96 x 96 here), and the run's own
    first input checks the model at the run's size."""
    import camcli.quantize as quantize

    setup = "import camcli.quantize as q; q.CALIBRATION_PIXELS = 96 * 96"
    env = {**os.environ, "CAMCLI_CACHE_DIR": str(tmp_path / "cache")}
    args = ("predict", CAT / "cat_00.jpg", "--img-size", "2048", "--resize", "squash", "--format", "jsonl")
    plain, plain_peak = run_measured(*args, env=env)
    int8 = ("--precision", "int8", "--calibration", SAMPLE_DATA / "train")
    result, peak = run_measured(*args, *int8, setup=setup, env=env)
    assert plain.returncode == 0 and result.returncode == 0, result.stderr
    # built and checked at 96 x 96 (under ImageNet's 1000 classes, at that size, the check may refuse it: either way
    # the build ran at the bound and was recorded)
    assert "built an INT8 model" in result.stderr or "is refused, running fp32" in result.stderr, result.stderr
    (record,) = (tmp_path / "cache" / "int8").glob("*.record.json")
    assert json.loads(record.read_text())["preprocess"]["img_size"] == 96
    assert peak < plain_peak + 300, (peak, plain_peak)
    print(f"INT8 build for a 2048 x 2048 run: {peak:.0f} MB peak (fp32 alone {plain_peak:.0f} MB)")
    assert quantize.calibration_preprocess(quantize.Preprocess(2048, (0.5,) * 3, (0.5,) * 3, "squash")).img_size == 448
    keep = quantize.calibration_preprocess(quantize.Preprocess(1024, (0.5,) * 3, (0.5,) * 3, "keep-aspect"))
    assert keep.img_size == 224 and keep.img_size ** 2 * MAX_ASPECT <= quantize.CALIBRATION_PIXELS
    default = quantize.Preprocess(224, (0.5,) * 3, (0.5,) * 3, "squash")
    assert quantize.calibration_preprocess(default) is default  # the default's cache key stays
