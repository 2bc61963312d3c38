"""The inference engine: mixed shapes in one batch give each image its own results."""

import numpy as np
import pytest
import torch
from torch import nn

from camcli.backbones import build_backbone
from camcli.data import Preprocess
from camcli.engine import CamModel
from conftest import SAMPLE_DATA


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", "none")
    head = nn.Linear(backbone.num_features, 3)
    pre = Preprocess(64, backbone.mean, backbone.std, "keep-aspect", backbone.stride)
    return CamModel("resnet18", backbone.features, head, ["a", "b", "c"], pre, device="cpu")


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(60, 90, 3), (80, 40, 3), (64, 64, 3), (61, 92, 3)]]


def test_keep_aspect_sizes_follow_the_shorter_side_and_the_stride():
    pre = Preprocess(224, (0.5,) * 3, (0.5,) * 3, "keep-aspect", 32)
    assert pre.output_size(300, 451) == (224, 352)  # 224 * 451 / 300 = 336.7 -> 352 (nearest multiple of 32)
    assert pre.output_size(640, 427) == (320, 224)  # 335.7 -> 320
    assert pre.output_size(10, 1000) == (224, 896)  # aspect capped at 4
    assert Preprocess(224, (0.5,) * 3, (0.5,) * 3, "squash", 32).output_size(300, 451) == (224, 224)


def test_mixed_shapes_in_one_batch_equal_each_image_run_alone(model):
    images = _images()
    together = list(model.batches(images, batch_size=4))
    assert len(together) == 1
    batch = together[0]
    assert len({tuple(s) for s in batch.sizes}) == 3  # three distinct feature shapes
    classes = np.array([[0, 2]] * 4)
    maps_together = model.batch_maps(batch, classes)
    for i, image in enumerate(images):
        (alone,) = list(model.batches([image], batch_size=1))
        np.testing.assert_allclose(batch.logits[i], alone.logits[0], rtol=1e-5, atol=1e-5)
        (maps_alone,) = model.batch_maps(alone, classes[:1])
        assert maps_together[i].shape == maps_alone.shape == (2, *alone.sizes[0])
        np.testing.assert_allclose(maps_together[i], maps_alone, rtol=1e-5, atol=1e-5)
        # the identity holds on the valid region: mean of the map + bias = logit
        np.testing.assert_allclose(
            maps_alone.mean(axis=(1, 2)) + model.bias[[0, 2]], alone.logits[0, [0, 2]], rtol=1e-4, atol=1e-4
        )


def test_cam_sizes_give_maps_at_that_resolution_and_fuse_several(model):
    image = _images()[0]  # 60 x 90: keep-aspect 64 -> 64 x 96 input, 2 x 3 map
    (batch,) = list(model.batches([image], keep_images=True))
    classes = np.array([[1]])
    assert model.batch_maps(batch, classes)[0].shape == (1, 2, 3)
    (big,) = model.batch_maps(batch, classes, cam_sizes=[128])  # 128 x 192 -> 4 x 6
    assert big.shape == (1, 4, 6)
    direct = model.maps([np.ascontiguousarray(image)], classes=[1])
    assert direct.shape == (1, 1, 2, 3)
    (fused,) = model.batch_maps(batch, classes, cam_sizes=[64, 128])
    assert fused.shape == (1, 4, 6) and 0.0 <= fused.min() and fused.max() <= 1.0


def test_maps_of_all_classes(model):
    maps = model.maps([_images()[2]])
    assert maps.shape == (1, 3, 2, 2) and maps.dtype == np.float32


def test_the_api_shows_a_tqdm_bar_when_asked(sample_run, capsys):
    from camcli.factory import load
    from conftest import SAMPLE_DATA

    model = load(sample_run / "best.safetensors", device="cpu")
    images = sorted((SAMPLE_DATA / "val" / "cat").glob("*.jpg"))[:3]
    model.predict(images, batch_size=2)
    assert capsys.readouterr().err == ""
    model.predict(images, batch_size=2, progress=True)
    shown = capsys.readouterr().err
    assert "predict" in shown and "3/3" in shown


def test_cam_scales_fuse_as_the_mean_of_normalized_upsampled_maps_and_one_cam_size_is_a_run_at_that_size(sample_run):
    import cv2

    from camcli.factory import load

    images = sorted((SAMPLE_DATA / "val" / "cat").glob("*.jpg"))[:2]
    ckpt = sample_run / "best.safetensors"
    model = load(str(ckpt), device="cpu", backend="torch")
    batch = next(model.batches(images, batch_size=2, keep_images=True))
    classes = batch.logits.argmax(axis=1)[:, None]
    fused = model.batch_maps(batch, classes, cam_sizes=[128, 224])
    single = model.batch_maps(batch, classes, cam_sizes=[128])

    per_size = {}
    for size in (128, 224):  # each size run directly, as its own model
        direct = load(str(ckpt), device="cpu", backend="torch", img_size=size)
        b = next(direct.batches(images, batch_size=2, keep_images=True))
        per_size[size] = direct.batch_maps(b, classes)
    for i in range(2):
        np.testing.assert_allclose(single[i], per_size[128][i], rtol=1e-4, atol=1e-5)
        big = per_size[224][i][0]
        h, w = big.shape
        expected = np.mean([cv2.resize((m[0] - m[0].min()) / (m[0].max() - m[0].min()), (w, h), interpolation=cv2.INTER_LINEAR)
                            for m in (per_size[128][i], per_size[224][i])], axis=0)
        assert fused[i].shape == (1, h, w)
        np.testing.assert_allclose(fused[i][0], expected, atol=1e-4)
