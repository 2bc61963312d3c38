"""Training the head: determinism, frozen backbone, run folders, checkpoint contents."""

import csv

import numpy as np
import pytest
import torch
import yaml

from camcli.backbones import build_backbone
from camcli.checkpoint import load_checkpoint
from camcli.config import resolve_train_config
from camcli.errors import CamcliError
from camcli.files import MANIFEST_NAME, read_manifest
from camcli.train import fit, next_run_dir

SMALL = dict(arch="resnet18", weights="none", img_size=32, epochs=3, batch_size=4, workers=0)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool, np.ndarray)


def test_same_seed_same_head_and_a_complete_run_folder(tiny_folder, tmp_path):
    a = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "a"), **SMALL))
    b = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "b"), **SMALL))
    ca, cb = load_checkpoint(a.run_dir / "last.safetensors"), load_checkpoint(b.run_dir / "last.safetensors")
    assert np.array_equal(ca["head"]["weight"], cb["head"]["weight"])
    files = ["best.safetensors", "config.yaml", "last.safetensors", "metrics.csv", "report.html"]
    assert sorted(p.name for p in a.run_dir.iterdir()) == [MANIFEST_NAME, *files]
    assert sorted(read_manifest(a.run_dir)) == files  # camcli's own files: a rerun with --exist-ok may replace them
    rows = list(csv.DictReader(open(a.run_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc"}
    assert yaml.safe_load((a.run_dir / "config.yaml").read_text())["epochs"] == 3
    best = load_checkpoint(a.run_dir / "best.safetensors")
    assert best["metrics"]["val_acc"] == max(float(r["val_acc"]) for r in rows)


def test_checkpoint_is_a_plain_self_contained_dict(tiny_folder, tmp_path):
    run = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "r"), **SMALL))
    ckpt = load_checkpoint(run.run_dir / "best.safetensors")
    assert _plain(ckpt)
    for key in ("format_version", "camcli_version", "arch", "class_names", "img_size", "preprocess",
                "mean", "std", "config", "metrics", "backbone", "head"):
        assert key in ckpt
    assert ckpt["class_names"] == ["blue", "red"] and ckpt["head"]["weight"].shape == (2, 512)
    assert "state_dict" in ckpt["backbone"]  # a random-init backbone is stored in full


def test_backbone_statistics_do_not_move(tiny_folder, tmp_path, monkeypatch):
    seen = {}
    from camcli import backbones

    real_build = backbones.build_backbone

    def spy(*args, **kwargs):
        backbone = real_build(*args, **kwargs)
        seen["backbone"] = backbone
        seen["before"] = {k: v.clone() for k, v in backbone.features.state_dict().items()}
        return backbone

    monkeypatch.setattr(backbones, "build_backbone", spy)
    fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "r"), **{**SMALL, "backend": "torch"}))
    after = seen["backbone"].features.state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)
    assert not seen["backbone"].features.training


def test_runs_are_numbered_and_out_is_protected(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = fit(resolve_train_config(data=str(tiny_folder), **{**SMALL, "epochs": 1}))
    second = fit(resolve_train_config(data=str(tiny_folder), **{**SMALL, "epochs": 1}))
    assert (str(first.run_dir), str(second.run_dir)) == ("runs/train/exp", "runs/train/exp2")
    assert next_run_dir() == next_run_dir().parent / "exp3"
    with pytest.raises(CamcliError, match="`exist_ok`"):
        fit(resolve_train_config(data=str(tiny_folder), out="runs/train/exp", **SMALL))
    fit(resolve_train_config(data=str(tiny_folder), out="runs/train/exp", exist_ok=True, **SMALL))
    # --exist-ok replaces a previous run's files, never a file camcli did not write
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("my numbers\n")
    with pytest.raises(CamcliError, match="metrics.csv exists and was not written by camcli; train replaces only a previous run"):
        fit(resolve_train_config(data=str(tiny_folder), out=str(mine), exist_ok=True, **SMALL))
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.csv"] and (mine / "metrics.csv").read_text() == "my numbers\n"


def test_default_backbone_head_matches_logistic_regression(sample_run):
    """Within 3 points of scikit-learn on the same frozen pooled features and split."""
    from sklearn.linear_model import LogisticRegression

    from camcli.data import Preprocess, load_image_folder
    from camcli.jobs import pooled_features
    from camcli.runtime import TorchRunner
    from conftest import SAMPLE_DATA

    train, val, _ = load_image_folder(SAMPLE_DATA, 0.2, 0)
    backbone = build_backbone()
    pre = Preprocess(224, backbone.mean, backbone.std, "keep-aspect", backbone.stride)
    runner = TorchRunner(backbone.features, torch.device("cpu"))
    xtr = np.concatenate(list(pooled_features(runner, [p for p, _ in train], pre, 32, 0)))
    xva = np.concatenate(list(pooled_features(runner, [p for p, _ in val], pre, 32, 0)))
    reference = LogisticRegression(max_iter=5000).fit(xtr, [y for _, y in train]).score(xva, [y for _, y in val])
    ours = load_checkpoint(sample_run / "best.safetensors")["metrics"]["val_acc"]
    # a correctness floor against an independent fit on the same features, not a figure (today both are 1.000;
    # benchmarks/linear_probe.py measures them)
    assert ours >= reference - 0.03 - 1e-6
