"""deploy/envoy.yaml (parsed into Envoy's v3 API) and deploy/prometheus.yml, against docker-compose.yml."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from deploy import check
from tests.support.paths import ROOT

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def envoy() -> Doc:
    return check.load_yaml_documents(ROOT / "deploy" / "envoy.yaml")[0]


@pytest.fixture(scope="module")
def prometheus() -> Doc:
    return check.load_yaml_documents(ROOT / "deploy" / "prometheus.yml")[0]


def test_envoy_config_is_valid_and_matches_compose(envoy: Doc, compose: Doc) -> None:
    assert check.check_envoy(envoy, compose) == []
    bootstrap = check.parse_envoy(envoy)
    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.lb_policy.name == "LEAST_REQUEST"
    assert cluster.health_checks[0].grpc_health_check.service_name == ""
    hcm = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.unpack()
    assert hcm.codec_type.name == "HTTP2"
    route = hcm.route_config.virtual_hosts[0].routes[0].route
    assert route.timeout.total_seconds() == 0  # streams may stay open; calls carry their own deadline
    assert "unavailable" in route.retry_policy.retry_on


def _cluster(doc: Doc) -> Doc:
    return doc["static_resources"]["clusters"][0]


@pytest.mark.parametrize(("mutation", "message"), [
    (lambda d: _cluster(d).update(lb_policy="LEAST_REQUESTS"), "Unknown value LEAST_REQUESTS"),
    (lambda d: _cluster(d).update(conect_timeout="1s"), "Unknown field"),
    (lambda d: _cluster(d).update(connect_timeout="one second"), "Invalid duration"),
    (lambda d: _cluster(d)["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].update(bogus=1), "Unknown field 'bogus'"),
    (lambda d: _cluster(d).update(type="LOGICAL_DNS"), "STRICT_DNS"),
    (lambda d: _cluster(d).update(lb_policy="RANDOM"), "lb_policy RANDOM"),
    (lambda d: _cluster(d).pop("typed_extension_protocol_options"), "HTTP/2 upstream"),
    (lambda d: _cluster(d).pop("health_checks"), "grpc.health.v1 health check"),
    (lambda d: _cluster(d)["health_checks"][0]["grpc_health_check"].update(service_name="digits.v1"),
     "unknown service"),
    (lambda d: _cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"].pop(), "not every server service"),
    (lambda d: d["static_resources"]["listeners"][0]["address"]["socket_address"].update(port_value=9002),
     "not published"),
])
def test_envoy_rules_catch(envoy: Doc, compose: Doc, mutation: Callable[[Doc], Any], message: str) -> None:
    broken = copy.deepcopy(envoy)
    mutation(broken)
    problems = check.check_envoy(broken, compose)
    assert any(message in p for p in problems), problems


def test_prometheus_scrapes_every_server_service(prometheus: Doc, compose: Doc) -> None:
    assert check.check_prometheus(prometheus, compose) == []
    names = {n for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names == {"server", "replica", "envoy"}


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
    problems = check.check_prometheus(broken, compose)
    assert any(message in p for p in problems), problems
