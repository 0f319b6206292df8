"""Offline checks of the container deployment: ``python -m deploy.check`` (exit 1 with one line per problem).

No Docker engine, no cluster, no network. One module of deploy/checks/ per file it checks, each saying what it does:

- deploy/checks/build.py: the Dockerfile (hadolint; the stages compose and Kubernetes build from) and the build
  context .dockerignore lets through;
- deploy/checks/compose.py: docker-compose.yml, rendered by Docker Compose itself, then cross-checked;
- deploy/checks/prometheus.py: deploy/prometheus.yml against the compose services;
- deploy/checks/kubernetes.py: deploy/kubernetes/, strict Kubernetes schemas, then cross-checked;
- deploy/checks/common.py: the ports, targets and server options they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from deploy.checks.build import check_dockerfile, hadolint
from deploy.checks.common import ROOT, Problems, load_yaml_documents
from deploy.checks.compose import check_compose, check_compose_with_compose, load_compose
from deploy.checks.kubernetes import check_kubernetes
from deploy.checks.prometheus import check_prometheus
from deploy.dockerfile import Dockerfile, DockerIgnore


def run_all(root: Path = ROOT, with_hadolint: bool = True) -> dict[str, Problems]:
    """Every check, by name; an empty list means it passed."""
    dockerfile = Dockerfile.read(root / "Dockerfile")
    compose = load_compose(root / "docker-compose.yml")
    checks: dict[str, Callable[[], Problems]] = {
        "Dockerfile": lambda: check_dockerfile(dockerfile, DockerIgnore.read(root / ".dockerignore"), root),
        "docker-compose.yml": lambda: check_compose(compose, dockerfile, root),
        "docker compose config": lambda: check_compose_with_compose(root / "docker-compose.yml"),
        "deploy/prometheus.yml": lambda: check_prometheus(
            load_yaml_documents(root / "deploy" / "prometheus.yml")[0], compose),
        "deploy/kubernetes": lambda: check_kubernetes(root / "deploy" / "kubernetes", dockerfile),
    }
    if with_hadolint:
        checks["hadolint"] = lambda: hadolint(root / "Dockerfile")
    return {name: check() for name, check in checks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-hadolint", action="store_true", help="skip the Dockerfile linter")
    args = parser.parse_args(argv)
    results = run_all(with_hadolint=not args.no_hadolint)
    for name, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"     {problem}")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
