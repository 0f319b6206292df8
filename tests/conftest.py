"""Fixtures shared by every test folder; the helpers behind them are in tests/support/.

The session-wide repository (digits and rgb, version 1 each) and the predictors loaded from it are read-only by
convention: a test that changes a repository copies what it needs into its own ``tmp_path`` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.images import make_image_folder, write_image_files

if TYPE_CHECKING:  # the fixtures import these when used: a test folder that needs no server loads no gRPC
    from serving.config import ServerConfig
    from serving.runtime.predictor import Predictor
    from tests.support.repositories import Repo
    from tests.support.servers import ServerThread

# Two cores, several test workers and servers: keep each library from spawning a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """img0.png … img5.jpg: PNG and JPEG, L/RGB/RGBA, several sizes."""
    return write_image_files(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """digits (L 28×28, 10 classes) and rgb (RGB 32×32, 4 classes), version 1 each, with the runs behind them."""
    from tests.support.repositories import build_repository

    return build_repository(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="session")
def digits(repository: Repo) -> Predictor:
    """The in-process twin of what a server serves from ``repository``: the oracle for its answers."""
    from serving.runtime import loader

    return loader.load(repository.path, "digits", threads=1).predictor


@pytest.fixture(scope="session")
def rgb(repository: Repo) -> Predictor:
    from serving.runtime import loader

    return loader.load(repository.path, "rgb", threads=1).predictor


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    """``make_server(config, load=True)``: an in-thread server for this test, stopped at its end."""
    from tests.support.servers import ServerThread

    started: list[ServerThread] = []

    def make(config: ServerConfig, load: bool = True) -> ServerThread:
        thread = ServerThread(config)
        started.append(thread)
        return thread.start(load)

    yield make
    for thread in started:
        thread.close(grace=0.5)
