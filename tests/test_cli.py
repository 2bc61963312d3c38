"""The commands end to end: exit codes, files written, numbers checked independently."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image, ImageOps
from typer.testing import CliRunner

from camcli.backbones import lite0_weights_path
from camcli.checkpoint import load_checkpoint, save_checkpoint
from camcli.cli import app
from conftest import SAMPLE_DATA, make_image_folder, on_a_terminal, with_class_names, write_image

runner = CliRunner()
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def run(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_lite0():
    """EfficientNet-Lite0 built straight from timm and the packaged file, without camcli."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    packaged = torch.load(lite0_weights_path(), weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict().keys(), packaged.values())))
    return model.eval()


def _reference_features(model, path: Path) -> np.ndarray:
    """keep-aspect: shorter side 224, both sides rounded to a multiple of the stride, 32."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    height, width = (max(32, round(n * 224 / min(h, w) / 32) * 32) for n in (h, w))
    shrink = h > height or w > width
    small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    small = small.astype(np.float32) / 255
    x = torch.from_numpy(((small - 0.5) / 0.5).transpose(2, 0, 1))[None]
    with torch.no_grad():
        return model.forward_features(x)[0].double().numpy()  # (C, h, w)


def test_predict_probabilities_and_raw_maps_match_an_independent_computation(sample_run, reference_lite0, tmp_path):
    ckpt = load_checkpoint(sample_run / "best.safetensors")
    weight, bias = ckpt["head"]["weight"].astype(np.float64), ckpt["head"]["bias"].astype(np.float64)
    images = sorted((SAMPLE_DATA / "val" / "cat").glob("*.jpg"))[:3] + sorted((SAMPLE_DATA / "val" / "coffee").glob("*.jpg"))[:2]
    result = run("predict", *images, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    out = tmp_path / "ov"
    result = run("overlay", *images, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--save-raw",
                 "--format", "json", "--workers", "0")
    assert result.exit_code == 0, result.output
    overlay_rows = json.loads(result.stdout)
    for path, row, orow in zip(images, rows, overlay_rows):
        feats = _reference_features(reference_lite0, path)
        logits = weight @ feats.mean(axis=(1, 2)) + bias
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        preds = row["predictions"]
        assert sorted(p["index"] for p in preds) == list(range(len(probs)))
        np.testing.assert_allclose([p["prob"] for p in preds], probs[[p["index"] for p in preds]], rtol=1e-4, atol=1e-6)
        assert [p["prob"] for p in preds] == sorted((p["prob"] for p in preds), reverse=True)
        assert preds[0]["index"] == int(np.argmax(probs))
        assert [p["label"] for p in preds] == [ckpt["class_names"][p["index"]] for p in preds]
        top = preds[0]["index"]
        raw = np.load(out / f"{path.stem}_cam.npy")
        assert raw.dtype == np.float32 and raw.shape == feats.shape[1:]
        np.testing.assert_allclose(raw, np.einsum("c,chw->hw", weight[top], feats), rtol=1e-4, atol=1e-4)
        assert orow["predictions"][0]["index"] == top
        assert sorted(orow["outputs"]) == sorted([str(out / f"{path.stem}_cam.jpg"), str(out / f"{path.stem}_cam.npy")])


def test_pretrained_default_ranks_a_cat_first_offline():
    result = run("predict", SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", "--format", "json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["predictions"][0]["index"] in CAT_CLASSES and len(row["predictions"]) == 3


def test_overlay_next_to_inputs_sizes_exif_inputs_untouched_and_reruns(sample_run, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(SAMPLE_DATA / "val" / "cat", data)
    rotated = Image.open(data / "cat_00.jpg")
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(data / "turned.jpg", exif=exif)  # displayed transposed
    write_image(data / "wide.png", np.full((30, 90, 3), 90, np.uint8))
    before = _tree_digest(data)
    ckpt = sample_run / "best.safetensors"
    result = run("overlay", data, "--checkpoint", ckpt, "--format", "jsonl", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(before)
    for row in rows:
        source, (output,) = Path(row["path"]), row["outputs"]
        assert Path(output) == source.with_name(f"{source.stem}_cam{source.suffix}")
        width, height = ImageOps.exif_transpose(Image.open(source)).size
        assert cv2.imread(output).shape[:2] == (height, width)
    assert cv2.imread(str(data / "turned_cam.jpg")).shape[:2] == cv2.imread(str(data / "cat_00_cam.jpg")).shape[1::-1]
    assert {k: v for k, v in _tree_digest(data).items() if k in before} == before

    # a re-run takes none of its outputs as inputs and may replace its own outputs
    again = run("overlay", data, "--checkpoint", ckpt, "--format", "jsonl", "--workers", "0")
    assert again.exit_code == 0, again.output
    assert len(again.stdout.splitlines()) == len(before)

    # a file camcli did not write is never overwritten without --overwrite
    foreign = data / "wide_cam.png"
    foreign.write_bytes(b"mine")
    refused = run("overlay", data, "--checkpoint", ckpt, "--workers", "0")
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert foreign.read_bytes() == b"mine"
    forced = run("overlay", data, "--checkpoint", ckpt, "--workers", "0", "--overwrite", "--format", "csv")
    assert forced.exit_code == 0 and cv2.imread(str(foreign)).shape == (30, 90, 3)


def test_out_dir_mirrors_inputs_classes_and_colliding_stems(sample_run, tmp_path):
    data = tmp_path / "in"
    rgb = cv2.cvtColor(cv2.imread(str(SAMPLE_DATA / "val" / "cat" / "cat_01.jpg")), cv2.COLOR_BGR2RGB)
    write_image(data / "a.jpg", rgb)
    write_image(data / "a.png", rgb)
    write_image(data / "sub" / "b.png", rgb)
    out = tmp_path / "out"
    result = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--class", "cat",
                 "--class-index", "2", "--save-raw", "--format", "json", "--workers", "0", "--no-caption")
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert written == sorted(
        f"in/{stem}_cam_{label}{ext}"
        for stem, src_ext in [("a_jpg", ".jpg"), ("a_png", ".png"), ("sub/b", ".png")]
        for label in ("cat", "coffee")
        for ext in (src_ext, ".npy")
    )
    bad = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--class", "dog", "--out-dir", out)
    assert bad.exit_code == 2 and "unknown class 'dog'" in bad.stderr


def test_vgg16_random_init_train_then_predict(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=4)
    run_dir = tmp_path / "run"
    result = run("train", data, "--arch", "vgg16", "--weights", "none", "--img-size", "32", "--epochs", "2",
                 "--batch-size", "4", "--workers", "0", "--out", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Results saved to {run_dir}" and result.stderr == ""  # --quiet: the result only
    predicted = run("predict", data, "--checkpoint", run_dir / "best.safetensors", "--format", "csv", "--top-k", "9")
    assert predicted.exit_code == 0, predicted.output
    lines = predicted.stdout.splitlines()
    assert lines[0] == "path,rank,label,index,prob,outputs,box,error" and len(lines) == 1 + 8 * 2  # top-k capped at K=2
    no_head = run("predict", data, "--arch", "vgg16", "--weights", "none")
    assert no_head.exit_code == 2 and "camcli train" in no_head.stderr


def test_train_with_a_config_file_and_flag_override(tmp_path, tiny_folder):
    config = tmp_path / "c.yaml"
    config.write_text("arch: resnet18\nweights: none\nimg_size: 32\nepochs: 5\nworkers: 0\n")
    result = run("train", tiny_folder, "--config", config, "--epochs", "1", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "epoch   1/1" in result.stderr
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize("args,message", [
    (["predict", "nowhere.jpg"], "input not found"),
    (["train", "nowhere"], "dataset folder not found"),
    (["train", "{single}"], "at least two class folders"),
    (["predict", "{data}", "--arch", "resnet5000"], "unknown arch"),
    (["predict", "{data}", "--format", "xml"], "'xml' is not one of"),
    (["predict", "{data}", "--bogus"], "No such option: --bogus"),
    (["predict", "{data}", "--top-k", "many"], "Invalid value for '--top-k'"),
    (["overlay", "{data}", "--checkpoint", "{data}/red/red_0.png"], "is not a camcli checkpoint"),
    (["train", "{data}", "--epochs", "0"], "epochs must be at least 1"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    data = make_image_folder(tmp_path / "d", per_class=2)
    single = make_image_folder(tmp_path / "s", classes=("red",))
    args = [a.format(data=data, single=single) for a in args]
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_console_script_closed_stdout_and_version(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=20, size=(8, 8))
    camcli = [sys.executable, "-m", "camcli"]
    version = subprocess.run([*camcli, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("camcli ")
    pipe = subprocess.run(  # PIPESTATUS: camcli's own exit status, which a plain pipe hides behind head's
        ["bash", "-c", f"{' '.join(camcli)} predict {data} --img-size 64 --batch-size 1 --workers 0 --format jsonl | head -n 1; "
         "echo \"camcli exit ${PIPESTATUS[0]}\" >&2"], capture_output=True, text=True,
    )
    assert pipe.stderr.splitlines()[-1] == "camcli exit 0", pipe.stderr  # a closed stdout stops quietly, exit 0
    progress = [line for line in pipe.stderr.splitlines()[:-1] if not line.startswith("exported ")]  # a note on a fresh cache
    assert progress and all(re.fullmatch(r"predict: \d+/40 \(\d+%\) images", line) for line in progress)
    assert len(pipe.stdout.splitlines()) == 1 and json.loads(pipe.stdout)["path"].endswith("blue_0.png")
    # usage errors of the console script: one line naming the command's help, exit 2
    for args, message in ((["predict", str(data), "--format"], "Option '--format' requires an argument. (see camcli predict --help)"),
                          (["overlay", str(data), "--alpha", "x"], "(see camcli overlay --help)"),
                          (["nosuch"], "No such command 'nosuch'. (see camcli --help)")):
        usage = subprocess.run([*camcli, *args], capture_output=True, text=True)
        assert usage.returncode == 2 and usage.stdout == "" and usage.stderr.startswith("error: "), usage.stderr
        assert usage.stderr.count("\n") == 1 and message in usage.stderr, usage.stderr


def test_evaluate_with_boxes_calibrate_and_overlay_uses_the_threshold(sample_run, tmp_path):
    val = SAMPLE_DATA / "val"
    images = sorted(val.rglob("*.jpg"))
    boxes = {}
    for path in images[::3]:  # whole-image boxes: the map's peak is always inside
        h, w = cv2.imread(str(path)).shape[:2]
        boxes[path.relative_to(val).as_posix()] = [0, 0, w, h]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    out = tmp_path / "eval"
    result = run("evaluate", val, "--checkpoint", sample_run / "best.safetensors", "--boxes", boxes_file, "--format", "json",
                 "--out", out, "--calibrate", "--workers", "0")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for key in ("accuracy", "pointing_game", "gt_known_loc", "top1_loc", "max_box_acc", "max_box_acc_v2", "best_threshold"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_images"] == len(images) and metrics["num_images_with_boxes"] == len(boxes)
    assert metrics["pointing_game"] == 1.0
    # accuracy agrees with predict's top-1
    predicted = run("predict", val, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--top-k", "1")
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    agree = sum(Path(r["path"]).parent.name == r["predictions"][0]["label"] for r in rows) / len(rows)
    assert metrics["accuracy"] == pytest.approx(agree)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["max_box_acc"] == metrics["max_box_acc"] and len(saved["box_acc_curve"]["thresholds"]) == 100
    assert cv2.imread(str(out / "box_accuracy.png")).shape == (480, 880, 3)
    calibrated = load_checkpoint(out / "calibrated.safetensors")
    chosen = metrics["calibration"]  # the map size (of 224, 320, 448) and threshold with the best MaxBoxAcc
    assert set(chosen["max_box_acc_by_cam_size"]) == {"224", "320", "448"}
    assert chosen["max_box_acc"] == max(chosen["max_box_acc_by_cam_size"].values())
    assert calibrated["cam_threshold"] == chosen["threshold"] and calibrated["cam_size"] == chosen["cam_size"]

    overlay = run("overlay", images[0], "--checkpoint", out / "calibrated.safetensors", "--out-dir", tmp_path / "ov",
                  "--draw-box", "--format", "json")
    assert overlay.exit_code == 0, overlay.output
    (row,) = json.loads(overlay.stdout)
    h, w = cv2.imread(str(images[0])).shape[:2]
    assert row["box_threshold"] == chosen["threshold"]
    assert row.get("cam_sizes", [224]) == [chosen["cam_size"]]  # the calibrated map size (224: the ranking pass's own)
    explicit = run("overlay", images[0], "--checkpoint", out / "calibrated.safetensors", "--out-dir", tmp_path / "ov2",
                   "--cam-size", "256", "--box-threshold", "0.3", "--format", "json")
    assert json.loads(explicit.stdout)[0]["cam_sizes"] == [256] and json.loads(explicit.stdout)[0]["box_threshold"] == 0.3
    x0, y0, x1, y1 = row["box"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_evaluate_errors(sample_run, tmp_path):
    bad = run("evaluate", SAMPLE_DATA / "val", "--checkpoint", sample_run / "best.safetensors", "--calibrate")
    assert bad.exit_code == 2 and "--calibrate needs --boxes" in bad.stderr
    data = make_image_folder(tmp_path / "d", classes=("red",), per_class=1)
    wrong = run("evaluate", data, "--checkpoint", sample_run / "best.safetensors")
    assert wrong.exit_code == 2 and "unknown: red" in wrong.stderr


def _mixed_folder(root: Path) -> tuple[Path, list[str]]:
    """Good images of several kinds, and three files that cannot be read."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    write_image(root / "a_good.jpg", rgb)
    assert cv2.imwrite(str(root / "b_gray.png"), rgb[:, :, 0])
    assert cv2.imwrite(str(root / "c_16bit.png"), (rgb.astype(np.uint16) * 257))
    assert cv2.imwrite(str(root / "d_rgba.png"), np.dstack([rgb, np.full((40, 60), 255, np.uint8)]))
    write_image(root / "e_tiny.png", rgb[:1, :1])
    (root / "f_empty.jpg").write_bytes(b"")
    (root / "g_text.png").write_bytes(b"this is not a picture")
    good = (root / "a_good.jpg").read_bytes()
    (root / "h_truncated.jpg").write_bytes(good[: len(good) // 3])
    png = (root / "b_gray.png").read_bytes()
    (root / "i_truncated.png").write_bytes(png[: len(png) // 2])
    return root, ["f_empty.jpg", "g_text.png", "h_truncated.jpg", "i_truncated.png"]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_bad_inputs_are_reported_and_the_rest_processed(sample_run, tmp_path, workers):
    data, bad = _mixed_folder(tmp_path / "mixed")
    before = _tree_digest(data)
    result = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--workers", workers)
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in data.iterdir())
    failed = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert sorted(failed) == bad
    assert all(len(r["predictions"]) == 5 for r in rows if "error" not in r)
    reports = [line for line in result.stderr.splitlines() if not line.startswith("predict: ")]  # progress lines aside
    assert all("failed: cannot" in line for line in reports[:4])
    assert "4 of 9 inputs failed" in result.stderr
    allowed = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", tmp_path / "o",
                  "--allow-failures", "--format", "csv", "--workers", workers)
    assert allowed.exit_code == 0
    written = sorted(p.name for p in (tmp_path / "o" / "mixed").iterdir() if not p.name.startswith("."))
    assert written == ["a_good_cam.jpg", "b_gray_cam.png", "c_16bit_cam.png", "d_rgba_cam.png", "e_tiny_cam.png"]
    assert cv2.imread(str(tmp_path / "o" / "mixed" / "e_tiny_cam.png")).shape == (1, 1, 3)
    error_lines = [line for line in allowed.stdout.splitlines() if line.endswith(("not a readable image", "is empty"))]
    assert len(error_lines) == 4
    assert _tree_digest(data) == before


def test_training_on_an_unreadable_image_is_a_one_line_error(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=4)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG broken")
    result = run("train", data, "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--workers", "2",
                 "--out", tmp_path / "r")
    errors = [line for line in result.stderr.splitlines() if not re.match(r"(train|val) features: |exported |train: loading ", line)]
    assert result.exit_code == 2 and len(errors) == 1 and errors[0].startswith("error:")
    assert "broken.png" in errors[0] and "Traceback" not in result.output


def test_skip_existing_finishes_only_what_is_missing(sample_run, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(SAMPLE_DATA / "val" / "rocket", data)
    count = len(list(data.glob("*.jpg")))
    out = tmp_path / "out"
    first = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--format", "jsonl")
    assert first.exit_code == 0 and len(first.stdout.splitlines()) == count
    done = out / "photos" / "rocket_02_cam.jpg"
    kept = done.stat().st_mtime_ns
    (out / "photos" / "rocket_04_cam.jpg").unlink()
    again = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--format", "jsonl", "--skip-existing")
    assert again.exit_code == 0
    assert [Path(json.loads(line)["path"]).name for line in again.stdout.splitlines()] == ["rocket_04.jpg"]
    assert f"{count - 1} inputs skipped" in again.stderr
    assert done.stat().st_mtime_ns == kept and (out / "photos" / "rocket_04_cam.jpg").is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_overlay_leaves_only_complete_outputs(sample_run, tmp_path, sig):
    data = make_image_folder(tmp_path / "many", per_class=60, size=(120, 160))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "camcli", "overlay", str(data), "--checkpoint", str(sample_run / "best.safetensors"),
           "--out-dir", str(out), "--batch-size", "2", "--workers", "0", "--backend", "torch", "--format", "jsonl"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # at least one overlay is written
    assert first, proc.stderr.read()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    written = [p for p in out.rglob("*_cam.png")]
    assert 0 < len(written) < 120, "the run must be stopped part-way"
    for path in written:
        assert cv2.imread(str(path)).shape == (120, 160, 3)
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and not p.name.endswith("_cam.png")]
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted during overlay" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    # the manifest kept up with every file written, so a resume needs no --overwrite
    resumed = run("overlay", data, "--checkpoint", sample_run / "best.safetensors", "--out-dir", out, "--skip-existing",
                  "--format", "jsonl", "--workers", "0")
    assert resumed.exit_code == 0, resumed.output
    assert len(resumed.stdout.splitlines()) == 120 - len(written)
    assert len(list(out.rglob("*_cam.png"))) == 120


def test_odd_names_symlinks_and_a_file_for_an_output_folder(sample_run, tmp_path):
    data = tmp_path / "odd"
    rgb = cv2.cvtColor(cv2.imread(str(SAMPLE_DATA / "val" / "coffee" / "coffee_00.jpg")), cv2.COLOR_BGR2RGB)
    names = ["my photo.jpg", "café ü.png", "-dash.jpg"]
    for name in names:
        write_image(data / name, rgb)
    (data / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # a broken link
    (data / "loop").symlink_to(data, target_is_directory=True)  # a folder loop is not followed
    result = run("predict", "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl", "--", data)
    assert result.exit_code == 1  # the broken link is a failed input
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == sorted([*names, "gone.jpg"])
    assert [Path(r["path"]).name for r in rows if "error" in r] == ["gone.jpg"]
    dash = run("predict", "--checkpoint", sample_run / "best.safetensors", "--format", "json", "--", data / "-dash.jpg")
    assert dash.exit_code == 0 and json.loads(dash.stdout)[0]["predictions"][0]["label"] == "coffee"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    blocked = run("overlay", data / "my photo.jpg", "--checkpoint", sample_run / "best.safetensors", "--out-dir", blocker / "sub")
    assert blocked.exit_code == 2 and blocked.stderr.startswith("error: cannot write") and "Traceback" not in blocked.output
    assert blocker.read_text() == "not a folder"


def test_checkpoint_whose_head_does_not_fit_the_backbone(sample_run, tmp_path):
    ckpt = load_checkpoint(sample_run / "best.safetensors")
    ckpt["head"] = {"weight": np.zeros((5, 7), np.float32), "bias": np.zeros(5, np.float32)}
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(ckpt, bad)
    result = run("predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", bad)
    assert result.exit_code == 2 and "head expects 7 features but efficientnet_lite0 gives 1280" in result.stderr


def test_models_reports_weights_planted_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    before = {r["name"]: r for r in map(json.loads, run("models").stdout.splitlines())}  # not a terminal: JSON lines
    assert before["efficientnet_lite0"]["weights_offline"] is True
    assert before["resnet18"]["weights_offline"] is False and "googlenet" not in before
    assert (before["resnet18"]["maps"], before["vgg16"]["maps"], before["vit_b_16"]["maps"]) == ("cam", "gradcam", "gradcam")
    planted = Path(before["resnet18"]["weights_path"])
    assert planted.parent == tmp_path / "hub" / "checkpoints"
    planted.parent.mkdir(parents=True)
    torch.save({}, planted)
    after = {r["name"]: r for r in map(json.loads, run("models", "--format", "jsonl").stdout.splitlines())}
    assert after["resnet18"]["weights_offline"] is True and after["resnet50"]["weights_offline"] is False
    assert json.loads(run("models", "--format", "json").stdout) == list(after.values())  # one JSON document


def test_models_says_the_default_weights_are_not_offline_when_their_file_is_damaged(tmp_path, monkeypatch):
    import camcli.packaged as packaged

    damaged = tmp_path / "efficientnet_lite0.pth"
    damaged.write_bytes(b"not the weights")
    monkeypatch.setattr(packaged, "lite0_weights_path", lambda: damaged)
    rows = {r["name"]: r for r in map(json.loads, run("models").stdout.splitlines())}
    assert rows["efficientnet_lite0"]["weights_offline"] is False
    assert rows["efficientnet_lite0"]["weights_path"] == str(damaged)


def test_info_shows_what_the_checkpoint_holds(sample_run):
    result = run("info", sample_run / "best.safetensors", "--format", "json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["arch"] == "efficientnet_lite0" and facts["backbone_stored"] == "by reference"
    assert facts["class_names"] == ["astronaut", "cat", "coffee", "flower", "rocket"]
    assert facts["num_features"] == 1280 and facts["preprocess"]["resize"] == "keep-aspect"
    assert facts["metrics"]["val_acc"] == load_checkpoint(sample_run / "best.safetensors")["metrics"]["val_acc"]
    table = run("info", sample_run / "best.safetensors", "--format", "table")
    assert table.exit_code == 0 and "efficientnet_lite0" in table.stdout and not table.stdout.startswith("{")


def test_exclude_and_paths_from_stdin(sample_run, tmp_path):
    data = tmp_path / "data"
    rgb = np.full((30, 40, 3), 120, np.uint8)
    for rel in ("keep/a.jpg", "keep/b_draft.jpg", "scratch/c.jpg", "d.png"):
        write_image(data / rel, rgb)
    result = run("predict", data, "--checkpoint", sample_run / "best.safetensors", "--format", "jsonl",
                 "--exclude", "*/scratch/*", "--exclude", "*_draft.jpg")
    assert result.exit_code == 0, result.output
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == ["d.png", "a.jpg"]
    listed = f"{data / 'keep' / 'a.jpg'}\n{data / 'scratch' / 'c.jpg'}\n"
    piped = run("overlay", "-", "--checkpoint", sample_run / "best.safetensors", "--out-dir", tmp_path / "o", "--format", "jsonl",
                "--exclude", "*/scratch/*", input=listed)
    assert piped.exit_code == 0, piped.output
    assert [Path(json.loads(line)["path"]).name for line in piped.stdout.splitlines()] == ["a.jpg"]


def test_predict_boxes_find_the_hot_region_of_a_synthetic_image(tmp_path):
    """A hand-made backbone whose feature map is the image's brightness: the box is the bright square."""
    from camcli.data import Preprocess, find_images
    from camcli.engine import CamModel
    from camcli.jobs import PredictJob, run_here

    class Brightness(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 8)  # (N, 1, h, w), stride 8

    head = torch.nn.Linear(1, 2)
    head.load_state_dict({"weight": torch.tensor([[1.0], [-1.0]]), "bias": torch.zeros(2)})
    pre = Preprocess(64, (0.0,) * 3, (1.0,) * 3, "keep-aspect", 8)
    model = CamModel("brightness", Brightness(), head, ["bright", "dark"], pre, device="cpu", backend="torch")
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:60, 120:180] = 255  # x0=120, y0=20, x1=180, y1=60
    write_image(tmp_path / "square.png", image)
    (row,) = run_here(PredictJob(top_k=2, boxes=True, box_threshold=0.5), model, find_images([tmp_path]))
    assert row["box_label"] == "bright" and row["box_threshold"] == 0.5
    x0, y0, x1, y1 = row["box"]
    assert abs(x0 - 120) <= 6 and abs(y0 - 20) <= 6 and abs(x1 - 180) <= 6 and abs(y1 - 60) <= 6


def test_exclude_for_train_and_evaluate(sample_run, tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=4)
    (data / "red" / "skip_me.png").write_bytes(b"broken")  # would stop training if it were read
    result = run("train", data, "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--epochs", "1",
                 "--workers", "0", "--out", tmp_path / "r", "--exclude", "*/skip_*", "--quiet")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["exclude"] == ["*/skip_*"]
    val = tmp_path / "val"
    shutil.copytree(SAMPLE_DATA / "val" / "cat", val / "cat")
    (val / "cat" / "junk.jpg").write_bytes(b"junk")
    evaluated = run("evaluate", val, "--checkpoint", sample_run / "best.safetensors", "--exclude", "*/junk.jpg",
                    "--format", "json", "--out", tmp_path / "e", "--workers", "0")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["num_images"] == len(list((SAMPLE_DATA / "val" / "cat").glob("*.jpg")))


def test_maps_k_writes_ranked_unique_names_even_for_duplicate_labels(sample_run, tmp_path):
    # ImageNet has two cranes
    twin = with_class_names(sample_run, tmp_path / "twin.safetensors", ["crane", "crane", "coffee", "flower", "rocket"])
    data = tmp_path / "in"
    shutil.copytree(SAMPLE_DATA / "val" / "astronaut", data)
    count = len(list(data.glob("*.jpg")))
    out = tmp_path / "out"
    result = run("overlay", data, "--checkpoint", twin, "--out-dir", out, "--maps", "3", "--save-raw", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    for line in result.stdout.splitlines():
        row = json.loads(line)
        stem = Path(row["path"]).stem
        labels = [p["label"] for p in row["predictions"][:3]]
        expected = [f"{stem}_cam_{r}_{label}{ext}" for ext in (".jpg", ".npy") for r, label in enumerate(labels, 1)]
        assert [Path(p).name for p in row["outputs"]] == expected
        assert len(set(expected)) == 6
    assert len([p for p in (out / "in").iterdir() if not p.name.startswith(".")]) == count * 6
    again = run("overlay", data, "--checkpoint", twin, "--out-dir", out, "--maps", "3", "--save-raw",
                "--skip-existing", "--format", "jsonl")
    assert again.exit_code == 0 and again.stdout == "" and f"{count} inputs skipped" in again.stderr
    (out / "in" / "astronaut_00_cam_9_mine.jpg").write_bytes(b"mine")
    refused = run("overlay", data, "--checkpoint", twin, "--out-dir", out, "--maps", "3")
    assert refused.exit_code == 2 and "not written by camcli" in refused.stderr
    both = run("overlay", data, "--checkpoint", twin, "--maps", "2", "--class", "flower")
    assert both.exit_code == 2 and "excludes --class" in both.stderr


@pytest.mark.parametrize("command", ["train", "predict", "overlay", "evaluate", "models", "info"])
def test_every_command_explains_itself_with_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Example: camcli " in result.stdout
    example = next(line for line in result.stdout.splitlines() if "Example: camcli " in line)
    assert example.rstrip().endswith(("20", "jsonl", "overlay", "--calibrate", "onnx", "*'", "vgg16", "json"))  # never wrapped
    assert run(command, "-h").stdout == result.stdout


def test_help_shows_defaults_and_box_format_from_the_code():
    from camcli.config import TrainConfig

    runner = CliRunner()
    def help_of(command: str) -> str:
        return " ".join(runner.invoke(app, [command, "--help"]).stdout.split())  # as one line, however it wraps

    train_help = help_of("train")
    defaults = TrainConfig()
    for text in (f"Epochs [default: {defaults.epochs}]", f"[default: {defaults.lr}]", f"[default: {defaults.img_size}]",
                 f"[default: {defaults.resize}]", f"[default: {defaults.val_split}]", "[default: the CPU count, at most 4]"):
        assert text in train_help, text
    assert "[x0,y0,x1,y1]" in help_of("evaluate")
    assert "Classes per image. [default: 5]" in help_of("predict")
    # fixed choices are listed by the parser, which checks them
    for command in ("train", "predict", "overlay", "evaluate"):
        shown = help_of(command)
        for choice in ("--device <auto|cpu|cuda|mps>", "--backend <auto|torch|onnxruntime>", "--resize <squash|keep-aspect>",
                       "--engine <local|ray>"):
            assert choice in shown, (command, choice)
    assert "--format <table|csv|json|jsonl>" in help_of("predict") and "--format <table|json>" in help_of("evaluate")
    from camcli import methods

    assert f"one of: {', '.join(methods.NAMES)}." in help_of("overlay")  # the names, from the registry (details: the manual)
    assert "scorecam" in methods.NAMES and "eigencam" in methods.NAMES  # the registry the parser reads
    assert "--normalize <shared|relu|minmax>" in help_of("overlay") and "turbo, deepgreen" in help_of("overlay")


@pytest.mark.parametrize("command,bad,message", [
    ("predict", ["--top-k", "0"], "--top-k must be at least 1"),
    ("predict", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("predict", ["--img-size", "7"], "--img-size must be from 32 to 2048"),
    ("predict", ["--format", "xml"], "Invalid value for '--format': 'xml' is not one of 'table', 'csv', 'json', 'jsonl'"),
    ("predict", ["--device", "gpu"], "'gpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
    ("predict", ["--backend", "tensorrt"], "'tensorrt' is not one of 'auto', 'torch', 'onnxruntime'"),
    ("predict", ["--resize", "crop"], "'crop' is not one of 'squash', 'keep-aspect'"),
    ("predict", ["--method", "fullgrad"], "'fullgrad' is not one of 'auto', 'cam', 'gradcam', 'gradcam++', 'layercam'"),
    ("predict", ["--engine", "spark"], "'spark' is not one of 'local', 'ray'"),
    ("overlay", ["--normalize", "log"], "'log' is not one of 'shared', 'relu', 'minmax'"),
    ("overlay", ["--alpha", "2"], "--alpha must be between 0 and 1"),
    ("overlay", ["--top-k", "0"], "--top-k must be at least 1"),
    ("overlay", ["--colormap", "rainbowish"], "colormap"),
    ("evaluate", ["--img-size", "7"], "--img-size must be from 32 to 2048"),
    ("evaluate", ["--format", "csv"], "'csv' is not one of 'table', 'json'"),
    ("predict", ["--box-threshold", "5"], "--box-threshold must be from 0 to below 1, got 5.0"),
    ("predict", ["--cam-scales", ""], "--cam-scales must be sizes separated by commas"),
    ("predict", ["--cam-size", "0"], "--cam-size/--cam-scales must be from 32 to 2048, got 0"),
    ("evaluate", ["--calibrate"], "--calibrate needs --boxes"),
    ("predict", ["--checkpoint", "-q"], "Invalid value for '--checkpoint': '-q' looks like an option, not a value"),
    ("overlay", ["--report", "--draw-box"], "'--draw-box' looks like an option, not a value"),
    ("evaluate", ["--out", "--quiet"], "'--quiet' looks like an option, not a value"),
    ("overlay", ["--report", "-"], "- (standard input or output) is not a file this option can use"),
    ("predict", ["--checkpoint", "efficientnet_lite0"], "checkpoint not found: efficientnet_lite0"),
    ("predict", ["--output", "runs/x/last.safetensors"], "results are text (table, csv, json, jsonl); .safetensors names a model"),
])
def test_invalid_values_fail_before_any_model_loads(command, bad, message, monkeypatch, tmp_path):
    import camcli.factory

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(camcli.factory, "build_model", no_load)
    target = str(SAMPLE_DATA / "val") if command == "evaluate" else str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg")
    result = CliRunner().invoke(app, [command, target, *bad, "--out-dir" if command == "overlay" else "--quiet", *(
        [str(tmp_path)] if command == "overlay" else [])])
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.output


def test_no_opencv_warning_reaches_the_terminal_for_a_truncated_png(tmp_path):
    ok, png = cv2.imencode(".png", np.full((40, 40, 3), 100, np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.tobytes()[:-30])
    # OpenCV writes its warnings to the process's stderr itself: run a real process
    done = subprocess.run([sys.executable, "-m", "camcli", "predict", str(broken), "--format", "jsonl", "--backend", "torch"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "not a readable image" in done.stderr
    assert "WARN" not in done.stderr and "incomplete" not in done.stderr


def test_messages_for_the_usual_mistakes(sample_run, tmp_path):
    runner = CliRunner()
    ckpt = str(sample_run / "best.safetensors")
    url = runner.invoke(app, ["predict", "https://example.com/cat.jpg"])
    assert url.exit_code == 2 and "https://example.com/cat.jpg: camcli reads local files, not URLs" in url.stderr
    root = runner.invoke(app, ["evaluate", str(SAMPLE_DATA), "--checkpoint", ckpt, "--quiet"])
    assert root.exit_code == 2 and "holds the splits val, train: pass one of them" in root.stderr
    image = str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg")
    unknown = runner.invoke(app, ["overlay", image, "--checkpoint", ckpt, "--class", "dgo", "--out-dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "the classes are: astronaut, cat, coffee, flower, rocket" in unknown.stderr


def test_overlay_records_the_normalization_and_counts_files(sample_run, tmp_path):
    image = str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg")
    ckpt = str(sample_run / "best.safetensors")
    result = CliRunner().invoke(app, ["overlay", image, "--checkpoint", ckpt, "--maps", "2", "--save-raw", "--out-dir",
                                      str(tmp_path / "s"), "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["normalize"] == "shared" and "4 files written for 1 image under" in result.stderr
    minmax = CliRunner().invoke(app, ["overlay", image, "--checkpoint", ckpt, "--maps", "2", "--normalize", "minmax",
                                      "--out-dir", str(tmp_path / "m"), "--format", "json"])
    assert json.loads(minmax.stdout)[0]["normalize"] == "minmax" and "2 files written for 1 image" in minmax.stderr


def test_a_table_off_a_terminal_never_wraps_a_path(sample_run, tmp_path):
    deep = tmp_path / ("a_long_folder_name_" * 6) / ("and_a_long_image_name_" * 4 + ".jpg")
    deep.parent.mkdir(parents=True)
    shutil.copy(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", deep)
    result = CliRunner().invoke(app, ["predict", str(deep), "--checkpoint", str(sample_run / "best.safetensors"), "--format", "table"])
    assert result.exit_code == 0 and any(str(deep) in line for line in result.stdout.splitlines())


def _on_a_terminal(args: list[str], stdout_path: Path | None = None) -> tuple[int, bytes]:
    """Run camcli with stderr (and stdout, unless ``stdout_path``) on a pseudo-terminal; returns
    (exit status, every byte the terminal received)."""
    code, chunks = on_a_terminal(args, stdout_path)
    return code, b"".join(chunk for _, chunk in chunks)


def test_rows_for_a_file_never_go_to_the_terminal_that_shows_the_bar(sample_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    code, terminal = _on_a_terminal(["predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", sample_run / "best.safetensors",
                                     "--format", "jsonl"], rows)
    assert code == 0 and b'"path"' not in terminal
    assert len(rows.read_text().splitlines()) == 8


def test_on_a_terminal_the_bar_clears_and_the_table_starts_on_its_own_line(sample_run):
    code, terminal = _on_a_terminal(["predict", SAMPLE_DATA / "val" / "cat", "--checkpoint", sample_run / "best.safetensors"])
    assert code == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", terminal).decode()  # escape sequences dropped
    lines = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]  # what each line shows after its carriage returns
    top = next(i for i, line in enumerate(lines) if "┏" in line)
    assert lines[top].startswith("┏") and "predict" not in lines[top]
    assert re.search(r"\d+\.\d/s|\d+\.\d s each", text)  # the rate is shown
    assert not re.search(r"[1-9]\d{3,}\.\d/s", text)  # never thousands of images a second on one burst


def test_nothing_is_written_outside_the_outputs_and_camclis_cache(sample_run, tmp_path):
    """ONNX Runtime, imported plainly, writes a device id and a database under ~/.cache/Microsoft;
    camcli imports it with its telemetry off, so a run leaves the home folder as it was."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    # (this process may have set ORT_DISABLE_TELEMETRY: it imports camcli; and ONNX Runtime writes nothing when CI is set)
    for name in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY", "CI"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "camcli", "predict", str(SAMPLE_DATA / "val" / "cat"), "--checkpoint",
                           str(sample_run / "best.safetensors"), "--format", "jsonl", "-q"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(home.iterdir())
    plain = subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, capture_output=True)  # the test can fail
    assert plain.returncode == 0 and (home / ".cache" / "Microsoft").is_dir()
