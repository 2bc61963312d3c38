"""Overlays: exact image size, alignment on non-square images, blending."""

import cv2
import numpy as np
import pytest

from camcli.errors import CamcliError
from camcli.render import draw_caption, render_overlay, write_image


def test_overlay_has_the_image_size_and_the_heat_where_the_map_is_hot():
    image = np.full((90, 200, 3), 128, np.uint8)  # non-square
    cam = np.zeros((3, 5), np.float32)
    cam[2, 4] = 5.0  # bottom-right cell
    out = render_overlay(image, cam, alpha=1.0, colormap="jet")
    assert out.shape == image.shape and out.dtype == np.uint8
    # jet: the maximum is dark red (128, 0, 0), the minimum dark blue (0, 0, 128), RGB order
    assert out[85, 195, 0] >= 120 and out[85, 195, 1] < 20 and out[85, 195, 2] < 20
    assert out[5, 5, 2] >= 120 and out[5, 5, 0] < 20 and out[5, 5, 1] < 20


def test_alpha_zero_returns_the_image_and_constant_map_is_finite():
    image = np.random.default_rng(0).integers(0, 256, (17, 31, 3), dtype=np.uint8)
    assert np.array_equal(render_overlay(image, np.ones((4, 4)), alpha=0.0), image)
    assert render_overlay(image, np.full((4, 4), 3.0), alpha=0.5).shape == image.shape


def test_every_opencv_colormap_is_offered():
    from camcli.defaults import COLORMAPS

    names = {n.removeprefix("COLORMAP_").lower() for n in dir(cv2) if n.startswith("COLORMAP_")}
    assert set(COLORMAPS) == names  # the --colormap choices of the parser, without importing OpenCV at start-up


def test_bad_arguments():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(CamcliError, match="unknown colormap"):
        render_overlay(image, np.ones((2, 2)), colormap="rainbowz")
    with pytest.raises(CamcliError, match="alpha"):
        render_overlay(image, np.ones((2, 2)), alpha=2)


def test_caption_changes_only_the_corner_and_write_keeps_rgb(tmp_path):
    image = np.full((100, 300, 3), (10, 200, 30), np.uint8)
    captioned = draw_caption(image, "cat 87.5%")
    assert not np.array_equal(captioned[:15, :40], image[:15, :40])
    assert np.array_equal(captioned[60:], image[60:])
    path = tmp_path / "o.png"
    write_image(path, image)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image)


def test_curves_past_the_tenth_keep_their_own_look_dashed_where_the_colours_come_again():
    from camcli.render import plot_curves

    xs = [0.0, 1.0]
    curves = {f"m{i}": [0.9, 0.9] for i in range(10)} | {"eleventh": [0.5, 0.5]}
    solo = plot_curves(xs, {"first": [0.5, 0.5]}, "t", "x", "y")
    many = plot_curves(xs, curves, "t", "x", "y")
    blue = np.array([31, 119, 180])  # the first colour, which the eleventh curve shares
    row = 56 + round(0.5 * (480 - 56 - 55))  # y = 0.5 in the plot's pixels
    span = slice(70 + 20, 880 - 220 - 20)  # inside the plot, away from its frame

    def covered(img: np.ndarray) -> float:
        return float((np.abs(img[row - 1 : row + 2, span].astype(int) - blue).sum(axis=2) < 60).any(axis=0).mean())

    assert covered(solo) > 0.95  # the first curve is a solid line
    assert 0.4 < covered(many) < 0.9  # the eleventh, in the same colour, is dashed (8 px drawn, 6 left out, antialiased ends)
