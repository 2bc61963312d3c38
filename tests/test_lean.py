"""The lean engine: commands that need no PyTorch import none, and give the PyTorch path's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from camcli.cli import app
from conftest import SAMPLE_DATA

runner = CliRunner()
IMAGES = [SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", SAMPLE_DATA / "val" / "coffee" / "coffee_01.jpg",
          SAMPLE_DATA / "val" / "rocket" / "rocket_02.jpg"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def without_torch(*args: object) -> subprocess.CompletedProcess:
    """``camcli ARGS`` in a fresh interpreter where importing torch (or timm, torchvision) fails."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from camcli.cli import main; sys.argv = ['camcli', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def _probs(rows: list[dict]) -> np.ndarray:
    return np.array([[p["prob"] for p in sorted(r["predictions"], key=lambda p: p["index"])] for r in rows])


def test_help_version_and_argument_errors_import_no_pytorch():
    for args in (["--version"], ["--help"], ["predict", "--help"], ["predict", "--top-k", "x", "a.jpg"]):
        code = ("import sys\nfrom camcli.cli import main\nsys.argv = ['camcli', *sys.argv[1:]]\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\n"
                "heavy = sorted(m for m in ('torch', 'timm', 'onnxruntime', 'cv2') if m in sys.modules)\n"
                "print('HEAVY', heavy)")
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in result.stdout, (args, result.stdout, result.stderr)


def test_predict_overlay_and_evaluate_run_without_pytorch_once_the_export_is_cached(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    first = run("predict", *IMAGES, "--checkpoint", ckpt, "--format", "json", "--top-k", "5")
    assert first.exit_code == 0, first.output  # exports on first use (or finds the export cached)
    reference = run("predict", *IMAGES, "--checkpoint", ckpt, "--format", "json", "--top-k", "5", "--backend", "torch")
    lean = without_torch("predict", *IMAGES, "--checkpoint", ckpt, "--format", "json", "--top-k", "5")
    assert lean.returncode == 0, lean.stderr
    np.testing.assert_allclose(_probs(json.loads(lean.stdout)), _probs(json.loads(reference.stdout)), atol=1e-5)
    assert [r["path"] for r in json.loads(lean.stdout)] == [str(p) for p in IMAGES]

    torch_out, lean_out = tmp_path / "torch", tmp_path / "lean"
    ref = run("overlay", *IMAGES, "--checkpoint", ckpt, "--out-dir", torch_out, "--save-raw", "--backend", "torch", "--format", "json")
    assert ref.exit_code == 0, ref.output
    lean = without_torch("overlay", *IMAGES, "--checkpoint", ckpt, "--out-dir", lean_out, "--save-raw", "--format", "json")
    assert lean.returncode == 0, lean.stderr
    ref_rows, lean_rows = json.loads(ref.stdout), json.loads(lean.stdout)
    for a, b in zip(ref_rows, lean_rows):
        assert [Path(p).relative_to(torch_out) for p in a["outputs"]] == [Path(p).relative_to(lean_out) for p in b["outputs"]]
        raw_a, raw_b = (np.load(next(p for p in row["outputs"] if p.endswith(".npy"))) for row in (a, b))
        assert float(np.abs(raw_a - raw_b).max() / np.abs(raw_a).max()) < 1e-4
        assert a["box_label"] == b["box_label"] and a["box"] == b["box"]  # the coordinates, not only the label

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [10, 10, 60, 60]}))
    args = ["evaluate", SAMPLE_DATA / "val", "--checkpoint", ckpt, "--boxes", boxes, "--format", "json"]
    lean = without_torch(*args, "--out", tmp_path / "e1")
    ref = run(*args, "--out", tmp_path / "e2", "--backend", "torch")
    assert lean.returncode == 0 and ref.exit_code == 0, lean.stderr + ref.output
    lean_metrics, ref_metrics = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("e1", "e2"))
    assert _flat(lean_metrics).keys() == _flat(ref_metrics).keys()
    for key, value in _flat(ref_metrics).items():  # the whole metrics.json: counts exact, numbers to float32 noise
        if isinstance(value, float):
            assert abs(_flat(lean_metrics)[key] - value) <= 1e-5, key
        elif key not in ("backend",) and not key.endswith(("out", "checkpoint", "backend")):
            assert _flat(lean_metrics)[key] == value, key


def _flat(value, prefix: str = "") -> dict:
    """A nested JSON value as {"a.b.0": leaf}."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def test_one_photo_with_the_default_imagenet_head_runs_without_pytorch_after_the_first_run():
    first = run("predict", IMAGES[0], "--format", "json")  # builds the model once, caches its export and head
    assert first.exit_code == 0, first.output
    lean = without_torch("predict", IMAGES[0], "--format", "json")
    assert lean.returncode == 0, lean.stderr
    ours, theirs = json.loads(lean.stdout)[0]["predictions"], json.loads(first.stdout)[0]["predictions"]
    assert [p["index"] for p in ours] == [p["index"] for p in theirs]
    np.testing.assert_allclose([p["prob"] for p in ours], [p["prob"] for p in theirs], atol=1e-5)


def test_export_runs_on_onnxruntime_alone_and_matches_predict_and_save_raw(sample_run, tmp_path):
    import onnxruntime as ort

    from camcli.data import Preprocess, read_image

    ckpt = sample_run / "best.safetensors"
    out = tmp_path / "model.onnx"
    result = without_torch("export", ckpt, "--out", out)  # the default backbone's graph ships: no PyTorch needed
    assert result.returncode == 0, result.stderr
    from camcli.files import OUTPUT_MODE

    assert out.stat().st_mode & 0o777 == OUTPUT_MODE  # as every other output (0666 less the umask), not mkstemp's 0600
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    names = json.loads(meta["class_names"])
    preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
    predicted = json.loads(run("predict", *IMAGES, "--checkpoint", ckpt, "--format", "json", "--top-k", "5").stdout)
    raw = json.loads(run("overlay", *IMAGES, "--checkpoint", ckpt, "--out-dir", tmp_path / "o", "--save-raw",
                         "--format", "json").stdout)
    for image, row, orow in zip(IMAGES, predicted, raw):
        probs, maps = session.run(None, {"image": preprocess(read_image(image))[None]})
        assert probs.shape == (1, len(names))
        np.testing.assert_allclose(probs[0], _probs([row])[0], atol=1e-5)
        top = orow["predictions"][0]["index"]
        saved = np.load(next(p for p in orow["outputs"] if p.endswith(".npy")))
        assert float(np.abs(maps[0, top] - saved).max() / np.abs(saved).max()) < 1e-4
    again = run("export", ckpt, "--out", out)
    assert again.exit_code == 0  # camcli's own file is replaced
    mine = tmp_path / "mine.onnx"
    mine.write_text("my model")
    refused = run("export", ckpt, "--out", mine)
    assert refused.exit_code == 2 and mine.read_text() == "my model"


def test_export_never_replaces_the_checkpoint(sample_run, tmp_path):
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes((sample_run / "best.safetensors").read_bytes())
    result = run("export", ckpt, "--out", ckpt)
    assert result.exit_code == 2 and "would replace an input" in result.stderr
    assert ckpt.read_bytes() == (sample_run / "best.safetensors").read_bytes()
