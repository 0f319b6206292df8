"""The data plane: every operation the front ends carry, once, on the registry's models and neutral types.

A front end (gRPC, HTTP) parses its wire format into the request types of :mod:`serving.contract.api`, calls one
method here, and writes the answer back; the domain errors raised here (``serving.errors``) carry a neutral kind
that each front end maps to its own status. Nothing here knows protobuf, JSON or HTTP. Images are decoded in a
thread pool, and tensors go through the model's :class:`~serving.runtime.batcher.DynamicBatcher`.

- Open Inference Protocol: :meth:`DataPlane.server_metadata`, :meth:`~DataPlane.server_ready`,
  :meth:`~DataPlane.model_ready`, :meth:`~DataPlane.model_metadata`, :meth:`~DataPlane.model_config`,
  :meth:`~DataPlane.infer`;
- the classifier API: :meth:`~DataPlane.models`, :meth:`~DataPlane.model_status`, :meth:`~DataPlane.classify`,
  :meth:`~DataPlane.explain`;
- Triton's shared-memory extensions: :meth:`~DataPlane.shm_register`, :meth:`~DataPlane.shm_status`,
  :meth:`~DataPlane.shm_unregister` (system shared memory, :mod:`serving.runtime.shared_memory`; the caller is
  ``serving.runtime.auth.client_var``) and their CUDA twins, which a CPU server answers as Triton's CPU build does.
- Triton's repository extension: :meth:`~DataPlane.repository_index`, :meth:`~DataPlane.load_model`,
  :meth:`~DataPlane.unload_model` (the registry does the work; ``--model-control`` decides what is allowed).
- Triton's statistics extension: :meth:`~DataPlane.statistics`, counted per model version by every inference
  operation (``serving.runtime.statistics`` says what counts where).
- Triton's logging and trace extensions: :meth:`~DataPlane.log_settings`, :meth:`~DataPlane.trace_settings`.

Admission is counted in images: a model holds at most ``config.max_admitted`` images at once (decoding, queued,
computing), and a request holds at most ``max_images_per_request``; anything more is refused before any decoding, so
overload costs the server almost nothing per request. Near that limit a client over its fair share is refused while
the others are still admitted, and a batch takes each client's requests in turn (``serving.runtime.fairshare``; the
client is ``fairshare.share_var``). A large request's decoding and compute are split into rounds that queue fairly
behind other requests and stop once its deadline has passed or its caller has gone.
"""


from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TypeVar

import numpy as np

from serving._generated import model_config_pb2 as config_pb2
from serving.contract import tensors, triton
from serving.contract.api import (
    ClassifyRequest,
    ClassifyResult,
    ExplainRequest,
    ExplainResult,
    ImageSource,
    InferRequest,
    InferResult,
    InputTensor,
    ModelMetadata,
    ModelStatistics,
    ModelStatus,
    OutputTensor,
    RepositoryModel,
    RepositoryRequest,
    RequestedOutput,
    ServerMetadata,
    SharedMemoryRef,
    TensorSpec,
)
from serving.contract.manifest import ModelManifest
from serving.contract.prediction import classification, softmax, top_predictions
from serving.errors import DeadlineExceeded, InvalidInput, ModelNotFound, NotReady, Overloaded, TooLarge, Unsupported
from serving.runtime import explain, fairshare, offload, tracing
from serving.runtime.auth import client_var
from serving.runtime.fairshare import FairQueue, share_var
from serving.runtime.logs import LogSettings, log_settings
from serving.runtime.predictor import Predictor, available_cores
from serving.runtime.registry import ModelRegistry, ModelState, ServedModel, parse_version, shown
from serving.runtime.requests import SERVER_NAME, SERVER_VERSION
from serving.runtime.shared_memory import RegionNotFound, RegionStatus, SharedMemory, Window
from serving.runtime.statistics import RequestTiming, Statistics, VersionStatistics
from serving.runtime.tracing import Tracing

# The Open Inference extensions every front end carries (Triton's names). "model_repository(unload_dependents)" is
# Triton's name for accepting that unload parameter: no model here has dependents, so it is always met. Not
# "cuda_shared_memory": its calls answer, but as a CPU build of Triton does (no region can be registered), so a
# client must not be told it works.
EXTENSIONS = ["classification", "logging", "model_configuration", "model_repository",
              "model_repository(unload_dependents)", "statistics", "system_shared_memory", "trace"]


class DataPlane:
    def __init__(self, registry: ModelRegistry, *, tracing: Tracing | None = None,
                 logs: LogSettings | None = None) -> None:
        self.registry = registry
        self.config = registry.config
        self.tracing = tracing or Tracing(self.config)
        self.logs = logs or log_settings()
        workers = self.config.decode_workers or available_cores()
        self._decoder = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._decode_round = workers  # images of one request in the decode pool at once
        # Images handed to the pool at once: one computing and one waiting per worker, so that a worker never waits
        # for the event loop to hand it the next; callers beyond that wait for their clients' turns.
        self._decode_slots = 2 * workers
        self._decoding = 0
        self._decode_turns: FairQueue[tuple[asyncio.Future[np.ndarray], Callable[[ImageSource], np.ndarray],
                                            ImageSource]] = FairQueue()
        self._explainers: dict[str, explain.ExplainSession] = {}  # model name → its served version's graph
        self._statistics = Statistics()
        self.shared_memory = SharedMemory(self.config.max_shm_regions)
        self._fair = self.config.client_share > 0
        self._kept = fairshare.kept_images(self.config.max_admitted, self.config.client_share)
        self._metrics = registry.metrics
        self._admitted: dict[str, int] = {}  # images admitted by client label: read when /metrics is scraped
        self._free_below = self.config.max_admitted - self._kept  # below this line no share is checked

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self.shared_memory.close()

    # ---- what the server holds -------------------------------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        off = () if self.shared_memory.enabled else ("system_shared_memory",)
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, [e for e in EXTENSIONS if e not in off])

    def server_ready(self) -> bool:
        """Loading finished, at least one model passed its checks, and not shutting down."""
        return self.registry.ready

    def model_ready(self, name: str, version: str | int = "") -> bool:
        """The model (version) serves and the server is not shutting down. An unknown, unloaded or never loaded
        model (or version) is not ready, not an error, as Triton answers: readiness probes ask before loading."""
        try:
            model = self.registry.find(name, version)
        except (NotReady, ModelNotFound):
            return False
        return model.state is ModelState.SERVING and not self.registry.shutting_down

    def model_metadata(self, name: str, version: str | int = "") -> ModelMetadata:
        model = self.registry.find(name, version)
        m = _manifest(model)
        return ModelMetadata(
            name=model.name, versions=[str(model.version)], platform=triton.PLATFORM,
            inputs=[TensorSpec(m.input_name, "FP32", [-1, *m.input_shape])],
            outputs=[TensorSpec(m.output_name, "FP32", [-1, m.num_classes])])

    def model_config(self, name: str, version: str | int = "") -> config_pb2.ModelConfig:
        """The exported ``config.pbtxt`` message, plus what only the running server knows."""
        model = self.registry.find(name, version)
        message = triton.model_config(_manifest(model), max_batch_size=self.config.max_batch)
        gpu = model.predictor is not None and model.predictor.device == "cuda"
        kind = config_pb2.ModelInstanceGroup.KIND_GPU if gpu else config_pb2.ModelInstanceGroup.KIND_CPU
        message.name = model.name
        message.version_policy.specific.versions.append(model.version)
        message.dynamic_batching.max_queue_delay_microseconds = int(self.config.max_queue_delay_ms * 1000)
        count = model.predictor.instances if model.predictor is not None else 1
        message.instance_group.append(config_pb2.ModelInstanceGroup(name=model.name, kind=kind, count=count))
        return message

    def model_status(self, name: str, version: str | int = "") -> ModelStatus:
        return _status(self.registry.find(name, version))

    def models(self) -> list[ModelStatus]:
        return [_status(m) for m in self.registry.models.values()]

    # ---- repository control (Triton's model_repository extension) ------------------------------------------------
    async def repository_index(self, ready: bool = False, repository: str = "") -> list[RepositoryModel]:
        """Every model of the repository on disk and every model the server holds (one row each, by name);
        ``ready``: only those READY."""
        _one_repository(repository)
        registry = self.registry
        names = sorted({*await registry.on_disk(), *registry.models, *registry.unloaded})
        rows = [self._index_row(name) for name in names]
        return [r for r in rows if r.state == "READY"] if ready else rows

    def _index_row(self, name: str) -> RepositoryModel:
        model = self.registry.models.get(name)
        if model is None:
            unloaded = self.registry.unloaded.get(name)
            if unloaded is not None:
                return RepositoryModel(name, str(unloaded), "UNAVAILABLE", "unloaded")  # Triton's reason
            return RepositoryModel(name, "", "UNAVAILABLE", "not loaded")
        if self.registry.shutting_down:
            return RepositoryModel(name, str(model.version), "UNAVAILABLE", "shutting down")
        state = "UNLOADING" if model.unloading else _TRITON_STATES[model.state]
        return RepositoryModel(name, str(model.version), state, model.reason)

    async def load_model(self, request: RepositoryRequest) -> ModelStatus:
        """Load or reload a model from the repository on disk, never from the request: model files in it
        (``file:…`` parameters) and configuration overrides (``config``) are refused."""
        _one_repository(request.repository)
        files = sorted(key for key in request.parameters if key.startswith("file:"))
        if files:
            raise InvalidInput(f"model files in a load request are refused ({shown(files[0])}…): models load only "
                               "from the server's repository on disk; publish a version folder there instead")
        if "config" in request.parameters:
            raise InvalidInput("a 'config' override is refused: a model's configuration is its version folder's "
                               "model.json, checked with the model (sha256, golden outputs), plus the server's "
                               "flags; publish a new version to change it")
        _no_other_parameters(request, ())
        model = await self.registry.load(request.model)
        self._explainers.pop(model.name, None)  # a reload may serve other files: rebuilt on the next use
        return _status(model)

    async def unload_model(self, request: RepositoryRequest) -> None:
        """Unload a model once the requests holding it finished; ``unload_dependents`` is accepted (no model here
        has dependents)."""
        _one_repository(request.repository)
        _no_other_parameters(request, ("unload_dependents",))
        await self.registry.unload(request.model)
        self._explainers.pop(request.model, None)

    # ---- admission -------------------------------------------------------------------------------------------
    @contextmanager
    def admit(self, name: str, version: str | int | None = None, images: int = 1) -> Iterator[ServedModel]:
        """The model, ready to answer, held for one request of ``images`` images of the calling client
        (``share_var``); refused before any work when the request is larger than ``max_images_per_request``
        (``InvalidInput``), the model already holds ``max_admitted`` images, or it nearly does and the client holds
        more than its share (``Overloaded``)."""
        with tracing.step("admission") as admission:
            if images > self.config.max_images_per_request:
                raise InvalidInput(f"{images} images in one request, more than the limit of "
                                   f"{self.config.max_images_per_request} (--max-images-per-request); split the "
                                   "request")
            if images > self.config.max_admitted:  # could never be admitted, however long the client waits
                raise InvalidInput(f"{images} images in one request, more than a model holds at once "
                                   f"({self.config.max_admitted}: --max-queue + --max-batch); split the request")
            model = self.registry.get(name, version)
            client = share_var.get()
            if model.active + images > self._free_below:
                self._check_room(model, client, images)
            model.active += images
            model.holders.add(client, images)
            admission.note("serving.model_version", model.version)
        label = self._admitted_label()
        self._admitted[label] += images
        try:
            yield model
        finally:
            model.active -= images
            model.holders.remove(client, images)
            self._admitted[label] -= images

    def check_room(self, name: str, version: str | int | None = None) -> None:
        """Refuse now (``Overloaded``) a request the calling client could not get admitted with even one image, before
        its body is read or parsed: a client over its share, or a full model, costs the server nothing more. A
        request that passes is admitted by :meth:`admit` once its size is known; an unknown or unready model is left
        for that to answer."""
        try:
            model = self.registry.get(name, version)
        except (ModelNotFound, NotReady):
            return
        self._check_room(model, share_var.get(), 1)

    def _check_room(self, model: ServedModel, client: str, images: int) -> None:
        held = model.holders.get(client, 0)
        refused = fairshare.refusal(limit=self.config.max_admitted, kept=self._kept, active=model.active, held=held,
                                    clients=len(model.holders), images=images)
        if refused is not None:
            self._counters(model).failed(0)  # it reached the version: a failure in its statistics
            raise Overloaded(self._overloaded(model, refused, held))

    def _overloaded(self, model: ServedModel, refused: str, held: int) -> str:
        if refused == fairshare.FULL:
            return f"model {model.name!r}: queue full ({model.active} images in progress); retry later"
        limit = self.config.max_admitted
        clients = len(model.holders)
        return (f"model {model.name!r}: queue nearly full ({model.active} of {limit} images in progress) and this "
                f"client holds {held}, more than its share of {fairshare.share(limit, clients)} while {clients} "
                f"client{' holds' if clients == 1 else 's hold'} images; retry later")

    def _admitted_label(self) -> str:
        """The calling client's label in ``serving_client_admitted_images``: its token identity (``client_var``),
        never its address. A new label's gauge reads the count when /metrics is scraped: no lock per request."""
        label = client_var.get()
        if label not in self._admitted:
            self._admitted[label] = 0
            if self._metrics is not None:
                self._metrics.client_images.labels(label).set_function(lambda: self._admitted[label])
        return label

    # ---- inference -------------------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResult:
        """Open Inference: the request's one input (an FP32 tensor, or encoded images) → the model's outputs (its
        logits, or Triton's classification strings where a requested output has a ``class_count``). An input or an
        output may lie in one of the caller's shared-memory regions: the input is copied out of it once admitted,
        the output's window is checked against the tensor and held before any computing, and written at the end."""
        with self.admit(request.model, request.version, request.batch_size) as model, \
                self._counters(model).request() as timing, ExitStack() as held:
            manifest = _manifest(model)
            tensors.check_outputs(manifest, request.outputs)
            with tracing.step("decode"):
                data = tensors.request_input(manifest, [self._from_shared_memory(t) for t in request.inputs])
                places = {o.name: self._output_window(held, o, 4 * len(data) * manifest.num_classes)
                          for o in request.outputs if o.shm is not None}
                x = data if isinstance(data, np.ndarray) else await self.preprocess(model, data, request.deadline)
            logits = await self.run(model, x, request.deadline, timing)
            requested = request.outputs or [RequestedOutput(manifest.output_name)]
            labels = _predictor(model).labels
            outputs = [await offload.step(_output, o, logits, labels, items=len(logits) * (o.class_count or 0))
                       for o in requested]
            outputs = [_write(places[t.name], t) if t.name in places else t for t in outputs]
        return InferResult(model.name, model.version, request.id, outputs)

    async def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """The top-k classes of each image."""
        with self.admit(request.model, request.version, max(1, len(request.images))) as model, \
                self._counters(model).request() as timing:
            predictor = _predictor(model)
            k = predictor.resolve_top_k(request.top_k)
            with tracing.step("decode"):
                x = await self.preprocess(model, request.images, request.deadline)
            logits = await self.run(model, x, request.deadline, timing)
            bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
            if len(bad):  # finite but extreme tensor values can overflow inside the network
                raise InvalidInput(f"image {', '.join(map(str, bad))}: the model's output is not finite (NaN or "
                                   "infinite logits); the input values are out of range")
            results = await offload.step(top_predictions, logits, k, predictor.labels, items=len(logits) * k)
        return ClassifyResult(model.name, model.version, request.id, results)

    # ---- the steps ------------------------------------------------------------------------------------------
    def _from_shared_memory(self, tensor: InputTensor) -> InputTensor:
        """``tensor`` with its bytes copied out of the caller's region when it lies in shared memory (a copy: the
        client may rewrite, shrink or unlink the region while the request runs); other inputs as they are."""
        ref = tensor.shm
        if ref is None:
            return tensor
        what = f"input {tensor.name!r}"
        if tensor.raw is not None or tensor.values is not None:
            raise InvalidInput(f"{what}: an input in shared memory carries no data of its own; send one of the two")
        shape = tensors.check_shape(tensor.shape, what)
        if tensor.datatype == "FP32" and shape and min(shape) >= 0 and ref.byte_size != 4 * math.prod(shape):
            raise InvalidInput(f"{what}: shared_memory_byte_size is {ref.byte_size}, FP32 {shape} needs "
                               f"{4 * math.prod(shape)}")
        if ref.byte_size > self.config.max_message_bytes:
            raise TooLarge(f"{what}: {ref.byte_size} bytes in shared memory, more than the "
                           f"{self.config.max_message_mb} MiB limit (--max-message-mb)")
        with self.shared_memory.window(client_var.get(), ref.region, ref.offset, ref.byte_size) as window:
            return replace(tensor, raw=window.read(), shm=None)

    def _output_window(self, held: ExitStack, output: RequestedOutput, size: int) -> Window:
        """The caller's window that ``output`` names, checked against the ``size`` bytes it will hold, and held by
        ``held`` (not unregistered under the request) until the answer is written."""
        assert output.shm is not None
        ref = output.shm
        if ref.byte_size < size:
            raise InvalidInput(f"output {output.name!r}: the shared memory size specified with the request "
                               f"({ref.byte_size} bytes) should be at least {size} bytes to hold the results")
        return held.enter_context(self.shared_memory.window(client_var.get(), ref.region, ref.offset, ref.byte_size,
                                                            write=True))

    def _check_size(self, model: ServedModel, count: int) -> None:
        """Refuse a request whose images would expand to a tensor above the message limit: a few MB of tiny PNGs
        must not become gigabytes of float32."""
        per_image = 4 * math.prod(_predictor(model).input_shape)
        limit = self.config.max_message_bytes
        if count * per_image > limit:
            raise TooLarge(f"{count} images make a {count * per_image / 2**20:.1f} MiB input tensor for model "
                           f"{model.name!r}, more than the {limit / 2**20:g} MiB limit (--max-message-mb); send at "
                           f"most {limit // per_image} per request")

    async def preprocess(self, model: ServedModel, images: Sequence[ImageSource],
                         deadline: float | None = None) -> np.ndarray:
        """Decode and preprocess in the worker pool (tensors are only checked); (N, C, H, W) float32.

        At most one image per decode worker is in the pool for this request at a time, so a request of many large
        images shares the workers with the requests that arrive after it instead of queueing all its work ahead of
        them, and it stops within one round once its deadline has passed or its caller has gone."""
        if not images:
            raise InvalidInput("no images in the request")
        predictor = _predictor(model)
        self._check_size(model, len(images))
        loop = asyncio.get_running_loop()

        # Each image is written into the batch by the worker that decoded it: stacking 100 RGB 224-px images on the
        # loop afterwards (66 MB, its pages touched for the first time) held it for 170 ms (the ``loop`` benchmark).
        batch = np.empty((len(images), *predictor.input_shape), dtype=np.float32)

        def into(i: int, image: ImageSource) -> None:
            batch[i] = predictor.preprocess(image)

        async def one(i: int, image: ImageSource) -> None:
            try:
                if isinstance(image, np.ndarray):
                    batch[i] = predictor.check_finite(predictor.check_tensor(image))
                else:
                    await self._decode(lambda decoded: into(i, decoded), image)
            except InvalidInput as e:
                raise InvalidInput(f"image {i}: {e}") from None

        for start in range(0, len(images), self._decode_round):
            _check_deadline(loop, deadline, "while its images were decoded")
            await asyncio.gather(*(one(i, images[i]) for i in range(start, min(start + self._decode_round,
                                                                                len(images)))))
        return batch

    def _decode(self, fn: Callable[[ImageSource], np.ndarray], image: ImageSource) -> asyncio.Future[np.ndarray]:
        """``fn(image)`` in the decode pool. Once the pool holds ``_decode_slots`` images, further ones wait in their
        clients' turns (``FairQueue``), so that one client's flood of images does not queue ahead of another's. A
        finished image hands its place to the next in turn from the completion callback itself: waiting costs no
        extra task switch."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[np.ndarray] = loop.create_future()
        if self._decoding < self._decode_slots:
            self._start_decode(loop, answer, fn, image)
        else:
            self._decode_turns.append(share_var.get() if self._fair else "", (answer, fn, image))
        return answer

    def _start_decode(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[np.ndarray],
                      fn: Callable[[ImageSource], np.ndarray], image: ImageSource) -> None:
        try:
            job = self._decoder.submit(fn, image)
        except RuntimeError:  # the pool is shut down: the server is stopping
            answer.set_exception(NotReady("server is shutting down"))
            return
        self._decoding += 1

        def done(job: concurrent.futures.Future[np.ndarray]) -> None:  # in the decoding thread
            if not loop.is_closed():  # closed: the server stopped while this image decoded
                loop.call_soon_threadsafe(self._decoded, loop, answer, job)

        job.add_done_callback(done)

    def _decoded(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[np.ndarray],
                 job: concurrent.futures.Future[np.ndarray]) -> None:
        """One image done: its place goes to the next image in turn (a caller that has gone is skipped)."""
        self._decoding -= 1
        while self._decode_turns:
            waiting, fn, image = self._decode_turns.pop(self._decode_turns.turn())
            if not waiting.cancelled():
                self._start_decode(loop, waiting, fn, image)
                break
        if answer.cancelled():
            return
        if job.cancelled():  # the pool was shut down before it started
            answer.cancel()
            return
        error = job.exception()
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(job.result())

    async def run(self, model: ServedModel, x: np.ndarray, deadline: float | None = None,
                  timing: RequestTiming | None = None) -> np.ndarray:
        """A checked (N, C, H, W) batch through the model's batcher; (N, K) logits. More than ``max_batch`` images
        go in ``max_batch`` chunks, one after the other, each queued behind the requests that came before it.
        ``timing``: the request's statistics (the time until now was spent preparing its input)."""
        predictor = _predictor(model)
        # NumPy lets go of the GIL while it scans a large array: in a worker thread the loop runs meanwhile (a 64 MiB
        # batch is 10–90 ms of scanning, by how busy the cores are).
        await offload.step(predictor.check_finite, predictor.check_batch(x), items=x.size // 1024)
        assert model.batcher is not None  # set together with the predictor
        if timing is not None:
            timing.prepared()
        step = self.config.max_batch
        client = share_var.get() if self._fair else ""  # one key for all: first come, first served
        if len(x) <= step:
            logits = await model.batcher.submit(x, deadline, timing, client)
        else:
            logits = np.concatenate([await model.batcher.submit(x[i:i + step], deadline, timing, client)
                                     for i in range(0, len(x), step)])
        if timing is not None:
            timing.resumed()
        return logits

    # ---- shared memory (Triton's extensions; regions belong to the calling client) ---------------------------------
    def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register(client_var.get(), name, key, offset, byte_size)

    def shm_status(self, name: str = "") -> list[RegionStatus]:
        return self.shared_memory.status(client_var.get(), name)

    def shm_unregister(self, name: str = "") -> None:
        self.shared_memory.unregister(client_var.get(), name)

    def cuda_shm_register(self, name: str) -> None:
        raise InvalidInput(f"failed to register CUDA shared memory region: '{name}', GPUs not supported")

    def cuda_shm_status(self, name: str = "") -> list[RegionStatus]:
        """No CUDA region ever exists: all of them is none, and a named one is not found."""
        if not name:
            return []
        if self.shared_memory.has(client_var.get(), name):
            raise RegionNotFound(f"The region named '{name}' is registered as system shared memory, not CUDA shared "
                                 "memory")
        raise RegionNotFound(f"Unable to find cuda shared memory region: '{name}'")

    def cuda_shm_unregister(self, name: str = "") -> None:
        """Nothing to unregister (as Triton, unregistering a region that does not exist succeeds)."""

    # ---- explanations ----------------------------------------------------------------------------------------
    @staticmethod
    def explain_images(method: str) -> int:
        """Images an explanation computes (what admission counts): occlusion runs one per patch."""
        return 1 + explain.OCCLUSION_GRID ** 2 if method in ("", "occlusion") else 1

    def _explainer(self, model: ServedModel, need: str) -> explain.ExplainSession:
        graph = model.manifest.explain if model.manifest else None
        if graph is None:
            raise InvalidInput(f"model {model.name!r} version {model.version} has no explain graph, which {need} "
                               "needs (it was exported before explanations existed, or its architecture has no "
                               "stages): method 'occlusion' works for every model")
        session = self._explainers.get(model.name)
        if session is None or session.version_dir != model.path:
            session = self._explainers[model.name] = explain.ExplainSession(
                model.path, graph, _predictor(model).device, self.config.threads)
        return session

    async def explain(self, request: ExplainRequest) -> ExplainResult:
        """The top-k of one image and a heatmap of the evidence for ``class_index`` (default: the top class)."""
        with self.admit(request.model, request.version, self.explain_images(request.method)) as model, \
                self._counters(model).request() as timing:
            return await self._explain(model, request, timing)

    async def _explain(self, model: ServedModel, request: ExplainRequest, timing: RequestTiming) -> ExplainResult:
        predictor = _predictor(model)
        graph = model.manifest.explain if model.manifest else None
        method = request.method or ("cam" if graph is not None and graph.cam else "occlusion")
        if method not in explain.METHODS:
            raise InvalidInput(f"unknown method {method!r}; choose one of {', '.join(explain.METHODS)}")
        if method == "cam" and graph is not None and not graph.cam:
            raise InvalidInput(f"model {model.name!r}: its head is not global-average-pool + linear, so it has no "
                               "class activation map; use method 'occlusion'")
        k_top = predictor.resolve_top_k(request.top_k)
        class_index, deadline = request.class_index, request.deadline
        if class_index is not None and not 0 <= class_index < predictor.num_classes:
            raise InvalidInput(f"class_index {class_index} is out of range: model {model.name!r} has "
                               f"{predictor.num_classes} classes (0-{predictor.num_classes - 1})")
        session = self._explainer(model, f"method {method!r}" if method == "cam" else "stages") \
            if method == "cam" or request.stages else None
        with tracing.step("decode"):
            x = await self.preprocess(model, [request.image], deadline)
        outputs: dict[str, np.ndarray] = {}
        if session is not None:  # the explain graph: the model with more outputs, one execution of its own
            timing.prepared()
            outputs, ns = await asyncio.get_running_loop().run_in_executor(self._decoder, _timed, session.run, x)
            timing.computed(len(x), ns)
            timing.resumed()
        logits = outputs["logits"] if method == "cam" else await self.run(model, x, deadline, timing)
        predictions = top_predictions(logits, k_top, predictor.labels)[0]
        probabilities = softmax(logits)[0]
        k = int(np.argmax(probabilities)) if class_index is None else class_index
        if method == "cam":
            heatmap = explain.cam(outputs, k)
        else:
            occluded = await self.run(model, explain.occlusion_batch(x[0]), deadline, timing)
            heatmap = explain.occlusion(float(probabilities[k]), softmax(occluded)[:, k])
        maps = explain.stage_maps(outputs, session.graph.stages) if request.stages and session is not None else []
        return ExplainResult(model.name, model.version, request.id, predictions, k, predictor.labels[k], method,
                             heatmap, maps)

    # ---- log and trace settings (Triton's logging and trace extensions) ----------------------------------------
    def log_settings(self, changes: Mapping[str, object] | None = None) -> dict[str, bool | int | str]:
        """The process's log settings, after ``changes`` if any (a value of None: back to the start value)."""
        return self.logs.update(changes) if changes else self.logs.get()

    def trace_settings(self, model: str = "",
                       changes: Mapping[str, list[str] | None] | None = None) -> dict[str, list[str]]:
        """The trace settings of ``model`` (a model's own, or the global ones for ""), after ``changes`` if any."""
        if model:
            self.registry.find(model)  # ModelNotFound: clients cannot grow the table with names of no model
        return self.tracing.update(model, changes) if changes else self.tracing.settings(model)

    # ---- statistics ------------------------------------------------------------------------------------------
    def _counters(self, model: ServedModel) -> VersionStatistics:
        """The statistics of the model's served version (its batcher's), listed for reading on first use."""
        if model.batcher is None:
            raise NotReady(f"model {model.name!r} is not serving")
        counters = model.batcher.statistics
        if not counters.tracked:
            self._statistics.track(model.name, model.version, counters)
        return counters

    def statistics(self, name: str = "", version: str | int = "") -> list[ModelStatistics]:
        """Triton's statistics: of every model version that served (``name`` ""; ``version`` is then ignored, as
        Triton does), of every version of ``name`` (``version`` ""), or of that version, even after a newer one
        replaced it. ``ModelNotFound`` for an unknown model or a version without statistics; ``NotReady`` for a
        model none of whose versions served yet."""
        for served in self.registry.models.values():  # a version nobody asked anything yet: zeros
            if served.batcher is not None:
                self._counters(served)
        if not name:
            return self._statistics.read()
        versions = self._statistics.versions(name)
        if not versions:
            model = self.registry.find(name)  # ModelNotFound for a name the server never had
            raise NotReady(f"model {name!r} has no statistics: none of its versions has served "
                           f"({model.reason or 'still loading'})")
        wanted = parse_version(version)
        if wanted is not None and wanted not in versions:
            raise ModelNotFound(f"Request for unknown model: {shown(name)} version {wanted} is not found "
                                f"(versions with statistics: {', '.join(map(str, versions))})")
        return self._statistics.read(name, wanted)


def _output(requested: RequestedOutput, logits: np.ndarray, labels: Sequence[str]) -> OutputTensor:
    """One requested output of (N, K) logits: the tensor, or its top ``class_count`` (at most K) as Triton's
    classification strings, an (N, k) BYTES tensor."""
    if not requested.class_count:
        return OutputTensor(requested.name, "FP32", list(logits.shape), logits)
    k = min(requested.class_count, logits.shape[1])
    return OutputTensor(requested.name, "BYTES", [len(logits), k], classification(logits, k, labels))


def _write(window: Window, tensor: OutputTensor) -> OutputTensor:
    """``tensor`` written into its shared-memory window: the answer says where, and how many bytes."""
    written = window.write(np.ascontiguousarray(tensor.data, dtype="<f4"))
    return replace(tensor, shm=SharedMemoryRef(window.name, written, window.offset))


T = TypeVar("T")


def _timed(fn: Callable[[np.ndarray], T], x: np.ndarray) -> tuple[T, int]:
    """``fn(x)`` and its nanoseconds, timed in the thread that runs it."""
    started = time.perf_counter_ns()
    return fn(x), time.perf_counter_ns() - started


def _check_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None, where: str) -> None:
    if deadline is not None and loop.time() >= deadline:
        raise DeadlineExceeded(f"deadline passed {where}")


# The registry's states as Triton's repository index names them (an unloading model is NOT_SERVING + unloading).
_TRITON_STATES = {ModelState.SERVING: "READY", ModelState.LOADING: "LOADING", ModelState.NOT_SERVING: "UNAVAILABLE"}


def _one_repository(name: str) -> None:
    if name:  # as Triton answers a repository name when it has no such feature
        raise Unsupported(f"repository_name {shown(name)}: this server has one repository; leave the name empty")


def _no_other_parameters(request: RepositoryRequest, accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(request.parameters) - set(accepted))
    if unknown:
        raise InvalidInput(f"unknown parameter {shown(unknown[0])} for model {shown(request.model)}; this request "
                           f"takes {', '.join(map(repr, accepted)) or 'none'}")


def _predictor(model: ServedModel) -> Predictor:
    if model.predictor is None:
        raise NotReady(f"model {model.name!r} is not serving")
    return model.predictor


def _manifest(model: ServedModel) -> ModelManifest:
    if model.manifest is None:
        raise NotReady(f"model {model.name!r} is not serving: {model.reason or 'still loading'}")
    return model.manifest


def _status(model: ServedModel) -> ModelStatus:
    return ModelStatus(
        name=model.name, version=model.version, state=model.state.value, reason=model.reason,
        versions=list(model.versions), manifest=model.manifest, verification=model.verification,
        golden_max_abs_diff=model.golden.max_abs_diff if model.golden else 0.0,
        golden_samples=model.golden.samples if model.golden else 0)
