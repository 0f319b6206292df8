"""Fixtures of the serving tests: the shared repository plus the versions these tests need, and one server on it."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.repositories import Repo, add_version, tamper_golden, tamper_onnx
from tests.support.runs import torch_probabilities
from tests.support.servers import ServerThread, base_config


@pytest.fixture(scope="session")
def serving_repo(repository: Repo, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """digits (versions 1 and 2), rgb, tampered (bad golden logits), corrupt (ONNX changed); treat as read-only."""
    path = tmp_path_factory.mktemp("serving") / "repository"
    shutil.copytree(repository.path, path)
    digits = path / "digits" / "1"
    add_version(path, digits, "digits", 2)
    add_version(path, digits, "tampered", 1, tamper_golden)
    add_version(path, digits, "corrupt", 1, tamper_onnx)
    return Repo(path, repository.runs)


@pytest.fixture(scope="session")
def torch_reference(repository: Repo) -> Callable[[str, Path | bytes], np.ndarray]:
    return torch_probabilities(repository.runs)


@pytest.fixture(scope="session")
def server(serving_repo: Repo) -> Iterator[ServerThread]:
    """One server for the read-only tests: every model of the serving repository, a short batching window."""
    thread = ServerThread(base_config(serving_repo.path, max_queue_delay_ms=2.0)).start()
    yield thread
    thread.close()
