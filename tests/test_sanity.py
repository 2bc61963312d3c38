"""evaluate --sanity (Adebayo et al. 2018): the cascade on the shipped ONNX graph against the onnx
package's own edit of the graph, Quantus's MPRT order and seeding on PyTorch, data randomization's
refit against train's, and the expected verdicts on sample_data: the CAM family passes, the
sobel and center baselines fail."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import camcli
from camcli import sanity
from camcli.cli import app
from camcli.packaged import BACKBONE_GRAPH, asset, graph_blocks
from camcli.runtime import OnnxRunner
from conftest import SAMPLE_DATA

VAL = SAMPLE_DATA / "val"


def evaluate(*args: object):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_graph_blocks_name_every_convolution_of_the_shipped_graph():
    import onnx

    path, _ = asset(BACKBONE_GRAPH)
    graph = onnx.load(path).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    listed = [(block, conv) for block, convs_of in graph_blocks() for conv in convs_of]
    assert len(listed) == len(convs) == 49
    for node, (block, (weight, bias, shape)) in zip(convs, listed):
        assert list(node.input[1:]) == [weight, bias] and shapes[weight] == shape and shapes[bias] == (shape[0],)
        assert f"/{block}/" in node.name + "/" or node.name.startswith(f"/blocks/blocks.{block[7]}/{block}/"), (node.name, block)
    # every initializer the graph has is one of them: a step randomizes the whole block
    assert {n for _, convs_of in graph_blocks() for w, b, _ in convs_of for n in (w, b)} == set(shapes)


def test_the_onnx_cascade_runs_the_graph_the_onnx_package_makes_with_those_weights(sample_run):
    """The runtime's override (add_initializer) against an independent edit of the graph file."""
    import onnx
    from onnx import numpy_helper

    model = camcli.load(sample_run / "best.safetensors")
    steps = sanity.cascade(model, seed=3)
    assert steps.steps == ["head", *(b for b, _ in graph_blocks()[::-1])]
    x = np.random.default_rng(0).random((2, 3, 96, 128)).astype(np.float32)
    trained = model.runner(x)
    models = list(steps.models())
    assert len(models) == len(steps.steps)
    head = models[0]
    np.testing.assert_array_equal(head.runner(x), trained)  # the head alone: the backbone is the trained one
    assert not np.allclose(head.weight, model.weight)
    last = models[-1]
    path, _ = asset(BACKBONE_GRAPH)
    edited = onnx.load(path)
    for tensor in edited.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(last.runner._arrays[tensor.name], tensor.name))
    reference = OnnxRunner(path, model=edited.SerializeToString())
    np.testing.assert_allclose(last.runner(x), reference(x), rtol=1e-5, atol=1e-5)
    # each block's weights drawn as Conv2d.reset_parameters draws them (uniform within 1/sqrt(fan-in)), its
    # biases those of a reset BatchNorm folded in: 0
    for _, convs in graph_blocks():
        for weight, bias, shape in convs:
            bound = 1 / np.sqrt(np.prod(shape[1:]))
            drawn = last.runner._arrays[weight]
            assert np.abs(drawn).max() <= bound and np.abs(drawn).max() > 0.9 * bound
            assert not last.runner._arrays[bias].any()
    # cumulative: step k keeps the blocks randomized before it
    assert set(models[2].runner._arrays) < set(models[3].runner._arrays)


def test_the_pytorch_cascade_is_quantus_mprt_order_and_seeding():
    """Quantus's get_random_layer_generator (top_down): the modules with reset_parameters in
    reverse named_modules order, torch.manual_seed(seed + 1) before each, cumulative."""
    import torch

    from camcli.backbones import build_classifier
    from camcli.data import Preprocess
    from camcli.gradients import GradModel

    classifier = build_classifier("mobilenet_v3_small", "none")
    model = GradModel(classifier, [str(i) for i in range(1000)], Preprocess(64, (0.5,) * 3, (0.5,) * 3))
    steps = sanity.cascade(model, seed=7)
    expected = [n for n, m in classifier.model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    assert steps.steps == expected and steps.steps[0] == "classifier.3"
    original = copy.deepcopy(classifier.model.state_dict())
    models = steps.models()
    for k in range(3):
        step = next(models)
        state = step.classifier.model.state_dict()
        name = expected[k]
        fresh = copy.deepcopy(dict(classifier.model.named_modules())[name])
        torch.manual_seed(8)
        fresh.reset_parameters()
        for key, value in fresh.state_dict().items():
            assert torch.equal(state[f"{name}.{key}"], value), (name, key)
        below = expected[k + 1]
        for key in dict(classifier.model.named_modules())[below].state_dict():
            assert torch.equal(state[f"{below}.{key}"], original[f"{below}.{key}"])
    assert all(torch.equal(v, original[k]) for k, v in classifier.model.state_dict().items())  # the trained model is untouched


def test_the_torch_backend_runs_the_pytorch_cascade_and_the_maps_move(sample_run):
    model = camcli.load(sample_run / "best.safetensors", backend="torch")
    check = sanity.SanityCheck(sorted((VAL / "cat").iterdir())[:2], ("cam",), 8)
    found = check.run(model)["cam"]
    features = model.features_module()
    assert found["steps"][:2] == ["trained", "head"]
    assert found["steps"][2:] == [n for n, m in features.named_modules() if hasattr(m, "reset_parameters")][::-1]
    assert len(found["curve"]["hog"]) == len(found["steps"]) and found["curve"]["spearman"][0] == 1.0
    assert found["head"]["spearman_abs"] < 0.9 and min(found["curve"]["spearman_abs"][2:]) < 0.3  # the maps moved


def test_data_randomization_fits_as_train_does(sample_run):
    """fit_head with the real labels gives train's last head: the shuffled fit is the same fit."""
    from camcli.checkpoint import load_checkpoint
    from camcli.data import load_image_folder
    from camcli.headfit import fit_head
    from camcli.jobs import pooled_features

    checkpoint = load_checkpoint(sample_run / "last.safetensors")
    config = checkpoint["config"]
    model = camcli.load(sample_run / "last.safetensors")
    model.prepare()
    train_set, _, names = load_image_folder(SAMPLE_DATA, config["val_split"], config["seed"], ())
    x = np.concatenate(list(pooled_features(model.runner, [p for p, _ in train_set], model.preprocess, config["batch_size"], 0)))
    y = np.array([c for _, c in train_set])
    head = fit_head(x, y, len(names), config["epochs"], config["lr"], config["weight_decay"], config["batch_size"], config["seed"])
    np.testing.assert_allclose(head.weight, model.weight, rtol=0, atol=1e-5)
    np.testing.assert_allclose(head.bias, model.bias, rtol=0, atol=1e-5)
    shuffled, _ = sanity.shuffled_head(x, y, len(names), sanity.refit_settings(model))
    assert not np.allclose(shuffled, model.weight, atol=1e-3)


def test_sanity_on_sample_data_the_cam_family_passes_and_the_baselines_fail(sample_run, tmp_path):
    """(Grad-CAM++ and LayerCAM end near 0.55 on this head: docs/commands/evaluate.md shows them failing.)"""
    out = tmp_path / "ev"
    family = ("cam", "gradcam", "hirescam", "ablationcam")
    result = evaluate(VAL, "--checkpoint", sample_run / "best.safetensors", "--sanity", "--sanity-images", "6",
                      *(a for m in (*family, "sobel", "center") for a in ("--method", m)), "--out", out)
    assert result.exit_code == 0, result.output  # baselines are shown, never judged
    metrics = json.loads((out / "metrics.json").read_text())
    for m in family:
        check = metrics["by_method"][m]["sanity"]
        assert check["passed"] and check["end_similarity"] == abs(check["final"]["spearman"]) < 0.5, (m, check["final"])
        assert check["num_images"] == 6 and len(check["curve"]["ssim"]) == len(check["steps"]) == 20
    for m in ("cam", "gradcam"):  # (Grad-CAM++'s weights hardly depend on the class: it stays near 0.9 at the head)
        assert metrics["by_method"][m]["sanity"]["data_randomization"]["spearman_abs"] < 0.9, m
    for m in ("sobel", "center"):
        check = metrics["by_method"][m]["sanity"]
        assert not check["passed"] and min(check["curve"]["spearman_abs"]) == pytest.approx(1.0), m
    # the class-dependent CAM moves at the head; each family member is a requirement, the baselines are not
    assert metrics["by_method"]["cam"]["sanity"]["head"]["spearman_abs"] < 0.8
    assert [r["metric"] for r in metrics["requirements"]] == [f"by_method.{m}.sanity.end_similarity" for m in family]
    assert metrics["sanity"] == metrics["by_method"]["cam"]["sanity"]
    assert (out / "sanity.png").stat().st_size > 10_000
    assert "PASS by_method.ablationcam.sanity.end_similarity" in result.output and "FAIL (baseline)" in result.output


def test_a_sanity_gate_fails_with_exit_4_and_a_sanity_metric_without_sanity_is_unknown(sample_run, tmp_path):
    ckpt = sample_run / "best.safetensors"
    result = evaluate(VAL / "..", "--checkpoint", ckpt, "--sanity", "--sanity-images", "2", "--out", tmp_path / "a", "-q",
                      "--require", "sanity.head.spearman_abs < 0.01")
    assert result.exit_code == 2 and "splits" in result.output  # (DATA with splits: one line, as ever)
    result = evaluate(VAL, "--checkpoint", ckpt, "--sanity", "--sanity-images", "2", "--out", tmp_path / "a", "-q",
                      "--require", "sanity.head.spearman_abs < 0.01", "--require", "sanity.final.hog<=1")
    assert result.exit_code == 4, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("FAIL sanity.head.spearman_abs") and lines[1].startswith("PASS sanity.final.hog")
    assert lines[2].startswith("PASS by_method.cam.sanity.end_similarity") and lines[3] == "1 of 3 requirements failed"
    result = evaluate(VAL, "--checkpoint", ckpt, "--out", tmp_path / "b", "--require", "sanity.final.hog<=1")
    assert result.exit_code == 2 and "computes no metric 'sanity.final.hog'" in result.output
    assert not (tmp_path / "b").exists()


def test_unlabeled_or_one_class_data_is_checked_without_data_randomization(sample_run, tmp_path):
    import shutil

    loose, one = tmp_path / "loose", tmp_path / "one"
    loose.mkdir()
    for name in ("cat_00.jpg", "cat_01.jpg"):
        shutil.copy(VAL / "cat" / name, loose / name)
    shutil.copytree(VAL / "cat", one / "cat")
    for data in (loose, one):
        result = evaluate(data, "--checkpoint", sample_run / "best.safetensors", "--sanity", "--sanity-images", "2",
                          "--out", tmp_path / f"ev_{data.name}", "--format", "json")
        assert result.exit_code == 0, result.output
        check = json.loads((tmp_path / f"ev_{data.name}" / "metrics.json").read_text())["sanity"]
        assert "data_randomization" not in check and check["num_images"] == 2 and len(check["steps"]) == 20, data
    result = evaluate(loose, "--checkpoint", sample_run / "best.safetensors", "--sanity", "--out", tmp_path / "x",
                      "--require", "sanity.data_randomization.hog < 1")  # nothing to shuffle: an unknown metric
    assert result.exit_code == 2 and "computes no metric" in result.output


@pytest.mark.parametrize("args, words", [
    (["--precision", "int8"], "leave out --precision int8"),
    (["--sanity-images", "0"], "--sanity-images must be from 1 to 10000"),
])
def test_sanity_refusals_are_one_line_with_exit_2(sample_run, tmp_path, args, words):
    result = evaluate(VAL, "--checkpoint", sample_run / "best.safetensors", "--sanity", *args, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_runtime_that_ignores_the_randomized_weights_is_refused_not_believed(sample_run, monkeypatch):
    """Were ONNX Runtime to drop the values given (as its level-ALL optimizations do), every map
    would look unmoved and every method would fail: the cascade checks each block's effect."""
    from camcli import runtime
    from camcli.errors import CamcliError

    original = runtime.OnnxRunner.__init__

    def ignoring(self, path, threads=None, model=None, facts=None, initializers=None):
        original(self, path, threads, model, facts)

    monkeypatch.setattr(runtime.OnnxRunner, "__init__", ignoring)
    model = camcli.load(sample_run / "best.safetensors")
    models = sanity.cascade(model).models()
    next(models)  # the head: no graph change to check
    with pytest.raises(CamcliError, match="ran conv_head of efficientnet_lite0 with its trained weights"):
        next(models)
