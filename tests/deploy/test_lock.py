"""The lock installs on every interpreter the images use: the official python:3.11 images' newest 3.11, and Debian
bookworm's python3 (3.11.2), the base `make images` builds where Docker Hub cannot be reached.

Offline: each pinned distribution installed here (the venv `make test` installs from the lock) carries its
Requires-Python. Building the images on the Debian base (tests/deploy/test_container_*.py) checks the same for real.
"""

from __future__ import annotations

import re
from importlib import metadata

from packaging.specifiers import SpecifierSet

from tests.support.paths import ROOT

BOOKWORM_PYTHON = "3.11.2"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)")


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return {m.group(1): m.group(2) for m in map(PIN.match, lines) if m}


def test_every_pin_supports_bookworm_python() -> None:
    problems, checked = [], 0
    for name, version in pins().items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # in no dependency set of this venv (onnxruntime-gpu: only the serve-gpu image installs it)
        if dist.version != version:
            problems.append(f"{name}: {dist.version} installed, {version} pinned (reinstall: make venv)")
            continue
        requires = dist.metadata.get("Requires-Python")
        if requires and BOOKWORM_PYTHON not in SpecifierSet(requires):
            problems.append(f"{name}=={version} requires Python {requires}")
        checked += 1
    assert problems == []
    assert checked > 100, "the lock's pins should mostly be installed in the test venv"
