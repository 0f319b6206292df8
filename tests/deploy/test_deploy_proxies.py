"""deploy/prometheus.yml against docker-compose.yml (deploy/haproxy.cfg is checked by HAProxy itself, tests/deploy/
test_container_compose.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from deploy.checks.common import load_yaml_documents
from deploy.checks.prometheus import check_prometheus
from tests.support.paths import ROOT

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def prometheus() -> Doc:
    return load_yaml_documents(ROOT / "deploy" / "prometheus.yml")[0]


def test_prometheus_scrapes_every_server_service(prometheus: Doc, compose: Doc) -> None:
    assert check_prometheus(prometheus, compose) == []
    names = {n for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names == {"server", "replica", "balancer"}


@pytest.mark.parametrize(("mutation", "message"), [
    (lambda d: d["scrape_configs"][0]["dns_sd_configs"][0].update(port=8001), "is not scraped"),
    (lambda d: d["scrape_configs"][0]["dns_sd_configs"][0].update(names=["server"]), "replica is not scraped"),
    (lambda d: d["scrape_configs"][0]["dns_sd_configs"][0].update(names=["server", "replica", "srv"]),
     "not a compose service"),
    (lambda d: d["scrape_configs"][0]["dns_sd_configs"][0].pop("type"), "type: A"),
    (lambda d: d["scrape_configs"][1].update(job_name="resnet-serving"), "unique"),
    (lambda d: d.update(scrape_config=[]), "unknown top-level"),
])
def test_prometheus_rules_catch(prometheus: Doc, compose: Doc, mutation: Callable[[Doc], Any], message: str) -> None:
    broken = copy.deepcopy(prometheus)
    mutation(broken)
    problems = check_prometheus(broken, compose)
    assert any(message in p for p in problems), problems
