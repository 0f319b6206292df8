"""Generated test images: pictures, encoded bytes and image folders (no data set is ever downloaded)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def draw_image(seed: int, size: tuple[int, int], mode: str) -> Image.Image:
    """A reproducible picture with a few shapes, so that different seeds give different classes."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        x1, y1 = int(rng.integers(x0 + 2, w)), int(rng.integers(y0 + 2, h))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return img.convert(mode)


def textured(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB gradient with noise on it: fine detail, where decoders and resize filters disagree if they do."""
    w, h = size
    rng = np.random.default_rng(seed)
    grad = np.linspace(20, 220, w)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(grad + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    """The file bytes of ``img`` in format ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def save(path: Path, img: Image.Image, fmt: str) -> Path:
    """``img`` written to ``path`` (folders made; JPEG at quality 90)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(img, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
    return path


def write_image_files(root: Path) -> dict[str, Path]:
    """PNG and JPEG files of several sizes and modes (the server resizes and converts them), by file name."""
    files = {}
    for i, (fmt, mode, size) in enumerate([("PNG", "L", (28, 28)), ("PNG", "RGB", (40, 36)),
                                           ("JPEG", "RGB", (50, 50)), ("JPEG", "L", (31, 29)),
                                           ("PNG", "RGBA", (33, 30)), ("JPEG", "RGB", (64, 48))]):
        path = save(root / f"img{i}.{fmt.lower().replace('jpeg', 'jpg')}", draw_image(100 + i, size, mode), fmt)
        files[path.name] = path
    return files


def make_pngs(root: Path, n: int, size: tuple[int, int] = (32, 32)) -> list[Path]:
    """``n`` small PNG files ``root/00000.png`` … (quick to write; different pictures)."""
    return [save(root / f"{i:05d}.png", draw_image(i, size, "RGB"), "PNG") for i in range(n)]


def write_blobs(root: Path, n: int, mode: str, seed: int, prefix: str) -> list[str]:
    """``n`` PNG files ``root/prefix/000.png`` … of assorted sizes (so that preprocessing resizes up and down);
    returns their paths relative to ``root``."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = int(rng.integers(6, 48)), int(rng.integers(6, 48))
        shape = (h, w) if mode == "L" else (h, w, 3)
        # Smooth blobs plus noise: closer to real images than pure noise, and varied in brightness.
        base = rng.integers(0, 256) * np.ones(shape)
        pixels = np.clip(base * 0.5 + rng.normal(64, 60, shape), 0, 255).astype(np.uint8)
        name = f"{prefix}/{i:03d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode=mode).save(root / name)
        names.append(name)
    return names


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
    """``root/{train,valid}/<class>/*.png`` (or ``root/<class>/*`` with split=False) of learnable patterns."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for c in range(classes):
        for i in range(per_class):
            sub = ("valid" if i % 4 == 0 else "train") if split else ""
            folder = root / sub / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pattern(c, size, rng, channels), mode=mode).save(folder / f"{i:03d}.{fmt}")
    return root
