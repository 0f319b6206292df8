"""The Open Inference Protocol's input tensor, checked the same way whatever carried it (gRPC or HTTP/JSON).

A model here takes one input: an FP32 ``[N, C, H, W]`` tensor, or a BYTES ``[N]`` (or ``[N, 1]``) tensor of encoded
images. The front ends hand over what the request said (name, datatype, shape) and its data, either raw bytes
(gRPC ``raw_input_contents``, Triton's HTTP binary extension) or a list of values (typed contents, JSON ``data``);
everything a client sends is checked here, and a problem is an ``InvalidInput`` that says what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from serving.contract.manifest import ModelManifest
from serving.errors import InvalidInput

if TYPE_CHECKING:
    from serving.contract.api import InputTensor, RequestedOutput

MAX_DIMS = 8  # far more than any image tensor needs; checked before anything is computed from the shape
_LENGTH = struct.Struct("<I")


def check_shape(dims: Sequence[int], what: str) -> list[int]:
    """A tensor's shape as sent, refused before use when it has more dimensions than any image tensor."""
    if len(dims) > MAX_DIMS:
        raise InvalidInput(f"{what} has {len(dims)} dimensions; at most {MAX_DIMS} are accepted")
    return [int(d) for d in dims]


def decode_bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    """Triton's BYTES wire format: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    view, offset = memoryview(raw), 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput("BYTES tensor: truncated element length")
        (n,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + n > len(view):
            raise InvalidInput(f"BYTES tensor: element of {n} bytes runs past the end of the data")
        items.append(bytes(view[offset:offset + n]))
        offset += n
    return items


def encode_bytes_elements(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + bytes(item) for item in items)


def output_bytes(datatype: str, data: np.ndarray | Sequence[bytes]) -> bytes:
    """An output's raw little-endian bytes, as gRPC's ``raw_output_contents`` and Triton's HTTP binary data carry
    them: FP32 values, or BYTES elements each with its 4-byte length."""
    if datatype == "BYTES":
        return encode_bytes_elements(data)  # type: ignore[arg-type]
    return np.ascontiguousarray(data, dtype="<f4").tobytes()


def expected_input(manifest: ModelManifest) -> str:
    return f"FP32 [N, {', '.join(map(str, manifest.input_shape))}] or BYTES [N] (encoded images)"


def request_input(manifest: ModelManifest, inputs: Sequence[InputTensor]) -> np.ndarray | list[bytes]:
    """The one input of an inference request: an FP32 (N, C, H, W) array, or the encoded images of a BYTES tensor."""
    if len(inputs) != 1:
        raise InvalidInput(f"model {manifest.name!r} takes exactly one input {manifest.input_name!r} "
                           f"({expected_input(manifest)}), got {len(inputs)}")
    tensor = inputs[0]
    values = tensor.values() if callable(tensor.values) else tensor.values
    return infer_input(manifest, tensor.name, tensor.datatype, tensor.shape, raw=tensor.raw, values=values)


def check_outputs(manifest: ModelManifest, outputs: Sequence[RequestedOutput]) -> None:
    """Every output a request asks for exists, once, with a usable class count (and not in shared memory, which
    Triton's clients refuse for a classification output)."""
    seen: set[str] = set()
    for output in outputs:
        if output.name != manifest.output_name:
            raise InvalidInput(f"unknown output {output.name!r}; model {manifest.name!r} has {manifest.output_name!r}")
        if output.name in seen:
            raise InvalidInput(f"output {output.name!r} is requested twice")
        seen.add(output.name)
        if output.class_count < 0:
            raise InvalidInput(f"output {output.name!r}: classification {output.class_count} must be >= 0")
        if output.class_count and output.shm is not None:
            raise InvalidInput(f"output {output.name!r}: a classification output cannot go to shared memory")


def infer_input(manifest: ModelManifest, name: str, datatype: str, dims: Sequence[int], *,
                raw: bytes | memoryview | None = None,
                values: Sequence[float] | Sequence[bytes] | None = None) -> np.ndarray | list[bytes]:
    """A request's one input → an FP32 array of its shape, or the list of encoded images of a BYTES tensor."""
    if name != manifest.input_name:
        raise InvalidInput(f"unknown input {name!r}; model {manifest.name!r} takes {manifest.input_name!r}")
    shape = check_shape(dims, f"input {name!r}")
    if any(d < 0 for d in shape) or not shape:
        raise InvalidInput(f"input {name!r}: invalid shape {shape}")
    count = math.prod(shape)
    if datatype == "FP32":
        if raw is not None:
            if len(raw) != 4 * count:
                raise InvalidInput(f"input {name!r}: the raw data has {len(raw)} bytes, FP32 {shape} needs "
                                   f"{4 * count}")
            x = np.frombuffer(raw, dtype="<f4")
        else:
            n = 0 if values is None else len(values)
            if n != count:
                raise InvalidInput(f"input {name!r}: {n} values, shape {shape} needs {count}")
            with np.errstate(over="ignore"):  # a number beyond FP32 becomes inf, refused with the others
                x = np.asarray(values, dtype=np.float32)
        return x.astype(np.float32, copy=False).reshape(shape)
    if datatype == "BYTES":
        items = decode_bytes_elements(raw) if raw is not None else [bytes(v) for v in values or ()]  # type: ignore[arg-type]
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or len(items) != count:
            raise InvalidInput(f"input {name!r}: BYTES shape must be [N] or [N, 1] with one encoded image per "
                               f"element; got shape {shape} with {len(items)} elements")
        return items
    raise InvalidInput(f"input {name!r}: datatype {datatype or '(empty)'} is not supported; "
                       f"send {expected_input(manifest)}")


def batch_size(dims: Sequence[int]) -> int:
    """The images an input asks for (its first dimension), read before admitting the request (malformed: 1, and
    refused later with the reason)."""
    try:
        return max(1, int(dims[0])) if dims else 1
    except (TypeError, ValueError):
        return 1
