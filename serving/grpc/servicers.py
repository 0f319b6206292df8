"""gRPC servicers: each method translates protobuf to a data-plane call and back, nothing more.

``ImageClassifierServicer`` is the project's own API (imageclassifier.v1); ``InferenceServicer`` speaks the Open
Inference Protocol (KServe v2, Triton's ``inference.GRPCInferenceService``). Errors are raised as domain exceptions
and mapped to status codes by ``serving.grpc.status.rpc``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any

import grpc
import numpy as np

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.config import ServerConfig
from serving.errors import SlowReader
from serving.grpc import converters
from serving.grpc.handlers import UndecodableRequest
from serving.grpc.status import Recorder, deadline_of, rpc, sane_request_id, status_for
from serving.runtime.dataplane import DataPlane
from serving.runtime.logs import request_id_var
from serving.runtime.metrics import Metrics

Context = grpc.aio.ServicerContext
SERVER_NAME = "resnet-serving"
STREAM_WINDOW = 64  # messages of one stream processed concurrently; reading pauses beyond that (back-pressure)

try:
    SERVER_VERSION = dist_version(SERVER_NAME)
except PackageNotFoundError:
    SERVER_VERSION = "0.0.0"


def _make_recorder(plane: DataPlane, metrics: Metrics | None) -> Recorder:
    return Recorder(metrics, lambda: plane.registry.models)


class ImageClassifierServicer(ic_grpc.ImageClassifierServicer):
    def __init__(self, plane: DataPlane, metrics: Metrics | None = None) -> None:
        self.plane, self.registry, self.config = plane, plane.registry, plane.config
        self.recorder = _make_recorder(plane, metrics)

    async def _classify(self, request: ic_pb2.ClassifyRequest, deadline: float | None,
                        rid: str) -> ic_pb2.ClassifyResponse:
        with self.plane.admit(request.model, request.version, max(1, len(request.images))) as model:
            images = converters.images_from_request(request)
            results = await self.plane.classify(model, images, request.top_k, deadline)
        return converters.classify_response(model, results, sane_request_id(request.request_id) or rid)

    @rpc("Classify", lambda r: r.model)
    async def Classify(  # noqa: N802
        self, request: ic_pb2.ClassifyRequest, context: Context, rid: str,
    ) -> ic_pb2.ClassifyResponse:
        return await self._classify(request, deadline_of(context), rid)

    @rpc("ClassifyStream", stream=True)
    async def ClassifyStream(  # noqa: N802
        self, requests: AsyncIterator[ic_pb2.ClassifyRequest], context: Context, rid: str,
    ) -> None:
        async def respond(request: ic_pb2.ClassifyRequest, deadline: float | None,
                          message_id: str) -> ic_pb2.ClassifyStreamResponse:
            response = await self._classify(request, deadline, message_id)
            return ic_pb2.ClassifyStreamResponse(request_id=message_id, response=response)

        def fail(request: ic_pb2.ClassifyRequest, message_id: str, code: grpc.StatusCode,
                 message: str) -> ic_pb2.ClassifyStreamResponse:
            return converters.stream_error(message_id, code.value[0], message)

        await _answer_stream("ClassifyStream", self.recorder, requests, context, rid, respond, fail,
                             message_id=lambda r: r.request_id, model=lambda r: r.model,
                             write_timeout_s=self.config.stream_write_timeout_s)

    @rpc("ListModels")
    async def ListModels(  # noqa: N802
        self, request: ic_pb2.ListModelsRequest, context: Context, rid: str,
    ) -> ic_pb2.ListModelsResponse:
        return ic_pb2.ListModelsResponse(models=[converters.model_info(m) for m in self.registry.models.values()])

    @rpc("GetModel", lambda r: r.name)
    async def GetModel(  # noqa: N802
        self, request: ic_pb2.GetModelRequest, context: Context, rid: str,
    ) -> ic_pb2.ModelInfo:
        return converters.model_info(self.registry.find(request.name, request.version))

    @rpc("Explain", lambda r: r.model)
    async def Explain(  # noqa: N802
        self, request: ic_pb2.ExplainRequest, context: Context, rid: str,
    ) -> ic_pb2.ExplainResponse:
        image = converters.image_source(request.image)
        class_index = request.class_index if request.HasField("class_index") else None
        with self.plane.admit(request.model, request.version, self.plane.explain_images(request.method)) as model:
            explanation = await self.plane.explain(model, image, class_index, request.method, request.top_k,
                                                   request.stages, deadline_of(context))
        return converters.explain_response(model, explanation, sane_request_id(request.request_id) or rid)


async def _answer_stream(method: str, recorder: Recorder, requests: AsyncIterator, context: Context, rid: str,
                         respond: Callable[[Any, float | None, str], Awaitable[Any]],
                         fail: Callable[[Any, str, grpc.StatusCode, str], Any], *,
                         message_id: Callable[[Any], str], model: Callable[[Any], str],
                         write_timeout_s: float) -> None:
    """A bidirectional stream: each message answered on its own (its id, or the stream's id + its number; an error
    becomes an error message in the stream, not the end of it) and recorded in the metrics as one request. A client
    that leaves a response unread for ``write_timeout_s`` ends the stream (``SlowReader``)."""
    async def answer(seq: int, request: Any) -> Any:
        undecodable = isinstance(request, UndecodableRequest)
        mid = (None if undecodable else sane_request_id(message_id(request))) or f"{rid}-{seq}"
        token = request_id_var.set(mid)
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if undecodable:
                raise request.error()
            return await respond(request, deadline_of(context), mid)
        except Exception as e:
            code, message = status_for(e, mid)
            return fail(request, mid, code, message)
        finally:
            label = "" if undecodable else recorder.model_label(model(request))
            recorder.done(method, label, code, time.perf_counter() - started)
            request_id_var.reset(token)

    async for response in _concurrent_answers(requests, answer):
        try:
            await asyncio.wait_for(context.write(response), write_timeout_s)
        except TimeoutError:
            raise SlowReader(f"the client read no response for {write_timeout_s:g} s (--stream-write-timeout-s); "
                             "stream ended") from None


async def _concurrent_answers(requests: AsyncIterator, answer) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """Answer stream messages concurrently (so they batch with each other), yielding each as soon as it is ready."""
    iterator = requests.__aiter__()
    reader: asyncio.Task | None = asyncio.ensure_future(iterator.__anext__())
    pending: set[asyncio.Task] = set()
    seq = 0
    try:
        while reader is not None or pending:
            waiting = pending | ({reader} if reader is not None and len(pending) < STREAM_WINDOW else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is reader:
                    try:
                        request = task.result()
                    except StopAsyncIteration:
                        reader = None
                        continue
                    pending.add(asyncio.ensure_future(answer(seq, request)))
                    seq += 1
                    reader = asyncio.ensure_future(iterator.__anext__())
                else:
                    pending.discard(task)
                    yield task.result()
    finally:
        for task in (*pending, *([reader] if reader is not None else [])):
            task.cancel()


class InferenceServicer(kserve_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.plane, self.registry = plane, plane.registry
        self.config = config
        self.recorder = _make_recorder(plane, metrics)

    @rpc("ServerLive")
    async def ServerLive(  # noqa: N802
        self, request: kserve_pb2.ServerLiveRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerLiveResponse:
        return kserve_pb2.ServerLiveResponse(live=True)  # answering at all is being live; draining is not ready

    @rpc("ServerReady")
    async def ServerReady(  # noqa: N802
        self, request: kserve_pb2.ServerReadyRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerReadyResponse:
        return kserve_pb2.ServerReadyResponse(ready=self.registry.ready)

    @rpc("ServerMetadata")
    async def ServerMetadata(  # noqa: N802
        self, request: kserve_pb2.ServerMetadataRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerMetadataResponse:
        return kserve_pb2.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                                 extensions=["model_configuration"])

    @rpc("ModelReady", lambda r: r.name)
    async def ModelReady(  # noqa: N802
        self, request: kserve_pb2.ModelReadyRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelReadyResponse:
        model = self.registry.find(request.name, request.version)
        return kserve_pb2.ModelReadyResponse(ready=converters.model_ready(model) and not self.registry.shutting_down)

    @rpc("ModelMetadata", lambda r: r.name)
    async def ModelMetadata(  # noqa: N802
        self, request: kserve_pb2.ModelMetadataRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelMetadataResponse:
        return converters.model_metadata(self.registry.find(request.name, request.version))

    @rpc("ModelConfig", lambda r: r.name)
    async def ModelConfig(  # noqa: N802
        self, request: kserve_pb2.ModelConfigRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelConfigResponse:
        return converters.model_config(self.registry.find(request.name, request.version), self.config)

    async def _infer(self, request: kserve_pb2.ModelInferRequest, deadline: float | None,
                     rid: str) -> kserve_pb2.ModelInferResponse:
        with self.plane.admit(request.model_name, request.model_version, converters.infer_batch_size(request)) as model:
            assert model.manifest is not None  # a serving model has passed its checks
            converters.check_requested_outputs(request, model.manifest)
            data = converters.infer_inputs(request, model.manifest)
            x = data if isinstance(data, np.ndarray) else await self.plane.preprocess(model, data, deadline)
            logits = await self.plane.infer(model, x, deadline)
        return converters.infer_response(model, sane_request_id(request.id) or rid, logits)

    @rpc("ModelInfer", lambda r: r.model_name)
    async def ModelInfer(  # noqa: N802
        self, request: kserve_pb2.ModelInferRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelInferResponse:
        return await self._infer(request, deadline_of(context), rid)

    @rpc("ModelStreamInfer", stream=True)
    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[kserve_pb2.ModelInferRequest], context: Context, rid: str,
    ) -> None:
        async def respond(request: kserve_pb2.ModelInferRequest, deadline: float | None,
                          message_id: str) -> kserve_pb2.ModelStreamInferResponse:
            return kserve_pb2.ModelStreamInferResponse(infer_response=await self._infer(request, deadline, message_id))

        def fail(request: kserve_pb2.ModelInferRequest, message_id: str, code: grpc.StatusCode,
                 message: str) -> kserve_pb2.ModelStreamInferResponse:
            # Triton's stream carries only a message; keep the request id so the client can match it.
            return kserve_pb2.ModelStreamInferResponse(
                error_message=f"{code.name}: {message}",
                infer_response=kserve_pb2.ModelInferResponse(model_name=getattr(request, "model_name", ""),
                                                            id=message_id))

        await _answer_stream("ModelStreamInfer", self.recorder, requests, context, rid, respond, fail,
                             message_id=lambda r: r.id, model=lambda r: r.model_name,
                             write_timeout_s=self.config.stream_write_timeout_s)
