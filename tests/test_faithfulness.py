"""Faithfulness without boxes, against torchcam's ClassificationMetric and DeletionInsertionMetric (the oracle)."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from test_methods import resnet  # noqa: F401 - the fixture

from camcli.cam import softmax
from camcli.faithfulness import FaithfulnessTally, deletion_insertion


def test_average_drop_increase_deletion_and_insertion_equal_torchcams(resnet):  # noqa: F811
    from torchcam.methods import CAM
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    model, ours, x = resnet
    logits, feats, sizes = ours.forward(list(x.numpy()))
    predicted = logits.argmax(axis=1)
    from camcli.engine import Batch

    batch = Batch([0, 1], logits, feats, sizes, [None, None], [], list(x.numpy()))
    maps = ours.batch_maps(batch, predicted[:, None], method="cam")
    tally = FaithfulnessTally()
    probs = softmax(logits)
    for b in range(2):
        c = int(predicted[b])
        tally.add(x[b].numpy(), maps[b][0], float(probs[b, c]), lambda xs, c=c: softmax(ours.forward(list(xs), maps=False)[0])[:, c])
    ours_result = tally.result()

    with CAM(model, target_layer="layer4", fc_layer="fc") as extractor:
        classification = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        classification.update(x)
        expected = classification.summary()
    with CAM(model, target_layer="layer4", fc_layer="fc") as extractor:
        curves = DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1))
        curves.update(x)
        expected.update(curves.summary())
    assert ours_result["num_images"] == 2
    assert ours_result["average_drop"] == pytest.approx(100 * expected["avg_drop"], abs=1e-3)  # torchcam: fractions
    assert ours_result["increase_in_confidence"] == pytest.approx(100 * expected["conf_increase"], abs=1e-6)
    assert ours_result["deletion_auc"] == pytest.approx(expected["deletion_auc"], abs=1e-5)
    assert ours_result["insertion_auc"] == pytest.approx(expected["insertion_auc"], abs=1e-5)
    assert 0 <= ours_result["deletion_auc"] <= 1 and 0 <= ours_result["insertion_auc"] <= 1


def test_deletion_and_insertion_curves_by_hand():
    """A scorer that is the mean of the input's first channel over a known region: the curves are exact."""
    x = np.zeros((3, 4, 5), np.float32)
    x[0, :2, :] = 1.0  # the evidence: the top two rows
    saliency = np.zeros((4, 5), np.float32)
    saliency[:2, :] = 1.0  # a map that points at it
    saliency[0, 0] = 2.0

    def score(batch: np.ndarray) -> np.ndarray:
        return batch[:, 0, :2, :].mean(axis=(1, 2))

    fractions, deletion, insertion = deletion_insertion(x, saliency, 1.0, score, steps=4)
    # 20 positions in 4 steps of 5: the top 10 positions are the evidence, removed/restored in two steps
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert deletion.tolist() == [1.0, 0.5, 0.0, 0.0, 0.0] and insertion.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_evaluate_faithfulness_on_a_plain_folder_and_with_labels(sample_run, tmp_path):
    from typer.testing import CliRunner

    from camcli.cli import app

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "val"
    plain = tmp_path / "photos"
    plain.mkdir()
    for name in ("cat_00.jpg", "cat_01.jpg"):
        (plain / name).write_bytes((sample / "cat" / name).read_bytes())
    ckpt = str(sample_run / "best.safetensors")
    result = CliRunner().invoke(app, ["evaluate", str(plain), "--checkpoint", ckpt, "--faithfulness", "--format", "json",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "accuracy" not in metrics and metrics["num_images"] == 2
    faith = metrics["faithfulness"]
    assert faith["num_images"] == 2 and faith["method"] == "cam" and faith["steps"] == 20
    assert 0 <= faith["average_drop"] <= 100 and faith["deletion_auc"] < faith["insertion_auc"]  # a map better than chance
    refused = CliRunner().invoke(app, ["evaluate", str(plain), "--checkpoint", ckpt])  # no labels without --faithfulness
    assert refused.exit_code == 2
    # ROAD's numbers are in metrics.json, and a second run writes the same file byte for byte (its noise is seeded)
    assert faith["road_morf"] < faith["road_lerf"] and faith["road_combined"] == pytest.approx(
        (faith["road_lerf"] - faith["road_morf"]) / 2)
    first = (tmp_path / "e" / "metrics.json").read_bytes()
    again = CliRunner().invoke(app, ["evaluate", str(plain), "--checkpoint", ckpt, "--faithfulness", "--out", str(tmp_path / "e2")])
    assert again.exit_code == 0 and (tmp_path / "e2" / "metrics.json").read_bytes() == first


def test_the_tally_reports_road_as_road_computes_it_with_pytorch_grad_cams_noise(monkeypatch):
    """A sign error in road_combined, a swapped MoRF / LeRF or another noise level fails here
    (mutants run: road_combined as (morf - lerf) / 2, and noise 0.02, each fail)."""
    import inspect

    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from camcli import faithfulness
    from camcli.faithfulness import explanation, road

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 16, 20)).astype(np.float32) for _ in range(3)]
    maps = [rng.random((4, 5)).astype(np.float32) for _ in range(3)]
    weight = rng.standard_normal(3)

    def score(batch: np.ndarray) -> np.ndarray:  # a toy classifier's probability: the sigmoid of a channel-weighted mean
        return 1 / (1 + np.exp(-(batch[:, :, 4:12, 5:15].mean(axis=(2, 3)) @ weight * 8)))

    tally, expected = FaithfulnessTally(), []
    for x, m in zip(xs, maps):
        prob = float(score(x[None])[0])
        tally.add(x, m, prob, score)
        expected.append(road(x, explanation(m, x.shape[-2:]), prob, score))
    result = tally.result()
    morf, lerf = np.mean([e[0] for e in expected]), np.mean([e[1] for e in expected])
    assert morf != pytest.approx(lerf)  # the order matters on these maps
    assert result["road_morf"] == pytest.approx(morf) and result["road_lerf"] == pytest.approx(lerf)
    assert result["road_combined"] == pytest.approx((lerf - morf) / 2)
    # the imputation's noise: pytorch-grad-cam's default level, drawn where positions are removed
    default = inspect.signature(NoisyLinearImputer.__init__).parameters["noise"].default
    levels = []
    real = faithfulness.impute
    monkeypatch.setattr(faithfulness, "impute", lambda x, keep, noise, rng: levels.append(noise) or real(x, keep, noise, rng))
    road(xs[0], explanation(maps[0], (16, 20)), 0.5, score)
    assert levels and set(levels) == {default} == {faithfulness.ROAD_NOISE}
    flat = np.zeros((3, 16, 20), np.float32)
    filled = real(flat, np.zeros((16, 20), bool), default, np.random.default_rng(7))  # everything removed: noise alone
    np.testing.assert_allclose(filled, default * np.random.default_rng(7).standard_normal((3, 16 * 20)).reshape(3, 16, 20),
                               rtol=1e-6)


def test_road_equals_pytorch_grad_cams_without_noise(resnet, monkeypatch):  # noqa: F811
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from camcli.faithfulness import explanation, road

    model, ours, x = resnet
    x = x[:1]
    logits, feats, sizes = ours.forward(list(x.numpy()))
    c = int(logits.argmax())
    from camcli.engine import Batch

    batch = Batch([0], logits, feats, sizes, [None], [], list(x.numpy()))
    saliency = explanation(ours.batch_maps(batch, np.array([[c]]), method="cam")[0][0], (96, 128))
    prob = float(softmax(logits)[0, c])
    morf, lerf = road(x[0].numpy(), saliency, prob, lambda xs: softmax(ours.forward(list(xs), maps=False)[0])[:, c], noise=0.0)
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # the oracle's imputation noise, off
    targets = [ClassifierOutputSoftmaxTarget(c)]
    expected_morf = ROADMostRelevantFirstAverage()(x, saliency[None], targets, model)[0]
    expected_lerf = ROADLeastRelevantFirstAverage()(x, saliency[None], targets, model)[0]
    assert morf == pytest.approx(float(expected_morf), abs=1e-5) and lerf == pytest.approx(float(expected_lerf), abs=1e-5)


def test_imputation_fills_a_hole_with_its_neighbours_mean():
    from camcli.faithfulness import impute

    x = np.zeros((1, 5, 5), np.float32)
    x[0] = 2.0
    keep = np.ones((5, 5), bool)
    keep[2, 2] = False  # one hole in a constant image: the weighted mean of its neighbours is the constant
    assert impute(x, keep, noise=0.0)[0, 2, 2] == pytest.approx(2.0)
    ramp = np.tile(np.arange(5, dtype=np.float32), (5, 1))[None]
    filled = impute(ramp, keep, noise=0.0)
    assert filled[0, 2, 2] == pytest.approx(2.0) and np.array_equal(filled[0][keep], ramp[0][keep])


def test_faithfulness_without_scipy_names_the_extra(sample_run, tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['scipy'] = None; sys.modules['scipy.sparse'] = None\n"
            "from camcli.cli import main; sys.argv = ['camcli', *sys.argv[1:]]; main()")
    result = subprocess.run([sys.executable, "-c", code, "evaluate", str(tmp_path), "--checkpoint", str(sample_run / "best.safetensors"),
                             "--faithfulness"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == "error: --faithfulness (its ROAD scores) needs SciPy's sparse solver: pip install " \
                                    "'camcli[faithfulness]'"


def test_evaluate_compares_methods_side_by_side(sample_run, tmp_path):
    """--method repeats: one row per method in each table, by_method in the JSON (the first method's
    metrics also at the top level), the curves of every method plotted, each method's cost printed."""
    from typer.testing import CliRunner

    from camcli.cli import app
    from camcli.data import read_image

    sample = Path(__file__).resolve().parents[1] / "sample_data"
    data = tmp_path / "val"
    for label in ("cat", "rocket"):
        (data / label).mkdir(parents=True)
        (data / label / f"{label}_00.jpg").write_bytes((sample / "val" / label / f"{label}_00.jpg").read_bytes())
    boxes = json.loads((sample / "val_boxes.json").read_text())
    (tmp_path / "boxes.json").write_text(json.dumps({k: v for k, v in boxes.items() if k.endswith("_00.jpg")}))
    result = CliRunner().invoke(app, ["evaluate", str(data), "--checkpoint", str(sample_run / "best.safetensors"), "--boxes",
                                      str(tmp_path / "boxes.json"), "--faithfulness", "--method", "gradcam++", "--method",
                                      "random", "--method", "center", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    by_method = metrics["by_method"]
    assert list(by_method) == ["gradcam++", "random", "center"] and metrics["settings"]["methods"] == list(by_method)
    for name, scores in by_method.items():
        assert scores["method"] == name and scores["faithfulness"]["method"] == name and scores["num_images_with_boxes"] == 2
    assert metrics["pointing_game"] == by_method["gradcam++"]["pointing_game"]  # the top level: the first method's
    assert metrics["faithfulness"] == by_method["gradcam++"]["faithfulness"]
    assert by_method["random"]["faithfulness"] != by_method["center"]["faithfulness"]  # each method's own maps scored
    curves = by_method["center"]["faithfulness"]["curves"]
    assert curves["fractions"][0] == 0 and curves["fractions"][-1] == 1 and len(curves["deletion"]) == 21
    assert curves["insertion"][-1] == pytest.approx(curves["deletion"][0])  # the whole image, both ways
    plot = read_image(tmp_path / "e" / "faithfulness_curves.png")
    assert plot.shape == (440, 1280, 3) and (plot < 128).any()
    out = result.stdout
    for table in ("localization", "faithfulness"):
        section = out[out.index(table):]
        assert all(name in section for name in by_method)
    assert "seconds per image: gradcam++ maps" in result.stderr and "road" in result.stderr
    assert "seconds_per_image" not in metrics  # metrics.json stays the same from run to run
    again = CliRunner().invoke(app, ["evaluate", str(data), "--checkpoint", str(sample_run / "best.safetensors"), "--boxes",
                                     str(tmp_path / "boxes.json"), "--method", "sobel", "--out", str(tmp_path / "e"), "--quiet"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / "e").iterdir() if not p.name.startswith(".")) == ["box_accuracy.png", "metrics.json"]


def test_the_cam_beats_the_random_baseline_on_real_photographs(tmp_path):
    """The default ImageNet head on four photographs (scikit-image's): the CAM's maps are more
    faithful than noise by deletion, insertion and average drop."""
    from skimage import data as photos
    from typer.testing import CliRunner

    from camcli.cli import app
    from conftest import write_image

    folder = tmp_path / "photos"
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        write_image(folder / f"{name}.png", getattr(photos, name)())
    result = CliRunner().invoke(app, ["evaluate", str(folder), "--faithfulness", "--method", "cam", "--method", "random",
                                      "--format", "json", "--out", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 0, result.output
    scores = {m: v["faithfulness"] for m, v in json.loads(result.stdout)["by_method"].items()}
    cam, noise = scores["cam"], scores["random"]
    assert cam["num_images"] == noise["num_images"] == 4
    assert cam["deletion_auc"] < noise["deletion_auc"]
    assert cam["insertion_auc"] > noise["insertion_auc"]
    assert cam["average_drop"] < noise["average_drop"]


@pytest.mark.parametrize("side", [64, 600])
def test_road_imputes_a_large_input_on_a_bounded_grid_with_the_noise_level_kept(side, monkeypatch):
    from camcli import faithfulness

    solved = []
    csc_matrix, spsolve = faithfulness.require_scipy()
    monkeypatch.setattr(faithfulness, "require_scipy", lambda: (csc_matrix, lambda m, b: solved.append(m.shape[0]) or spsolve(m, b)))
    x = np.full((3, side, side), 0.5, np.float32)
    x[:, : side // 4] = 0.9  # known values that must stay as they are
    keep = np.ones((side, side), bool)
    keep[side // 3 : 2 * side // 3, side // 3 : 2 * side // 3] = False  # a square to impute
    out = faithfulness.impute(x, keep, noise=0.01, rng=np.random.default_rng(3))
    assert solved and max(solved) <= faithfulness.ROAD_MAX_PIXELS
    assert (side * side > faithfulness.ROAD_MAX_PIXELS) == (max(solved) < (~keep).sum())  # a coarser grid only when too large
    np.testing.assert_array_equal(out[:, keep], x[:, keep])
    residual = out[:, ~keep] - 0.5  # the square's neighbours are all 0.5: the smooth part is 0.5, the rest is the noise
    assert abs(residual.mean()) < 0.002 and 0.0095 < residual.std() < 0.0105
