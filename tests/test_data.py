"""Finding images, decoding, the one preprocessing, and ImageFolder splits."""

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from camcli.data import MANIFEST_NAME, Preprocess, find_images, load_image_folder, read_image
from camcli.errors import CamcliError
from conftest import make_image_folder, write_image


def test_find_images_walks_folders_and_skips_dot_files_and_outputs(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    root = tmp_path / "pics"
    for rel in ["a.jpg", "b.PNG", "sub/c.jpeg", ".hidden.jpg", ".dotdir/d.jpg", "notes.txt", "mine_cam.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, rgb) if rel.endswith(("jpg", "PNG", "jpeg")) else (root / rel).write_text("x")
    (root / MANIFEST_NAME).write_text(json.dumps({"name": "mine_cam.jpg", "size": 1, "mtime_ns": 1}) + "\n{torn\n"
                                      '{"name": "x", "size": 1e400, "mtime_ns": Infinity}\n')  # tampered: skipped
    found = find_images([root])
    assert [str(i.relative) for i in found] == ["pics/a.jpg", "pics/b.PNG", "pics/sub/c.jpeg"]


def test_find_images_reads_paths_from_stdin_and_skips_a_folder(tmp_path):
    a = write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "out" / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert [i.path for i in find_images(["-"], stdin=io.StringIO(f"{a}\n\n"))] == [a]
    assert [i.path.name for i in find_images([tmp_path], skip=[tmp_path / "out"])] == ["a.png"]


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "input not found"),
    (lambda p: p, "no images found"),
])
def test_find_images_errors(tmp_path, make, message):
    with pytest.raises(CamcliError, match=message):
        find_images([make(tmp_path)])


def test_read_image_applies_exif_orientation_and_returns_rgb(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    rgb = read_image(path)
    assert rgb.shape == (40, 20, 3)
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 2] < 60  # red ends up on top, in RGB order
    assert rgb[-3, 10, 0] < 60


def test_read_image_rejects_non_image_bytes(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(CamcliError, match="cannot decode"):
        read_image(path)


def test_preprocess_matches_a_manual_computation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(24, 50, 3), dtype=np.uint8)  # one side shrinks: INTER_AREA
    pre = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    out = pre(rgb)
    resized = cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    expected = (resized - np.array([0.5, 0.4, 0.3], np.float32)) / np.array([0.2, 0.25, 0.5], np.float32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out.transpose(1, 2, 0), expected, rtol=1e-5, atol=1e-5)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    small = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)  # both sides grow: INTER_LINEAR
    enlarged = cv2.resize(small, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    np.testing.assert_allclose(pre(small)[0], (enlarged[:, :, 0] - 0.5) / 0.2, rtol=1e-5, atol=1e-5)


def test_train_val_layout(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=3)
    make_image_folder(tmp_path / "d" / "val", per_class=2)
    train, val, classes = load_image_folder(tmp_path / "d", 0.2, 0)
    assert classes == ["blue", "red"] and len(train) == 6 and len(val) == 4
    assert all("/val/" in str(p) for p, _ in val)


def test_flat_split_is_stratified_seeded_and_disjoint(tiny_folder):
    train, val, classes = load_image_folder(tiny_folder, 0.34, seed=1)
    assert sorted(y for _, y in val) == [0, 0, 1, 1]
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert load_image_folder(tiny_folder, 0.34, seed=1) == (train, val, classes)
    assert any(load_image_folder(tiny_folder, 0.34, seed=s)[1] != val for s in range(2, 8))


@pytest.mark.parametrize("setup,message", [
    (lambda p: make_image_folder(p, classes=("red",)), "at least two class folders"),
    (lambda p: (make_image_folder(p), (p / "empty").mkdir()), "holds no images"),
])
def test_bad_datasets(tmp_path, setup, message):
    setup(tmp_path / "d")
    with pytest.raises(CamcliError, match=message):
        load_image_folder(tmp_path / "d", 0.2, 0)


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    import camcli.data as data_module

    path = write_image(tmp_path / "big.png", np.zeros((300, 400, 3), np.uint8))
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(data_module.cv2, "imdecode", lambda *a: (decoded.append(1), real(*a))[1])
    with pytest.raises(CamcliError, match=r"400x300 = 120,000 pixels, over the limit of 100,000 \(max_pixels\)"):
        read_image(path, max_pixels=100_000)
    assert decoded == []
    assert read_image(path, max_pixels=120_000).shape == (300, 400, 3)


def _save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.mark.parametrize("name,make,expected", [
    # transparent red over white: the hidden color must not show
    ("rgba.png", lambda p: _save(p, np.dstack([np.full((4, 6, 3), (255, 0, 0), np.uint8), np.zeros((4, 6), np.uint8)])),
     (255, 255, 255)),
    ("half.png", lambda p: _save(p, np.dstack([np.zeros((4, 6, 3), np.uint8), np.full((4, 6), 128, np.uint8)])),
     (127, 127, 127)),
    ("gray_alpha.png", lambda p: _save(p, np.dstack([np.zeros((4, 6), np.uint8), np.full((4, 6), 255, np.uint8)]), "LA"),
     (0, 0, 0)),
    ("palette.png", lambda p: _palette(p), (255, 255, 255)),
    ("gray16.png", lambda p: cv2.imwrite(str(p), np.full((4, 6), 65535, np.uint16)) and p, (255, 255, 255)),
    ("cmyk.jpg", lambda p: Image.fromarray(np.full((4, 6, 3), (200, 30, 30), np.uint8)).convert("CMYK").save(p) or p,
     (200, 30, 30)),
])
def test_odd_formats_decode_to_the_colors_a_viewer_shows(tmp_path, name, make, expected):
    rgb = read_image(make(tmp_path / name))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[2, 3], expected, atol=8)


def _palette(path):
    image = Image.fromarray(np.zeros((4, 6), np.uint8), "P")
    image.putpalette([255, 0, 0] * 256)
    image.save(path, transparency=0)
    return path


def test_exif_orientation_is_applied_to_images_with_alpha(tmp_path):
    array = np.zeros((20, 40, 4), np.uint8)
    array[..., 3] = 255
    array[:, :20, 0] = 255  # left half red
    image = Image.fromarray(array, "RGBA")
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "turned.png"
    image.save(path, exif=exif)
    rgb = read_image(path)
    assert rgb.shape == (40, 20, 3)
    assert rgb[2, 10, 0] > 200 and rgb[-3, 10, 0] < 60  # red on top, as with JPEGs


def test_random_and_mutated_bytes_give_a_clean_report(tmp_path):
    rng = np.random.default_rng(0)
    good = (tmp_path / "g.png")
    write_image(good, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    seeds = [good.read_bytes(), cv2.imencode(".jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))[1].tobytes()]
    for i in range(200):
        data = bytearray(seeds[i % 2])
        if i % 3 == 0:
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes())
        else:
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            data = data[: int(rng.integers(1, len(data) + 1))]
        path = tmp_path / f"f{i}.png"
        path.write_bytes(bytes(data))
        try:
            rgb = read_image(path)
        except CamcliError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
