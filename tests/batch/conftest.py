"""Fixtures of the batch CLI tests: an image tree to classify, and a server on the shared repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.batch import Tree, make_tree
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config


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
def batch_server(repository: Repo) -> Iterator[ServerThread]:
    thread = ServerThread(base_config(repository.path, max_queue_delay_ms=2.0)).start()
    yield thread
    thread.close()
