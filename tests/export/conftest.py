"""Fixtures of the export tests: one torch thread, and RUN folders made once per set of arguments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.support.runs import make_run

MakeRun = Callable[..., Path]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has two cores shared by everything; these models are tiny
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run_of(tmp_path_factory: pytest.TempPathFactory) -> MakeRun:
    """``run_of(arch, classes, in_chans, size, head)`` → a RUN folder from random weights (made once per
    arguments; treat as read-only)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str, classes: int = 10, in_chans: int = 1, size: int = 16, head: str = "linear") -> Path:
        key = (arch, classes, in_chans, size, head)
        if key not in cache:
            cache[key] = make_run(tmp_path_factory.mktemp(f"run-{arch}"), arch, classes, in_chans, size, head=head)
        return cache[key]

    return make
