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
    ("data: d\nepochs: 0\n", r"config .*c\.yaml: epochs must be at least 1"),  # names the file the value came from
    ("data: d\nresize: bogus\n", r"config .*c\.yaml: resize must be one of squash, keep-aspect, got 'bogus'"),
    ("data: d\ndevice: tpu\n", r"config .*c\.yaml: device must be one of auto, cpu, cuda, mps, got 'tpu'"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CamcliError, match=message):
        resolve_train_config(path)


def test_a_bad_flag_value_names_the_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nval_split: 0.3\n")
    with pytest.raises(CamcliError, match="^--val-split must be between 0 and 1, got 1.5$"):
        resolve_train_config(path, val_split=1.5)
    with pytest.raises(CamcliError, match="^--lr must be a finite number, got nan$"):
        resolve_train_config(path, lr=float("nan"))
    with pytest.raises(CamcliError, match="^val_split must be between 0 and 1"):  # the API: the field's name
        TrainConfig(data="d", val_split=2.0).validate()


def test_shipped_configs_load(tmp_path):
    from conftest import ROOT

    for name in ("default.yaml", "vgg16.yaml"):
        cfg = resolve_train_config(ROOT / "configs" / name, data="x")
        assert cfg.epochs >= 1
    assert resolve_train_config(ROOT / "configs" / "vgg16.yaml", data="x").arch == "vgg16"


def test_the_shipped_default_config_is_defaults_py_written_out():
    import yaml

    from camcli.defaults import TRAIN
    from conftest import ROOT

    written = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert written == {"arch": "efficientnet_lite0", **TRAIN}
