"""What a client sends for an image: resized here, exactly as the server would, then PNG, JPEG or a tensor.

The model's preprocessing spec comes from GetModel (:func:`spec_of`); :func:`encode_for` runs the server's own
decode and resize (``serving.contract.preprocess.model_image``) and encodes the result. A PNG or a tensor therefore
gives exactly the server's answer for the original file; a JPEG is smaller and not exact.
"""

from __future__ import annotations

import argparse
import io

import numpy as np

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract.preprocess import PreprocessSpec, model_image, normalize

SEND = ("png", "jpeg", "tensor", "original")


def add_send_options(p: argparse._ActionsContainer) -> None:
    """``--send`` and ``--jpeg-quality``, for the command-line clients (classify, batch --server)."""
    p.add_argument("--send", choices=SEND, default="png",
                   help="resize each image to the model's input here and send it as a PNG (default; the same answer "
                        "as for the original), a float32 tensor (same answer, larger), a JPEG (smallest, not exact), "
                        "or send the original files")
    p.add_argument("--jpeg-quality", type=_quality, default=90, metavar="Q", help="with --send jpeg: 1-100 (90)")


def _quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer between 1 and 100, got {text!r}")
    return int(text)


def spec_of(info: ic_pb2.ModelInfo) -> PreprocessSpec | None:
    """The preprocessing spec GetModel describes; None when it describes none (a model that never loaded)."""
    p = info.preprocess
    if not p.size:
        return None
    return PreprocessSpec(size=(p.size[0], p.size[1]), color_mode=p.color_mode, mean=tuple(p.mean), std=tuple(p.std),
                          scale=_scale(p.scale), resize=p.resize, resample=p.resample, labels=tuple(info.labels))


def _scale(sent: float) -> float:
    """The spec's scale from its float32 copy in the message: 1/n exactly when it is one (1/255 is), since the
    normalisation divides by float32(1/scale), and float32(1/255) gives 254.99998 there instead of 255."""
    n = round(1.0 / sent) if sent > 0 else 0
    return 1.0 / n if n and np.float32(1.0 / n) == np.float32(sent) else sent


def encode_for(spec: PreprocessSpec, data: bytes, send: str, jpeg_quality: int = 90) -> ic_pb2.Image:
    """An encoded image as ``send`` says, resized for ``spec`` (``InvalidInput`` if it cannot be decoded)."""
    img = model_image(data, spec)
    if send == "tensor":
        return tensor_image(normalize(np.asarray(img), spec))
    buf = io.BytesIO()
    if send == "jpeg":  # full-resolution colour (4:4:4): at 32 px, 4:2:0 tripled the change in probabilities
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:  # zlib level 1: a fifth of the default level's time for a 224 px photo, 12 % larger
        img.save(buf, format="PNG", compress_level=1)
    return ic_pb2.Image(encoded=buf.getvalue())


def tensor_image(x: np.ndarray) -> ic_pb2.Image:
    x = np.ascontiguousarray(x, dtype="<f4")
    return ic_pb2.Image(tensor=ic_pb2.Tensor(shape=list(x.shape), data=x.tobytes()))
