"""Tiny experiment settings, in one place so that the ``tiny_run`` fixture and the CLI test run the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# 3 classes × 8 images (18 train / 6 valid) at 8 px: every run is one epoch of three batches.
TINY: dict[str, Any] = dict(seeds=1, epochs=1, bs=8, size=8, depths=(20,), lrs=(0.01, 1.0), sweep_epochs=1)
# One experiment runs two seeds, so that the tables hold real "mean ± std" cells and the comparisons a verdict.
SEEDS = {"one-cycle": 2}


def tiny_argv(name: str, data: Path, out: Path) -> list[str]:
    """The command line that gives exactly the settings of the ``tiny_run`` fixture."""
    return ["experiment", name, "--data", str(data), "--seeds", str(SEEDS.get(name, TINY["seeds"])),
            "--epochs", str(TINY["epochs"]), "--bs", str(TINY["bs"]), "--size", str(TINY["size"]),
            "--depths", ",".join(map(str, TINY["depths"])), "--lrs", ",".join(map(str, TINY["lrs"])),
            "--sweep-epochs", str(TINY["sweep_epochs"]), "--out", str(out)]
