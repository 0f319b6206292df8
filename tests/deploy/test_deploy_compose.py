"""docker-compose.yml: rendered and validated by Docker Compose, then the rules it cannot express
(deploy/checks/compose.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy.checks.common import duration_s
from deploy.checks.compose import (
    check_compose,
    check_compose_with_compose,
    compose_config,
    load_compose,
    published,
)
from deploy.dockerfile import Dockerfile
from tests.support.paths import ROOT

Compose = dict[str, Any]


def test_compose_file_passes_the_rules(compose: Compose, dockerfile: Dockerfile) -> None:
    assert check_compose(compose, dockerfile) == []


def test_compose_passes_with_variables_set(dockerfile: Dockerfile) -> None:
    env = {"SERVER_CPUS": "4", "SERVER_MEMORY": "2g", "PUBLISH_ADDRESS": "0.0.0.0", "SERVER_GRPC_PORT": "18001",
           "SERVING_MODELS": "digits:1,other", "SERVING_MAX_BATCH": "8"}
    compose = load_compose(ROOT / "docker-compose.yml", env)
    assert check_compose(compose, dockerfile) == []
    server = compose["services"]["server"]
    assert server["environment"]["SERVING_THREADS"] == "4"
    assert server["deploy"]["resources"]["limits"] == {"cpus": 4, "memory": str(2 * 1024**3)}
    assert ("0.0.0.0", "18001", 8001) in published(server)


def test_profiles_and_the_scale_out_layout(compose: Compose) -> None:
    services = compose["services"]
    assert {n: s.get("profiles") for n, s in services.items()} == {
        "trainer": None, "server": None, "replica": ["scale"], "balancer": ["scale"], "prometheus": ["monitoring"]}
    assert services["trainer"]["build"]["target"] == "train"
    assert services["server"]["build"]["target"] == services["replica"]["build"]["target"] == "serve"
    assert "ports" not in services["replica"]  # `--scale replica=N` needs no fixed host port
    assert services["server"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["server"]["volumes"][0]["source"] == services["trainer"]["volumes"][0]["source"]


def _mutate(path: str, value: Any) -> Callable[[Compose], None]:
    def apply(doc: Compose) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return apply


@pytest.mark.parametrize(("mutation", "message"), [
    (_mutate("services.server.depends_on", ["trainer"]), "service_completed_successfully"),
    (_mutate("services.server.depends_on", {"trainer": {"condition": "service_completed_successfully"},
                                            "balancer": {"condition": "service_started"}}), "only runs in profiles"),
    (_mutate("services.server.command", ["python", "-m", "serving", "serve", "--port", "9"]), "overrides"),
    (_mutate("services.server.healthcheck.test", ["CMD", "true"]), "differs from the Dockerfile's HEALTHCHECK"),
    (_mutate("services.server.environment.SERVING_MAX_BATHC", "3"), "does not read"),
    (_mutate("services.server.stop_grace_period", "10s"), "must exceed SERVING_GRACE_S"),
    (_mutate("services.server.deploy.resources.limits.cpus", "3"), "differs from its CPU limit"),
    (_mutate("services.server.deploy", None), "needs CPU and memory limits"),
    (_mutate("services.server.restart", "no"), "restart policy"),
    (_mutate("services.server.volumes", ["runs:/model_repository:ro"]), "trainer's volume"),
    (_mutate("services.server.volumes", ["model_repository:/model_repository"]), "read-only"),
    (_mutate("services.replica.ports", ["8101:8001"]), "must not publish fixed host ports"),
    (_mutate("services.prometheus.ports", ["127.0.0.1:8001:9090"]), "both publish"),
    (_mutate("services.server.ports", ["127.0.0.1:8001:8001"]), "the image exposes"),
    (_mutate("services.server.build.target", "srve"), "not a Dockerfile stage"),
    (_mutate("services.replica.image", "other:serve"), "tagged differently"),
    (_mutate("services.trainer.restart", "on-failure"), "one-shot"),
    (_mutate("services.trainer.environment.TRAIN_EPOCS", "3"), "does not use"),
    (_mutate("services.trainer.volumes", ["runs:/runs"]), "writable volume"),
    (_mutate("services.balancer.volumes", ["./deploy/haproxy.conf:/etc/haproxy/haproxy.cfg:ro"]), "does not exist"),
])
def test_compose_rules_catch(compose: Compose, dockerfile: Dockerfile, mutation: Callable[[Compose], None],
                             message: str) -> None:
    broken = copy.deepcopy(compose)
    mutation(broken)
    problems = check_compose(broken, dockerfile)
    assert any(message in p for p in problems), problems


def test_durations() -> None:
    assert duration_s("1m30s") == 90
    assert duration_s("500ms") == 0.5
    with pytest.raises(ValueError, match="not a duration"):
        duration_s("15 seconds")


# ---- Docker Compose itself (`docker compose config`: no engine needed) -----------------------------------------------

def test_docker_compose_accepts_every_profile() -> None:
    assert check_compose_with_compose(ROOT / "docker-compose.yml") == []
    rendered, _ = compose_config(ROOT / "docker-compose.yml")
    assert rendered is not None
    assert sorted(rendered["services"]) == ["server", "trainer"]  # the profiled services stay off by default
    rendered, _ = compose_config(ROOT / "docker-compose.yml", ("scale", "monitoring"))
    assert rendered is not None
    assert sorted(rendered["services"]) == ["balancer", "prometheus", "replica", "server", "trainer"]


def test_docker_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.yml").read_text()
    needle = "    trainer:\n      condition: service_completed_successfully"
    assert needle in text
    broken.write_text(text.replace(needle, needle.replace("trainer", "trainr")))
    rendered, errors = compose_config(broken)
    assert rendered is None
    assert 'depends on undefined service "trainr"' in errors
