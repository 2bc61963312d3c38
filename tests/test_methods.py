"""Gradient-weighted maps for GAP + linear heads, against pytorch-grad-cam (the oracle) and the CAM theorem."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from camcli.cam import class_maps, normalize_maps, upsample_to
from camcli.data import Preprocess
from camcli.engine import CamModel


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = tvm.resnet18(weights=None, num_classes=5).eval()
    features = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                                   model.layer3, model.layer4)
    ours = CamModel("resnet18", copy.deepcopy(features), model.fc, list("abcde"), Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash"),
                    device="cpu", backend="torch")
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    return model, ours, x


def _our_maps(ours, x, classes, method, smooth=()):
    logits, feats, sizes = ours.forward(list(x.numpy()))
    from camcli.engine import Batch

    batch = Batch(list(range(len(x))), logits, feats, sizes, [None] * len(x), [], list(x.numpy()))
    return ours.batch_maps(batch, np.array([[c] for c in classes]), method=method, smooth=smooth)


def oracle_maps(method: str, model, layer, x, classes, reshape=None, monkeypatch=None, eigen_smooth=False) -> list[np.ndarray]:
    """pytorch-grad-cam's maps of ``method`` (N, H, W in [0, 1]); for the eigen methods, with the
    principal component's sign that camcli's documented rule picks (pytorch-grad-cam leaves it to the SVD):
    both signs are computed and the one whose projection agrees with the channel sum is kept."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils import svd_on_activations
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    oracle_class = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM,
                    "xgradcam": pgc.XGradCAM, "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
                    "gradcamelementwise": pgc.GradCAMElementWise, "fem": pgc.FEM, "kpcacam": pgc.KPCA_CAM}[method]
    module = __import__(oracle_class.__module__, fromlist=["x"])
    original = svd_on_activations.get_2d_projection

    def signed(batch):
        return _agreeing(original(batch), batch)

    if method == "kpcacam":  # scikit-learn's sign (svd_flip) replaced by the same rule
        kernel_projection = module.get_2d_projection_kernel
        monkeypatch.setattr(module, "get_2d_projection_kernel", lambda batch, *a: _agreeing(kernel_projection(batch, *a), batch))
    if method.startswith("eigen") or eigen_smooth:
        import pytorch_grad_cam.base_cam as base

        for patched in {module, base}:
            if hasattr(patched, "get_2d_projection"):
                monkeypatch.setattr(patched, "get_2d_projection", signed)
    with oracle_class(model=model, target_layers=[layer], reshape_transform=reshape) as oracle:
        return oracle(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes], eigen_smooth=eigen_smooth)


def _agreeing(projections: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The sign rule written out: each projection negated where it correlates negatively with the
    centered channel sums; where those sums are zero up to rounding (1e-5 of sqrt(C) times the
    values' norm), negated where its largest-magnitude value is negative."""
    out = np.array(projections)
    for i, values in enumerate(np.nan_to_num(batch)):
        flat = values.reshape(values.shape[0], -1).T.astype(np.float64)
        flat = flat - flat.mean(axis=0)
        sums, p = flat.sum(axis=1), out[i].reshape(-1)
        if np.linalg.norm(sums) > 1e-5 * np.sqrt(flat.shape[1]) * np.linalg.norm(flat) and float(p @ sums) != 0:
            flip = float(p @ sums) < 0
        else:
            flip = p[np.argmax(np.abs(p))] < 0
        if flip:
            out[i] = -out[i]
    return out


ALL_GRADIENT = ["gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "gradcamelementwise", "eigencam", "eigengradcam",
                "fem", "kpcacam"]
CLASS_FREE = {"eigencam", "fem", "kpcacam"}


@pytest.mark.parametrize("method", ALL_GRADIENT)
def test_methods_equal_pytorch_grad_cam_on_a_gap_linear_model(resnet, method, monkeypatch):
    model, ours, x = resnet
    classes = [1, 3]
    expected = oracle_maps(method, model, model.layer4, x, classes, monkeypatch=monkeypatch)  # (N, H, W) in [0, 1]
    for i, maps in enumerate(_our_maps(ours, x, classes, method)):
        ours_at_input = normalize_maps(upsample_to(normalize_maps(maps[0]), (96, 128)))
        assert expected[i].max() > 0.99  # a real map, not an empty one
        np.testing.assert_allclose(ours_at_input, expected[i], atol=1e-4)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_methods_equal_pytorch_grad_cam_on_a_gap_linear_model(resnet, method):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, ours, x = resnet
    x, classes = (x[:1], [3]) if method == "scorecam" else (x, [1, 3])  # Score-CAM: 512 masked inputs per image and class
    oracle_class = {"scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}[method]
    with oracle_class(model=model, target_layers=[model.layer4]) as oracle:
        expected = oracle(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    for i, maps in enumerate(_our_maps(ours, x, classes, method)):
        assert expected[i].max() > 0.99
        np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0]), (96, 128))), expected[i], atol=1e-4)


def test_perturbation_methods_refuse_other_heads_and_run_without_pytorch(sample_run, tmp_path):
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from camcli.cli import app

    image = Path(__file__).resolve().parents[1] / "sample_data" / "val" / "cat" / "cat_00.jpg"
    ckpt = sample_run / "best.safetensors"
    refused = CliRunner().invoke(app, ["predict", str(image), "--checkpoint", str(ckpt), "--layer", "features", "--boxes",
                                       "--method", "ablationcam"])  # a chosen layer: the gradient engine
    assert refused.exit_code == 2 and "runs on a GAP + linear head" in refused.stderr, refused.output
    assert CliRunner().invoke(app, ["predict", str(image), "--checkpoint", str(ckpt)]).exit_code == 0  # the export cached
    code = ("import sys; sys.modules['torch'] = None\n"
            "from camcli.cli import main; sys.argv = ['camcli', *sys.argv[1:]]; main()")
    for method in ("ablationcam", "scorecam"):
        lean = subprocess.run([sys.executable, "-c", code, "predict", str(image), "--checkpoint", str(ckpt), "--boxes", "--method",
                               method, "--format", "jsonl"], capture_output=True, text=True, timeout=300)
        assert lean.returncode == 0, lean.stderr
        row = json.loads(lean.stdout)
        assert row["method"] == method and row["box"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam", "xgradcam"])
def test_eigen_smooth_equals_pytorch_grad_cams(resnet, method, monkeypatch):
    model, ours, x = resnet
    classes = [1, 3]
    expected = oracle_maps(method, model, model.layer4, x, classes, monkeypatch=monkeypatch, eigen_smooth=True)
    plain = _our_maps(ours, x, classes, method)
    for i, maps in enumerate(_our_maps(ours, x, classes, method, smooth=("eigen",))):
        np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0]), (96, 128))), expected[i], atol=1e-4)
        assert np.abs(normalize_maps(maps[0]) - normalize_maps(plain[i][0])).max() > 0.01  # smoothing changed the map


def test_aug_smooth_is_the_mean_of_six_augmented_normalized_maps(resnet):
    _, ours, x = resnet
    expected = [np.zeros_like(m) for m in _our_maps(ours, x, [2, 4], "gradcam")]
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):  # pytorch-grad-cam's tta: HorizontalFlip x Multiply(0.9, 1, 1.1), written out
            augmented = torch.flip(x, dims=[3]) * factor if flip else x * factor
            for i, m in enumerate(_our_maps(ours, augmented, [2, 4], "gradcam")):
                expected[i] += normalize_maps(m[:, :, ::-1] if flip else m) / 6
    for i, maps in enumerate(_our_maps(ours, x, [2, 4], "gradcam", smooth=("aug",))):
        np.testing.assert_allclose(maps, expected[i], atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam"])
def test_the_methods_that_reduce_to_the_relu_of_the_cam_on_a_gap_linear_head(resnet, method):
    """On a GAP + linear head the gradient is W_c / (h w) everywhere: Grad-CAM, HiResCAM and XGrad-CAM
    are the ReLU of the CAM up to one factor; Grad-CAM++, LayerCAM, the element-wise Grad-CAM and
    the eigen methods are not (the manual says so)."""
    _, ours, x = resnet
    logits, feats, sizes = ours.forward(list(x.numpy()))
    cams = class_maps(feats, ours.weight, np.array([[2], [4]]))
    for i, maps in enumerate(_our_maps(ours, x, [2, 4], method)):
        np.testing.assert_allclose(normalize_maps(maps[0]), normalize_maps(np.maximum(cams[i, 0], 0)), atol=1e-5)
    for other in ("gradcam++", "layercam", "gradcamelementwise", "eigencam", "eigengradcam"):
        differs = [np.abs(normalize_maps(m[0]) - normalize_maps(np.maximum(cams[i, 0], 0))).max()
                   for i, m in enumerate(_our_maps(ours, x, [2, 4], other))]
        assert max(differs) > 0.05, other


def test_the_principal_component_sign_rule_and_eigencam_ignore_the_class(resnet):
    from camcli.cam import first_component

    rng = np.random.default_rng(3)
    values = rng.normal(size=(16, 5, 7)).astype(np.float32) + np.linspace(0, 3, 7)[None, None, :]
    projection = first_component(values)
    for flipped in (values, -values):  # a sign the SVD might give either way: the rule fixes it
        p = first_component(flipped)
        centered = flipped.reshape(16, -1).T - flipped.reshape(16, -1).T.mean(axis=0)
        assert float(p.reshape(-1) @ centered.sum(axis=1)) >= 0
    assert np.abs(projection).max() > 0
    _, ours, x = resnet
    a, b = _our_maps(ours, x, [0, 4], "eigencam")
    assert not np.allclose(a, b)  # two images, two maps (the classes asked for make no difference)
    same_image = _our_maps(ours, x[:1].repeat(2, 1, 1, 1), [0, 4], "eigencam")
    np.testing.assert_allclose(same_image[0], same_image[1], atol=1e-6)  # no class: one map per image


def test_gradcam_of_a_gap_linear_head_is_the_relu_of_the_cam(resnet):
    _, ours, x = resnet
    logits, feats, sizes = ours.forward(list(x.numpy()))
    cams = class_maps(feats, ours.weight, np.array([[2], [4]]))
    for i, maps in enumerate(_our_maps(ours, x, [2, 4], "gradcam")):
        np.testing.assert_allclose(normalize_maps(maps[0]), normalize_maps(np.maximum(cams[i, 0], 0)), atol=1e-5)


def test_method_on_the_command_line_and_in_rows(sample_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from camcli.cli import app
    from conftest import SAMPLE_DATA

    runner = CliRunner()
    image = SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"
    ckpt = sample_run / "best.safetensors"
    out = tmp_path / "o"
    result = runner.invoke(app, ["overlay", str(image), "--checkpoint", str(ckpt), "--out-dir", str(out), "--method", "gradcam",
                                 "--save-raw", "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["method"] == "gradcam"
    raw = np.load(next(p for p in row["outputs"] if p.endswith(".npy")))
    cam = runner.invoke(app, ["overlay", str(image), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "c"), "--save-raw",
                              "--format", "json"])
    cam_raw = np.load(next(p for p in json.loads(cam.stdout)[0]["outputs"] if p.endswith(".npy")))
    assert raw.min() >= 0 and np.allclose(normalize_maps(raw), normalize_maps(np.maximum(cam_raw, 0)), atol=1e-5)
    boxes = runner.invoke(app, ["predict", str(image), "--checkpoint", str(ckpt), "--boxes", "--method", "layercam", "--format", "json"])
    assert boxes.exit_code == 0 and json.loads(boxes.stdout)[0]["method"] == "layercam"
    bad = runner.invoke(app, ["overlay", str(image), "--checkpoint", str(ckpt), "--method", "fullgrad"])
    assert bad.exit_code == 2 and "'fullgrad' is not one of 'auto', 'cam', 'gradcam', 'gradcam++', 'layercam'" in bad.stderr


def test_a_classifier_trained_elsewhere_predicts_and_overlays_without_camcli_train(tmp_path):
    """A torchvision resnet18 with a 3-class fc (random init) saved as a state dict, plus a labels file."""
    import json

    from typer.testing import CliRunner

    from camcli.cli import app
    from conftest import SAMPLE_DATA

    torch.manual_seed(0)
    model = tvm.resnet18(weights=None, num_classes=3).eval()
    weights = tmp_path / "mine.pth"
    torch.save(model.state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("tabby\n\nespresso\nrocket\n")
    images = [SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", SAMPLE_DATA / "val" / "coffee" / "coffee_01.jpg"]
    runner = CliRunner()
    result = runner.invoke(app, ["predict", *map(str, images), "--arch", "resnet18", "--weights", str(weights), "--classes",
                                 str(labels), "--backend", "torch", "--format", "json", "--top-k", "3", "--resize", "squash"])
    assert result.exit_code == 0, result.output

    def by_hand(path) -> np.ndarray:  # torchvision's ImageNet preprocessing, written out (not camcli's code)
        import cv2

        bgr = cv2.imread(str(path))
        shrink = bgr.shape[0] > 224 or bgr.shape[1] > 224
        rgb = cv2.cvtColor(cv2.resize(bgr, (224, 224), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR),
                           cv2.COLOR_BGR2RGB).astype(np.float32) / 255
        return ((rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1).astype(np.float32)

    for image, row in zip(images, json.loads(result.stdout)):
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(by_hand(image))[None]).double(), dim=1)[0].numpy()
        got = {p["label"]: p["prob"] for p in row["predictions"]}
        np.testing.assert_allclose([got["tabby"], got["espresso"], got["rocket"]], expected, atol=1e-6)
    out = tmp_path / "o"
    overlay = runner.invoke(app, ["overlay", str(images[0]), "--arch", "resnet18", "--weights", str(weights), "--classes",
                                  str(labels), "--out-dir", str(out), "--method", "gradcam", "--format", "json"])
    assert overlay.exit_code == 0, overlay.output
    assert Path(json.loads(overlay.stdout)[0]["outputs"][0]).is_file()
    labels.write_text("only\ntwo\n")
    wrong = runner.invoke(app, ["predict", str(images[0]), "--arch", "resnet18", "--weights", str(weights), "--classes", str(labels)])
    assert wrong.exit_code == 2 and "size mismatch" in wrong.stderr and "--classes" in wrong.stderr


def _overlay_heat(sample_run, tmp_path, *options) -> tuple[dict, list[np.ndarray], np.ndarray, np.ndarray]:
    """Overlays of the sample cat (as PNG) with ``options``, read back: overlay = (1 - alpha) image +
    alpha colormap(heat), so each overlay's colormap part is recovered per pixel.

    Returns:
        (the row, each overlay's colormap part, jet's color at heat 0, jet's at full heat).
    """
    import json

    import cv2
    from typer.testing import CliRunner

    from camcli import defaults
    from camcli.cli import app

    image = tmp_path / "cat.png"
    cv2.imwrite(str(image), cv2.imread(str(Path(__file__).resolve().parents[1] / "sample_data" / "val" / "cat" / "cat_00.jpg")))
    result = CliRunner().invoke(app, ["overlay", str(image), "--checkpoint", str(sample_run / "best.safetensors"), "--no-caption",
                                      "--out-dir", str(tmp_path / "o"), "--format", "jsonl", *options])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    original = cv2.imread(str(image)).astype(np.float32)
    colored = [(cv2.imread(p).astype(np.float32) - (1 - defaults.ALPHA) * original) / defaults.ALPHA for p in row["outputs"]]
    jet = [cv2.applyColorMap(np.full((1, 1), v, np.uint8), cv2.COLORMAP_JET)[0, 0].astype(np.float32) for v in (0, 255)]
    return row, colored, jet[0], jet[1]


@pytest.mark.parametrize("method", ["cam", *(m for m in ALL_GRADIENT if m not in CLASS_FREE), "ablationcam", "finercam",
                                    "scorecam"])
def test_shared_scale_makes_a_weak_class_look_weak_for_every_method(sample_run, tmp_path, method):
    """The heat read back from the written overlay pixels (Score-CAM on its 128 channels of largest
    variance, so that the test runs in seconds: the scale is applied after the maps are made)."""
    faster = ["--top-channels", "128"] if method == "scorecam" else []
    row, colored, zero_heat, _ = _overlay_heat(sample_run, tmp_path, "--maps", "3", "--method", method, *faster)
    probs = [p["prob"] for p in row["predictions"][:3]]
    assert probs[0] > 0.9 and probs[1] < 0.03  # the sample run's cat: one strong class, weak others
    heat_distance = [float(np.abs(c - zero_heat).max(axis=2).mean()) for c in colored]
    strong, weak = heat_distance[0], max(heat_distance[1:])
    assert strong > 40 and weak < 0.25 * strong, (method, heat_distance)


@pytest.mark.parametrize("normalize", ["relu", "minmax"])
def test_relu_and_minmax_paint_each_map_on_its_own_scale(sample_run, tmp_path, normalize):
    """The other scales, read back from the overlay pixels the same way: a weak class is painted at full heat."""
    _, colored, zero_heat, full_heat = _overlay_heat(sample_run, tmp_path, "--maps", "2", "--normalize", normalize)
    for c in colored:
        hottest = np.abs(c - full_heat).max(axis=2).min()  # some pixel at (nearly) full heat
        coldest = np.abs(c - zero_heat).max(axis=2).min()
        assert hottest < 30, (normalize, hottest)  # the weak class too (it has some positive evidence here)
        assert coldest < 30, (normalize, coldest)  # and some pixel at (nearly) none


def test_smoothing_on_the_command_line_is_recorded_in_rows_and_metrics(sample_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from camcli.cli import app

    image = str(Path(__file__).resolve().parents[1] / "sample_data" / "val" / "cat" / "cat_00.jpg")
    ckpt = str(sample_run / "best.safetensors")
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, ["predict", image, "--checkpoint", ckpt, "--boxes", "--format", "jsonl"]).stdout)
    assert "smooth" not in plain  # the default rows stay as they were
    smoothed = runner.invoke(app, ["predict", image, "--checkpoint", ckpt, "--boxes", "--format", "jsonl", "--aug-smooth",
                                   "--eigen-smooth", "--method", "gradcam"])
    assert smoothed.exit_code == 0, smoothed.output
    row = json.loads(smoothed.stdout)
    assert row["smooth"] == ["aug", "eigen"] and row["method"] == "gradcam" and row["box"]
    evaluated = runner.invoke(app, ["evaluate", str(Path(image).parents[1]), "--checkpoint", ckpt, "--aug-smooth", "--format", "json",
                                    "--out", str(tmp_path / "e")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["settings"]["smooth"] == ["aug"]


def test_the_baselines_know_nothing_of_the_model():
    import cv2

    from camcli.cam import center_map, random_map, sobel_map

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 32, 48)).astype(np.float32), rng.standard_normal((3, 32, 48)).astype(np.float32)
    noise = random_map(x, (4, 6))
    assert noise.shape == (4, 6) and np.array_equal(noise, random_map(x.copy(), (4, 6)))  # seeded by the image
    assert not np.array_equal(noise, random_map(y, (4, 6)))
    gauss = center_map(x, (5, 7))
    assert np.unravel_index(gauss.argmax(), gauss.shape) == (2, 3) and np.allclose(gauss, gauss[::-1, ::-1])
    assert gauss[2, 0] == pytest.approx(np.exp(-0.5 * (3 / (7 / 4)) ** 2), rel=1e-5)  # 3 cells from the centre, sigma 7/4
    step = np.zeros((3, 20, 20), np.float32)
    step[:, :, 10:] = 20 / 255  # a vertical edge between columns 9 and 10 (no 8-bit saturation below)
    edges = sobel_map(step, (2, 2))
    assert edges.shape == (20, 20)  # at input resolution
    assert set(np.flatnonzero(edges[10] > 0)) == {9, 10}
    gray = np.rint(step.mean(axis=0) * 255).astype(np.uint8)  # pytorch-grad-cam's sobel_cam on the same picture, rescaled
    theirs = cv2.addWeighted(cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)), 0.5,
                             cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)), 0.5, 0)
    assert theirs.max() == 40
    np.testing.assert_allclose(edges * 255, theirs, atol=1e-3)


def test_class_free_methods_refuse_a_chosen_class(sample_run, tmp_path):
    from typer.testing import CliRunner

    from camcli.cli import app

    image = Path(__file__).resolve().parents[1] / "sample_data" / "val" / "cat" / "cat_00.jpg"
    ckpt = str(sample_run / "best.safetensors")
    for method in ("eigencam", "fem", "kpcacam", "random"):
        for choice in (["--class", "cat"], ["--maps", "2"]):
            result = CliRunner().invoke(app, ["overlay", str(image), "--checkpoint", ckpt, "--method", method, *choice,
                                              "--out-dir", str(tmp_path / "o")])
            assert result.exit_code == 2
            assert result.stderr.strip().splitlines() == [
                f"error: --method {method} makes one map per image whatever the class (it uses no class score): leave out "
                "--class, --class-index and --maps, or choose a class-specific method (see camcli overlay --help)"]
    for command in (["overlay", "--out-dir", str(tmp_path / "o")], ["predict", "--boxes"]):
        twice = CliRunner().invoke(app, [command[0], str(image), "--checkpoint", ckpt, "--method", "cam", "--method", "gradcam",
                                         *command[1:]])
        assert twice.exit_code == 2 and twice.stderr.strip().splitlines() == [
            f"error: --method takes one method here (evaluate compares several side by side) (see camcli {command[0]} --help)"]
    assert not (tmp_path / "o").exists()
    kept = CliRunner().invoke(app, ["overlay", str(image), "--checkpoint", ckpt, "--method", "sobel", "--out-dir",
                                    str(tmp_path / "o"), "--format", "json"])
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)[0]["method"] == "sobel"


def finer_oracle(model, layer, x, classes) -> list[np.ndarray]:
    """pytorch-grad-cam's FinerCAM (base GradCAM, alpha 1, comparisons 1..3), one image at a time with
    its class as ``target_idx``."""
    from pytorch_grad_cam import FinerCAM

    with FinerCAM(model, [layer]) as oracle:
        return [oracle(input_tensor=x[i : i + 1], target_idx=c)[0] for i, c in enumerate(classes)]


def test_finercam_equals_pytorch_grad_cams_on_a_gap_linear_model(resnet):
    """camcli's exact head gradients of FinerCAM's score (the softmax weights differentiated too)."""
    model, ours, x = resnet
    classes = [1, 3]
    expected = finer_oracle(model, model.layer4, x, classes)
    for i, maps in enumerate(_our_maps(ours, x, classes, "finercam")):
        assert expected[i].max() > 0.99
        np.testing.assert_allclose(normalize_maps(upsample_to(normalize_maps(maps[0]), (96, 128))), expected[i], atol=1e-4)
    plain = _our_maps(ours, x, classes, "gradcam")
    assert not np.allclose(normalize_maps(plain[0][0]), normalize_maps(_our_maps(ours, x, classes, "finercam")[0][0]))


def test_finer_score_gradient_by_finite_differences():
    from camcli.cam import finer_classes, finer_score_gradient, softmax

    y = np.array([2.0, 1.5, -0.3, 1.9, 0.2, 3.0])
    assert finer_classes(y, 0).tolist() == [3, 1, 5]  # the logits nearest to 2.0

    def score(v):
        p = softmax(v[None])[0][[3, 1, 5]]
        return float(p @ (v[0] - v[[3, 1, 5]]) / (p.sum() + 1e-9))

    numeric = np.array([(score(y + 1e-6 * e) - score(y - 1e-6 * e)) / 2e-6 for e in np.eye(len(y))])
    np.testing.assert_allclose(finer_score_gradient(y, 0), numeric, atol=1e-6)


def test_top_channels_scores_the_k_channels_of_largest_variance_and_every_channel_is_exact_score_cam():
    """Faster Score-CAM, computed here from its definition: the K channels whose activations vary
    most over the grid are the only ones scored and weighed (a softmax over those K)."""
    from camcli import cam
    from camcli.engine import scorecam_maps

    rng = np.random.default_rng(5)
    acts = np.maximum(rng.standard_normal((40, 5, 6)) * rng.uniform(0.1, 3, (40, 1, 1)), 0).astype(np.float32)
    x = rng.standard_normal((3, 40, 48)).astype(np.float32)
    weight = rng.standard_normal((3, 3)).astype(np.float32)
    calls = []

    def logits_of(inputs):  # a small linear "model": the mean of each input channel, times a weight
        calls.append(len(inputs))
        return np.stack([weight @ i.mean(axis=(1, 2)) for i in inputs])

    exact = scorecam_maps(acts, x, np.array([1]), logits_of)
    np.testing.assert_array_equal(scorecam_maps(acts, x, np.array([1]), logits_of, top_channels=40), exact)
    calls.clear()
    fast = scorecam_maps(acts, x, np.array([1]), logits_of, top_channels=8)
    assert sum(calls) == 8  # 8 forward passes instead of 40
    top = np.sort(np.argsort(-acts.reshape(40, -1).var(axis=1))[:8])
    masks = cam.scorecam_masks(acts[top], x.shape[-2:])
    scores = np.array([logits_of([x * m])[0, 1] for m in masks])
    np.testing.assert_allclose(fast[0], cam.scorecam_map(acts[top], scores), rtol=1e-5, atol=1e-6)
    assert np.corrcoef(fast[0].ravel(), exact[0].ravel())[0, 1] > 0.5  # a coarser estimate of the same map
