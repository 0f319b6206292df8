"""Fixtures for the serving tests; the helpers behind them are in serving_fixtures.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import Repo, ServerThread, base_config, build_repository, torch_probabilities, write_images

from serving.config import ServerConfig


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build_repository(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def torch_reference(repo: Repo) -> Callable[[str, Path | bytes], np.ndarray]:
    return torch_probabilities(repo)


@pytest.fixture(scope="session")
def server(repo: Repo) -> Iterator[ServerThread]:
    """One server for the read-only tests: every model of the repository, a short batching window."""
    thread = ServerThread(base_config(repo.path, max_queue_delay_ms=2.0)).start()
    yield thread
    thread.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    """Factory for servers with special settings; each is stopped at the end of the test."""
    started: list[ServerThread] = []

    def make(config: ServerConfig, load: bool = True) -> ServerThread:
        thread = ServerThread(config)
        started.append(thread)
        return thread.start(load)

    yield make
    for thread in started:
        thread.close(grace=0.5)
