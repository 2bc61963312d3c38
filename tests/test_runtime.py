"""Backends, the feature cache and streaming: same numbers, less work."""

import numpy as np
import torch
from torch import nn

import camcli.data as data_module
import camcli.jobs as jobs_module
from camcli.checkpoint import load_checkpoint
from camcli.config import resolve_train_config
from camcli.data import find_images
from camcli.factory import load
from camcli.jobs import PredictJob, run_here
from camcli.runtime import OnnxRunner, TorchRunner, make_runner
from camcli.train import fit
from conftest import SAMPLE_DATA, make_image_folder

SMALL = dict(arch="resnet18", weights="none", img_size=32, batch_size=4, workers=0)


def test_default_backbone_on_onnxruntime_gives_the_same_outputs():
    images = sorted((SAMPLE_DATA / "val").rglob("*.jpg"))[::5]
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        model = load("efficientnet_lite0", device="cpu", backend=backend)
        model.prepare()
        assert model.runner.name == backend
        batches = list(model.batches(images, batch_size=4))
        logits = np.concatenate([b.logits for b in batches])
        maps = [m for b in batches for m in model.batch_maps(b, b.logits.argmax(1)[:, None])]
        outputs[backend] = (logits, maps)
    (ref_logits, ref_maps), (ort_logits, ort_maps) = outputs["torch"], outputs["onnxruntime"]
    assert float(np.abs(ort_logits - ref_logits).max() / np.abs(ref_logits).max()) < 1e-4
    for a, b in zip(ort_maps, ref_maps):
        assert a.shape == b.shape and float(np.abs(a - b).max() / np.abs(b).max()) < 1e-4


def test_auto_backend_exports_on_first_use_says_so_then_reuses_the_export(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    built = []

    def build():
        built.append(1)
        return features

    first, note = make_runner(build, "tiny", "cpu", "auto", key=lambda: "k1")
    assert isinstance(first, OnnxRunner) and "exported tiny to ONNX" in note and "later runs" in note
    again, note = make_runner(build, "tiny", "cpu", "auto", key=lambda: "k1")
    assert isinstance(again, OnnxRunner) and again.path == first.path and note is None
    assert built == [1]  # the cached export needs no PyTorch module
    torch_runner, _ = make_runner(build, "tiny", "cpu", "torch", key=lambda: "k1")
    assert isinstance(torch_runner, TorchRunner)


def test_export_failure_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))

    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # leaves the traced graph

    runner, note = make_runner(Unexportable, "odd", "cpu", "onnxruntime", key=lambda: "k2")
    assert isinstance(runner, TorchRunner)
    assert note.startswith("warning: ONNX Runtime unavailable for odd") and "\n" not in note


def test_second_training_run_does_no_backbone_forward(tiny_folder, tmp_path, monkeypatch):
    first = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "a"), epochs=2, **SMALL))
    calls = []
    real = jobs_module.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_module, "extract_features", counting)
    notes = []
    second = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "b"), epochs=2, **SMALL), notify=notes.append)
    assert calls == [] and any("feature cache" in n for n in notes)
    a = load_checkpoint(first.run_dir / "last.safetensors")["head"]["weight"]
    b = load_checkpoint(second.run_dir / "last.safetensors")["head"]["weight"]
    assert np.array_equal(a, b)
    fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "c"), epochs=5, lr=0.1, **SMALL))
    assert calls == []
    # a changed file is a cache miss
    (tiny_folder / "red" / "red_0.png").write_bytes((tiny_folder / "red" / "red_1.png").read_bytes())
    fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "d"), epochs=1, **SMALL))
    assert calls


def test_augment_runs_the_backbone_every_epoch_and_says_so(tiny_folder, tmp_path, monkeypatch):
    calls = []
    real = jobs_module.extract_features
    monkeypatch.setattr(jobs_module, "extract_features", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    notes = []
    result = fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "r"), epochs=3, augment=True, **SMALL),
                 notify=notes.append)
    assert any("`augment`" in n for n in notes)
    # 10 train images in batches of 4: 3 batches per epoch, plus the val features once (1 batch)
    assert len(calls) == 3 * 3 + 1
    assert len(result.history) == 3


def test_first_prediction_arrives_before_the_last_image_is_read(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "many", per_class=30, size=(16, 16))
    reads = []
    real = data_module.read_image
    monkeypatch.setattr(data_module, "read_image", lambda p, *rest: (reads.append(p), real(p, *rest))[1])
    model = load("efficientnet_lite0", device="cpu", backend="torch", img_size=64)
    rows = run_here(PredictJob(top_k=1, batch_size=4, workers=0), model, find_images([folder]))
    first = next(rows)
    assert first["path"].endswith("blue_0.png") and len(reads) == 4 < 60
    assert sum(1 for _ in rows) == 59


def test_first_prediction_arrives_before_the_input_walk_is_finished(tmp_path):
    folder = make_image_folder(tmp_path / "many", per_class=10, size=(16, 16))
    walked = []

    def walk():
        for image in find_images([folder]):
            walked.append(image)
            yield image

    model = load("efficientnet_lite0", device="cpu", backend="torch", img_size=64)
    rows = run_here(PredictJob(top_k=1, batch_size=4, workers=0, chunk_size=8), model, walk())
    first = next(rows)
    assert first["path"].endswith("blue_0.png") and len(walked) == 8 < 20
    assert [r["path"] for r in rows] == [str(i.path) for i in walked[1:]] and len(walked) == 20


def test_a_cached_export_replaced_damaged_or_truncated_is_never_used(tmp_path, monkeypatch):
    from camcli.runtime import onnx_path

    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    other = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())  # same shapes, other weights: a valid model
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = ours(torch.from_numpy(x)).numpy()
    make_runner(lambda: ours, "tiny", "cpu", "auto", key=lambda: "k")
    path = onnx_path("tiny", "k")
    make_runner(lambda: other, "impostor", "cpu", "auto", key=lambda: "k")
    good = path.read_bytes()
    for tampered in (onnx_path("impostor", "k").read_bytes(), good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 1])):
        path.write_bytes(tampered)
        runner, note = make_runner(lambda: ours, "tiny", "cpu", "auto", key=lambda: "k")
        assert isinstance(runner, OnnxRunner) and "did not match its record: exported again" in note
        np.testing.assert_allclose(runner(x), expected, rtol=1e-4, atol=1e-5)
        assert path.read_bytes() != tampered


def test_a_replaced_feature_cache_is_rebuilt_and_the_feature_key_holds_the_size(tiny_folder, tmp_path, monkeypatch):
    from camcli.train import feature_cache_file

    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / "cache"))
    config = resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "a"), epochs=1, **SMALL)
    fit(config)
    cached = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert cached
    for path in cached:  # replaced by other features of the right shape: a cache camcli did not write
        np.save(path, np.load(path) + 1.0)
    calls = []
    real = jobs_module.extract_features
    monkeypatch.setattr(jobs_module, "extract_features", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    fit(resolve_train_config(data=str(tiny_folder), out=str(tmp_path / "b"), epochs=1, **SMALL))
    assert calls  # recomputed
    paths = find_images([tiny_folder])
    model = load("efficientnet_lite0", device="cpu")
    sizes = {feature_cache_file([p.path for p in paths], "w", model.preprocess, "onnxruntime"),
             feature_cache_file([p.path for p in paths], "w", data_module.replace(model.preprocess, img_size=256), "onnxruntime"),
             feature_cache_file([p.path for p in paths], "w", data_module.replace(model.preprocess, resize="squash"), "onnxruntime")}
    assert len(sizes) == 3
