"""The CAM math against independent computations."""

import numpy as np
import pytest
import torch

from camcli.cam import class_maps, normalize_maps, pooled_logits, upsample_to


@pytest.fixture
def features_and_head():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 8, 5, 7, generator=g)
    weight = torch.randn(4, 8, generator=g)
    bias = torch.randn(4, generator=g)
    return features, weight, bias


def test_class_maps_equal_explicit_weighted_sum(features_and_head):
    features, weight, _ = features_and_head
    f, w = features.double().numpy(), weight.double().numpy()
    expected = np.zeros((3, 4, 5, 7))
    for n in range(3):
        for c in range(4):
            for k in range(8):
                expected[n, c] += w[c, k] * f[n, k]
    np.testing.assert_allclose(class_maps(features, weight).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mean_of_map_plus_bias_is_the_logit(features_and_head):
    features, weight, bias = features_and_head
    maps = class_maps(features, weight)
    via_maps = maps.mean(dim=(2, 3)) + bias
    via_pool = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1) @ weight.T + bias
    torch.testing.assert_close(via_maps, via_pool, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled_logits(features, weight, bias), via_pool, rtol=1e-5, atol=1e-5)


def test_chosen_classes_select_the_same_maps(features_and_head):
    features, weight, _ = features_and_head
    classes = torch.tensor([[2], [0], [3]])
    chosen = class_maps(features, weight, classes)
    full = class_maps(features, weight)
    assert chosen.shape == (3, 1, 5, 7)
    for n, c in enumerate([2, 0, 3]):
        torch.testing.assert_close(chosen[n, 0], full[n, c])


def test_class_maps_rejects_non_4d_features():
    with pytest.raises(ValueError, match="features"):
        class_maps(torch.zeros(2, 8), torch.zeros(3, 8))


def test_normalize_maps_range_and_constant_map():
    maps = torch.stack([torch.arange(12.0).view(3, 4) - 5, torch.full((3, 4), 7.0)])
    out = normalize_maps(maps)
    assert out.dtype == torch.float32
    assert float(out[0].min()) == 0.0 and float(out[0].max()) == 1.0
    torch.testing.assert_close(out[0], (maps[0] + 5) / 11)
    assert torch.equal(out[1], torch.zeros(3, 4))
    assert not torch.isnan(out).any()


def test_upsample_keeps_a_hot_cell_over_its_own_pixels_on_a_non_square_image():
    h, w, height, width = 4, 6, 120, 300
    for i, j in [(0, 0), (3, 5), (1, 4)]:
        grid = torch.zeros(h, w)
        grid[i, j] = 1.0
        up = upsample_to(grid, (height, width))
        assert up.shape == (height, width)
        y, x = np.unravel_index(int(up.argmax()), up.shape)
        assert i * height / h <= y < (i + 1) * height / h
        assert j * width / w <= x < (j + 1) * width / w


def test_upsample_batch_shape():
    assert upsample_to(torch.rand(2, 3, 7, 7), (50, 80)).shape == (2, 3, 50, 80)


def test_array_and_tensor_upsampling_agree():
    grid = torch.rand(5, 7, generator=torch.Generator().manual_seed(0))
    for size in [(37, 91), (200, 120), (3, 4)]:
        np.testing.assert_allclose(upsample_to(grid.numpy(), size), upsample_to(grid, size).numpy(), atol=1e-5)


def test_heatmap_normalizes_then_upsamples():
    from camcli.cam import heatmap

    grid = torch.arange(6.0).view(2, 3) * 3 - 4
    out = heatmap(grid.numpy(), (20, 30))
    assert out.shape == (20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, upsample_to(normalize_maps(upsample_to(grid, (20, 30))), (20, 30)).numpy(), atol=1e-5)
