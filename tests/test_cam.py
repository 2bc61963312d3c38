"""The CAM math against independent computations (explicit loops, PyTorch's pooling and interpolation)."""

import numpy as np
import pytest
import torch

from camcli.cam import class_maps, global_average_pool, heatmap, normalize_maps, pooled_logits, softmax, upsample_to


@pytest.fixture
def features_and_head():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3, 8, 5, 7), dtype=np.float32), rng.standard_normal((4, 8), dtype=np.float32),
            rng.standard_normal(4, dtype=np.float32))


def test_class_maps_equal_explicit_weighted_sum(features_and_head):
    features, weight, _ = features_and_head
    f, w = features.astype(np.float64), weight.astype(np.float64)
    expected = np.zeros((3, 4, 5, 7))
    for n in range(3):
        for c in range(4):
            for k in range(8):
                expected[n, c] += w[c, k] * f[n, k]
    np.testing.assert_allclose(class_maps(features, weight), expected, rtol=1e-5, atol=1e-5)


def test_mean_of_map_plus_bias_is_the_logit(features_and_head):
    features, weight, bias = features_and_head
    via_maps = class_maps(features, weight).mean(axis=(2, 3)) + bias
    t = torch.from_numpy(features)
    via_torch = (torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1) @ torch.from_numpy(weight).T + torch.from_numpy(bias)).numpy()
    np.testing.assert_allclose(via_maps, via_torch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled_logits(features, weight, bias), via_torch, rtol=1e-5, atol=1e-5)


def test_pooling_over_valid_regions_equals_pooling_each_image_alone(features_and_head):
    features, _, _ = features_and_head
    packed = np.zeros_like(features)
    sizes = [(5, 7), (3, 4), (2, 7)]
    for i, (h, w) in enumerate(sizes):
        packed[i, :, :h, :w] = features[i, :, :h, :w]
    pooled = global_average_pool(packed, sizes)
    for i, (h, w) in enumerate(sizes):
        np.testing.assert_allclose(pooled[i], features[i, :, :h, :w].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_chosen_classes_select_the_same_maps(features_and_head):
    features, weight, _ = features_and_head
    chosen = class_maps(features, weight, np.array([[2], [0], [3]]))
    full = class_maps(features, weight)
    assert chosen.shape == (3, 1, 5, 7)
    for n, c in enumerate([2, 0, 3]):
        np.testing.assert_allclose(chosen[n, 0], full[n, c], rtol=1e-5, atol=1e-6)  # float32: BLAS sums in either order


def test_class_maps_rejects_non_4d_features():
    with pytest.raises(ValueError, match="features"):
        class_maps(np.zeros((2, 8)), np.zeros((3, 8)))


def test_softmax_matches_torch_and_survives_large_logits():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], np.float32)
    np.testing.assert_allclose(softmax(logits), torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy(), rtol=1e-12)
    assert np.isfinite(softmax(logits)).all()


def test_normalize_maps_range_and_constant_map():
    maps = np.stack([np.arange(12.0).reshape(3, 4) - 5, np.full((3, 4), 7.0)]).astype(np.float32)
    out = normalize_maps(maps)
    assert out.dtype == np.float32
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    np.testing.assert_allclose(out[0], (maps[0] + 5) / 11, rtol=1e-6)
    assert (out[1] == 0).all() and not np.isnan(out).any()


def test_upsample_keeps_a_hot_cell_over_its_own_pixels_on_a_non_square_image():
    h, w, height, width = 4, 6, 120, 300
    for i, j in [(0, 0), (3, 5), (1, 4)]:
        grid = np.zeros((h, w), np.float32)
        grid[i, j] = 1.0
        up = upsample_to(grid, (height, width))
        assert up.shape == (height, width)
        y, x = np.unravel_index(int(up.argmax()), up.shape)
        assert i * height / h <= y < (i + 1) * height / h
        assert j * width / w <= x < (j + 1) * width / w


def test_upsampling_equals_pytorch_bilinear_without_corner_alignment():
    grid = np.random.default_rng(0).random((2, 3, 5, 7), dtype=np.float32)
    for size in [(37, 91), (200, 120)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(grid), size=size, mode="bilinear", align_corners=False)
        out = upsample_to(grid, size)
        assert out.shape == (2, 3, *size)
        np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def _bilinear_by_hand(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation with pixel centers aligned and edges clamped, written out."""
    h, w = grid.shape
    out = np.zeros(size, np.float64)
    for y in range(size[0]):
        for x in range(size[1]):
            sy = min(max((y + 0.5) * h / size[0] - 0.5, 0), h - 1)
            sx = min(max((x + 0.5) * w / size[1] - 0.5, 0), w - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x1]
                         + fy * (1 - fx) * grid[y1, x0] + fy * fx * grid[y1, x1])
    return out


def test_heatmap_normalizes_at_feature_resolution_then_upsamples():
    # An interior peak: upsampling first would blur the peak below the maximum and the two orders differ
    # (by 0.026 here). camcli normalizes first, as the CAM tutorial's returnCAM does (min-max at 7x7,
    # then cv2.resize), so a box threshold is a fraction of the map's own maximum at feature resolution.
    grid = np.array([[0, 1, 0, 2], [1, 9, 3, 0], [0, 2, 1, -3]], np.float32)
    out = heatmap(grid, (21, 26))
    assert out.shape == (21, 26) and out.dtype == np.float32
    expected = _bilinear_by_hand((grid - grid.min()) / (grid.max() - grid.min()), (21, 26))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    other_order = _bilinear_by_hand(grid, (21, 26))
    other_order = (other_order - other_order.min()) / (other_order.max() - other_order.min())
    assert np.abs(other_order - expected).max() > 0.02  # the orders really differ on this map (by 0.026)


def test_display_maps_scales_as_documented():
    from camcli.cam import display_maps

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 5, 6)).astype(np.float32)
    maps[1] *= 0.1  # a weak class
    maps[2] = -np.abs(maps[2]) - 0.5  # no positive evidence at all
    shared, relu, minmax = (display_maps(maps, m) for m in ("shared", "relu", "minmax"))
    top = np.maximum(maps, 0).max()
    np.testing.assert_allclose(shared, np.maximum(maps, 0) / top, rtol=1e-6)
    assert shared[1].max() < 0.2 < shared[0].max() == 1.0 and not shared[2].any()
    for j in range(2):
        np.testing.assert_allclose(relu[j], np.maximum(maps[j], 0) / np.maximum(maps[j], 0).max(), rtol=1e-6)
    assert not relu[2].any() and minmax[2].max() == 1.0  # min-max paints the least negative region of a class with no evidence
    for j in range(3):
        np.testing.assert_allclose(minmax[j], (maps[j] - maps[j].min()) / (maps[j].max() - maps[j].min()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(display_maps(maps[:1], "shared"), display_maps(maps[:1], "relu"))
