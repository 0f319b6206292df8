"""gRPC servicers: each method translates protobuf to a data-plane call and back, nothing more.

``ImageClassifierServicer`` is the project's own API (imageclassifier.v1); ``InferenceServicer`` speaks the Open
Inference Protocol (KServe v2, Triton's ``inference.GRPCInferenceService``). Errors are raised as domain exceptions
and mapped to status codes by ``serving.grpc.status.rpc``, which also caps the connections per client address
(``peers``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.contract import classifier
from serving.errors import SlowReader
from serving.grpc import converters
from serving.grpc.clients import Identify
from serving.grpc.handlers import Held, StandIn
from serving.grpc.peers import PeerCalls
from serving.grpc.status import STATUS_CODES, deadline_of, rpc
from serving.runtime import offload, tracing
from serving.runtime.budget import Hold
from serving.runtime.dataplane import DataPlane
from serving.runtime.logs import request_id_var
from serving.runtime.requests import OK, Recorder, error_of, sane_request_id

Context = grpc.aio.ServicerContext
STREAM_WINDOW = 64  # messages of one stream processed concurrently; reading pauses beyond that (back-pressure)


class ImageClassifierServicer(ic_grpc.ImageClassifierServicer):
    def __init__(self, plane: DataPlane, recorder: Recorder, identify: Identify,
                 peers: PeerCalls | None = None) -> None:
        self.plane, self.recorder, self.identify, self.peers = plane, recorder, identify, peers
        self.write_timeout_s = plane.config.stream_write_timeout_s

    async def _classify(self, request: ic_pb2.ClassifyRequest, deadline: float | None,
                        rid: str) -> ic_pb2.ClassifyResponse:
        message_id = sane_request_id(request.request_id) or rid
        result = await self.plane.classify(converters.classify_request(request, message_id, deadline))
        return await offload.step(classifier.classify_response, result, items=sum(map(len, result.results)))

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
                             write_timeout_s=self.write_timeout_s)

    @rpc("ListModels")
    async def ListModels(  # noqa: N802
        self, request: ic_pb2.ListModelsRequest, context: Context, rid: str,
    ) -> ic_pb2.ListModelsResponse:
        return classifier.list_models(self.plane.models())

    @rpc("GetModel", lambda r: r.name)
    async def GetModel(  # noqa: N802
        self, request: ic_pb2.GetModelRequest, context: Context, rid: str,
    ) -> ic_pb2.ModelInfo:
        return classifier.model_info(self.plane.model_status(request.name, request.version))

    @rpc("Explain", lambda r: r.model)
    async def Explain(  # noqa: N802
        self, request: ic_pb2.ExplainRequest, context: Context, rid: str,
    ) -> ic_pb2.ExplainResponse:
        message_id = sane_request_id(request.request_id) or rid
        result = await self.plane.explain(converters.explain_request(request, message_id, deadline_of(context)))
        return classifier.explain_response(result)


async def _answer_stream(method: str, recorder: Recorder, requests: AsyncIterator, context: Context, rid: str,
                         respond: Callable[[Any, float | None, str], Awaitable[Any]],
                         fail: Callable[[Any, str, grpc.StatusCode, str], Any], *,
                         message_id: Callable[[Any], str], model: Callable[[Any], str],
                         write_timeout_s: float) -> None:
    """A bidirectional stream: each message answered on its own (its id, or the stream's id + its number; an error
    becomes an error message in the stream, not the end of it) and recorded in the metrics as one request. A client
    that leaves a response unread for ``write_timeout_s`` ends the stream (``SlowReader``)."""
    async def answer(seq: int, request: Any) -> Any:
        undecodable = isinstance(request, StandIn)
        mid = (None if undecodable else sane_request_id(message_id(request))) or f"{rid}-{seq}"
        token = request_id_var.set(mid)
        started, outcome = time.perf_counter(), OK
        # each message is a request: traced on its own, under the stream's traceparent
        trace = None if undecodable else tracing.begin_message(method, model(request), mid, context.invocation_metadata)
        try:
            if undecodable:
                raise request.error()
            return await respond(request, deadline_of(context), mid)
        except Exception as e:
            kind, message = error_of(e, mid)
            outcome = kind.outcome
            return fail(request, mid, STATUS_CODES[kind], message)
        finally:
            label = "" if undecodable else recorder.model_label(model(request))
            recorder.done(method, label, outcome, time.perf_counter() - started)
            if trace is not None:
                tracing.finish_message(trace, outcome)
            request_id_var.reset(token)

    async for response in _concurrent_answers(requests, answer):
        try:
            await asyncio.wait_for(context.write(response), write_timeout_s)
        except TimeoutError:
            raise SlowReader(f"the client read no response for {write_timeout_s:g} s (--stream-write-timeout-s); "
                             "stream ended") from None


async def _concurrent_answers(requests: AsyncIterator, answer) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """Answer stream messages concurrently (so they batch with each other), yielding each as soon as it is ready.
    A message's bytes stay in the in-flight budget until its answer is done (or cancelled: a done callback), and a
    message read but never answered (the stream ended first) gives them back too."""
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
                    hold = None
                    if isinstance(request, Held):
                        request, hold = request.message, request.hold
                    answering = asyncio.ensure_future(answer(seq, request))
                    if hold is not None:
                        answering.add_done_callback(functools.partial(_release, hold))
                    pending.add(answering)
                    seq += 1
                    reader = asyncio.ensure_future(iterator.__anext__())
                else:
                    pending.discard(task)
                    yield task.result()
    finally:
        for task in (*pending, *([reader] if reader is not None else [])):
            task.cancel()
        if reader is not None and reader.done() and not reader.cancelled() and reader.exception() is None:
            unread = reader.result()
            if isinstance(unread, Held):
                unread.hold.release()


def _release(hold: Hold, _: asyncio.Future) -> None:
    hold.release()


class InferenceServicer(kserve_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, recorder: Recorder, identify: Identify,
                 peers: PeerCalls | None = None) -> None:
        self.plane, self.recorder, self.identify, self.peers = plane, recorder, identify, peers
        self.write_timeout_s = plane.config.stream_write_timeout_s

    @rpc("ServerLive")
    async def ServerLive(  # noqa: N802
        self, request: kserve_pb2.ServerLiveRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerLiveResponse:
        return kserve_pb2.ServerLiveResponse(live=True)  # answering at all is being live; draining is not ready

    @rpc("ServerReady")
    async def ServerReady(  # noqa: N802
        self, request: kserve_pb2.ServerReadyRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerReadyResponse:
        return kserve_pb2.ServerReadyResponse(ready=self.plane.server_ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(  # noqa: N802
        self, request: kserve_pb2.ServerMetadataRequest, context: Context, rid: str,
    ) -> kserve_pb2.ServerMetadataResponse:
        return converters.server_metadata(self.plane.server_metadata())

    @rpc("ModelReady", lambda r: r.name)
    async def ModelReady(  # noqa: N802
        self, request: kserve_pb2.ModelReadyRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelReadyResponse:
        return kserve_pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @rpc("ModelMetadata", lambda r: r.name)
    async def ModelMetadata(  # noqa: N802
        self, request: kserve_pb2.ModelMetadataRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelMetadataResponse:
        return converters.model_metadata(self.plane.model_metadata(request.name, request.version))

    @rpc("ModelConfig", lambda r: r.name)
    async def ModelConfig(  # noqa: N802
        self, request: kserve_pb2.ModelConfigRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelConfigResponse:
        return kserve_pb2.ModelConfigResponse(config=self.plane.model_config(request.name, request.version))

    @rpc("ModelStatistics", lambda r: r.name)
    async def ModelStatistics(  # noqa: N802
        self, request: kserve_pb2.ModelStatisticsRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelStatisticsResponse:
        return converters.model_statistics(self.plane.statistics(request.name, request.version))

    @rpc("RepositoryIndex")
    async def RepositoryIndex(  # noqa: N802
        self, request: kserve_pb2.RepositoryIndexRequest, context: Context, rid: str,
    ) -> kserve_pb2.RepositoryIndexResponse:
        return converters.repository_index(await self.plane.repository_index(request.ready, request.repository_name))

    @rpc("RepositoryModelLoad", lambda r: r.model_name)
    async def RepositoryModelLoad(  # noqa: N802
        self, request: kserve_pb2.RepositoryModelLoadRequest, context: Context, rid: str,
    ) -> kserve_pb2.RepositoryModelLoadResponse:
        await self.plane.load_model(converters.repository_request(request))
        return kserve_pb2.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload", lambda r: r.model_name)
    async def RepositoryModelUnload(  # noqa: N802
        self, request: kserve_pb2.RepositoryModelUnloadRequest, context: Context, rid: str,
    ) -> kserve_pb2.RepositoryModelUnloadResponse:
        await self.plane.unload_model(converters.repository_request(request))
        return kserve_pb2.RepositoryModelUnloadResponse()

    async def _infer(self, request: kserve_pb2.ModelInferRequest, deadline: float | None,
                     rid: str) -> kserve_pb2.ModelInferResponse:
        message_id = sane_request_id(request.id) or rid
        result = await self.plane.infer(converters.infer_request(request, message_id, deadline))
        return await offload.step(converters.infer_response, result,
                                  items=sum(len(t.data) for t in result.outputs if t.datatype == "BYTES"))

    @rpc("ModelInfer", lambda r: r.model_name)
    async def ModelInfer(  # noqa: N802
        self, request: kserve_pb2.ModelInferRequest, context: Context, rid: str,
    ) -> kserve_pb2.ModelInferResponse:
        return await self._infer(request, deadline_of(context), rid)

    # ---- Triton's shared-memory extensions (the regions of the calling client) ----------------------------------
    @rpc("SystemSharedMemoryStatus")
    async def SystemSharedMemoryStatus(  # noqa: N802
        self, request: kserve_pb2.SystemSharedMemoryStatusRequest, context: Context, rid: str,
    ) -> kserve_pb2.SystemSharedMemoryStatusResponse:
        return converters.shm_status(self.plane.shm_status(request.name))

    @rpc("SystemSharedMemoryRegister")
    async def SystemSharedMemoryRegister(  # noqa: N802
        self, request: kserve_pb2.SystemSharedMemoryRegisterRequest, context: Context, rid: str,
    ) -> kserve_pb2.SystemSharedMemoryRegisterResponse:
        self.plane.shm_register(request.name, request.key, request.offset, request.byte_size)
        return kserve_pb2.SystemSharedMemoryRegisterResponse()

    @rpc("SystemSharedMemoryUnregister")
    async def SystemSharedMemoryUnregister(  # noqa: N802
        self, request: kserve_pb2.SystemSharedMemoryUnregisterRequest, context: Context, rid: str,
    ) -> kserve_pb2.SystemSharedMemoryUnregisterResponse:
        self.plane.shm_unregister(request.name)
        return kserve_pb2.SystemSharedMemoryUnregisterResponse()

    @rpc("CudaSharedMemoryStatus")
    async def CudaSharedMemoryStatus(  # noqa: N802
        self, request: kserve_pb2.CudaSharedMemoryStatusRequest, context: Context, rid: str,
    ) -> kserve_pb2.CudaSharedMemoryStatusResponse:
        self.plane.cuda_shm_status(request.name)  # never a region: raises for a name, or is empty
        return kserve_pb2.CudaSharedMemoryStatusResponse()

    @rpc("CudaSharedMemoryRegister")
    async def CudaSharedMemoryRegister(  # noqa: N802
        self, request: kserve_pb2.CudaSharedMemoryRegisterRequest, context: Context, rid: str,
    ) -> kserve_pb2.CudaSharedMemoryRegisterResponse:
        self.plane.cuda_shm_register(request.name)
        return kserve_pb2.CudaSharedMemoryRegisterResponse()

    @rpc("CudaSharedMemoryUnregister")
    async def CudaSharedMemoryUnregister(  # noqa: N802
        self, request: kserve_pb2.CudaSharedMemoryUnregisterRequest, context: Context, rid: str,
    ) -> kserve_pb2.CudaSharedMemoryUnregisterResponse:
        self.plane.cuda_shm_unregister(request.name)
        return kserve_pb2.CudaSharedMemoryUnregisterResponse()

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
                             write_timeout_s=self.write_timeout_s)

    @rpc("LogSettings")
    async def LogSettings(  # noqa: N802
        self, request: kserve_pb2.LogSettingsRequest, context: Context, rid: str,
    ) -> kserve_pb2.LogSettingsResponse:
        return converters.log_settings_response(self.plane.log_settings(converters.log_settings_changes(request)))

    @rpc("TraceSetting", lambda r: r.model_name)
    async def TraceSetting(  # noqa: N802
        self, request: kserve_pb2.TraceSettingRequest, context: Context, rid: str,
    ) -> kserve_pb2.TraceSettingResponse:
        changes = converters.trace_settings_changes(request)
        return converters.trace_settings_response(self.plane.trace_settings(request.model_name, changes))
