"""Fixtures of the container tests; helpers in tests/support/containers.py, checks in deploy/checks/."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy import images
from deploy.checks.common import TRAIN_TARGET
from deploy.checks.compose import load_compose
from deploy.dockerfile import Dockerfile
from deploy.images import Docker
from tests.support.containers import StandIn, WriteWatch, docker_or_skip_reason, ensure_serve_venv, run, stand_in
from tests.support.images import make_image_folder
from tests.support.paths import ROOT


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(ROOT / "Dockerfile")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def serve_venv() -> Path:
    """``.venv-serve/``: the [serve] set only, built once and reused while pyproject.toml and the lock are unchanged."""
    venv, seconds = ensure_serve_venv()
    if seconds:
        print(f"\nbuilt {venv} in {seconds:.1f} s")
    return venv


@dataclass(frozen=True)
class Trained:
    image: StandIn
    repository: Path
    runs: Path
    images: Path
    name: str
    first: Any      # CompletedProcess of the first run
    second: Any     # … and of the second, which must find the model and stop
    seconds: float
    written: list[Path]  # what the runs created in the image's WORKDIR (root's, read-only to the image's user)


@pytest.fixture(scope="session")
def trained(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The train image's CMD, run twice the way compose runs the trainer, into an empty model repository.

    Its ENV comes from the Dockerfile; like docker-compose.yml, the test overrides a few of them: a small generated
    image folder instead of digits, one epoch, no plots, and one thread (the test machine's two cores are shared;
    torch's spinning threads tripled the CPU time here). The learning rate is left to lr_find, as by default.
    """
    root = tmp_path_factory.mktemp("train-image")
    # The image's venv: the one running these tests (it holds the train set); ROOT/.venv is absent in a git worktree.
    paths = {"/opt/venv": Path(sys.prefix), "/model_repository": root / "model_repository", "/runs": root / "runs",
             "/home/app": root / "home", "/tmp": root / "tmp"}
    for folder in paths.values():
        folder.mkdir(exist_ok=True)
    image = stand_in(dockerfile, TRAIN_TARGET, root / "app", paths)
    images = make_image_folder(root / "images", classes=3, per_class=12, size=16)
    # One epoch on 24 images learns too little to pass export's learned gate: these tests check the CMD's plumbing.
    env = {**image.env, "MODEL_NAME": "shapes", "TRAIN_DATA": str(images), "TRAIN_EPOCHS": "1",
           "TRAIN_ARGS": "--bs 16 --no-plots", "EXPORT_ARGS": "--allow-unlearned", "OMP_NUM_THREADS": "1"}
    argv = image.argv(image.config.cmd or (), env)
    with WriteWatch(image.cwd) as watch:
        start = time.perf_counter()
        first = run(image, argv, env, timeout=540)
        seconds = time.perf_counter() - start
        second = run(image, argv, env, timeout=120)
    return Trained(image, paths["/model_repository"], paths["/runs"], images, "shapes", first, second, seconds,
                   sorted(watch.appeared))


# ---- a Docker engine: the images built and run for real ------------------------------------------------------------

@pytest.fixture(scope="session")
def docker() -> Docker:
    """The engine the container tests run on; without one they are skipped with the reason (make test stays green)."""
    client, reason = docker_or_skip_reason()
    if client is None and os.environ.get("CONTAINER_TESTS") == "1":
        pytest.fail(f"CONTAINER_TESTS=1 but {reason}")
    if client is None:
        pytest.skip(f"container tests need a Docker engine: {reason}")
    return client


def _pip_ca() -> Path | None:
    """The CA bundle pip trusts here, handed to the builds as in `make images` (PIP_CA, else pip's PIP_CERT)."""
    value = os.environ.get("PIP_CA") or os.environ.get("PIP_CERT")
    return Path(value) if value and Path(value).is_file() else None


def _image(docker: Docker, target: str) -> str:
    """Build ``target`` once per session (BuildKit's layer cache makes an unchanged image a matter of seconds)."""
    seconds = images.build_all([target], pip_ca=_pip_ca(), quiet=True, docker=docker)[target]
    print(f"\nbuilt {images.tag(target)} in {seconds:.1f} s")
    return images.tag(target)


@pytest.fixture(scope="session")
def serve_image(docker: Docker) -> str:
    return _image(docker, "serve")


@pytest.fixture(scope="session")
def train_image(docker: Docker, serve_image: str) -> str:
    # After the serve image: builds run one at a time, and the serve tests need only theirs.
    return _image(docker, "train")


@pytest.fixture(scope="session")
def served_repository(repository: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test repository, readable by the images' user (uid 10001): pytest's own folders are root's, mode 0700."""
    path = tmp_path_factory.mktemp("bind") / "model_repository"
    shutil.copytree(repository.path, path)
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    for file in (p for p in path.rglob("*") if p.is_file()):
        file.chmod(0o644)
    return path


@pytest.fixture(scope="session")
def balancer_image(docker: Docker, train_image: str) -> str:
    return _image(docker, "balancer")


@pytest.fixture(scope="session")
def prometheus_image(docker: Docker, balancer_image: str) -> str:
    return _image(docker, "prometheus")
