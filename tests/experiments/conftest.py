"""Experiment fixtures: one tiny generated image folder, and each experiment run once on it (session-wide)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.experiments import SEEDS, TINY
from tests.support.images import make_image_folder
from training.experiments import Settings, run_experiment


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("experiments") / "images", classes=3, per_class=8)


@pytest.fixture(scope="session")
def tiny_run(tiny_images, tmp_path_factory) -> Callable[[str], tuple[Path, dict]]:
    """``tiny_run(name)`` → (report folder, results.json as read back); each experiment trains once per session."""
    cache: dict[str, tuple[Path, dict]] = {}
    lines: list[str] = []

    def run(name: str) -> tuple[Path, dict]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"report-{name}")
            settings = Settings(out=out, data=str(tiny_images), **{**TINY, "seeds": SEEDS.get(name, 1)})
            returned = run_experiment(name, settings, log=lines.append)
            doc = json.loads((out / "results.json").read_text(), parse_constant=_refuse)
            assert doc == returned
            assert any(line.startswith(f"[{name} 1/") for line in lines), "no progress line"
            cache[name] = (out, doc)
        return cache[name]

    return run


def _refuse(token: str) -> float:
    raise ValueError(f"results.json is not strict JSON: {token}")
