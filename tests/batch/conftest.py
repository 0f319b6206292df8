"""Fixtures for the batch CLI tests; the helpers behind them are in batch_fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_fixtures import Tree, build_repository, make_tree

from tests.serving.serving_fixtures import ServerThread, base_config


@pytest.fixture(scope="session")
def batch_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("batch"))


@pytest.fixture(scope="session")
def tree_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trees")


@pytest.fixture(scope="session")
def tree(tree_root: Path) -> Tree:
    """A read-only-by-convention image tree; tests run with cwd = its parent, so paths are relative."""
    return make_tree(tree_root / "imgs")


@pytest.fixture
def in_trees(tree_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tree_root)
    return tree_root


@pytest.fixture(scope="session")
def batch_server(batch_repository: Path) -> Iterator[ServerThread]:
    thread = ServerThread(base_config(batch_repository, max_queue_delay_ms=2.0)).start()
    yield thread
    thread.close()
