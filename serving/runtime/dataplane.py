"""The data plane: the operations every transport calls (admit, decode, infer, classify) on the registry's models.

A front end (gRPC today) translates its wire format to these calls and back and maps the domain errors they raise
(``serving.errors``); nothing here knows about protobuf. Images are decoded in a thread pool, and tensors go through
the model's :class:`~serving.runtime.batcher.DynamicBatcher`.

Admission: a model handles at most ``config.max_admitted`` requests at once (decoding, queued, computing); one more
is refused with ``Overloaded`` before any decoding, so overload costs the server almost nothing per request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from serving.errors import InvalidInput, NotReady, Overloaded, TooLarge
from serving.runtime.prediction import Prediction, top_predictions
from serving.runtime.predictor import ImageSource, Predictor, available_cores
from serving.runtime.registry import ModelRegistry, ServedModel


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.config = registry.config
        self._decoder = ThreadPoolExecutor(self.config.decode_workers or available_cores(),
                                           thread_name_prefix="decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def admit(self, name: str, version: str | int | None = None) -> Iterator[ServedModel]:
        """The model, ready to answer, held for one request; ``Overloaded`` at once when it has too many."""
        model = self.registry.get(name, version)
        if model.active >= self.config.max_admitted:
            raise Overloaded(f"model {name!r}: queue full ({model.active} requests in progress); retry later")
        model.active += 1
        try:
            yield model
        finally:
            model.active -= 1

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

    async def preprocess(self, model: ServedModel, images: Sequence[ImageSource]) -> np.ndarray:
        """Decode and preprocess in the worker pool (tensors are only checked); (N, C, H, W) float32."""
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
        return np.stack(await asyncio.gather(*(one(i, img) for i, img in enumerate(images))))

    async def infer(self, model: ServedModel, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """A checked (N, C, H, W) batch through the model's batcher; (N, K) logits."""
        predictor = _predictor(model)
        predictor.check_finite(predictor.check_batch(x))
        assert model.batcher is not None  # set together with the predictor
        return await model.batcher.submit(x, deadline)

    async def classify(self, name: str, version: int | str | None, images: Sequence[ImageSource], k: int,
                       deadline: float | None = None) -> tuple[ServedModel, list[list[Prediction]]]:
        with self.admit(name, version) as model:
            predictor = _predictor(model)
            k = predictor.resolve_top_k(k)
            logits = await self.infer(model, await self.preprocess(model, images), deadline)
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if len(bad):  # finite but extreme tensor values can overflow inside the network
            raise InvalidInput(f"image {', '.join(map(str, bad))}: the model's output is not finite (NaN or "
                               "infinite logits); the input values are out of range")
        return model, top_predictions(logits, k, predictor.labels)


def _predictor(model: ServedModel) -> Predictor:
    if model.predictor is None:
        raise NotReady(f"model {model.name!r} is not serving")
    return model.predictor
