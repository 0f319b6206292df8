"""Fixtures of the export tests; the RUN builders live in export_fixtures.py so test modules can import them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from export_fixtures import randomize_batchnorm, write_run

from models import registry


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has two cores shared by everything; these models are tiny
    yield
    torch.set_num_threads(before)


MakeRun = Callable[..., Path]


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> MakeRun:
    """``make_run(arch, classes, in_chans, size, **kw)`` → a RUN directory (cached per arguments)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str, classes: int = 10, in_chans: int = 1, size: int = 16, **kw) -> Path:
        key = (arch, classes, in_chans, size, tuple(sorted(kw.items())))
        if key not in cache:
            torch.manual_seed(0)
            model = randomize_batchnorm(registry.create(arch, classes, in_chans), in_chans, size)
            cache[key] = write_run(tmp_path_factory.mktemp(f"run-{arch}"), model, arch, classes, in_chans, size,
                                   **kw)
        return cache[key]

    return make
