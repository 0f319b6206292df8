"""The images' commands, read from the Dockerfile, run on this machine (no Docker engine here).

The train stage's CMD trains and exports into an empty model repository (as the compose trainer does); the serve
stage's CMD then serves that repository from a folder holding only what the serve stage copies, in a venv holding
only the [serve] dependency set, configured by the stage's ENV. Its HEALTHCHECK must report SERVING, a client must
classify an image exactly as the in-process predictor does, and SIGTERM must stop it cleanly within the grace period.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.checks.common import GRPC_PORT, SERVE_TARGET
from deploy.dockerfile import Dockerfile
from tests.support.containers import StandIn, WriteWatch, run, stand_in, terminate, wait_for
from tests.support.paths import ROOT
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def test_train_cmd_trains_exports_and_then_skips(trained: Any) -> None:
    assert trained.first.returncode == 0, trained.first.stdout[-2000:] + trained.first.stderr[-2000:]
    version = trained.repository / trained.name / "1"
    for name in ("model.onnx", "model.json", "verification.json", "golden.npz"):
        assert (version / name).is_file(), name
    assert json.loads((version / "verification.json").read_text())["passed"] is True
    (run_dir,) = trained.runs.iterdir()
    assert run_dir.name.startswith(f"{trained.name}-")
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    # Compose starts the trainer on every `up`: the second run finds the model and publishes nothing new.
    assert trained.second.returncode == 0, trained.second.stderr[-2000:]
    assert "already holds a model" in trained.second.stdout
    assert sorted(p.name for p in (trained.repository / trained.name).iterdir() if p.is_dir()) == ["1"]
    assert trained.written == [], "the train CMD wrote into its WORKDIR, which the image's user cannot write"


def test_serve_venv_lacks_torch_and_fastai(serve_venv: Path) -> None:
    python = str(serve_venv / "bin" / "python")
    for module in ("torch", "fastai", "torchvision", "onnx", "sklearn"):
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 1, module
        assert f"No module named '{module}'" in result.stderr
    result = subprocess.run([python, "-c", "import onnxruntime, grpc, PIL, numpy, prometheus_client"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_serve_venv_knows_the_project_version(serve_venv: Path) -> None:
    """The project installs as an empty wheel: no code, but the version the server reports (ServerMetadata)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run([str(serve_venv / "bin" / "python"), "-c",
                             "from importlib.metadata import version; print(version('resnet-serving'))"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == version, result.stderr


def test_every_cli_command_loads_in_the_serve_image(dockerfile: Dockerfile, serve_venv: Path,
                                                    tmp_path: Path) -> None:
    """`python -m serving …` with only the serving package and the serve set: no command fails to load."""
    image = stand_in(dockerfile, SERVE_TARGET, tmp_path / "app", {"/opt/venv": serve_venv})
    env = image.env
    # The parser imports the classify and batch modules as it is built (serving/cli.py has no stand-in for a command
    # whose imports fail any more), so a dependency missing from the serve set fails the listing itself.
    listing = run(image, image.argv(["python", "-m", "serving", "--help"], env), env, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for command in ("serve", "classify", "health", "batch"):
        assert command in listing.stdout
        result = run(image, image.argv(["python", "-m", "serving", command, "--help"], env), env, timeout=60)
        assert result.returncode == 0, (command, result.stderr)


def test_serve_cmd_serves_the_trained_repository(dockerfile: Dockerfile, serve_venv: Path, trained: Any,
                                                 tmp_path: Path) -> None:
    assert trained.first.returncode == 0, "the train stage's command failed (see the test above)"
    image = stand_in(dockerfile, SERVE_TARGET, tmp_path / "app",
                     {"/opt/venv": serve_venv, "/model_repository": trained.repository})
    # The serving package alone: it must not need training/ or models/.
    assert sorted(p.name for p in image.cwd.iterdir()) == ["serving"]
    config = image.config
    port, metrics_port = free_port(), free_port()
    # The image's ENV as it is, except that this machine's server listens on loopback and free ports.
    env = {**image.env, "SERVING_HOST": "127.0.0.1", "SERVING_PORT": str(port),
           "SERVING_METRICS_PORT": str(metrics_port)}
    argv = image.argv(config.cmd or (), env)
    assert argv[0] == str(serve_venv / "bin" / "python"), "CMD must resolve to the venv's python through PATH"
    assert config.healthcheck is not None
    probe = list(config.healthcheck.command)
    server_at = probe.index("--server") + 1
    assert probe[server_at] == f"localhost:{GRPC_PORT}"
    probe[server_at] = f"127.0.0.1:{port}"
    probe = image.argv(probe, env)

    log_path = tmp_path / "server.log"
    grace = float(config.env["SERVING_GRACE_S"])
    with WriteWatch(image.cwd) as watch, log_path.open("wb") as log:
        start = time.perf_counter()
        server = subprocess.Popen(argv, env=env, cwd=image.cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            health, waited = wait_for(image, probe, env, deadline_s=60, server=server)
            assert health.returncode == 0, (health.stdout, health.stderr, log_path.read_text()[-3000:])
            assert health.stdout.strip() == "SERVING"
            ready_s = time.perf_counter() - start
            _classify_and_scrape(image, env, port, metrics_port, trained)
        finally:
            code, stop_s = terminate(server, timeout=grace + 10)
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert not watch.appeared, "the server wrote into its WORKDIR (the image's root filesystem is read-only)"
    assert stop_s < grace, f"an idle server should stop at once on SIGTERM, took {stop_s:.1f} s"
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records, "SERVING_LOG_FORMAT=json: the server logs JSON lines"
    assert any(r.get("msg") == "stopped" for r in records), output[-2000:]
    print(f"\nserve CMD: SERVING after {ready_s:.2f} s (probe loop {waited:.2f} s), stopped in {stop_s:.2f} s; "
          f"train CMD took {trained.seconds:.1f} s")


def _classify_and_scrape(image: StandIn, env: dict[str, str], port: int, metrics_port: int, trained: Any) -> None:
    """One image through `python -m serving classify` (as the container would run it), then /metrics."""
    picture = sorted((trained.images / "valid").rglob("*.png"))[0]
    classify = run(image, image.argv(["python", "-m", "serving", "classify", "--server", f"127.0.0.1:{port}",
                                      "--model", trained.name, "--json", "--top-k", "3", str(picture)], env),
                   env, timeout=60)
    assert classify.returncode == 0, classify.stderr
    (answer,) = [json.loads(line) for line in classify.stdout.splitlines()]
    from serving.runtime.loader import load

    expected = load(trained.repository, trained.name).predictor.classify([picture], top_k=3)[0]
    assert [p["label"] for p in answer["predictions"]] == [p.label for p in expected]
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
        [p.probability for p in expected], abs=1e-5)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert f'serving_model_ready{{model="{trained.name}",version="1"}} 1.0' in metrics
