"""Fixtures of the reliability tests: a collector for the measured figures (the repository and the ``digits``
oracle are the shared ones of tests/conftest.py).

The figures (inputs tried, crashes, overload answer times, soak memory slope, drain results …) are printed at the end
of the run and, when ``RELIABILITY_REPORT=path.json`` is set, written there as JSON. They are reports, never inputs:
no test reads a figure another test wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FIGURES: dict[str, object] = {}


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
