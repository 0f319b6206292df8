"""The operations' neutral request and answer types: what a front end hands the data plane and gets back.

A front end parses its wire format (protobuf, JSON, Triton's binary extension, multipart forms) into these, calls
:class:`~serving.runtime.dataplane.DataPlane`, and writes the answer back in its own format; the rules (which
input, which shapes, which limits) and their messages live below it, once. Deadlines are event-loop times
(``loop.time()``), as the batcher compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.contract import tensors
from serving.contract.manifest import ModelManifest
from serving.contract.prediction import Prediction

ImageSource = bytes | np.ndarray  # encoded image bytes, or a float32 (C, H, W) tensor


# ---- Open Inference Protocol ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SharedMemoryRef:
    """Where a tensor lies in a registered shared-memory region (Triton's system shared-memory extension): the
    request's ``shared_memory_region``, ``shared_memory_byte_size`` and ``shared_memory_offset`` parameters."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(frozen=True)
class InputTensor:
    """One input as the request described it, with its data either ``raw`` (little-endian bytes: gRPC's
    ``raw_input_contents``, Triton's HTTP binary data), ``values`` (typed contents, JSON ``data``) or in a
    shared-memory region (``shm``). ``values`` may be a function that reads them: it is called only once the request
    was admitted, so that a refused request costs no parsing of a large JSON tensor."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    values: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    shm: SharedMemoryRef | None = None


@dataclass(frozen=True)
class RequestedOutput:
    """An output asked for by name. ``class_count`` > 0 (Triton's classification extension): instead of the tensor,
    the ``class_count`` most probable classes of each row as BYTES strings ``"probability:index:label"``. ``shm``:
    write the tensor into that shared-memory region instead of the answer."""

    name: str
    class_count: int = 0
    shm: SharedMemoryRef | None = None


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str | int = ""
    inputs: Sequence[InputTensor] = ()
    outputs: Sequence[RequestedOutput] = ()  # the outputs asked for (none: all, as tensors)
    id: str = ""
    deadline: float | None = None

    @property
    def batch_size(self) -> int:
        """The images the request asks for (its one input's first dimension), read before admitting it (malformed:
        1, and refused later with the reason)."""
        return tensors.batch_size(self.inputs[0].shape) if len(self.inputs) == 1 else 1


@dataclass(frozen=True)
class OutputTensor:
    """One output of an answer: FP32 ``data`` as an array of ``shape``, or BYTES ``data`` as a flat list of elements
    (row-major). ``shm`` set: the data was written into that region, and the answer carries only the reference."""

    name: str
    datatype: str                    # FP32 or BYTES
    shape: list[int]
    data: np.ndarray | list[bytes]
    shm: SharedMemoryRef | None = None


@dataclass(frozen=True)
class InferResult:
    model: str
    version: int
    id: str
    outputs: list[OutputTensor]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]                 # -1: any size


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]            # what every transport implements; a front end adds its own


# ---- the classifier API --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassifyRequest:
    model: str
    images: Sequence[ImageSource]
    version: str | int = ""
    top_k: int = 0                   # 0: the default (5, or every class when fewer)
    id: str = ""
    deadline: float | None = None


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    id: str
    results: list[list[Prediction]]  # per image, most probable first


@dataclass(frozen=True)
class ExplainRequest:
    model: str
    image: ImageSource
    version: str | int = ""
    class_index: int | None = None   # None: the top class
    method: str = ""                 # "": cam where the model has one, else occlusion
    top_k: int = 0
    stages: bool = False
    id: str = ""
    deadline: float | None = None


@dataclass(frozen=True)
class Heatmap:
    values: np.ndarray               # (h, w) float32 in [0, 1]
    raw_max: float


@dataclass(frozen=True)
class StageMaps:
    name: str
    maps: np.ndarray                 # (channels, h, w) uint8
    total_channels: int


@dataclass(frozen=True)
class ExplainResult:
    model: str
    version: int
    id: str
    predictions: list[Prediction]
    class_index: int
    label: str
    method: str
    heatmap: Heatmap
    stages: list[StageMaps]


@dataclass(frozen=True)
class ModelStatus:
    """A model as the server holds it: its state, and its manifest once it loaded (None before, or if it failed)."""

    name: str
    version: int
    state: str                       # LOADING, SERVING or NOT_SERVING
    reason: str
    versions: list[int]              # every version the repository holds
    manifest: ModelManifest | None
    verification: dict[str, Any] = field(default_factory=dict)
    golden_max_abs_diff: float = 0.0
    golden_samples: int = 0


# ---- the repository extension (model control) ----------------------------------------------------------------------

@dataclass(frozen=True)
class RepositoryModel:
    """One row of the repository index: a model on disk or on the server, in Triton's terms."""

    name: str
    version: str                     # the version it serves (or served, or failed with); "" when never loaded
    state: str                       # READY, LOADING, UNLOADING or UNAVAILABLE
    reason: str                      # why it is not READY ("unloaded", "not loaded", a refusal), or ""


@dataclass(frozen=True)
class RepositoryRequest:
    """A load or unload request: the model, Triton's parameters (each a bool, int, str or bytes; None: unset) and
    the repository it names ("": the server's one)."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    repository: str = ""


# ---- statistics (Triton's statistics extension) --------------------------------------------------------------------

@dataclass(frozen=True)
class StatisticDuration:
    count: int = 0
    ns: int = 0                      # cumulative nanoseconds of what was counted


@dataclass(frozen=True)
class BatchStatistics:
    """The model executions of one batch size: each phase's count (executions) and cumulative nanoseconds."""

    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


@dataclass(frozen=True)
class ModelStatistics:
    """One model version's statistics since the server started (``serving.runtime.statistics`` says what counts)."""

    name: str
    version: int
    last_inference: int              # milliseconds since the epoch of the last execution; 0 before the first
    inference_count: int             # images (batch rows) the model computed
    execution_count: int             # model executions (batches)
    success: StatisticDuration       # requests answered, and their time from admission to answer
    fail: StatisticDuration          # requests that failed (or were cancelled) after admission
    queue: StatisticDuration         # per successful request: its time in the batcher's queue
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration
    batch_stats: list[BatchStatistics]  # by batch size, ascending
