"""Property-based tests of the CAM math (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from camcli.cam import class_maps, heatmap, normalize_maps, pooled_logits

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def features_and_weights(draw):
    n, c, h, w, k = (draw(st.integers(1, 4)) for _ in range(5))
    features = draw(arrays(np.float32, (n, c, h, w), elements=finite))
    weight = draw(arrays(np.float32, (k, c), elements=finite))
    return features, weight


@settings(max_examples=60, deadline=None, derandomize=True)
@given(features_and_weights(), st.floats(0.01, 100.0))
def test_normalized_maps_are_finite_in_range_same_shape_and_scale_invariant(fw, scale):
    features, weight = (a.astype(np.float64) for a in fw)  # float64, so rounding cannot create or hide a range
    maps = class_maps(features, weight)
    norm = normalize_maps(maps)
    assert norm.shape == maps.shape
    assert np.isfinite(norm).all() and norm.min() >= 0 and norm.max() <= 1
    scaled = normalize_maps(class_maps(features, weight * scale))
    assert np.allclose(scaled, norm, atol=1e-3)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(features_and_weights())
def test_mean_of_each_map_plus_bias_is_its_logit(fw):
    features, weight = (a.astype(np.float64) for a in fw)
    bias = np.linspace(-1, 1, weight.shape[0])
    maps = class_maps(features, weight)
    expected = pooled_logits(features, weight, bias)
    assert np.allclose(maps.mean(axis=(2, 3)) + bias, expected, rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=finite),
       st.integers(1, 50), st.integers(1, 50))
def test_heatmaps_are_finite_in_range_at_the_image_size(cam, height, width):
    heat = heatmap(cam, (height, width))
    assert heat.shape == (height, width) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
