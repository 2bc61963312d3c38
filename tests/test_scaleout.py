"""The Ray engine: the same rows, files and exit codes as the local engine, on a local Ray instance."""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from camcli.cli import app
from conftest import SAMPLE_DATA


def _folder(root: Path) -> Path:
    images = root / "imgs"
    (images / "sub").mkdir(parents=True)
    for name in ("cat_00", "cat_01", "cat_02"):
        shutil.copy(SAMPLE_DATA / "val" / "cat" / f"{name}.jpg", images / "sub" / f"{name}.jpg")
    for name in ("coffee_00", "coffee_01"):
        shutil.copy(SAMPLE_DATA / "val" / "coffee" / f"{name}.jpg", images / f"{name}.jpg")
    (images / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    return images


def _ray_leftovers() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(("ray", "camcli-ray"))}


def _rows(result, out_dir: Path) -> list[dict]:
    text = result.stdout.replace(str(out_dir), "OUT")
    return [json.loads(line) for line in text.splitlines()]


def _files(out_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in sorted(out_dir.rglob("*"))
            if p.is_file() and p.name != ".camcli-outputs.jsonl"}


def test_ray_engine_gives_the_local_engines_rows_files_and_exit_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path)
    runner = CliRunner()
    common = ["--batch-size", "2", "--format", "jsonl", "--quiet"]
    temp_before = _ray_leftovers()

    local_p = runner.invoke(app, ["predict", "imgs", *common, "--boxes"])
    ray_p = runner.invoke(app, ["predict", "imgs", *common, "--boxes", "--engine", "ray", "--ray-workers", "2"])
    assert local_p.exit_code == ray_p.exit_code == 1, ray_p.output  # two inputs cannot be read
    assert _rows(ray_p, tmp_path) == _rows(local_p, tmp_path)  # keys, values and input order
    assert sum("error" in r for r in _rows(ray_p, tmp_path)) == 2
    assert ray_p.stderr.count("failed:") == local_p.stderr.count("failed:") == 2

    overlay = ["overlay", "imgs", *common, "--maps", "2", "--save-raw"]
    local_o = runner.invoke(app, [*overlay, "--out-dir", "local"])
    ray_o = runner.invoke(app, [*overlay, "--out-dir", "ray", "--engine", "ray"])
    assert local_o.exit_code == ray_o.exit_code == 1, ray_o.output
    assert [json.dumps(r) for r in _rows(ray_o, tmp_path / "ray")] == \
        [json.dumps(r).replace("local/", "ray/") for r in _rows(local_o, tmp_path / "local")]
    written = _files(tmp_path / "ray")
    assert len(written) == 5 * 2 * 2 and written == _files(tmp_path / "local")  # byte-identical overlays and maps

    # an interrupted run: some outputs never made it; --skip-existing on Ray completes the set
    for pattern in ("imgs/sub/cat_01_cam_1_*", "imgs/coffee_00_cam_2_*"):
        for path in (tmp_path / "ray").glob(pattern):
            path.unlink()
    assert len(_files(tmp_path / "ray")) < len(written)
    resumed = runner.invoke(app, [*overlay, "--out-dir", "ray", "--engine", "ray", "--skip-existing"])
    assert resumed.exit_code == 1 and len(_rows(resumed, tmp_path)) == 4  # two redone, two still unreadable
    assert _files(tmp_path / "ray") == written
    assert _ray_leftovers() == temp_before  # the local Ray instance left no temp folder, socket or token behind
    assert not list(Path.home().glob(".ray*"))


def test_ray_engine_trains_and_evaluates_as_the_local_engine(tmp_path, monkeypatch):
    """train's feature pass and evaluate's counts run on Ray; the head, metrics and files equal the local run's."""
    from camcli.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    runs = {}
    for engine in ("local", "ray"):
        monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / f"cache_{engine}"))  # no shared feature cache
        trained = runner.invoke(app, ["train", str(SAMPLE_DATA), "--epochs", "2", "--out", f"t_{engine}", "--quiet", "--engine", engine])
        assert trained.exit_code == 0, trained.output
        boxes = tmp_path / "boxes.json"
        boxes.write_text(json.dumps({"cat/cat_00.jpg": [10, 10, 60, 70], "coffee/coffee_01.jpg": [0, 0, 40, 40]}))
        evaluated = runner.invoke(app, ["evaluate", str(SAMPLE_DATA / "val"), "--checkpoint", f"t_{engine}/best.safetensors",
                                        "--boxes", str(boxes), "--format", "json", "--out", f"e_{engine}", "--quiet", "--engine", engine])
        assert evaluated.exit_code == 0, evaluated.output
        runs[engine] = (load_checkpoint(tmp_path / f"t_{engine}" / "best.safetensors"), json.loads(evaluated.stdout))
    (local_ckpt, local_metrics), (ray_ckpt, ray_metrics) = runs["local"], runs["ray"]
    assert (tmp_path / "t_local" / "metrics.csv").read_bytes() == (tmp_path / "t_ray" / "metrics.csv").read_bytes()
    assert (local_ckpt["head"]["weight"] == ray_ckpt["head"]["weight"]).all()
    assert local_metrics.pop("settings")["checkpoint"] == "t_local/best.safetensors"
    assert ray_metrics.pop("settings")["checkpoint"] == "t_ray/best.safetensors"
    assert set(local_metrics.pop("seconds_per_image")) == set(ray_metrics.pop("seconds_per_image")) == {"cam"}  # timings differ
    assert local_metrics == ray_metrics and local_metrics["num_images_with_boxes"] == 2
    assert (tmp_path / "e_local" / "metrics.json").read_bytes().replace(b"t_local", b"t_ray") == \
        (tmp_path / "e_ray" / "metrics.json").read_bytes()
    assert (tmp_path / "e_local" / "box_accuracy.png").read_bytes() == (tmp_path / "e_ray" / "box_accuracy.png").read_bytes()


def test_ray_engine_without_ray_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["predict", str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"), "--engine", "ray"])
    assert result.exit_code == 3 and "pip install 'camcli[ray]'" in result.stderr and "Traceback" not in result.output
    wrong = CliRunner().invoke(app, ["predict", str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"), "--ray-workers", "2"])
    assert wrong.exit_code == 2 and "--engine ray" in wrong.stderr


def test_ray_engine_spreads_a_job_over_two_nodes_with_the_local_engines_rows_and_files(tmp_path, monkeypatch):
    """A two-node cluster simulated here (two raylets of one CPU, each with its own camcli cache): two
    workers, one per node, and rows and files equal to a local run of the same bound job."""
    import ray
    from ray.cluster_utils import Cluster

    from camcli.data import find_images
    from camcli.factory import ModelSpec, build_model
    from camcli.jobs import LocalEngine, OverlayJob
    from camcli.scaleout import RayEngine, RayOptions

    monkeypatch.chdir(tmp_path)
    images = _folder(tmp_path)
    (images / "sub" / "broken.jpg").unlink()
    (images / "empty.png").unlink()
    for name in ("flower_00", "flower_01", "rocket_00"):
        shutil.copy(SAMPLE_DATA / "val" / name.split("_")[0] / f"{name}.jpg", images / f"{name}.jpg")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    caches = [tmp_path / "cache-head", tmp_path / "cache-node"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": {"CAMCLI_CACHE_DIR": str(caches[0])},
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, env_vars={"CAMCLI_CACHE_DIR": str(caches[1])})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        model = build_model(ModelSpec(arch="efficientnet_lite0", device="cpu"))
        model.prepare()
        results, nodes = {}, set()
        # Ray Data may hand every slice to the first actor that is ready while the other still starts (its node
        # exports the backbone into its own empty cache): up to three runs, each must give the local rows and files
        for name, engine in (("local", LocalEngine()), *((f"ray{i}", RayEngine(RayOptions(cluster.address, workers=2)))
                                                         for i in range(3))):
            if len(nodes) == 2:
                break
            job, work = OverlayJob(out_dir=tmp_path / name, save_raw=True, batch_size=1).bind(model, find_images([images]))
            with engine:
                rows = list(engine.run(job, model, work))
            results[name] = (json.loads(json.dumps(rows).replace(str(tmp_path / name), "OUT")), _files(tmp_path / name))
            nodes |= getattr(engine, "nodes", set())
        assert len(nodes) == 2  # batches ran on both nodes
        assert not any((c / "onnx").exists() for c in caches)  # the default backbone's graph ships: no node exports it
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(results["local"][0]) == 8 and not any("error" in r for r in results["local"][0])
    assert all(results[name] == results["local"] for name in results)


def _held_processes(path: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if path.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_an_address_that_accepts_tcp_but_is_not_ray_is_given_up_in_bounded_time(tmp_path):
    import socket
    import subprocess
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # accepts connections (the kernel does), never speaks Ray's protocol
    port = server.getsockname()[1]
    code = ("import sys; from camcli import scaleout; scaleout.CONNECT_SECONDS = 8\n"
            "from camcli.cli import main; sys.argv = ['camcli', *sys.argv[1:]]; main()")
    start = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-c", code, "predict", str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"),
                                 "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert time.monotonic() - start < 60  # Ray alone was still retrying at 150 s
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()[-1:]  # after the note of the model's first export, if any
    assert lines == [f"error: cannot join the Ray cluster at 127.0.0.1:{port}: no answer within 8 s (is it the address of a "
                     "Ray head node, HOST:6379 by default?)"], result.stderr


def test_ctrl_c_in_a_ray_run_exits_130_and_leaves_no_process_or_folder(tmp_path):
    import signal
    import subprocess
    import time

    temp = Path(tempfile.mkdtemp(dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(40):  # enough work to be interrupted in the middle
        shutil.copy(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg", images / f"{i}.jpg")
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-m", "camcli", "overlay", str(images), "--out-dir", str(tmp_path / "out"),
                             "--engine", "ray", "--batch-size", "1", "--format", "jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert proc.stdout.readline(), proc.stderr.read()  # the first row: Ray is up and working
        session = next(temp.glob("camcli-ray-*"))
        assert _held_processes(str(session))
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on a terminal reaches the whole foreground group
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    time.sleep(1)
    assert not _held_processes(str(session))
    assert not list(temp.glob("camcli-ray-*"))
    shutil.rmtree(temp)


def test_a_long_temp_folder_still_starts_ray(tmp_path):
    import subprocess

    temp = tmp_path / ("t" * 60)
    temp.mkdir()
    result = subprocess.run([sys.executable, "-m", "camcli", "predict", str(SAMPLE_DATA / "val" / "cat" / "cat_00.jpg"),
                             "--engine", "ray", "--format", "jsonl"], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "TMPDIR": str(temp)})
    assert result.returncode == 0 and json.loads(result.stdout)["predictions"], result.stderr


def _worker_rows(then: BaseException):
    import pickle

    yield {"result": pickle.dumps({"results": ["row 0", "row 1"], "node": "n1"})}
    raise then


def _shut_down_badly():
    """Ray Data's iterator on Ctrl-C: it shuts its executor down, and an error of the shutdown replaces the interrupt."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("ActorDiedError: the actor died unexpectedly") from None  # `from None` hides it: still its context


def test_a_ray_failure_raised_while_handling_ctrl_c_is_the_ctrl_c_and_any_other_is_one_line():
    import signal

    import pytest

    from camcli.errors import CamcliError
    from camcli.jobs import Interrupts
    from camcli.scaleout import unpacked

    try:
        _shut_down_badly()
    except RuntimeError as exc:
        during_ctrl_c = exc
    nodes: set[str] = set()
    got = []
    with pytest.raises(KeyboardInterrupt):
        got.extend(unpacked(_worker_rows(during_ctrl_c), nodes))
    assert got == ["row 0", "row 1"] and nodes == {"n1"}  # the rows before it were given first
    with pytest.raises(CamcliError, match=r"^a Ray worker failed: ActorDiedError: the actor died unexpectedly$"):
        list(unpacked(_worker_rows(RuntimeError("ActorDiedError: the actor died\n unexpectedly")), set()))
    interrupts = Interrupts()
    interrupts.handler(signal.SIGINT, None)  # a Ctrl-C came (held: no job code was running)
    with pytest.raises(KeyboardInterrupt):  # and then Ray's processes, in the terminal's group too, stopped
        list(unpacked(_worker_rows(RuntimeError("ActorDiedError: the actor died")), set(), interrupts))


def test_a_ctrl_c_thrown_into_a_ray_run_gives_the_rest_of_the_slice_at_hand_first():
    import pickle

    import pytest

    from camcli.scaleout import unpacked

    slices = iter([{"result": pickle.dumps({"results": [f"{s}.{i}" for i in range(3)], "node": "n"})} for s in "ab"])
    rows = unpacked(slices, set())
    assert next(rows) == "a.0"
    assert rows.throw(KeyboardInterrupt()) == "a.1"  # its worker wrote this slice's files: their rows go out
    assert next(rows) == "a.2"
    with pytest.raises(KeyboardInterrupt):
        next(rows)
    assert next(slices)["result"]  # the next slice was never taken
