"""Checkpoints: plain dicts, weights_only loading, clear refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from camcli.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from camcli.errors import CamcliError
from conftest import save_v1


def _minimal(**override) -> dict:
    ckpt = {
        "format_version": FORMAT_VERSION, "arch": "resnet18", "class_names": ["a", "b"], "img_size": 32,
        "preprocess": {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "squash"},
        "backbone": {"state_dict": {"conv.weight": np.zeros((4, 3, 1, 1), np.float32)}},
        "head": {"weight": np.zeros((2, 4), np.float32), "bias": np.zeros(2, np.float32)},
    }
    ckpt.update(override)
    return ckpt


def test_round_trip_and_atomic_write_leaves_no_temporary(tmp_path):
    path = tmp_path / "c.safetensors"
    ckpt = _minimal(backbone={"state_dict": {"conv.weight": np.arange(6, dtype=np.float32).reshape(1, 6), "n": np.array(3)}})
    save_checkpoint(ckpt, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == 2 and loaded["class_names"] == ["a", "b"]
    np.testing.assert_array_equal(loaded["head"]["weight"], np.zeros((2, 4)))
    np.testing.assert_array_equal(loaded["backbone"]["state_dict"]["conv.weight"], ckpt["backbone"]["state_dict"]["conv.weight"])
    # a plain safetensors reader sees the same tensors, and the metadata is JSON
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == ["backbone.conv.weight", "backbone.n", "head.bias", "head.weight"]
        assert json.loads(f.metadata()["camcli"])["arch"] == "resnet18"


def test_format_1_checkpoints_of_camcli_0_1_still_load(tmp_path):
    path = save_v1(_minimal(format_version=1), tmp_path / "old.pt")
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == 1 and isinstance(loaded["head"]["weight"], np.ndarray)


def test_info_reads_a_checkpoint_without_pytorch(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(_minimal(), path)
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "from camcli.cli import main; sys.argv = ['camcli', 'info', sys.argv[1], '--format', 'json']; main()")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["class_names"] == ["a", "b"]


@pytest.mark.parametrize("ckpt,message", [
    ({"format_version": 1}, "not a camcli checkpoint"),
    (_minimal(format_version=FORMAT_VERSION + 1), "newer than this camcli"),
    (_minimal(class_names=["a"]), "2 outputs but 1 class names"),
])
def test_refusals(tmp_path, ckpt, message):
    path = tmp_path / "c.pt"
    save_v1(ckpt, path)
    with pytest.raises(CamcliError, match=message):
        load_checkpoint(path)


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    text = tmp_path / "t.pt"
    text.write_text("hello")
    good = tmp_path / "g.pt"
    save_checkpoint(_minimal(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    for path in (text, cut, tmp_path / "missing.pt"):
        with pytest.raises(CamcliError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)


def test_checkpoint_that_runs_code_on_load_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save(_minimal(arch=Payload()), path)
    with pytest.raises(CamcliError, match="not a loadable camcli checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_written_files_get_the_usual_permissions(tmp_path):
    # a child process started under known umasks (camcli reads the umask once, at import)
    for umask, mode in ((0o022, 0o644), (0o027, 0o640), (0o077, 0o600)):
        path = tmp_path / f"c{umask:o}.safetensors"
        code = ("import sys, numpy as np; from camcli.checkpoint import save_checkpoint\n"
                "save_checkpoint({'format_version': 2, 'arch': 'a', 'class_names': ['x'], 'img_size': 32, 'preprocess': {},"
                " 'backbone': {'reference': {}}, 'head': {'weight': np.zeros((1, 2), np.float32), 'bias': np.zeros(1, np.float32)}},"
                " sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, preexec_fn=lambda u=umask: os.umask(u), timeout=60)
        assert path.stat().st_mode & 0o777 == mode
