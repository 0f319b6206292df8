"""Fixtures of the reliability tests: a collector for the measured figures (the repository and the ``digits``
oracle are the shared ones of tests/conftest.py), and two model instances in every server they start (the suite must
hold with ``--instances`` > 1: requests then compute in two threads at once).

The figures (inputs tried, crashes, overload answer times, soak memory slope, drain results …) are printed at the end
of the run and, when ``RELIABILITY_REPORT=path.json`` is set, written there as JSON. They are reports, never inputs:
no test reads a figure another test wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FIGURES: dict[str, object] = {}


INSTANCES = "2"


@pytest.fixture(scope="session")
def figures() -> dict[str, object]:
    return FIGURES


@pytest.fixture(scope="package", autouse=True)
def two_instances() -> Iterator[None]:
    """``SERVING_INSTANCES`` for this package's tests, set before their module fixtures start servers: read by the
    serve CLI of server processes and by ``base_config`` of in-process ones."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SERVING_INSTANCES", INSTANCES)
        yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key}: {value}")
    if path := os.environ.get("RELIABILITY_REPORT"):
        Path(path).write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")
