"""The Open Inference Protocol's HTTP/REST inference body ↔ domain, with Triton's binary-tensor extension.

A request body is a JSON object, optionally followed by binary tensor data: the header
``Inference-Header-Content-Length`` then says how many bytes the JSON takes, and each input whose data is binary
says its size in ``parameters.binary_data_size`` (in order). An answer is binary when the request asks for it
(``parameters.binary_data_output``, or ``binary_data`` on a requested output), which is what ``tritonclient.http``
does by default. JSON BYTES elements are strings: their UTF-8 bytes, or base64 when the input's
``parameters.content_type`` is ``"base64"`` (MLServer's convention; encoded images are rarely valid UTF-8).
The tensor rules themselves (names, shapes, datatypes, outputs) are the data plane's, the same for gRPC.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.contract import api, tensors
from serving.errors import InvalidInput, TooLarge
from serving.runtime.shared_memory import RegionStatus

HEADER_LENGTH = "Inference-Header-Content-Length"
# The largest JSON part of an inference request. It is parsed on the event loop, where every other client waits, and
# its cost goes with the count of numbers: the worst 2 MiB (a million one-digit numbers) is about 60 ms of orjson and
# NumPy on this project's 2 busy cores, 8 MiB was 250 ms; 8-digit numbers, 30 ms for 2 MiB (one RGB 224-px image
# fits). Larger tensors travel as binary data after the JSON (up to --max-message-mb), as tritonclient sends them.
MAX_JSON_BYTES = 2 << 20


@dataclass
class Body:
    """A parsed request: its JSON object and the binary data that followed it (empty when none)."""

    header: dict[str, Any]
    binary: memoryview

    @property
    def id(self) -> str:
        value = self.header.get("id", "")
        return value if isinstance(value, str) else ""

    @property
    def timeout_s(self) -> float | None:
        """Triton's ``parameters.timeout`` (microseconds), as seconds."""
        value = _parameters(self.header).get("timeout")
        return value / 1e6 if isinstance(value, int | float) and value > 0 else None


def parse_request(body: bytes, header_length: str | None) -> Body:
    """Split ``body`` into its JSON object and binary data; InvalidInput when either is malformed."""
    view = memoryview(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be a number of bytes, got {header_length[:40]!r}") from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        text, binary = view[:n], view[n:]
    else:
        text, binary = view, view[len(body):]
    if len(text) > MAX_JSON_BYTES:  # refused before parsing: parsing runs on the event loop
        raise TooLarge(f"the request's JSON is {len(text) / 2**20:.1f} MiB, more than the {MAX_JSON_BYTES >> 20} MiB "
                       "a JSON body may have: send tensors as binary data (Triton's binary tensor extension, what "
                       "tritonclient.http does by default) or over gRPC")
    try:
        header = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the request is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request must be a JSON object with an 'inputs' list")
    return Body(header, binary)


def _parameters(obj: dict[str, Any]) -> dict[str, Any]:
    parameters = obj.get("parameters")
    return parameters if isinstance(parameters, dict) else {}


def _list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise InvalidInput(f"{what} '{key}' must be a list")
    return value


def _flat(data: Any, what: str) -> list[Any]:
    """JSON tensor data, flat or nested row-major, as one flat list."""
    if not isinstance(data, list):
        raise InvalidInput(f"{what}: 'data' must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested list must not exhaust the recursion limit
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > tensors.MAX_DIMS:
                    raise InvalidInput(f"{what}: 'data' is nested deeper than {tensors.MAX_DIMS} levels")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _numbers(data: Any, what: str) -> np.ndarray:
    """FP32 JSON data, flat or nested row-major, as one flat array: NumPy walks the lists in C (a Python loop over
    a few hundred thousand numbers would hold the event loop ten times longer)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{what}: 'data' must be a list")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):  # nested lists of different lengths
        raise InvalidInput(f"{what}: 'data' must be a flat list or equally nested lists of numbers") from None
    if array.ndim > tensors.MAX_DIMS:
        raise InvalidInput(f"{what}: 'data' is nested deeper than {tensors.MAX_DIMS} levels")
    if array.dtype.kind not in "iuf" and array.size:  # strings, booleans, null, objects
        raise InvalidInput(f"{what}: FP32 'data' must hold numbers only")
    return array.reshape(-1)


def _json_values(tensor: dict[str, Any], datatype: str, what: str) -> Sequence[Any]:
    if datatype == "FP32":
        return _numbers(tensor.get("data"), what)
    values = _flat(tensor.get("data"), what)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"{what}: BYTES 'data' must hold strings only")
        if _parameters(tensor).get("content_type") == "base64":
            try:
                return [base64.b64decode(v, validate=True) for v in values]
            except (binascii.Error, ValueError):
                raise InvalidInput(f"{what}: an element of 'data' is not valid base64") from None
        return [v.encode() for v in values]
    return values  # the datatype is refused by the tensor rules, with what is accepted


def inputs(request: Body) -> list[api.InputTensor]:
    """Each input of the request, its data the binary part that its ``binary_data_size`` says (in order), or its
    JSON ``data`` (read only when the data plane asks for it: after admission)."""
    found: list[api.InputTensor] = []
    binary, offset = request.binary, 0
    for tensor in _list(request.header, "inputs", "the request's"):
        if not isinstance(tensor, dict):
            raise InvalidInput("each input must be a JSON object with name, datatype, shape and data")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput("an input needs a string 'name' and 'datatype'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers")
        what = f"input {name!r}"
        size = _parameters(tensor).get("binary_data_size")
        shm = _shared_memory(tensor, what)
        if shm is not None:
            if size is not None or "data" in tensor:
                raise InvalidInput(f"{what}: an input in shared memory carries no data of its own ('data' or "
                                   "binary_data_size); send one of the two")
            found.append(api.InputTensor(name, datatype, shape, shm=shm))
        elif size is not None:
            left = len(binary) - offset
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= left:
                raise InvalidInput(f"{what}: binary_data_size is {size!r}, but {left} bytes of binary data follow "
                                   "the JSON")
            found.append(api.InputTensor(name, datatype, shape, raw=binary[offset:offset + size]))
            offset += size
        elif "data" not in tensor:
            raise InvalidInput(f"{what}: no 'data' and no binary_data_size")
        else:
            found.append(api.InputTensor(name, datatype, shape,
                                         values=functools.partial(_json_values, tensor, datatype, what)))
    if offset < len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes follow the JSON, but the inputs' binary_data_size add up "
                           f"to {offset}")
    return found


def _integer(parameters: dict[str, Any], key: str, what: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter {key!r} must be an integer")
    return value


def _shared_memory(tensor: dict[str, Any], what: str) -> api.SharedMemoryRef | None:
    """The ``shared_memory_*`` parameters of an input or a requested output, as Triton's clients set them."""
    parameters = _parameters(tensor)
    region = parameters.get("shared_memory_region")
    if region is None:
        return None
    if not isinstance(region, str):
        raise InvalidInput(f"{what}: parameter 'shared_memory_region' must be a string")
    size = _integer(parameters, "shared_memory_byte_size", what)
    if size is None:
        raise InvalidInput(f"{what}: shared_memory_region needs shared_memory_byte_size")
    return api.SharedMemoryRef(region, size, _integer(parameters, "shared_memory_offset", what) or 0)


def requested_outputs(request: Body) -> tuple[list[api.RequestedOutput], bool]:
    """The outputs asked for (class count, place in shared memory), and whether the answer's tensors go as binary
    data."""
    binary = _parameters(request.header).get("binary_data_output") is True
    outputs = []
    for output in _list(request.header, "outputs", "the request's"):
        if not isinstance(output, dict):
            raise InvalidInput("each requested output must be a JSON object with a 'name'")
        name = output.get("name")
        name = name if isinstance(name, str) else str(name)
        what = f"output {name!r}"
        outputs.append(api.RequestedOutput(name, _integer(_parameters(output), "classification", what) or 0,
                                           _shared_memory(output, what)))
        binary = _parameters(output).get("binary_data", binary) is True
    return outputs, binary


def infer_response(result: api.InferResult, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers. Binary: each output's bytes after the JSON, in order (BYTES elements
    each with its 4-byte length); JSON: FP32 numbers, BYTES elements as strings. An output written into shared
    memory says where, and carries no data."""
    outputs, raws = [], []
    for tensor in result.outputs:
        output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.shm is not None:
            output["parameters"] = {"shared_memory_region": tensor.shm.region,
                                    "shared_memory_byte_size": tensor.shm.byte_size}
            if tensor.shm.offset:
                output["parameters"]["shared_memory_offset"] = tensor.shm.offset
        elif binary:
            raws.append(tensors.output_bytes(tensor.datatype, tensor.data))
            output["parameters"] = {"binary_data_size": len(raws[-1])}
        elif tensor.datatype == "BYTES":
            output["data"] = [bytes(item).decode("utf-8", "replace") for item in tensor.data]
        else:
            # float32 → float64 is exact, and orjson writes each as Python's repr would, from C (100 × 1000 logits:
            # 3.5 ms, where tolist() and json.dumps took 87 ms of the event loop)
            output["data"] = np.asarray(tensor.data, dtype=np.float32).astype(np.float64).ravel()
        outputs.append(output)
    header = orjson.dumps({"model_name": result.model, "model_version": str(result.version), "id": result.id,
                           "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return header, {}
    return header + b"".join(raws), {HEADER_LENGTH: str(len(header))}


# ---- shared memory (Triton's extensions) ------------------------------------------------------------------------


def shm_register_request(body: bytes) -> tuple[str, int, int]:
    """A system shared-memory register body, ``{"key": …, "offset": …, "byte_size": …}`` → (key, offset, byte_size)
    (offset optional, 0)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"the request is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(request, dict) or not isinstance(request.get("key"), str):
        raise InvalidInput("the register request must be a JSON object with a string 'key', 'offset' and 'byte_size'")
    numbers = {field: request.get(field, 0 if field == "offset" else None) for field in ("offset", "byte_size")}
    for field, value in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"the register request's '{field}' must be a non-negative integer")
    return request["key"], numbers["offset"], numbers["byte_size"]


def shm_status(regions: list[RegionStatus]) -> list[dict[str, Any]]:
    return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
