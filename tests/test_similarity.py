"""The similarity measures of compare and evaluate --sanity against their references: SciPy's
spearmanr and pearsonr, scikit-image's structural_similarity and hog (all to 1e-6)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from camcli import similarity


def smooth_maps(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 7x7 maps upsampled to ``shape``, as camcli compares them (float64)."""
    rng = np.random.default_rng(seed)
    return tuple(cv2.resize(rng.random((7, 7)), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for _ in range(2))


def test_spearman_equals_scipys_with_ties_and_constant_maps():
    rng = np.random.default_rng(0)
    for shape in ((7, 7), (40, 56), (3, 1000)):
        a = rng.standard_normal(shape).astype(np.float32)
        b = (a + rng.standard_normal(shape)).astype(np.float32)
        a[a < -0.5] = -0.5  # ties, as ReLU'd maps have
        np.testing.assert_allclose(similarity.spearman(a, b), spearmanr(a.ravel(), b.ravel()).statistic, rtol=0, atol=1e-6)
        np.testing.assert_allclose(similarity.average_ranks(a.ravel()), rankdata(a.ravel()))
    flat = np.zeros((7, 7))
    assert similarity.spearman(flat, flat) == 1.0 and similarity.spearman(flat, rng.random((7, 7))) == 0.0


@pytest.mark.parametrize("shape", [(224, 224), (50, 77), (24, 24), (31, 200)])
def test_ssim_equals_scikit_images(shape):
    a, b = smooth_maps(shape, 1)
    for x, y in ((a, b), (a, a), (a, 1 - a), (a, np.zeros(shape)), (np.full(shape, 0.3), b)):
        np.testing.assert_allclose(similarity.ssim(x, y), structural_similarity(x, y, data_range=1.0), rtol=0, atol=1e-6)
    assert similarity.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        similarity.ssim(np.zeros((6, 30)), np.zeros((6, 30)))


@pytest.mark.parametrize("shape", [(224, 224), (50, 77), (24, 24), (100, 33)])
def test_hog_and_its_pearson_equal_scikit_images_and_scipys(shape):
    a, b = smooth_maps(shape, 2)
    a[: shape[0] // 3] = 0  # flat regions: orientation 0 and magnitude 0
    ours_a, ours_b = similarity.hog(a), similarity.hog(b)
    theirs_a, theirs_b = hog(a), hog(b)
    assert ours_a.shape == theirs_a.shape
    # scikit-image sums each cell in float32: the descriptors agree to its rounding, their correlation to 1e-6
    np.testing.assert_allclose(ours_a, theirs_a, rtol=0, atol=5e-6)
    np.testing.assert_allclose(similarity.pearson(ours_a, ours_b), pearsonr(theirs_a, theirs_b).statistic, rtol=0, atol=1e-6)
    np.testing.assert_allclose(similarity.pearson(a, b), pearsonr(a.ravel(), b.ravel()).statistic, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        similarity.hog(np.zeros((23, 100)))
