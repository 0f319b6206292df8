"""Hostile and unusual image bytes: decompression bombs, odd but valid files, seeds and random damage for fuzzing."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from tests.support.images import draw_image, encode


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG header claiming w×h pixels, with almost no data: 74 bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _png_chunk(b"IEND", b""))


def gif_bomb(w: int, h: int) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0)
    return head + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00\x3b"


def tiff_bomb(w: int, h: int) -> bytes:
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (278, 4, 1, h), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd


def webp_bomb(w: int, h: int) -> bytes:
    """A real lossless WebP whose VP8L header is patched to claim w×h (14-bit fields)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 200)), "WEBP", lossless=True))
    i = data.index(b"VP8L") + 8
    bits = int.from_bytes(data[i + 1:i + 5], "little")
    data[i + 1:i + 5] = ((bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


def jpeg_bomb(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 200)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def bmp_bomb(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def bombs() -> dict[str, bytes]:
    """Tiny files claiming enormous dimensions, one per format the server decodes."""
    return {"bomb.png": png_bomb(100_000, 100_000), "bomb.gif": gif_bomb(65_535, 65_535),
            "bomb.tiff": tiff_bomb(100_000, 100_000), "bomb.webp": webp_bomb(16_384, 16_384),
            "bomb.jpg": jpeg_bomb(65_000, 65_000), "bomb.bmp": bmp_bomb(100_000, 100_000),
            "mid-bomb.png": png_bomb(3_000, 3_000), "mid-bomb.webp": webp_bomb(3_000, 3_000)}


def _frames(n: int, size: tuple[int, int], mode: str) -> list[Image.Image]:
    return [draw_image(500 + i, size, mode) for i in range(n)]


def unusual_images() -> dict[str, bytes]:
    """Valid files the server must decode: animated, multi-page, 16-bit, CMYK, palette, 1-bit, EXIF-rotated …"""
    out: dict[str, bytes] = {}
    first, *rest = _frames(3, (30, 26), "RGB")
    out["animated.gif"] = encode(first.convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in rest],
                                 duration=50, loop=0)
    out["animated.png"] = encode(first, "PNG", save_all=True, append_images=rest, duration=50)
    out["animated.webp"] = encode(first, "WEBP", save_all=True, append_images=rest, duration=50)
    out["multipage.tiff"] = encode(first, "TIFF", save_all=True, append_images=rest)
    gray16 = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83).astype(np.uint16)
    out["gray16.png"] = encode(Image.fromarray(gray16), "PNG")
    out["gray16.tiff"] = encode(Image.fromarray(gray16), "TIFF")
    out["int32.tiff"] = encode(Image.fromarray(gray16.astype(np.int32)), "TIFF")
    out["float.tiff"] = encode(Image.fromarray(gray16.astype(np.float32) / 65535), "TIFF")
    base = draw_image(7, (40, 30), "RGB")
    out["cmyk.jpg"] = encode(base.convert("CMYK"), "JPEG", quality=90)
    out["cmyk.tiff"] = encode(base.convert("CMYK"), "TIFF")
    out["palette.png"] = encode(base.convert("P"), "PNG")
    palette = base.convert("P")
    out["palette-transparent.png"] = encode(palette, "PNG", transparency=0)
    out["palette.gif"] = encode(palette, "GIF")
    out["1bit.png"] = encode(base.convert("1"), "PNG")
    out["la.png"] = encode(base.convert("LA"), "PNG")
    out["rgba.webp"] = encode(base.convert("RGBA"), "WEBP")
    out["progressive.jpg"] = encode(base, "JPEG", progressive=True, quality=80)
    out["bmp.bmp"] = encode(base, "BMP")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90°
    out["exif-rotated.jpg"] = encode(base, "JPEG", exif=exif.tobytes())
    out["1x1.png"] = encode(Image.new("L", (1, 1), 255), "PNG")
    out["wide.png"] = encode(Image.new("RGB", (1999, 2), (1, 2, 3)), "PNG")
    # Formats Pillow knows but the server must not even parse (the decoder allowlist).
    out["not-allowed.ppm"] = encode(base, "PPM")
    out["not-allowed.ico"] = encode(base, "ICO")
    out["not-allowed.pcx"] = encode(base, "PCX")
    out["eps-header.eps"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    return out


def seed_images() -> dict[str, bytes]:
    """Ordinary PNG/JPEG files: the starting points of the mutation run."""
    out = {}
    for i, (fmt, mode, size) in enumerate([("PNG", "L", (28, 28)), ("PNG", "RGB", (40, 36)), ("JPEG", "RGB", (50, 50)),
                                           ("JPEG", "L", (31, 29)), ("PNG", "RGBA", (33, 30)), ("GIF", "P", (24, 24)),
                                           ("WEBP", "RGB", (30, 30)), ("TIFF", "RGB", (20, 22))]):
        out[f"seed{i}.{fmt.lower()}"] = encode(draw_image(200 + i, size, "RGB").convert(mode), fmt)
    return out


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random damage to a file: truncation, bit flips (often in the header), overwritten or moved bytes."""
    kind = rng.choice(["truncate", "flip", "flip-header", "overwrite", "insert", "delete", "splice-zero"])
    b = bytearray(data)
    n = len(b)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(0, n))])
    if kind in ("flip", "flip-header"):
        span = min(n, 64) if kind == "flip-header" else n
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, span))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b)
    i = int(rng.integers(0, n))
    length = int(rng.integers(1, 33))
    if kind == "overwrite":
        b[i:i + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == "insert":
        b[i:i] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == "delete":
        del b[i:i + length]
    else:
        b[i:i + length] = b"\0" * length
    return kind, bytes(b)


def bounded(count: int, seconds: float) -> Iterator[int]:
    """0, 1, 2 … until ``count`` items or ``seconds`` have passed, whichever comes first."""
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            return
        yield i
