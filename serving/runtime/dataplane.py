"""The data plane: the operations every transport calls (admit, decode, infer, classify) on the registry's models.

A front end (gRPC today) translates its wire format to these calls and back and maps the domain errors they raise
(``serving.errors``); nothing here knows about protobuf. Images are decoded in a thread pool, and tensors go through
the model's :class:`~serving.runtime.batcher.DynamicBatcher`.

Admission is counted in images: a model holds at most ``config.max_admitted`` images at once (decoding, queued,
computing), and a request holds at most ``max_images_per_request``; anything more is refused before any decoding, so
overload costs the server almost nothing per request. A large request's decoding and compute are split into rounds
that queue fairly behind other requests and stop once its deadline has passed or its caller has gone.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from serving.errors import DeadlineExceeded, InvalidInput, NotReady, Overloaded, TooLarge
from serving.runtime import explain
from serving.runtime.prediction import Prediction, softmax, top_predictions
from serving.runtime.predictor import ImageSource, Predictor, available_cores
from serving.runtime.registry import ModelRegistry, ServedModel


@dataclass(frozen=True)
class Explanation:
    predictions: list[Prediction]
    class_index: int
    label: str
    method: str
    heatmap: explain.Heatmap
    stages: list[explain.StageMaps]


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.config = registry.config
        workers = self.config.decode_workers or available_cores()
        self._decoder = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._decode_round = workers  # images of one request in the decode pool at once
        self._explainers: dict[str, explain.ExplainSession] = {}  # model name → its served version's graph

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def admit(self, name: str, version: str | int | None = None, images: int = 1) -> Iterator[ServedModel]:
        """The model, ready to answer, held for one request of ``images`` images; refused before any work when the
        request is larger than ``max_images_per_request`` (``InvalidInput``) or the model already holds
        ``max_admitted`` images (``Overloaded``)."""
        if images > self.config.max_images_per_request:
            raise InvalidInput(f"{images} images in one request, more than the limit of "
                               f"{self.config.max_images_per_request} (--max-images-per-request); split the request")
        if images > self.config.max_admitted:  # could never be admitted, however long the client waits
            raise InvalidInput(f"{images} images in one request, more than a model holds at once "
                               f"({self.config.max_admitted}: --max-queue + --max-batch); split the request")
        model = self.registry.get(name, version)
        if model.active + images > self.config.max_admitted:
            raise Overloaded(f"model {name!r}: queue full ({model.active} images in progress); retry later")
        model.active += images
        try:
            yield model
        finally:
            model.active -= images

    # ---- operations ------------------------------------------------------------------------------------------
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

        async def one(i: int, image: ImageSource) -> np.ndarray:
            try:
                if isinstance(image, np.ndarray):
                    return predictor.check_finite(predictor.check_tensor(image))
                return await loop.run_in_executor(self._decoder, predictor.preprocess, image)
            except InvalidInput as e:
                raise InvalidInput(f"image {i}: {e}") from None

        if len(images) == 1:
            return (await one(0, images[0]))[None]
        decoded: list[np.ndarray] = []
        for start in range(0, len(images), self._decode_round):
            _check_deadline(loop, deadline, "while its images were decoded")
            decoded += await asyncio.gather(*(one(i, images[i])
                                              for i in range(start, min(start + self._decode_round, len(images)))))
        return np.stack(decoded)

    async def infer(self, model: ServedModel, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """A checked (N, C, H, W) batch through the model's batcher; (N, K) logits. More than ``max_batch`` images
        go in ``max_batch`` chunks, one after the other, each queued behind the requests that came before it."""
        predictor = _predictor(model)
        predictor.check_finite(predictor.check_batch(x))
        assert model.batcher is not None  # set together with the predictor
        step = self.config.max_batch
        if len(x) <= step:
            return await model.batcher.submit(x, deadline)
        return np.concatenate([await model.batcher.submit(x[i:i + step], deadline) for i in range(0, len(x), step)])

    async def classify(self, model: ServedModel, images: Sequence[ImageSource], k: int,
                       deadline: float | None = None) -> list[list[Prediction]]:
        """Top-``k`` for each image, for a model held by :meth:`admit`."""
        predictor = _predictor(model)
        k = predictor.resolve_top_k(k)
        logits = await self.infer(model, await self.preprocess(model, images, deadline), deadline)
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if len(bad):  # finite but extreme tensor values can overflow inside the network
            raise InvalidInput(f"image {', '.join(map(str, bad))}: the model's output is not finite (NaN or "
                               "infinite logits); the input values are out of range")
        return top_predictions(logits, k, predictor.labels)


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

    async def explain(self, model: ServedModel, image: ImageSource, class_index: int | None = None,
                      method: str = "", top_k: int = 0, stages: bool = False,
                      deadline: float | None = None) -> Explanation:
        """The top-k of one image and a heatmap of the evidence for ``class_index`` (default: the top class), for
        a model held by :meth:`admit` (with :meth:`explain_images` images)."""
        predictor = _predictor(model)
        graph = model.manifest.explain if model.manifest else None
        method = method or ("cam" if graph is not None and graph.cam else "occlusion")
        if method not in explain.METHODS:
            raise InvalidInput(f"unknown method {method!r}; choose one of {', '.join(explain.METHODS)}")
        if method == "cam" and graph is not None and not graph.cam:
            raise InvalidInput(f"model {model.name!r}: its head is not global-average-pool + linear, so it has no "
                               "class activation map; use method 'occlusion'")
        k_top = predictor.resolve_top_k(top_k)
        if class_index is not None and not 0 <= class_index < predictor.num_classes:
            raise InvalidInput(f"class_index {class_index} is out of range: model {model.name!r} has "
                               f"{predictor.num_classes} classes (0-{predictor.num_classes - 1})")
        session = self._explainer(model, f"method {method!r}" if method == "cam" else "stages") \
            if method == "cam" or stages else None
        x = await self.preprocess(model, [image], deadline)
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._decoder, session.run, x) if session is not None else {}
        logits = outputs["logits"] if method == "cam" else await self.infer(model, x, deadline)
        predictions = top_predictions(logits, k_top, predictor.labels)[0]
        probabilities = softmax(logits)[0]
        k = int(np.argmax(probabilities)) if class_index is None else class_index
        if method == "cam":
            heatmap = explain.cam(outputs, k)
        else:
            occluded = await self.infer(model, explain.occlusion_batch(x[0]), deadline)
            heatmap = explain.occlusion(float(probabilities[k]), softmax(occluded)[:, k])
        maps = explain.stage_maps(outputs, session.graph.stages) if stages and session is not None else []
        return Explanation(predictions, k, predictor.labels[k], method, heatmap, maps)


def _check_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None, where: str) -> None:
    if deadline is not None and loop.time() >= deadline:
        raise DeadlineExceeded(f"deadline passed {where}")


def _predictor(model: ServedModel) -> Predictor:
    if model.predictor is None:
        raise NotReady(f"model {model.name!r} is not serving")
    return model.predictor
