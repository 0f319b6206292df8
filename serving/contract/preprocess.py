"""The preprocessing spec and the one implementation of it in Pillow + NumPy.

The spec is written once at training time (``RUN/spec.json``) and travels with the model (``model.json`` and the
ONNX metadata). Training feeds fastai with images opened by :func:`load_image` and resized/normalised by fastai's
own ``Resize``/``IntToFloatTensor``/``Normalize`` built from the same spec; serving runs :func:`preprocess`. A test
proves both give the same tensor for the same file; for a JPEG larger than twice the model's input that needs the
trainer to open it with ``min_size=spec.size`` too, as :func:`model_image` does.

Steps, in order:
1. decode (PNG, JPEG, BMP, WebP, GIF/TIFF first frame; no other format is even parsed), refusing more than
   ``max_pixels`` (counted from the file's header) before decoding; a JPEG is decoded at the smallest libjpeg DCT
   scale (1/8, 1/4, 1/2 or full) that still gives at least ``size`` pixels on each side, so that the step-4
   resize starts from 504x378 instead of 4032x3024 for a phone photo and a 224 px model (37 ms instead of 216 ms);
2. apply the EXIF orientation;
3. convert to the spec's color mode (``L`` or ``RGB``): 16-bit greyscale is scaled to 8 bits, palette images with
   transparency go through RGBA, alpha is dropped (as ``Image.convert`` and fastai do);
4. resize to ``size`` (``squish``: both sides to the target, aspect ratio not kept) with the spec's resample filter;
5. ``x = (pixels · scale − mean) / std`` per channel, float32, channels first.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.errors import InvalidInput

# Largest image we agree to decode: 40 megapixels (a 4K frame is 8.3). A 1 kB PNG can claim 100k × 100k pixels.
DEFAULT_MAX_PIXELS = 40_000_000

# The only decoders untrusted bytes may reach. Pillow would otherwise try every plugin it has, some of which parse
# rarely used formats with little hardening, and EPS hands the file to Ghostscript when it is installed.
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
COLOR_MODES = {"L": 1, "RGB": 3}
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an image file into the model's input tensor."""

    size: tuple[int, int]                 # (height, width)
    color_mode: str = "RGB"               # "L" or "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    resize: str = "squish"
    resample: str = "bilinear"
    labels: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, got {self.color_mode!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")
        if self.resize != "squish":
            raise ValueError(f"only the 'squish' resize is implemented, got {self.resize!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) >= 1, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values for mode {self.color_mode}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("size", "mean", "std", "labels"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("size", "mean", "std", "labels"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PreprocessSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale: keep the top 8 bits (Pillow's own conversion would clip at 255).
        arr = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def _reduce(img: Image.Image, min_size: tuple[int, int]) -> None:
    """Ask libjpeg to decode ``img`` (a JPEG not loaded yet) at the smallest DCT scale that is still at least
    ``min_size`` (height, width) once the EXIF orientation is applied; other formats are left as they are."""
    if img.format != "JPEG":
        return
    height, width = min_size
    if img.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:  # stored on its side: the file's width is our height
        height, width = width, height
    img.draft(None, (width, height))  # mode None: libjpeg's colour conversion stays the one a full decode uses


def load_image(source: str | Path | bytes, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file or encoded bytes into a PIL image of ``mode``; ``InvalidInput`` if it can't be.

    With ``min_size`` (height, width) a JPEG comes out only as large as a resize to that size needs (see step 1
    above); the pixel limit still applies to the size the file declares.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise InvalidInput("empty image payload")
        fp: Any = io.BytesIO(source)
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise InvalidInput(
                        f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
                    )
                img.seek(0)  # first frame of an animated or multi-page file
                if min_size is not None:
                    _reduce(img, min_size)
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_mode(img, mode)
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput("cannot decode image: not a PNG, JPEG, BMP, WebP, GIF or TIFF file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fired inside Image.open (far above our limit): say it the way we say it.
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        if claimed is None:
            raise InvalidInput(f"cannot decode image: {e}") from None
        raise InvalidInput(f"image is {claimed[1]} pixels, more than the limit of {max_pixels}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data inside a known format
        raise InvalidInput(f"cannot decode image: {type(e).__name__}: {e}") from None
    except (MemoryError, RecursionError):
        raise
    except Exception as e:
        # Decoders fed hostile bytes fail in other ways too (struct.error, IndexError, KeyError, ZeroDivisionError
        # seen in Pillow's history): it is still the client's data that cannot be decoded, not a server fault.
        raise InvalidInput(f"cannot decode image: {type(e).__name__}: {e}") from None


def resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    height, width = spec.size
    if img.size == (width, height):
        return img
    return img.resize((width, height), RESAMPLE[spec.resample])


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC or HW pixels → float32 CHW, ``(x · scale − mean) / std``; same float32 ops as fastai."""
    x = pixels.astype(np.float32)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    # fastai's IntToFloatTensor divides by 255 rather than multiplying by 1/255: follow it bit for bit.
    x = x / np.float32(1.0 / spec.scale) if spec.scale != 1.0 else x
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def model_image(source: str | Path | bytes | Image.Image, spec: PreprocessSpec,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Steps 1-4: one image (path, encoded bytes or PIL image) → the spec's mode and size, not yet normalised.

    Clients that resize before sending call this too, so that what they send is what the server would compute.
    """
    img = source if isinstance(source, Image.Image) else load_image(source, spec.color_mode, max_pixels, spec.size)
    if img.mode != spec.color_mode:
        img = _to_mode(img, spec.color_mode)
    return resize(img, spec)


def preprocess(source: str | Path | bytes | Image.Image, spec: PreprocessSpec,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image (path, encoded bytes or PIL image) → float32 array of shape ``spec.input_shape``."""
    return normalize(np.asarray(model_image(source, spec, max_pixels)), spec)
