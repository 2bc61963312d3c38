"""Checkpoints: plain dicts, weights_only loading, clear refusals."""

from pathlib import Path

import pytest
import torch

from camcli.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from camcli.errors import CamcliError


def _minimal(**override) -> dict:
    ckpt = {
        "format_version": FORMAT_VERSION, "arch": "resnet18", "class_names": ["a", "b"], "img_size": 32,
        "preprocess": {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "squash"},
        "backbone": {"state_dict": {}},
        "head": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)},
    }
    ckpt.update(override)
    return ckpt


def test_round_trip_and_atomic_write_leaves_no_temporary(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(_minimal(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path)["head"]["weight"], torch.zeros(2, 4))


@pytest.mark.parametrize("ckpt,message", [
    ({"format_version": 1}, "not a camcli checkpoint"),
    (_minimal(format_version=FORMAT_VERSION + 1), "newer than this camcli"),
    (_minimal(class_names=["a"]), "2 outputs but 1 class names"),
])
def test_refusals(tmp_path, ckpt, message):
    path = tmp_path / "c.pt"
    torch.save(ckpt, path)
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
    import os

    umask = os.umask(0o022)
    try:
        save_checkpoint(_minimal(), tmp_path / "c.pt")
    finally:
        os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o666 & ~_module_umask()


def _module_umask() -> int:
    from camcli import files

    return files._UMASK
