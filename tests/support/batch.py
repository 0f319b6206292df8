"""For the batch CLI tests: an image tree with every kind of trouble, rows with awkward names, the CLI in process or
as a subprocess, and a reader for the output files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.batch.output import Row
from serving.contract.prediction import Prediction
from tests.support.images import draw_image, encode, save
from tests.support.paths import ROOT
from tests.support.repositories import Repo

MODEL = "rgb"  # the batch tests classify with the shared repository's RGB model


@dataclass(frozen=True)
class Tree:
    root: Path
    good: list[str]      # paths as the CLI writes them (relative to the test's cwd), in the CLI's order
    bad: dict[str, str]  # path → the start of its error message

    @property
    def all(self) -> list[str]:
        return sorted(self.good + list(self.bad), key=lambda p: p.split("/"))


def make_tree(root: Path) -> Tree:
    """Nested folders, PNG/JPEG/BMP/WebP in several modes, odd names, and corrupt, empty and non-image files."""
    good = {
        "a.png": ("PNG", "RGB", (40, 30)),
        "b.jpg": ("JPEG", "RGB", (50, 50)),
        "with space.bmp": ("BMP", "RGB", (33, 31)),
        "ünï cödé ✓.webp": ("WEBP", "RGB", (36, 36)),
        "photo [1].png": ("PNG", "L", (28, 28)),
        "nested/deeper/c.png": ("PNG", "L", (31, 29)),
        "nested/d.JPG": ("JPEG", "L", (64, 48)),
        "nested/rgba.png": ("PNG", "RGBA", (30, 33)),
    }
    for i, (name, (fmt, mode, size)) in enumerate(good.items()):
        save(root / name, draw_image(200 + i, size, mode), fmt)
    png = encode(draw_image(1, (40, 40), "RGB"), "PNG")
    (root / "bad").mkdir()
    (root / "bad" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "notes.png").write_text("not an image, whatever the name says\n")
    # Skipped by the folder walk: no image suffix, hidden file, hidden folder.
    (root / "readme.txt").write_text("a folder may hold other files\n")
    save(root / ".hidden.png", draw_image(3, (20, 20), "RGB"), "PNG")
    save(root / ".cache" / "x.png", draw_image(4, (20, 20), "RGB"), "PNG")
    name = root.name
    return Tree(root, good=[f"{name}/{p}" for p in good],
                bad={f"{name}/bad/truncated.png": "cannot decode image", f"{name}/bad/empty.jpg": "empty image",
                     f"{name}/bad/notes.png": "cannot decode image"})


def _short(p: float | None) -> float | None:
    return None if p is None else float(str(np.float32(p)))  # as CSV and JSONL write a float32


def read_parquet_rows(folder: Path) -> list[dict]:
    """A Parquet output folder as dicts with the JSONL types and values (probabilities as JSONL writes them)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(folder).to_pylist()
    for row in rows:
        row["probability"] = _short(row["probability"])
        row["top_k"] = [{**p, "probability": _short(p["probability"])} for p in row["top_k"]]
    return rows


def read_rows(path: Path) -> list[dict]:
    """The output as dicts with the JSONL types (CSV cells converted: '' → None, top_k parsed; Parquet read whole)."""
    if path.suffix == ".parquet":
        return read_parquet_rows(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return [{"path": r["path"], "label": r["label"] or None,
             "probability": float(r["probability"]) if r["probability"] else None,
             "top_k": json.loads(r["top_k"]) if r["top_k"] else [], "error": r["error"] or None}
            for r in csv.DictReader(io.StringIO(text, newline=""))]


def batch(*args: str | Path) -> int:
    """``python -m serving batch ARGS…`` in this process; its exit code."""
    from serving import cli

    return cli.main(["batch", *map(str, args)])


def local(repository: Repo, *args: str | Path) -> int:
    return batch(*args, "--repository", repository.path, "--model", MODEL)


def spawn(args: list[str | Path], cwd: Path, prefix: list[str] = ()) -> subprocess.Popen:  # type: ignore[assignment]
    """``python -m serving batch ARGS…`` as a subprocess (pipes for its output), e.g. to be killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*prefix, sys.executable, "-m", "serving", "batch", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


AWKWARD = ["plain.png", "with space, and comma.png", 'quote " inside.png', "new\nline.png", "cr\rreturn.png",
           "ünï cödé ✓.png", os.fsdecode(b"latin1-\xe9.png"), "tab\t.png"]


def awkward_rows() -> list[Row]:
    """A row per :data:`AWKWARD` name, every third an error with newlines and quotes in its text."""
    preds = (Prediction("blue", 2, 0.91234567), Prediction("gray, or \"grey\"", 3, 0.0712))
    return [Row(path, error="cannot decode image:\n  bad \"data\", really") if i % 3 == 2 else Row(path, preds)
            for i, path in enumerate(AWKWARD)]
