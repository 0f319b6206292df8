"""deploy/prometheus.yml: its scrape targets name the compose services and ports that serve metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy.checks.common import METRICS_PORT, SERVE_TARGET, Problems
from deploy.checks.compose import services_by_target

PROMETHEUS_TOP = {"global", "scrape_configs", "rule_files", "alerting", "remote_write", "remote_read",
                  "scrape_config_files", "storage", "tracing", "otlp", "runtime"}


def check_prometheus(document: dict[str, Any], compose: dict[str, Any]) -> Problems:
    """Prometheus's configuration against the rendered compose project: every server service scraped for metrics."""
    problems: Problems = []
    p = problems.append
    unknown = set(document) - PROMETHEUS_TOP
    if unknown:
        p(f"prometheus.yml: unknown top-level keys {sorted(unknown)}")
    jobs = document.get("scrape_configs") or []
    names = [j.get("job_name") for j in jobs]
    if len(set(names)) != len(names):
        p(f"prometheus.yml: job names must be unique: {names}")
    targets, problems_of_jobs = _scrape_targets(jobs, compose["services"])
    problems += problems_of_jobs
    for name in services_by_target(compose, SERVE_TARGET):
        if targets.get(name) != ("/metrics", METRICS_PORT):
            p(f"prometheus.yml: server service {name} is not scraped at :{METRICS_PORT}/metrics")
    return problems


def _scrape_targets(jobs: list[dict[str, Any]], services: Mapping[str, Any],
                    ) -> tuple[dict[str, tuple[str, int]], Problems]:
    """What each host is scraped at, as (metrics path, port), and the problems of the jobs' DNS discovery."""
    problems: Problems = []
    targets: dict[str, tuple[str, int]] = {}  # compose service → (metrics path, port)
    for job in jobs:
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type", "SRV") != "A" or "port" not in sd:
                problems.append(f"prometheus.yml: job {job['job_name']}: Compose DNS has A records; set type: A "
                                "and a port")
            for name in sd.get("names") or []:
                if name not in services:
                    problems.append(f"prometheus.yml: job {job['job_name']} scrapes {name}, not a compose service")
                targets[name] = (job.get("metrics_path", "/metrics"), sd.get("port"))
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = target.rpartition(":")
                targets[host] = (job.get("metrics_path", "/metrics"), int(port))
    return targets, problems
