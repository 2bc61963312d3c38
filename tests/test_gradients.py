"""Gradient maps of whole classifiers (any head) against pytorch-grad-cam, the oracle; hooks,
refusals, layer listing and the command line."""

import copy
import json

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from typer.testing import CliRunner

from camcli.backbones import build_backbone, build_classifier
from camcli.cam import normalize_maps, upsample_to
from camcli.cli import app
from camcli.data import Preprocess
from camcli.errors import CamcliError
from camcli.gradients import GradModel
from conftest import SAMPLE_DATA

IMAGE = SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"


def _calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Give a randomly initialized network realistic BatchNorm statistics: with the initial
    ones, mobilenet_v3's activations vanish (1e-8) and its maps are rounding noise."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.randn(8, 3, 128, 128, generator=torch.Generator().manual_seed(seed)))
    model.eval()


def _vit_grid(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, 14x14 patches."""
    n, t, d = tokens.shape
    return tokens[:, 1:, :].reshape(n, 14, 14, d).permute(0, 3, 1, 2)


CASES = {
    # arch: (input side, oracle's target layer, oracle's reshape)
    "vgg16": (128, lambda m: m.features, None),
    "mobilenet_v3_small": (128, lambda m: m.features, None),
    "timm:vit_tiny_patch16_224": (224, lambda m: m.blocks[-1].norm1, _vit_grid),
    "timm:deit_tiny_patch16_224": (224, lambda m: m.blocks[-1].norm1, _vit_grid),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_every_method_equals_pytorch_grad_cam_on_heads_that_are_not_gap_linear(arch, monkeypatch):
    from test_methods import ALL_GRADIENT, oracle_maps

    torch.manual_seed(0)
    side, oracle_layer, reshape = CASES[arch]
    classifier = build_classifier(arch, "none")
    if arch == "mobilenet_v3_small":
        _calibrate_batchnorm(classifier.model)
    oracle_model = copy.deepcopy(classifier.model).requires_grad_(True)
    ours = GradModel(classifier, [f"c{i}" for i in range(1000)], Preprocess(side, (0.5,) * 3, (0.5,) * 3, "squash"), device="cpu")
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    logits, graph, sizes = ours.forward(list(x.numpy()))
    with torch.no_grad():
        np.testing.assert_allclose(logits, oracle_model(x).numpy(), rtol=1e-4, atol=1e-5)
    classes = [3, 7]
    for method in ALL_GRADIENT:
        expected = oracle_maps(method, oracle_model, oracle_layer(oracle_model), x, classes, reshape, monkeypatch)
        for i, maps in enumerate(ours._maps(graph, sizes, np.array([[c] for c in classes]), method)):
            assert expected[i].max() > 0.99  # a real map, not an empty one
            np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0]), (side, side))), expected[i], atol=1e-4)


def test_a_gap_linear_model_through_the_backward_engine_equals_its_exact_head_gradients(sample_run):
    """The hook engine (backward through the head) and the exact W_c / (h w) path agree."""
    from camcli.engine import CamModel
    from camcli.factory import load

    ckpt = sample_run / "best.safetensors"
    exact = load(ckpt, device="cpu", backend="torch", resize="squash")
    hooked = load(ckpt, device="cpu", layer="features", resize="squash")
    assert isinstance(exact, CamModel) and isinstance(hooked, GradModel)
    images = [SAMPLE_DATA / "val" / c / f"{c}_00.jpg" for c in ("cat", "astronaut")]
    from test_methods import ALL_GRADIENT

    for method in ALL_GRADIENT:
        np.testing.assert_allclose(hooked.maps(images, [0, 2], method=method), exact.maps(images, [0, 2], method=method),
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(CamcliError, match="for this head or a chosen `layer` use `method` gradcam"):
        hooked.maps(images, [0], method="cam")


def test_hooks_are_removed_and_no_gradients_are_kept_even_when_a_batch_fails():
    torch.manual_seed(0)
    classifier = build_classifier("mobilenet_v3_small", "none")
    model = GradModel(classifier, [f"c{i}" for i in range(1000)], Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"), device="cpu")
    target = classifier.model.features
    logits, graph, sizes = model.forward([np.zeros((3, 64, 64), np.float32)])
    model._maps(graph, sizes, np.array([[1, 2]]), "gradcam")
    assert not target._forward_hooks
    assert all(p.grad is None and not p.requires_grad for p in classifier.model.parameters())
    assert graph.groups[0].leaf.grad is None  # torch.autograd.grad returns gradients, never stores them

    def fail(*_):
        raise RuntimeError("injected failure after the target layer")

    broken = classifier.model.classifier.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="injected"):
        model.forward([np.zeros((3, 64, 64), np.float32)])
    broken.remove()
    assert not target._forward_hooks


def test_refusals_are_one_line_and_name_what_to_do():
    classifier = build_classifier("timm:vit_tiny_patch16_224", "none")
    pre = Preprocess(224, (0.5,) * 3, (0.5,) * 3, "squash")
    refusals = []
    with pytest.raises(CamcliError, match=r"no layer 'blocks\.99'.*camcli layers") as refused:
        GradModel(classifier, ["a"], pre, layer="blocks.99", device="cpu")
    refusals.append(str(refused.value))
    with pytest.raises(CamcliError, match=r"'head' gives 2-D outputs.*choose a layer before the head") as refused:
        GradModel(classifier, [f"c{i}" for i in range(1000)], pre, layer="head", device="cpu").prepare()
    refusals.append(str(refused.value))
    with pytest.raises(CamcliError, match="gives 1000 scores per image but 3 class names") as refused:
        GradModel(classifier, ["a", "b", "c"], pre, device="cpu").prepare()
    refusals.append(str(refused.value))
    assert all(len(message.splitlines()) == 1 and len(message) < 400 for message in refusals), refusals


def test_the_command_line_maps_a_classifier_trained_elsewhere_with_any_head(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "vgg.pth"
    torch.save(tvm.vgg11(weights=None, num_classes=3).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("brick\ncat\ncoffee\n")
    own = ["--arch", "vgg11", "--weights", str(weights), "--classes", str(labels)]
    runner = CliRunner()
    out = tmp_path / "o"
    result = runner.invoke(app, ["overlay", str(IMAGE), *own, "--out-dir", str(out), "--maps", "2", "--save-raw", "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["method"] == "gradcam"  # auto: not a GAP + linear head
    raw = [np.load(p) for p in row["outputs"] if p.endswith(".npy")]
    assert len(raw) == 2 and all(min(r.shape) == 7 and r.min() >= 0 and r.max() > 0 for r in raw)  # ReLU; shorter side 224 px: 7 cells
    assert "gradient maps run in PyTorch" in result.stderr
    layer = runner.invoke(app, ["predict", str(IMAGE), *own, "--boxes", "--layer", "features.15", "--method", "layercam",
                                "--format", "json"])
    assert layer.exit_code == 0 and json.loads(layer.stdout)[0]["method"] == "layercam"
    for extra, message in (
        (["--method", "cam"], "use --method gradcam"),
        (["--layer", "classifier.6"], "not a spatial map"),
        (["--layer", "featurs"], "did you mean features"),
        (["--backend", "onnxruntime"], "ONNX Runtime has no backward pass"),
    ):
        refused = runner.invoke(app, ["overlay", str(IMAGE), *own, "--out-dir", str(out), *extra])
        assert refused.exit_code == 2 and message in refused.stderr, (extra, refused.output)
        assert refused.stderr.count("error:") == 1 and "Traceback" not in refused.output


def test_evaluate_takes_a_classifier_trained_elsewhere(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "mnv3.pth"
    torch.save(tvm.mobilenet_v3_small(weights=None, num_classes=5).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(sorted(p.name for p in (SAMPLE_DATA / "val").iterdir() if p.is_dir())) + "\n")
    runner = CliRunner()
    own = ["--arch", "mobilenet_v3_small", "--weights", str(weights), "--classes", str(labels)]
    result = runner.invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), *own, "--format", "json", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["num_images"] == len(list((SAMPLE_DATA / "val").rglob("*.jpg")))
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["settings"]["arch"] == "mobilenet_v3_small" and saved["settings"]["checkpoint"] is None
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"cat/cat_00.jpg": [0, 0, 10, 10]}))
    calibrate = runner.invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), *own, "--boxes", str(boxes), "--calibrate",
                                    "--out", str(tmp_path / "c")])
    assert calibrate.exit_code == 2 and "needs a checkpoint" in calibrate.stderr


def test_layers_lists_targets_with_the_default_marked():
    runner = CliRunner()
    result = runner.invoke(app, ["layers", "--arch", "vgg16", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["name"] for r in rows if r["default"]] == ["features"]
    assert {"features.28": [14, 14], "features": [7, 7]}.items() <= {r["name"]: r["grid"] for r in rows}.items()
    assert "classifier.6" not in {r["name"] for r in rows}  # not spatial: listed with --all only
    every = runner.invoke(app, ["layers", "--arch", "vgg16", "--all", "--format", "jsonl"])
    assert any(json.loads(line)["name"] == "classifier.6" and json.loads(line)["grid"] is None for line in every.stdout.splitlines())
    vit = runner.invoke(app, ["layers", "--arch", "timm:vit_tiny_patch16_224", "--format", "jsonl"])
    assert [json.loads(line)["name"] for line in vit.stdout.splitlines() if json.loads(line)["default"]] == ["blocks.11.norm1"]


def test_vgg_gap_geometry_drops_the_last_pooling():
    """The CAM paper's VGGnet-GAP: 14x14 maps at 224 instead of 7x7."""
    plain, gap = build_backbone("vgg11", "none"), build_backbone("vgg11_gap", "none")
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert plain.features(x).shape[-2:] == (7, 7) and gap.features(x).shape[-2:] == (14, 14)
    assert gap.stride == 16 and gap.head is None and "train" in gap.head_problem


def test_hostile_review_findings_stay_fixed(tmp_path, sample_run):
    """What a hostile review found: each case once."""
    import shutil

    import timm

    from camcli.data import read_class_names
    from camcli.factory import list_layers

    runner = CliRunner()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\fb\nc\n")  # a form feed is not a line break
    assert read_class_names(labels) == ["a\fb", "c"]
    labels.write_text("tabby\nespresso\nrocket\n")
    torch.manual_seed(0)
    timm_weights = tmp_path / "timm_r18.pth"
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), timm_weights)
    row = json.loads(runner.invoke(app, ["predict", str(IMAGE), "--arch", "timm:resnet18", "--weights", str(timm_weights),
                                         "--classes", str(labels), "--format", "json", "--backend", "torch"]).stdout)[0]
    assert {p["label"] for p in row["predictions"]} == {"tabby", "espresso", "rocket"}  # a GAP + linear timm head keeps the names

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    refused = runner.invoke(app, ["predict", str(IMAGE), "--arch", "resnet18", "--weights", str(empty), "--classes", str(labels)])
    assert refused.exit_code == 2 and "not a loadable --weights state dict" in refused.stderr and "weights_only False" not in refused.stderr
    assert refused.stderr.count("\n") == 1

    vit = build_classifier("timm:vit_tiny_patch16_224", "none")
    model = GradModel(vit, [f"c{i}" for i in range(1000)], Preprocess(224, (0.5,) * 3, (0.5,) * 3, "squash"), device="cpu")
    with pytest.raises(CamcliError, match="takes 224x224 inputs only: leave out `cam_sizes`"):
        model.forward([np.zeros((3, 320, 320), np.float32)])

    swin = {r["name"]: r["grid"] for r in list_layers("swin_t")}
    assert swin["features.0.0"] == [56, 56] and swin["norm"] == [7, 7]  # an NCHW conv inside an NHWC model
    assert list_layers("resnet18", is_checkpoint=False) and "avgpool" not in {r["name"] for r in list_layers("resnet18") if r["grid"]}
    with pytest.raises(CamcliError, match="1x1 map"):
        GradModel(build_classifier("resnet18", "none"), [f"c{i}" for i in range(1000)], Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"),
                  layer="avgpool", device="cpu").prepare()

    for extra, message in ((["--layer", " "], "--layer needs a layer name"),
                           (["--checkpoint", str(sample_run / "best.safetensors"), "--weights", str(timm_weights)],
                            "a checkpoint holds its own weights")):
        mixed = runner.invoke(app, ["predict", str(IMAGE), *extra])
        assert mixed.exit_code == 2 and message in mixed.stderr

    plain = tmp_path / "ck"  # a checkpoint without a suffix
    shutil.copy(sample_run / "best.safetensors", plain)
    listed = runner.invoke(app, ["layers", "--checkpoint", str(plain), "--format", "jsonl"])
    assert listed.exit_code == 0 and any(json.loads(line)["name"] == "features" for line in listed.stdout.splitlines())


def _vgg16_at_64(n: int):
    """A random VGG16 (its own head), its copy for the oracle, camcli's model, n inputs and their forward pass."""
    torch.manual_seed(0)
    classifier = build_classifier("vgg16", "none")
    oracle_model = copy.deepcopy(classifier.model).requires_grad_(True)
    ours = GradModel(classifier, [f"c{i}" for i in range(1000)], Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"), device="cpu")
    x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return oracle_model, ours, x, ours.forward(list(x.numpy()))


def test_scorecam_equals_pytorch_grad_cams_on_a_head_that_is_not_gap_linear():
    """VGG16's own head (flatten + three linear layers): Score-CAM at its last feature map, the masked
    inputs scored by the whole classifier; constant channels (all-zero masks) scored once."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    oracle_model, ours, x, (logits, graph, sizes) = _vgg16_at_64(1)
    acts = ours._grid(graph.groups[0].leaf.detach(), (64, 64)).numpy()[0]
    assert (acts.max(axis=(1, 2)) == acts.min(axis=(1, 2))).any()  # the shortcut is exercised
    with pgc.ScoreCAM(model=oracle_model, target_layers=[oracle_model.features]) as oracle:
        expected = oracle(input_tensor=x, targets=[ClassifierOutputTarget(7)])
    maps = ours._maps(graph, sizes, np.array([[7]]), "scorecam", list(x.numpy()))
    assert expected[0].max() > 0.99
    np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0][0]), (64, 64))), expected[0], atol=1e-4)
    with pytest.raises(CamcliError, match="ablationcam runs on a GAP"):
        ours.resolve_method("ablationcam")


def test_finercam_equals_pytorch_grad_cams_on_a_head_that_is_not_gap_linear():
    from test_methods import finer_oracle

    oracle_model, ours, x, (logits, graph, sizes) = _vgg16_at_64(2)
    classes = [7, int(logits[1].argmax())]
    expected = finer_oracle(oracle_model, oracle_model.features, x, classes)
    for i, maps in enumerate(ours._maps(graph, sizes, np.array([[c] for c in classes]), "finercam")):
        assert expected[i].max() > 0.99
        np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0]), (64, 64))), expected[i], atol=1e-4)
