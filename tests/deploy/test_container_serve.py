"""The serve image, built and run by a Docker engine (skipped without one).

The container runs as the image defines it — its user, CMD, ENV and HEALTHCHECK — with a read-only root filesystem and
the test repository mounted read-only, the way docker-compose.yml and deploy/kubernetes run it. Ports are published
on 127.0.0.1 only, on host ports Docker picks.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.images import Docker
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.runtime.predictor import Predictor
from tests.support.containers import Container
from tests.support.images import draw_image, encode
from tests.support.servers import classify_request, poll

pytestmark = pytest.mark.slow

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
GRACE_S = 10      # the image's SERVING_GRACE_S
STOP_S = 15       # what compose gives it (stop_grace_period)


def run_server(docker: Docker, image: str, repository: Path, *args: str,
               env: dict[str, str] | None = None) -> Container:
    return Container.start(docker, image, "--read-only", "--tmpfs", "/tmp",
                           "--volume", f"{repository}:/model_repository:ro",
                           *(a for p in (HTTP_PORT, GRPC_PORT, METRICS_PORT) for a in ("--publish", f"127.0.0.1::{p}")),
                           *args, env=env)


@pytest.fixture(scope="module")
def server(docker: Docker, serve_image: str, served_repository: Path) -> Iterator[Container]:
    container = run_server(docker, serve_image, served_repository)
    try:
        container.wait_healthy(timeout=60)
        yield container
    finally:
        container.remove()


def stub(container: Container) -> ic_grpc.ImageClassifierStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{container.port(GRPC_PORT)}")
    return ic_grpc.ImageClassifierStub(channel)


def test_serve_image_config(docker: Docker, serve_image: str) -> None:
    config = json.loads(docker.run("image", "inspect", serve_image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "serving", "health", "--server", "localhost:8001"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert config["StopSignal"] == "SIGTERM"


def test_serve_image_holds_no_torch_and_no_build_secret(docker: Docker, serve_image: str) -> None:
    result = docker.run("run", "--rm", serve_image, "python", "-c",
                        "import importlib.util as u, os; "
                        "print([m for m in ('torch', 'fastai', 'ray', 'sklearn', 'pip') if u.find_spec(m)], "
                        "os.path.exists('/run/secrets'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"  # the pip-ca build secret is mounted during the build only


def test_container_turns_healthy_as_non_root_on_a_read_only_root(server: Container) -> None:
    state = server.inspect()
    assert state["State"]["Health"]["Status"] == "healthy"
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert server.exec("id", "-u").stdout.strip() == "10001"
    denied = server.exec("touch", "/app/x")
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any("server SERVING" in r["msg"] for r in records)
    assert not [line for line in server.logs().splitlines() if not line.startswith("{")], "only JSON log lines"


def test_classify_through_the_published_port(server: Container, digits: Predictor, tmp_path: Path) -> None:
    picture = tmp_path / "digit.png"
    picture.write_bytes(encode(draw_image(7, (28, 28), "L")))
    reply = stub(server).Classify(classify_request(picture.read_bytes(), top_k=3), timeout=30)
    (expected,) = digits.classify([picture], top_k=3)
    (got,) = reply.results
    assert [p.label for p in got.predictions] == [p.label for p in expected]
    assert [p.probability for p in got.predictions] == pytest.approx([p.probability for p in expected], abs=1e-5)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port(GRPC_PORT)}"))
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port(HTTP_PORT)}/v2/health/ready", timeout=10) as r:
        assert r.status == 200


def test_docker_stop_drains_in_flight_requests(docker: Docker, serve_image: str, served_repository: Path) -> None:
    """Requests held in the batcher (a long batching delay) when `docker stop` comes all finish; the exit is 0."""
    container = run_server(docker, serve_image, served_repository,
                           env={"SERVING_MAX_QUEUE_DELAY_MS": "3000", "SERVING_MAX_BATCH": "64"})
    try:
        container.wait_healthy(timeout=60)
        client = stub(container)
        payload = encode(draw_image(3, (28, 28), "L"))
        calls = [client.Classify.future(classify_request(payload), timeout=30) for _ in range(6)]
        metrics = f"http://127.0.0.1:{container.port(METRICS_PORT)}/metrics"
        assert poll(lambda: _queued(metrics) >= 6, timeout=10), "the requests never reached the batcher's queue"
        code, seconds = container.stop(STOP_S)
        assert [c.exception() for c in calls] == [None] * 6
        assert all(len(c.result().results) == 1 for c in calls)
        assert code == 0, container.logs()[-3000:]
        assert seconds < STOP_S, "stopped by SIGKILL, not by the server"
        messages = [json.loads(line)["msg"] for line in container.logs().splitlines() if line.startswith("{")]
        assert "stopped" in messages
    finally:
        container.remove()


def _queued(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('serving_queue_depth{model="digits"}'))


@pytest.mark.parametrize(("case", "expected"), [
    ("unreadable repository", "error: [Errno 13] Permission denied: '/model_repository'"),
    ("missing model", "error: model 'cats' is not in /model_repository (found: digits, rgb)"),
    ("port clash", "error: cannot bind the metrics port 0.0.0.0:8001: Address already in use"),
])
def test_bad_input_gives_one_line_and_a_non_zero_exit(docker: Docker, serve_image: str, served_repository: Path,
                                                      tmp_path: Path, case: str, expected: str) -> None:
    repository, env = served_repository, {}
    if case == "unreadable repository":  # root's folder, mode 0700: the image's user may not list it
        repository = tmp_path / "locked"
        repository.mkdir(mode=0o700)
    elif case == "missing model":
        env = {"SERVING_MODELS": "cats"}
    else:  # the metrics endpoint asked to share the gRPC port
        env = {"SERVING_METRICS_PORT": "8001"}
    container = run_server(docker, serve_image, repository, env=env)
    try:
        code = container.wait_exit(60)
        logs = container.logs()
        assert code != 0, logs
        errors = [line for line in logs.splitlines() if not line.startswith("{")]
        assert errors == [expected], logs
        assert container.inspect()["RestartCount"] == 0
    finally:
        container.remove()


def test_serve_gpu_image_falls_back_to_cpu_without_a_gpu(docker: Docker, served_repository: Path) -> None:
    """serve-gpu on a machine without GPU: healthy, serving on the CPU, with the fallback logged. Not built by the
    tests (its CUDA wheels are 2.8 GB): `make images IMAGES=serve-gpu` first. On a GPU (`--gpus all`) it is untested."""
    image = "resnet-serving:serve-gpu"
    if not docker.has_image(image):
        pytest.skip(f"{image} is not built (make images IMAGES=serve-gpu)")
    container = run_server(docker, image, served_repository)
    try:
        container.wait_healthy(timeout=90)
        records = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
        warnings = [r["msg"] for r in records if r["level"] == "warning"]
        assert "--device cuda: the CUDA provider failed to initialise for digits; using CPU" in warnings
    finally:
        container.remove()
