"""Fixtures for the reliability tests: one small repository (digits, rgb) and a collector for the measured figures.

The figures (inputs tried, crashes, overload answer times, soak memory slope, drain results …) are printed at the end
of the run and, when ``RELIABILITY_REPORT=path.json`` is set, written there as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serving.runtime import loader
from serving.runtime.predictor import Predictor
from tests.serving.serving_fixtures import DIGITS_LABELS, RGB_LABELS, make_run, minimal_export

FIGURES: dict[str, object] = {}


@pytest.fixture(scope="session")
def rel_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits (L 28×28, 10 classes) and rgb (RGB 32×32, 4 classes), version 1 each; treat as read-only."""
    root = tmp_path_factory.mktemp("reliability")
    runs = {"digits": make_run(root / "runs" / "digits", arch="resnet20", labels=DIGITS_LABELS, color_mode="L",
                               size=28, seed=1),
            "rgb": make_run(root / "runs" / "rgb", arch="resnet20", labels=RGB_LABELS, color_mode="RGB", size=32,
                            seed=2)}
    for name, run in runs.items():
        minimal_export(run, root / "repository", name)
    return root / "repository"


@pytest.fixture(scope="session")
def digits(rel_repo: Path) -> Predictor:
    """The in-process twin of what the server serves: the oracle for every answer."""
    return loader.load(rel_repo, "digits", threads=1).predictor


@pytest.fixture(scope="session")
def figures() -> dict[str, object]:
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {value}")
    if path := os.environ.get("RELIABILITY_REPORT"):
        Path(path).write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")
