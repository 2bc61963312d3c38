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
