"""The light install (``pip install -e .``, no PyTorch): the Quickstart's four steps, the same
scores and checkpoints as the full install, and one line with exit 3 for each feature that
needs an extra.

With ``CAMCLI_LIGHT_VENV`` naming such a virtual environment (``.ci/run`` builds one exactly as
the README's first command does), camcli runs there; without it, in this interpreter with
PyTorch and every other optional dependency made unimportable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from camcli.cli import app
from conftest import ROOT, SAMPLE_DATA, save_v1

LIGHT_VENV = os.environ.get("CAMCLI_LIGHT_VENV")
OPTIONAL = ("torch", "torchvision", "timm", "onnx", "scipy", "ray")
IMAGE = SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"
runner = CliRunner()


def light_python(code: str, *args: object) -> subprocess.CompletedProcess:
    """Python ``code`` in the light install."""
    if LIGHT_VENV:
        python = Path(LIGHT_VENV).resolve() / "bin" / "python"
        assert python.is_file(), f"CAMCLI_LIGHT_VENV={LIGHT_VENV} is not a virtual environment"
        prelude = ""
    else:
        python, prelude = Path(sys.executable), f"import sys\nfor m in {OPTIONAL!r}:\n    sys.modules[m] = None\n"
    return subprocess.run([str(python), "-c", prelude + code, *map(str, args)], capture_output=True, text=True, timeout=600)


def light(*args: object) -> subprocess.CompletedProcess:
    """``camcli ARGS`` in the light install."""
    return light_python("import sys\nfrom camcli.cli import main\nsys.argv = ['camcli', *sys.argv[1:]]\nmain()", *args)


def full(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_the_light_install_holds_no_pytorch_torchvision_or_timm():
    code = ("import importlib, importlib.metadata as md, sys\n"
            "for m in ('torch', 'torchvision', 'timm', 'onnx', 'scipy'):\n"
            "    try:\n        importlib.import_module(m)\n        print('IMPORTS', m)\n    except ImportError:\n        pass\n"
            "    if sys.argv[1] == 'venv':\n"
            "        try:\n            md.distribution(m)\n            print('INSTALLED', m)\n"
            "        except md.PackageNotFoundError:\n            pass\n"
            "import camcli.cli, camcli.train, camcli.factory, camcli.export\nprint('OK')")
    result = light_python(code, "venv" if LIGHT_VENV else "simulated")
    assert result.stdout.split() == ["OK"], result.stdout + result.stderr


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_the_quickstart_runs_without_pytorch_with_the_full_installs_scores_and_checkpoints(sample_run, tmp_path):
    light_run, full_run = tmp_path / "light", tmp_path / "full"
    boxes = SAMPLE_DATA / "val_boxes.json"
    train = light("train", SAMPLE_DATA, "--out", light_run / "train")
    assert train.returncode == 0, train.stderr
    assert "export" not in train.stderr  # the default backbone's graph ships: nothing to export
    ckpt = light_run / "train" / "best.safetensors"
    predicted = light("predict", SAMPLE_DATA / "val", "--checkpoint", ckpt, "--format", "json", "--top-k", "5")
    assert predicted.returncode == 0 and len(json.loads(predicted.stdout)) == 40, predicted.stderr
    evaluated = light("evaluate", SAMPLE_DATA / "val", "--checkpoint", ckpt, "--boxes", boxes, "--calibrate", "--out",
                      light_run / "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    overlaid = light("overlay", SAMPLE_DATA / "val", "--checkpoint", light_run / "evaluate" / "calibrated.safetensors",
                     "--draw-box", "--out-dir", light_run / "overlay")
    assert overlaid.returncode == 0, overlaid.stderr
    assert len(list((light_run / "overlay").rglob("*_cam.jpg"))) == 40

    # the same steps in the full install (PyTorch importable)
    assert full("train", SAMPLE_DATA, "--out", full_run / "train").exit_code == 0
    assert full("evaluate", SAMPLE_DATA / "val", "--checkpoint", full_run / "train" / "best.safetensors", "--boxes", boxes,
                "--calibrate", "--out", full_run / "evaluate").exit_code == 0
    ours, theirs = _metrics(light_run / "evaluate"), _metrics(full_run / "evaluate")
    assert ours["accuracy"] >= 0.9 and ours["pointing_game"] >= 0.8  # a working head, not noise
    for key in ("accuracy", "pointing_game", "max_box_acc", "max_box_acc_v2", "best_threshold", "calibration"):
        assert ours[key] == theirs[key], key  # both installs run the same ONNX graph and the same NumPy fit

    from camcli.checkpoint import load_checkpoint

    a, b = load_checkpoint(ckpt), load_checkpoint(full_run / "train" / "best.safetensors")
    assert a["backbone"] == b["backbone"] and a["preprocess"] == b["preprocess"] and a["class_names"] == b["class_names"]
    np.testing.assert_allclose(a["head"]["weight"], b["head"]["weight"], rtol=0, atol=1e-6)  # same seed, same head
    np.testing.assert_allclose(a["head"]["bias"], b["head"]["bias"], rtol=0, atol=1e-6)

    # checkpoints cross over: the light one in PyTorch, the full install's one without it
    images = sorted((SAMPLE_DATA / "val" / "rocket").glob("*.jpg"))[:3]
    in_torch = full("predict", *images, "--checkpoint", ckpt, "--backend", "torch", "--format", "json", "--top-k", "5")
    in_light = light("predict", *images, "--checkpoint", ckpt, "--format", "json", "--top-k", "5")
    assert in_torch.exit_code == 0 and in_light.returncode == 0, in_torch.output + in_light.stderr
    np.testing.assert_allclose(_probs(json.loads(in_light.stdout)), _probs(json.loads(in_torch.stdout)), atol=1e-4)
    other = sample_run / "best.safetensors"
    crossed = light("predict", *images, "--checkpoint", other, "--format", "json", "--top-k", "5")
    reference = full("predict", *images, "--checkpoint", other, "--backend", "torch", "--format", "json", "--top-k", "5")
    assert crossed.returncode == 0, crossed.stderr
    np.testing.assert_allclose(_probs(json.loads(crossed.stdout)), _probs(json.loads(reference.stdout)), atol=1e-4)


def _probs(rows: list[dict]) -> np.ndarray:
    return np.array([[p["prob"] for p in sorted(r["predictions"], key=lambda p: p["index"])] for r in rows])


def test_one_photo_with_the_default_imagenet_head_needs_no_pytorch_even_on_first_use(tmp_path):
    env_cache = os.environ["CAMCLI_CACHE_DIR"]
    os.environ["CAMCLI_CACHE_DIR"] = str(tmp_path / "empty-cache")  # nothing exported or cached before
    try:
        result = light("predict", IMAGE, "--format", "json")
    finally:
        os.environ["CAMCLI_CACHE_DIR"] = env_cache
    assert result.returncode == 0, result.stderr
    reference = full("predict", IMAGE, "--backend", "torch", "--format", "json")
    ours, theirs = json.loads(result.stdout)[0]["predictions"], json.loads(reference.stdout)[0]["predictions"]
    assert [p["label"] for p in ours] == [p["label"] for p in theirs] and ours[0]["label"] in ("Egyptian cat", "tabby", "tiger cat")
    np.testing.assert_allclose([p["prob"] for p in ours], [p["prob"] for p in theirs], atol=1e-4)
    assert not (tmp_path / "empty-cache").exists()  # the shipped graph and head are used in place


CONFIGS = ROOT / "configs"
FEATURES = {  # what needs an extra: the command line, the words of its error, the extra named
    "another backbone": (["predict", IMAGE, "--arch", "resnet18"], "--arch resnet18 needs PyTorch", "torch"),
    "a GPU": (["predict", IMAGE, "--device", "cuda"], "--device cuda needs PyTorch", "torch"),
    "the PyTorch backend": (["predict", IMAGE, "--backend", "torch"], "--backend torch needs PyTorch", "torch"),
    "gradient maps at a layer": (["overlay", IMAGE, "--layer", "blocks.5", "--out-dir", "{tmp}/o"], "--layer (gradient maps) needs PyTorch",
                                 "torch"),
    "a head that is not GAP + linear": (["overlay", IMAGE, "--arch", "vgg16", "--out-dir", "{tmp}/o"], "--arch vgg16", "torch"),
    "weights from a file": (["predict", IMAGE, "--weights", "{tmp}/w.pth"], "--weights from a file needs PyTorch", "torch"),
    "training another backbone": (["train", SAMPLE_DATA, "--arch", "resnet18", "--out", "{tmp}/run"], "--arch resnet18", "torch"),
    "training from random init": (["train", SAMPLE_DATA, "--weights", "none", "--out", "{tmp}/run"], "--weights none", "torch"),
    "training the config file's backbone": (["train", SAMPLE_DATA, "--config", CONFIGS / "vgg16.yaml", "--out", "{tmp}/run"],
                                            f"config {CONFIGS / 'vgg16.yaml'}: arch vgg16 needs PyTorch", "torch"),
    "training on a GPU": (["train", SAMPLE_DATA, "--device", "cuda", "--out", "{tmp}/run"], "--device cuda needs PyTorch", "torch"),
    "training in PyTorch": (["train", SAMPLE_DATA, "--backend", "torch", "--out", "{tmp}/run"], "--backend torch needs PyTorch",
                            "torch"),
    "a camcli 0.1 checkpoint": (["predict", IMAGE, "--checkpoint", "{tmp}/old.pt"],
                                "old.pt (a PyTorch file: camcli checkpoint) needs PyTorch", "torch"),
    "listing layers": (["layers"], "camcli layers needs PyTorch", "torch"),
    "listing timm models": (["models", "--timm", "res*"], "timm", "torch"),
    "export": (["export", "{ckpt}", "--out", "{tmp}/m.onnx"], "camcli export needs the onnx package", "export"),
    "ROAD": (["evaluate", SAMPLE_DATA / "val", "--checkpoint", "{ckpt}", "--faithfulness", "--out", "{tmp}/e"], "SciPy", "faithfulness"),
    "Ray": (["predict", IMAGE, "--engine", "ray"], "Ray Data", "ray"),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_each_feature_that_needs_an_extra_says_so_in_one_line_with_exit_3(feature, sample_run, tmp_path):
    args, words, extra = FEATURES[feature]
    (tmp_path / "w.pth").write_bytes(b"not read: the extra is checked first")
    from camcli.checkpoint import load_checkpoint

    save_v1(load_checkpoint(sample_run / "best.safetensors"), tmp_path / "old.pt")
    result = light(*(str(a).format(tmp=tmp_path, ckpt=sample_run / "best.safetensors") for a in args))
    assert result.returncode == 3, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[-1] and f"pip install 'camcli[{extra}]'" in lines[-1], result.stderr
    assert lines[-1].startswith("error:") and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.onnx").exists()  # refused before any output


def test_models_lists_the_default_backbone_and_says_where_the_others_are():
    result = light("models", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)] == ["efficientnet_lite0"]
    assert "pip install 'camcli[torch]'" in result.stderr


def test_the_python_api_runs_without_pytorch_and_names_the_extra_for_the_rest():
    code = ("import sys\nimport camcli\n"
            "model = camcli.load('efficientnet_lite0')\n"
            "print('TOP', model.predict([sys.argv[1]], top_k=1)[0]['predictions'][0]['label'])\n"
            "print('MAPS', model.maps([sys.argv[1]], method='gradcam').shape)\n"
            "for attempt in (lambda: camcli.GradModel, lambda: camcli.load('resnet18')):\n"
            "    try:\n        attempt()\n    except camcli.CamcliError as exc:\n        print('ERROR', exc)\n")
    result = light_python(code, IMAGE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] in ("TOP Egyptian cat", "TOP tabby", "TOP tiger cat") and lines[1].startswith("MAPS (1, 1000, 7, "), lines
    assert lines[2:] == ["ERROR camcli.GradModel needs PyTorch, which this install leaves out: pip install 'camcli[torch]'",
                         "ERROR `arch` resnet18 needs PyTorch, which this install leaves out: pip install 'camcli[torch]'"]


@pytest.mark.parametrize("args, words", [
    (["predict", IMAGE, "--arch", "efficientnet-lite0"], "unknown --arch 'efficientnet-lite0': did you mean efficientnet_lite0?"),
    (["train", SAMPLE_DATA, "--arch", "efficientnet_lite", "--out", "{tmp}/run"], "did you mean efficientnet_lite0?"),
    (["predict", IMAGE, "--weights", "{tmp}/missing.pth"], "no file"),
    (["train", SAMPLE_DATA, "--weights", "{tmp}/missing.pth", "--out", "{tmp}/run"], "no file"),
])
def test_a_mistyped_arch_or_a_missing_weights_file_is_a_mistake_not_a_missing_extra(args, words, tmp_path):
    result = light(*(str(a).format(tmp=tmp_path) for a in args))
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_compare_runs_without_pytorch(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    result = light("compare", SAMPLE_DATA / "val" / "cat", "--base", ckpt, "--candidate", ckpt, "--out", tmp_path / "c", "-q",
                   "--require", "top1_agreement>=1")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert summary["num_images"] == 8 and summary["map_spearman_p10"] == 1.0


def test_sanity_runs_without_pytorch(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    result = light("evaluate", SAMPLE_DATA / "val", "--checkpoint", ckpt, "--sanity", "--sanity-images", "2", "--out", tmp_path / "s",
                   "-q")
    assert result.returncode == 0, result.stderr
    check = json.loads((tmp_path / "s" / "metrics.json").read_text())["sanity"]
    assert check["passed"] and len(check["steps"]) == 20 and "data_randomization" in check


def test_model_video_runs_without_pytorch(sample_run, tmp_path):
    from test_video import make_clip

    clip = make_clip(tmp_path / "pan.avi", count=6)
    result = light_python("import sys, camcli\nm = camcli.load(sys.argv[1])\n"
                          "print([r['frame'] for r in m.video(sys.argv[2], every=2)])", sample_run / "best.safetensors", clip)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 2, 4]" and result.stderr == ""
