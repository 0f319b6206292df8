"""Shared fixtures for the models/ tests: one thread everywhere, random models with non-trivial BN statistics."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # One thread: spinning BLAS/torch threads slow the forwards many times over on a busy 2-core machine.
    # Module scope, so tests outside tests/models keep their own thread counts.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(previous)


def _make_model(arch: str, num_classes: int = 5, in_chans: int = 3, size: int = 32, seed: int = 0,
                **kwargs: object) -> nn.Module:
    """``registry.create`` + three train-mode batches (so running mean/var are far from 0/1), then eval mode."""
    from models import registry

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = registry.create(arch, num_classes, in_chans, **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, in_chans, size, size) * 1.5 + 0.3)
    return model.eval()


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    """``make_model(arch, num_classes=5, in_chans=3, size=32, seed=0, **kwargs)`` → a random eval-mode model."""
    return _make_model
