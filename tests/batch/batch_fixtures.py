"""Helpers for the batch CLI tests: a model repository built by the project's exporter (through the serving test
fixtures), generated image trees with every kind of trouble, and readers for the output files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.serving.serving_fixtures import RGB_LABELS, draw_image, encode, export_model, make_run

MODEL = "rgb"
ROOT = Path(__file__).resolve().parents[2]


def drop_root_privileges() -> list[str]:
    """A command prefix under which file permissions hold: as root they stop nothing (CAP_DAC_OVERRIDE), so the
    command runs without that capability (setpriv); skip where that is impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to hold")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def build_repository(root: Path) -> Path:
    """``root/repository/rgb/1``: an RGB 32x32 ResNet-20 with random weights, exported and verified."""
    run = make_run(root / "runs" / MODEL, arch="resnet20", labels=RGB_LABELS, color_mode="RGB", size=32, seed=2)
    repository = root / "repository"
    export_model(run, repository, MODEL)
    return repository


@dataclass(frozen=True)
class Tree:
    root: Path
    good: list[str]      # paths as the CLI writes them (relative to the test's cwd), in the CLI's order
    bad: dict[str, str]  # path → the start of its error message

    @property
    def all(self) -> list[str]:
        return sorted(self.good + list(self.bad), key=lambda p: p.split("/"))


def _save(path: Path, img: Image.Image, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(img, fmt, **({"quality": 90} if fmt == "JPEG" else {})))


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
        _save(root / name, draw_image(200 + i, size, mode), fmt)
    png = encode(draw_image(1, (40, 40), "RGB"), "PNG")
    (root / "bad").mkdir()
    (root / "bad" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "notes.png").write_text("not an image, whatever the name says\n")
    # Skipped by the folder walk: no image suffix, hidden file, hidden folder.
    (root / "readme.txt").write_text("a folder may hold other files\n")
    _save(root / ".hidden.png", draw_image(3, (20, 20), "RGB"), "PNG")
    _save(root / ".cache" / "x.png", draw_image(4, (20, 20), "RGB"), "PNG")
    name = root.name
    return Tree(root, good=[f"{name}/{p}" for p in good],
                bad={f"{name}/bad/truncated.png": "cannot decode image", f"{name}/bad/empty.jpg": "empty image",
                     f"{name}/bad/notes.png": "cannot decode image"})


def make_pngs(root: Path, n: int, size: tuple[int, int] = (32, 32)) -> list[Path]:
    """``n`` small PNG files in ``root`` (quick to write; different pictures)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.png"
        draw_image(i, size, "RGB").save(path)
        paths.append(path)
    return paths


def read_rows(path: Path) -> list[dict]:
    """The output as dicts with the JSONL types (CSV cells converted: '' → None, top_k parsed)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    rows = []
    for r in csv.DictReader(io.StringIO(text, newline="")):
        rows.append({"path": r["path"], "label": r["label"] or None,
                     "probability": float(r["probability"]) if r["probability"] else None,
                     "top_k": json.loads(r["top_k"]) if r["top_k"] else [], "error": r["error"] or None})
    return rows
