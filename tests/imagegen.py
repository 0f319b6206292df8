"""Generated test images: learnable patterns written as image folders (no data set is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(label: int, size: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """A learnable picture for class ``label``: a bright bar whose position encodes the class, plus noise."""
    img = rng.integers(0, 60, (size, size, channels), dtype=np.int64)
    band = max(1, size // 4)
    start = (label * band) % max(1, size - band + 1)
    img[:, start:start + band] += 180
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, mode: str = "L",
                      split: bool = True, seed: int = 0, fmt: str = "png") -> Path:
    """``root/{train,valid}/<class>/*.png`` (or ``root/<class>/*`` with split=False) of generated patterns."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for c in range(classes):
        for i in range(per_class):
            sub = ("valid" if i % 4 == 0 else "train") if split else ""
            folder = root / sub / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pattern(c, size, rng, channels), mode=mode).save(folder / f"{i:03d}.{fmt}")
    return root
