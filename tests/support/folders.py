"""The small folders a new user brings (issue 29), built from data that ships inside scikit-learn (no download):

- ``odd_even_digits``: 400 scikit-learn digits, inverted (dark strokes on white), labelled ``odd`` / ``even``, as
  8×8 PNG files in ``train/`` and ``valid/`` (320 / 80);
- ``photo_crops``: crops of scikit-learn's two sample photos (``china``, ``flower``) and smooth colour ``noise``,
  each written as a camera-size JPEG (1600 px wide), in ``train/`` and ``valid/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def odd_even_digits(root: Path, n: int = 400, n_valid: int = 80, seed: int = 0) -> Path:
    """``root/{train,valid}/{odd,even}/NNNN.png``: ``n`` digits drawn at random (seeded), the last ``n_valid``
    of them for validation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    picked = np.random.default_rng(seed).permutation(len(digits.target))[:n]
    # 17 grey levels (0–16) → 8 bits, inverted: a user's scans are dark ink on light paper.
    pixels = 255 - np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for k, i in enumerate(picked):
        split = "valid" if k >= n - n_valid else "train"
        folder = root / split / ("odd" if digits.target[i] % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")
    return root


PHOTO_CLASSES = ("china", "flower", "noise")


def _crop(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random crop of 40–90 % of the photo's height at the 3:2 aspect of a camera."""
    h, w = photo.shape[:2]
    ch = int(h * rng.uniform(0.4, 0.9))
    cw = min(w, ch * 3 // 2)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return Image.fromarray(photo[y:y + ch, x:x + cw])


def _noise(rng: np.random.Generator) -> Image.Image:
    """Smooth colour noise: random pixels at 24×16, enlarged (a JPEG of per-pixel noise at 1600 px is megabytes)."""
    return Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))


def photo_crops(root: Path, n_train: int = 40, n_valid: int = 12, width: int = 1600, seed: int = 0) -> Path:
    """``root/{train,valid}/{china,flower,noise}/NNN.jpg``: per class ``n_train`` + ``n_valid`` images,
    ``width`` × ``width``·2/3 pixels, JPEG quality 90."""
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    rng = np.random.default_rng(seed)
    size = (width, width * 2 // 3)
    for label in PHOTO_CLASSES:
        for k in range(n_train + n_valid):
            img = _noise(rng) if label == "noise" else _crop(photos[label], rng)
            folder = root / ("valid" if k >= n_train else "train") / label
            folder.mkdir(parents=True, exist_ok=True)
            img.resize(size, Image.Resampling.BICUBIC).save(folder / f"{k:03d}.jpg", quality=90)
    return root
