"""The data plane's rules, pinned where they live: a :class:`DataPlane` over a registry of the test repository, in
this process, with no server, socket or front end (the end-to-end tests prove the wiring, not every rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from serving.config import ServerConfig
from serving.contract.api import (
    ClassifyRequest,
    ExplainRequest,
    InferRequest,
    InputTensor,
    RequestedOutput,
    SharedMemoryRef,
)
from serving.contract.prediction import softmax
from serving.contract.tensors import encode_bytes_elements
from serving.errors import DeadlineExceeded, InvalidInput, ModelNotFound, NotReady, Overloaded, TooLarge
from serving.runtime.dataplane import DataPlane
from serving.runtime.predictor import Predictor
from serving.runtime.registry import ModelRegistry
from tests.support.repositories import Repo

T = TypeVar("T")
SHAPE = (1, 28, 28)


def config_for(repository: Repo, **kwargs: Any) -> ServerConfig:
    return replace(ServerConfig(repository=repository.path, models=("digits",), threads=1, decode_workers=2,
                                max_batch=4, max_queue=8, max_images_per_request=16), **kwargs)


async def loaded_plane(config: ServerConfig) -> DataPlane:
    registry = ModelRegistry(config)
    await registry.load_all()
    return DataPlane(registry)


def run(config: ServerConfig, test: Callable[[DataPlane], Awaitable[T]]) -> T:
    """``test(plane)`` on a fresh event loop, with the plane's models loaded; closes everything after."""
    async def main() -> T:
        plane = await loaded_plane(config)
        try:
            return await test(plane)
        finally:
            await plane.registry.close()
            plane.close()

    return asyncio.run(main())


@pytest.fixture
def config(repository: Repo) -> ServerConfig:
    return config_for(repository)


def fp32(x: np.ndarray, name: str = "input") -> InputTensor:
    return InputTensor(name, "FP32", list(x.shape), raw=x.astype("<f4").tobytes())


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def png(image_files: dict[str, Path]) -> bytes:
    return image_files["img0.png"].read_bytes()


# ---- Open Inference --------------------------------------------------------------------------------------------------

def test_infer_gives_the_predictors_logits(config: ServerConfig, digits: Predictor) -> None:
    x = batch(3)
    result = run(config, lambda plane: plane.infer(InferRequest("digits", inputs=[fp32(x)], id="r1")))
    assert (result.model, result.version, result.id) == ("digits", 1, "r1")
    [output] = result.outputs
    assert (output.name, output.datatype, output.shape, output.shm) == ("logits", "FP32", [3, 10], None)
    np.testing.assert_allclose(output.data, digits.run(x), atol=1e-5)


def test_bytes_input_is_decoded_like_a_file(config: ServerConfig, digits: Predictor,
                                            image_files: dict[str, Path]) -> None:
    data = png(image_files)
    tensor = InputTensor("input", "BYTES", [2], raw=encode_bytes_elements([data, data]))
    result = run(config, lambda plane: plane.infer(InferRequest("digits", inputs=[tensor])))
    expected = digits.run(digits.preprocess(data)[None])[0]
    np.testing.assert_allclose(result.outputs[0].data, [expected, expected], atol=1e-5)


@pytest.mark.parametrize("class_count", [3, 10, 99])
def test_class_count_gives_tritons_classification_strings(config: ServerConfig, digits: Predictor,
                                                          class_count: int) -> None:
    """Triton's classification extension: (N, k) BYTES "probability:index:label", most probable first; a count
    above the number of classes gives every class."""
    x = batch(2, seed=3)
    request = InferRequest("digits", inputs=[fp32(x)], outputs=[RequestedOutput("logits", class_count=class_count)])
    [output] = run(config, lambda plane: plane.infer(request)).outputs
    k = min(class_count, 10)
    assert (output.name, output.datatype, output.shape) == ("logits", "BYTES", [2, k])
    probabilities = softmax(digits.run(x))
    for row, items in enumerate([output.data[:k], output.data[k:]]):
        fields = [item.decode().split(":") for item in items]
        indices = [int(index) for _, index, _ in fields]
        assert indices == list(np.argsort(-probabilities[row], kind="stable")[:k])
        assert [label for _, _, label in fields] == [digits.labels[i] for i in indices]
        np.testing.assert_allclose([float(p) for p, _, _ in fields], probabilities[row][indices], atol=1e-6)


@pytest.mark.parametrize(("request_", "error", "message"), [
    (InferRequest("nope"), ModelNotFound, "model 'nope' not found"),
    (InferRequest("digits", version=9), ModelNotFound, "has no version 9"),
    (InferRequest("digits"), InvalidInput, "takes exactly one input 'input'.*got 0"),
    (InferRequest("digits", inputs=[fp32(batch(1)), fp32(batch(1))]), InvalidInput, "got 2"),
    (InferRequest("digits", inputs=[fp32(batch(1), "x")]), InvalidInput, "unknown input 'x'"),
    (InferRequest("digits", inputs=[fp32(batch(1))], outputs=[RequestedOutput("probs")]), InvalidInput,
     "unknown output 'probs'; model 'digits' has 'logits'"),
    (InferRequest("digits", inputs=[fp32(batch(1))], outputs=[RequestedOutput("logits")] * 2), InvalidInput,
     "output 'logits' is requested twice"),
    (InferRequest("digits", inputs=[fp32(batch(1))], outputs=[RequestedOutput("logits", class_count=-1)]),
     InvalidInput, "classification -1 must be >= 0"),
    (InferRequest("digits", inputs=[fp32(batch(1))],
                  outputs=[RequestedOutput("logits", 2, SharedMemoryRef("out", 80))]), InvalidInput,
     "a classification output cannot go to shared memory"),
    (InferRequest("digits", inputs=[InputTensor("input", "FP32", [1, 1, 28, 28], values=[0.0] * 3)]), InvalidInput,
     "3 values, shape \\[1, 1, 28, 28\\] needs 784"),
    (InferRequest("digits", inputs=[fp32(np.zeros((1, 1, 27, 28), np.float32))]), InvalidInput,
     "input shape must be \\[N, 1, 28, 28\\]"),
    (InferRequest("digits", inputs=[fp32(np.full((1, *SHAPE), np.nan, np.float32))]), InvalidInput, "NaN"),
])
def test_infer_refuses_with_the_reason(config: ServerConfig, request_: InferRequest, error: type[Exception],
                                       message: str) -> None:
    with pytest.raises(error, match=message):
        run(config, lambda plane: plane.infer(request_))


def test_json_values_are_read_only_after_admission(config: ServerConfig) -> None:
    """A refused request costs no parsing: the values of a tensor are read after the model admitted it."""
    reads: list[int] = []

    def values() -> list[float]:
        reads.append(1)
        return [0.0] * 784

    tensor = InputTensor("input", "FP32", [1, *SHAPE], values=values)

    async def test(plane: DataPlane) -> None:
        with plane.admit("digits", images=config.max_admitted), pytest.raises(Overloaded, match="queue full"):
            await plane.infer(InferRequest("digits", inputs=[tensor]))  # the model is full
        assert reads == []
        await plane.infer(InferRequest("digits", inputs=[tensor]))
        assert reads == [1]

    run(config, test)


def test_metadata_config_and_readiness(config: ServerConfig) -> None:
    async def test(plane: DataPlane) -> None:
        assert plane.server_ready()
        assert plane.model_ready("digits")
        assert plane.model_ready("digits", "1")
        assert not plane.model_ready("digits", "2")  # unknown: not ready, as Triton answers
        assert not plane.model_ready("nope")
        with pytest.raises(ModelNotFound):
            plane.model_metadata("digits", "2")
        metadata = plane.model_metadata("digits")
        assert (metadata.name, metadata.versions, metadata.platform) == ("digits", ["1"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("input", "FP32", [-1, *SHAPE])]
        assert [(t.name, t.shape) for t in metadata.outputs] == [("logits", [-1, 10])]
        model_config = plane.model_config("digits")
        assert (model_config.name, model_config.max_batch_size) == ("digits", config.max_batch)
        assert [s.name for s in plane.models()] == ["digits"]
        assert plane.model_status("digits").state == "SERVING"
        plane.registry.shutting_down = True
        assert not plane.server_ready()
        assert not plane.model_ready("digits")

    run(config, test)


def test_a_model_not_loaded_yet_is_not_ready(config: ServerConfig) -> None:
    async def test() -> None:
        plane = DataPlane(ModelRegistry(config))  # load_all() not called
        try:
            assert not plane.server_ready()
            assert not plane.model_ready("digits")
            with pytest.raises(NotReady, match="still loading"):
                await plane.classify(ClassifyRequest("digits", [b"x"]))
            assert plane.model_status("digits").manifest is None
        finally:
            plane.close()

    asyncio.run(test())


# ---- admission, deadlines, chunking --------------------------------------------------------------------------------

def test_admission_refuses_before_any_work(config: ServerConfig) -> None:
    async def test(plane: DataPlane) -> None:
        too_many = [b"not an image"] * (config.max_images_per_request + 1)
        with pytest.raises(InvalidInput, match="17 images in one request, more than the limit of 16"):
            await plane.classify(ClassifyRequest("digits", too_many))  # refused before the bytes are looked at
        with plane.admit("digits", images=config.max_admitted - 1):
            assert plane.registry.models["digits"].active == config.max_admitted - 1
            with pytest.raises(Overloaded, match=r"model 'digits': queue full \(11 images in progress\)"):
                await plane.classify(ClassifyRequest("digits", [b"x", b"y"]))
        assert plane.registry.models["digits"].active == 0  # released, refused or not

    run(config, test)


def test_a_request_larger_than_a_model_holds_is_refused_as_too_large_to_ever_fit(repository: Repo) -> None:
    config = config_for(repository, max_images_per_request=64)
    with pytest.raises(InvalidInput, match="more than a model holds at once \\(12: --max-queue \\+ --max-batch\\)"):
        run(config, lambda plane: plane.infer(InferRequest("digits", inputs=[fp32(batch(13))])))


def test_images_that_expand_past_the_message_limit_are_refused(repository: Repo) -> None:
    config = config_for(repository, max_message_mb=1)  # 1 MiB: 334 digits of 3,136 bytes
    many = config_for(repository, max_message_mb=1, max_images_per_request=400, max_queue=400)
    assert config.max_message_bytes // (4 * 28 * 28) == 334
    with pytest.raises(TooLarge, match=r"335 images make a 1\.0 MiB input tensor.*send at most 334 per request"):
        run(many, lambda plane: plane.classify(ClassifyRequest("digits", [b"x"] * 335)))


def test_a_passed_deadline_is_never_computed(config: ServerConfig, image_files: dict[str, Path]) -> None:
    async def test(plane: DataPlane) -> None:
        past = asyncio.get_running_loop().time() - 1
        with pytest.raises(DeadlineExceeded, match="before the request was queued"):
            await plane.infer(InferRequest("digits", inputs=[fp32(batch(1))], deadline=past))
        with pytest.raises(DeadlineExceeded, match="while its images were decoded"):  # several decode rounds
            await plane.classify(ClassifyRequest("digits", [png(image_files)] * 5, deadline=past))
        assert plane.registry.models["digits"].active == 0

    run(config, test)


def test_more_images_than_max_batch_go_in_chunks(config: ServerConfig, digits: Predictor) -> None:
    x = batch(10, seed=1)
    sizes: list[int] = []

    async def test(plane: DataPlane) -> np.ndarray:
        batcher = plane.registry.models["digits"].batcher
        submit = batcher.submit

        async def recording(chunk: np.ndarray, *rest: Any) -> np.ndarray:
            sizes.append(len(chunk))
            return await submit(chunk, *rest)

        batcher.submit = recording  # type: ignore[method-assign]
        return (await plane.infer(InferRequest("digits", inputs=[fp32(x)]))).outputs[0].data

    logits = run(config, test)
    assert sizes == [4, 4, 2]  # max_batch 4
    np.testing.assert_allclose(logits, digits.run(x), atol=1e-5)


# ---- the classifier API --------------------------------------------------------------------------------------------

def test_classify_gives_top_k_of_each_image(config: ServerConfig, digits: Predictor,
                                            image_files: dict[str, Path]) -> None:
    data = png(image_files)
    result = run(config, lambda plane: plane.classify(ClassifyRequest("digits", [data, batch(1)[0]], top_k=3,
                                                                      id="c1")))
    assert (result.model, result.version, result.id) == ("digits", 1, "c1")
    assert [len(r) for r in result.results] == [3, 3]
    assert [p.label for p in result.results[0]] == [p.label for p in digits.classify([data], top_k=3)[0]]


@pytest.mark.parametrize(("images", "top_k", "message"), [
    ([], 0, "no images in the request"),
    ([b"junk"], 0, "image 0: cannot decode"),
    ([b"x"], 11, "top_k must be between 1 and 10 \\(the number of classes\\), got 11"),
    ([np.zeros((3, 28, 28), np.float32)], 0, "image 0: "),
])
def test_classify_refuses_with_the_reason(config: ServerConfig, images: list[Any], top_k: int,
                                          message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        run(config, lambda plane: plane.classify(ClassifyRequest("digits", images, top_k=top_k)))


def test_explain_occlusion_holds_one_image_per_patch(config: ServerConfig, image_files: dict[str, Path]) -> None:
    config = config_for_explain(config)

    async def test(plane: DataPlane) -> None:
        result = await plane.explain(ExplainRequest("digits", png(image_files), method="occlusion", top_k=2))
        assert (result.method, len(result.predictions), result.heatmap.values.shape) == ("occlusion", 2, (7, 7))
        assert result.class_index == result.predictions[0].index
        assert plane.explain_images("occlusion") == 50
        with plane.admit("digits", images=config.max_admitted - 49), pytest.raises(Overloaded):
            await plane.explain(ExplainRequest("digits", png(image_files), method="occlusion"))
        with pytest.raises(InvalidInput, match="class_index 10 is out of range"):
            await plane.explain(ExplainRequest("digits", png(image_files), class_index=10, method="occlusion"))

    run(config, test)


def config_for_explain(config: ServerConfig) -> ServerConfig:
    return replace(config, max_queue=64, max_images_per_request=64)  # occlusion holds 50 images

