"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.imagegen import make_image_folder

# Two cores, several test workers and servers: keep each library from spawning a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")
