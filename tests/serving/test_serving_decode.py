"""Reduced-size JPEG decoding: only as many pixels as the model's resize needs, and the same limits as before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serving.contract.preprocess import EXIF_ORIENTATION, PreprocessSpec, load_image, model_image, preprocess
from serving.errors import InvalidInput
from tests.support.hostile import jpeg_bomb
from tests.support.images import encode, textured

SPEC = PreprocessSpec(size=(32, 48), color_mode="RGB", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize(("size", "min_size", "decoded"), [
    ((800, 600), (32, 48), (100, 75)),     # 1/8: still at least 48 wide and 32 high
    ((800, 600), (100, 150), (200, 150)),  # 1/4: 1/8 would give 75 rows, fewer than 100
    ((800, 600), (300, 48), (400, 300)),   # 1/2: exactly the 300 rows asked for
    ((800, 600), (301, 48), (800, 600)),   # full size: half would give 300 rows, one too few
    ((90, 60), (32, 48), (90, 60)),        # less than twice the target: full size
])
def test_jpeg_is_decoded_at_the_smallest_scale_that_still_covers_the_target(
        size: tuple[int, int], min_size: tuple[int, int], decoded: tuple[int, int]) -> None:
    img = load_image(encode(textured(size), "JPEG", quality=90), "RGB", min_size=min_size)
    assert img.size == decoded
    assert img.width >= min_size[1]
    assert img.height >= min_size[0]


def test_without_min_size_and_for_other_formats_the_decode_is_full_size() -> None:
    picture = textured((800, 600))
    assert load_image(encode(picture, "JPEG"), "RGB").size == (800, 600)
    assert load_image(encode(picture, "PNG"), "RGB", min_size=(32, 48)).size == (800, 600)


def test_exif_rotation_is_taken_into_account() -> None:
    # Stored 400 wide and 100 high, shown a quarter turn: 100 wide and 400 high. The target is 90 wide: a reduction
    # judged on the stored sides (400 // 90 = 4) would leave 25 columns once rotated.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = encode(textured((400, 100)), "JPEG", exif=exif.tobytes())
    img = load_image(data, "RGB", min_size=(20, 90))
    assert img.size == (100, 400)  # rotated, and not reduced: the stored 100 rows are the 90 columns asked for
    assert load_image(data, "RGB", min_size=(90, 20)).size == (25, 100)  # here 1/4 is enough


@pytest.mark.parametrize(("kind", "mode"), [("RGB", "RGB"), ("L", "L"), ("CMYK", "RGB"), ("progressive", "RGB")])
def test_reduced_decode_stays_close_to_the_full_decode(kind: str, mode: str) -> None:
    spec = PreprocessSpec(size=(32, 48), color_mode=mode, mean=(0.0,) * len(mode), std=(1.0,) * len(mode))
    picture = textured((1200, 800), seed=3)
    options = {"progressive": True} if kind == "progressive" else {}
    data = encode(picture if kind == "progressive" else picture.convert(kind), "JPEG", quality=90, **options)
    assert load_image(data, mode, min_size=spec.size).size == (150, 100)
    reduced = np.asarray(model_image(data, spec), dtype=np.int16)
    full = np.asarray(model_image(load_image(data, mode), spec), dtype=np.int16)  # a PIL image: no reduction
    assert reduced.shape == full.shape
    # Measured: mean 0.2-0.3 and max 1-3 levels out of 255 (libjpeg's 8x8 block averages vs Pillow's bilinear
    # filter over the same pixels); a wrong scale or a lost colour conversion is tens of levels.
    assert np.abs(reduced - full).mean() < 1.0
    assert np.abs(reduced - full).max() <= 8


def test_preprocess_is_model_image_normalised() -> None:
    data = encode(textured((640, 480)), "JPEG")
    x = preprocess(data, SPEC)
    pixels = np.asarray(model_image(data, SPEC), dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(x, (pixels / np.float32(255) - np.float32(0.5)) / np.float32(0.25))


def test_the_pixel_limit_applies_to_the_declared_size_not_the_reduced_one() -> None:
    # A 1/8 decode of this header would be 1125 x 1125 (1.3 MP), well under the limit: it is refused all the same.
    bomb = jpeg_bomb(9000, 9000)
    with pytest.raises(InvalidInput, match=r"image is 9000x9000 = 81000000 pixels, more than the limit of 40000000"):
        load_image(bomb, "RGB", min_size=(32, 48))
    with pytest.raises(InvalidInput, match=r"image is 9000x9000 = 81000000 pixels, more than the limit of 1000000"):
        preprocess(bomb, SPEC, max_pixels=1_000_000)


def test_a_header_that_lies_within_the_limit_costs_only_the_reduced_size() -> None:
    # 6000 x 6000 declared (36 MP, under the default limit), 16 x 16 of data then the end marker: libjpeg fills the
    # rest (as it did before reduced decoding), now at 750 x 750 instead of 6000 x 6000.
    assert load_image(jpeg_bomb(6000, 6000), "RGB", min_size=(32, 48)).size == (750, 750)
    assert preprocess(jpeg_bomb(6000, 6000), SPEC).shape == SPEC.input_shape


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_jpeg_is_refused_cleanly(keep: float) -> None:
    data = encode(textured((800, 600)), "JPEG")
    with pytest.raises(InvalidInput, match=r"cannot decode image: OSError: (image file is truncated|Truncated File)"):
        preprocess(data[:int(len(data) * keep)], SPEC)
