"""Config merging: defaults < file < flags; unknown keys rejected."""

import pytest

from camcli.config import TrainConfig, resolve_train_config
from camcli.errors import CamcliError


def test_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nepochs: 7\nlr: 1\narch: vgg16\n")
    cfg = resolve_train_config(path, epochs=3, lr=None)
    assert cfg.epochs == 3  # flag beats file
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # file beats default, int accepted as float
    assert cfg.arch == "vgg16"
    assert cfg.batch_size == TrainConfig().batch_size  # default kept


def test_unknown_keys_list_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nepoch: 3\n")
    with pytest.raises(CamcliError, match=r"unknown key\(s\) epoch; valid keys: data, arch"):
        resolve_train_config(path)


@pytest.mark.parametrize("text,message", [
    ("data: d\nepochs: many\n", "epochs must be int"),
    ("- a\n- b\n", "must be a mapping"),
    ("data: [\n", "not valid YAML"),
    ("data: d\nepochs: 0\n", "epochs must be at least 1"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CamcliError, match=message):
        resolve_train_config(path)


def test_shipped_configs_load(tmp_path):
    from conftest import ROOT

    for name in ("default.yaml", "vgg16.yaml"):
        cfg = resolve_train_config(ROOT / "configs" / name, data="x")
        assert cfg.epochs >= 1
    assert resolve_train_config(ROOT / "configs" / "vgg16.yaml", data="x").arch == "vgg16"
