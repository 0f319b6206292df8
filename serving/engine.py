"""The data plane: which models exist, which serve, and the async operations every transport calls.

gRPC servicers translate protobuf to these calls and back; nothing here knows about protobuf. Images are decoded in a
thread pool, tensors go through the model's :class:`~serving.batcher.DynamicBatcher`, and every problem is raised as
a domain error from ``serving.errors``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving import repository
from serving.batcher import DynamicBatcher
from serving.config import ServerConfig
from serving.errors import InvalidInput, ModelNotFound, ModelRejected, NotReady
from serving.manifest import ModelManifest
from serving.metrics import Metrics
from serving.predictor import ImageSource, Prediction, Predictor, available_cores, select_top_k, softmax
from serving.repository import GoldenResult

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    LOADING = "LOADING"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"


@dataclass
class ServedModel:
    """One model of the repository: the chosen version, its state and, once it passed its checks, its runtime."""

    name: str
    version: int
    versions: list[int]
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    manifest: ModelManifest | None = None
    predictor: Predictor | None = None
    batcher: DynamicBatcher | None = None
    golden: GoldenResult | None = None
    verification: dict = field(default_factory=dict)


# Awaited on every state change; None: the server's overall state may have changed (loading finished).
StateListener = Callable[[ServedModel | None], Awaitable[None]]


def parse_version(version: str | int | None) -> int | None:
    """'' / 0 / None → None (the served version); digits → int; anything else → ``ModelNotFound``."""
    if version in (None, "", 0):
        return None
    if isinstance(version, int):
        if version < 0:
            raise ModelNotFound(f"no model version {version}")
        return version
    if not version.isdigit():
        raise ModelNotFound(f"no model version {version!r} (versions are integers)")
    return int(version) or None


class InferenceEngine:
    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.loading_done = False
        self.shutting_down = False
        self._listeners: list[StateListener] = []
        self._decoder = ThreadPoolExecutor(config.decode_workers or available_cores(), thread_name_prefix="decode")
        chosen = repository.select(config.repository, list(config.models))
        for name, (version, versions) in chosen.items():
            self.models[name] = ServedModel(name, version, versions, Path(config.repository) / name / str(version))
        if not self.models:
            raise FileNotFoundError(f"no model in {config.repository} (expected NAME/VERSION/model.json)")

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def on_state_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    async def _set_state(self, model: ServedModel, state: ModelState, reason: str = "") -> None:
        model.state, model.reason = state, reason
        if self.metrics is not None:
            self.metrics.model_ready.labels(model.name, str(model.version)).set(state is ModelState.SERVING)
        for listener in self._listeners:
            await listener(model)

    async def load_all(self) -> None:
        """Load and self-check every model, one after the other, off the event loop."""
        loop = asyncio.get_running_loop()
        for model in self.models.values():
            if self.shutting_down:
                break
            try:
                loaded = await loop.run_in_executor(None, self._load_one, model)
            except ModelRejected as e:
                log.error("model %s version %d refused: %s", model.name, model.version, e,
                          extra={"model": model.name, "version": model.version})
                await self._set_state(model, ModelState.NOT_SERVING, str(e))
                continue
            except Exception as e:
                log.exception("model %s version %d failed to load", model.name, model.version)
                await self._set_state(model, ModelState.NOT_SERVING, f"load failed: {type(e).__name__}: {e}")
                continue
            model.predictor, model.golden, model.verification = loaded.predictor, loaded.golden, loaded.verification
            model.batcher = DynamicBatcher(
                loaded.predictor.run, name=model.name, max_batch=self.config.max_batch,
                max_delay_s=self.config.max_queue_delay_ms / 1000, max_queue=self.config.max_queue,
                metrics=self.metrics,
            )
            model.batcher.start()
            await self._set_state(model, ModelState.SERVING)
        self.loading_done = True
        for listener in self._listeners:
            await listener(None)

    def _load_one(self, model: ServedModel) -> repository.LoadedModel:
        model.manifest = repository.read_manifest(model.path)
        return repository.load_model(model.path, device=self.config.device, threads=self.config.threads,
                                     max_pixels=self.config.max_pixels, manifest=model.manifest)

    @property
    def ready(self) -> bool:
        """Serving as a whole: loading finished, at least one model passed its checks, not shutting down."""
        return (self.loading_done and not self.shutting_down
                and any(m.state is ModelState.SERVING for m in self.models.values()))

    async def close(self) -> None:
        self.shutting_down = True
        for model in self.models.values():
            if model.batcher is not None:
                await model.batcher.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    # ---- lookups ---------------------------------------------------------------------------------------------
    def find(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model entry, whatever its state; ``ModelNotFound`` for an unknown name or version."""
        if not name:
            raise InvalidInput("no model name given")
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} not found (this server has: {', '.join(sorted(self.models))})")
        wanted = parse_version(version)
        if wanted is not None and wanted != model.version:
            if wanted in model.versions:
                raise ModelNotFound(f"model {name!r} version {wanted} is not loaded: this server serves version "
                                    f"{model.version} (pin another with --models {name}:{wanted})")
            raise ModelNotFound(f"model {name!r} has no version {wanted} (versions: {model.versions})")
        return model

    def get(self, name: str, version: str | int | None = None) -> ServedModel:
        """The model, ready to answer; ``NotReady`` while it loads or after it was refused."""
        model = self.find(name, version)
        # No check of shutting_down here: a request gRPC accepted before the shutdown is served during the grace
        # period (gRPC itself refuses new ones); the batchers refuse only once they are closed.
        if model.state is ModelState.LOADING:
            raise NotReady(f"model {name!r} is still loading")
        if model.state is ModelState.NOT_SERVING:
            raise NotReady(f"model {name!r} is not serving: {model.reason}")
        return model

    # ---- operations ------------------------------------------------------------------------------------------
    async def preprocess(self, model: ServedModel, images: Sequence[ImageSource]) -> np.ndarray:
        """Decode and preprocess in the worker pool (tensors are only checked); (N, C, H, W) float32."""
        if not images:
            raise InvalidInput("no images in the request")
        predictor = _predictor(model)
        loop = asyncio.get_running_loop()

        async def one(i: int, image: ImageSource) -> np.ndarray:
            try:
                if isinstance(image, np.ndarray):
                    return predictor.check_tensor(image)
                return await loop.run_in_executor(self._decoder, predictor.preprocess, image)
            except InvalidInput as e:
                raise InvalidInput(f"image {i}: {e}") from None

        if len(images) == 1:
            return (await one(0, images[0]))[None]
        return np.stack(await asyncio.gather(*(one(i, img) for i, img in enumerate(images))))

    async def infer(self, model: ServedModel, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """A checked (N, C, H, W) batch through the model's batcher; (N, K) logits."""
        predictor = _predictor(model)
        predictor.check_batch(x)
        assert model.batcher is not None  # set together with the predictor
        return await model.batcher.submit(x, deadline)

    async def classify(self, name: str, version: int | str | None, images: Sequence[ImageSource], k: int,
                       deadline: float | None = None) -> tuple[ServedModel, list[list[Prediction]]]:
        model = self.get(name, version)
        k = _predictor(model).resolve_top_k(k)
        logits = await self.infer(model, await self.preprocess(model, images), deadline)
        return model, select_top_k(softmax(logits), k, model.predictor.labels)  # type: ignore[union-attr]


def _predictor(model: ServedModel) -> Predictor:
    if model.predictor is None:
        raise NotReady(f"model {model.name!r} is not serving")
    return model.predictor
