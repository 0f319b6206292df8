"""The HTTP front end: the Open Inference Protocol's REST API and the simple classify API, on the data plane.

Runs on the same event loop as the gRPC front end (aiohttp), a peer of it: both call the same :class:`DataPlane`, so
the two transports share admission, batching, limits and errors; this module only translates HTTP and JSON.

- ``/v2``, ``/v2/health/live|ready``, ``/v2/models/{name}[/versions/{v}]``, ``…/ready``, ``…/config``,
  ``…/infer`` — KServe v2 with Triton's binary-tensor extension (``tritonclient.http`` works unchanged);
  ``/v2/models[/{name}[/versions/{v}]]/stats`` — Triton's statistics extension;
- ``POST /v2/repository/index``, ``/v2/repository/models/{name}/load|unload`` — Triton's repository extension;
- ``/v2/systemsharedmemory[/region/{region}]/status|register|unregister`` and the same under
  ``/v2/cudasharedmemory`` — Triton's shared-memory extensions;
- ``GET /v1/models``, ``GET /v1/models/{name}``, ``POST /v1/models/{name}/classify`` (the image as the body, or
  one or many multipart files: ``curl -F image=@cat.jpg …``) — the JSON is the proto3 JSON mapping of the
  ``imageclassifier.v1`` messages (``serving.contract.classifier``: field names as in the .proto, int64 values as
  strings, every field present whatever its value).

- ``GET|POST /v2/logging``, ``GET|POST /v2[/models/{name}]/trace/setting`` — Triton's logging and trace extensions.

Every request with a body holds its declared ``Content-Length`` of the server's in-flight budget
(``serving.runtime.budget``, shared with gRPC) before any of the body is read, and a chunked body its bytes as they
arrive: past the budget it is answered 429 at once, past ``--max-message-mb`` 413 from the header.

Every request runs with its client named for fair share (``share_var``): the token's client with tokens, else the
client's address (the connection's peer, or from a ``--trusted-proxies`` proxy the address its ``X-Forwarded-For``
names; ``serving.runtime.peers``).

Health answers 200 for true and 503 for false. Errors are ``{"error": "<message>"}`` with the status of
``serving.http.status``; every answer carries ``x-request-id``, and a traced one ``traceresponse``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from serving.config import ServerConfig
from serving.contract import api, classifier
from serving.contract.classifier import to_json
from serving.errors import InvalidInput, Kind, TooLarge
from serving.http import kserve
from serving.http.connections import ConnectionGuard, ProtocolLog
from serving.http.status import http_status_for
from serving.runtime import offload, tracing
from serving.runtime.auth import Tokens, client_var
from serving.runtime.budget import Hold, InflightBudget
from serving.runtime.dataplane import DataPlane
from serving.runtime.fairshare import share_var
from serving.runtime.logs import new_request_id, request_id_var
from serving.runtime.peers import FORWARDED_FOR, Peers
from serving.runtime.requests import CANCELLED, OK, REQUEST_ID_KEY, Recorder, sane_request_id

log = logging.getLogger("serving.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# No token needed: probes carry none, and the page holds no data (it asks for a token to call the API with).
OPEN_OPERATIONS = frozenset({"ServerLive", "ServerReady", "ModelReady", "Page"})
STATIC = Path(__file__).with_name("static")
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CHUNK = 1 << 16
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer
CONTROL_BODY_LIMIT = 1 << 16  # a repository request is a few parameters: no model files, no configuration
RID = web.RequestKey("rid", str)
HOLD = web.RequestKey("hold", Hold)  # the request's share of the in-flight budget
SETTINGS_BODY_LIMIT = 64 * 1024  # log and trace settings
# aiohttp warns (on stderr, outside the log) about a malformed Content-Disposition in a client's form: client data,
# answered like any other bad input, not something for whoever runs the server to act on.
for _warning in (BadContentDispositionHeader, BadContentDispositionParam):
    warnings.filterwarnings("ignore", category=_warning)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _health(ok: bool, what: str) -> web.Response:
    return web.Response(status=200) if ok else _error(503, f"{what} is not ready")


def _ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The gRPC port's certificate (and client CA, for mutual TLS) on the HTTP port too."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    if config.tls_client_ca:
        context.load_verify_locations(str(config.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpFrontEnd:
    """``start()`` binds ``config.http_port`` (0: any free port) and returns it; ``stop(grace)`` drains."""

    def __init__(self, plane: DataPlane, config: ServerConfig, recorder: Recorder,
                 tokens: Tokens | None = None, *, budget: InflightBudget) -> None:
        self.plane, self.config, self.tokens, self.budget = plane, config, tokens, budget
        self.recorder = recorder
        self.peers = Peers(config.trusted_proxies)
        self.app = web.Application(client_max_size=config.max_message_bytes, middlewares=[self._around],
                                   handler_args={"keepalive_timeout": config.max_connection_idle_s or 3600,
                                                 "logger": ProtocolLog()})
        self._operations: dict[Any, str] = {}
        for verb, path, handler, operation in self._routes():
            self._operations[self.app.router.add_route(verb, path, handler)] = operation
        self.runner: web.AppRunner | None = None
        self.guard: ConnectionGuard | None = None
        self.port: int | None = None

    def _routes(self) -> list[tuple[str, str, Handler, str]]:
        model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        routes = [("GET", "/v2", self.server_metadata, "ServerMetadata"),
                  ("GET", "/v2/health/live", self.server_live, "ServerLive"),
                  ("GET", "/v2/health/ready", self.server_ready, "ServerReady"),
                  ("GET", "/v2/models/stats", self.model_statistics, "ModelStatistics")]
        for base in (model, version):
            routes += [("GET", base, self.model_metadata, "ModelMetadata"),
                       ("GET", base + "/ready", self.model_ready, "ModelReady"),
                       ("GET", base + "/config", self.model_config, "ModelConfig"),
                       ("GET", base + "/stats", self.model_statistics, "ModelStatistics"),
                       ("POST", base + "/infer", self.infer, "ModelInfer")]
        for kind, status, register, unregister in (
                ("system", self.shm_status, self.shm_register, self.shm_unregister),
                ("cuda", self.cuda_shm_status, self.cuda_shm_register, self.cuda_shm_unregister)):
            base, operation = f"/v2/{kind}sharedmemory", f"{kind.capitalize()}SharedMemory"
            for region in ("", "/region/{region}"):
                routes += [("GET", f"{base}{region}/status", status, operation + "Status"),
                           ("POST", f"{base}{region}/unregister", unregister, operation + "Unregister")]
            routes.append(("POST", f"{base}/region/{{region}}/register", register, operation + "Register"))
        routes += [("POST", "/v2/repository/index", self.repository_index, "RepositoryIndex"),
                   ("POST", "/v2/repository/models/{name}/load", self.load_model, "RepositoryModelLoad"),
                   ("POST", "/v2/repository/models/{name}/unload", self.unload_model, "RepositoryModelUnload")]
        return [*routes,
                ("GET", "/v1/models", self.list_models, "ListModels"),
                ("GET", "/v1/models/{name}", self.get_model, "GetModel"),
                ("GET", "/v1/models/{name}/versions/{version}", self.get_model, "GetModel"),
                ("POST", "/v1/models/{name}/classify", self.classify, "Classify"),
                ("POST", "/v1/models/{name}/versions/{version}/classify", self.classify, "Classify"),
                ("POST", "/v1/models/{name}/explain", self.explain, "Explain"),
                ("POST", "/v1/models/{name}/versions/{version}/explain", self.explain, "Explain"),
                ("GET", "/", self.page, "Page"),
                ("GET", "/static/{file}", self.static, "Page"),
                *((verb, "/v2/logging", self.log_settings, "LogSettings") for verb in ("GET", "POST")),
                *((verb, path, self.trace_settings, "TraceSetting") for verb in ("GET", "POST")
                  for path in ("/v2/trace/setting", model + "/trace/setting"))]

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    shutdown_timeout=self.config.grace_s)
        await self.runner.setup()
        assert self.runner.server is not None
        self.guard = ConnectionGuard(self.runner.server, self.config.max_http_connections,
                                     self.config.http_timeout_s, self.config.max_connections_per_client)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self.guard, self.config.host, self.config.http_port,
                                              ssl=_ssl_context(self.config), reuse_address=True, backlog=1024)
        except OSError as e:
            await self.runner.cleanup()
            raise OSError(f"cannot bind the HTTP port {self.config.host}:{self.config.http_port}: "
                          f"{e.strerror or e}") from None
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, then close every connection."""
        if self.runner is None:
            return
        self._server.close()
        assert self.runner.server is not None
        await self.runner.server.shutdown(grace)
        await self.runner.cleanup()
        self.runner = None

    # ---- every request -----------------------------------------------------------------------------------------
    @web.middleware
    async def _around(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = sane_request_id(request.headers.get(REQUEST_ID_KEY)) or new_request_id()
        token = request_id_var.set(rid)
        client = None  # the caller's identity, set for the handler once its token is checked
        share = None
        request[RID] = rid
        operation = self._operations.get(request.match_info.route)
        started, outcome = time.perf_counter(), OK
        trace, hold = None, None
        if self.guard is not None:
            self.guard.request_started(request.transport)
        gauge = self.recorder.inflight("http." + operation) if operation is not None else None
        if gauge is not None:
            gauge.inc()
        try:
            if self.tokens is not None and operation not in OPEN_OPERATIONS:
                client = client_var.set(self.tokens.check(request.headers.get("Authorization")))
            share = share_var.set(self._share_identity(request))
            if (request.content_length or 0) > self.config.max_message_bytes:  # from the header: no byte read
                raise TooLarge(f"the request body ({request.content_length / 2**20:.1f} MiB, Content-Length) is "
                               f"larger than the {self.config.max_message_mb} MiB limit (--max-message-mb)")
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding != "identity" and not self.config.allow_compression:
                raise InvalidInput(f"Content-Encoding {encoding[:20]!r} refused: compressed requests are off "
                                   "(--allow-compression)")
            hold = request[HOLD] = self.budget.take(request.content_length or 0, "http")  # before any body byte
            if operation in tracing.TRACED and self.plane.tracing.enabled:
                trace = self._trace(request, operation, rid)
            response = await handler(request)
        except web.HTTPException as e:  # aiohttp's own answers: no such route, wrong method, body too large
            outcome = (Kind.NOT_FOUND if e.status == 404 else Kind.INVALID_INPUT).outcome
            message = e.reason
            if e.status == 413:
                outcome = Kind.TOO_LARGE.outcome
                message = (f"the request body is larger than the {self.config.max_message_mb} MiB limit "
                           "(--max-message-mb)")
            response = _error(e.status, message)
            if e.status == 405:
                response.headers.update({k: v for k, v in e.headers.items() if k == "Allow"})
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        except ConnectionResetError:  # the client went away mid-request (aiohttp: "Connection lost"): not our fault
            outcome = CANCELLED
            response = _error(CLIENT_CLOSED, "the client closed the connection")  # nobody reads it: for the log
        except Exception as e:
            status, kind, message = http_status_for(e, rid)
            outcome = kind.outcome
            response = _error(status, message)
            if status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            elif status == 429:
                response.headers["Retry-After"] = "1"
        finally:
            if hold is not None:
                hold.release()
            if self.guard is not None:
                self.guard.request_ended(request.transport)
            if gauge is not None:
                gauge.dec()
            if operation is not None:
                model = self.recorder.model_label(request.match_info.get("name", ""))
                self.recorder.done("http." + operation, model, outcome, time.perf_counter() - started)
            if trace is not None:
                self.plane.tracing.finish(trace, outcome)
            request_id_var.reset(token)
            if client is not None:  # a keep-alive connection's next request must not inherit it
                client_var.reset(client)
            if share is not None:
                share_var.reset(share)
        response.headers[REQUEST_ID_KEY] = rid
        if trace is not None:
            response.headers[tracing.TRACERESPONSE] = trace.traceresponse
        return response

    def _share_identity(self, request: web.Request) -> str:
        """Whose fair share the request counts against: the token's client, or the client's address."""
        if self.tokens is not None:
            return client_var.get()
        if not self.peers.trusted:
            return self.peers.client(request.remote or "")
        forwarded = ",".join(request.headers.getall(FORWARDED_FOR, ()))
        return self.peers.client(request.remote or "", forwarded)

    def _trace(self, request: web.Request, operation: str, rid: str) -> tracing.RequestTrace | None:
        """Trace this request if the trace settings say so (its ``traceparent`` header continued)."""
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        return self.plane.tracing.begin(f"{request.method} {path}", request.match_info.get("name", ""), rid,
                                        request.headers, {"http.request.method": request.method, "http.route": path,
                                                          "serving.operation": operation})

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, within --http-timeout-s: over --max-message-mb it is 413, and a chunked body takes its
        bytes of the in-flight budget as they arrive (429 once they do not fit), before they are kept."""
        return await self._within_timeout(self._read(request))

    async def _read(self, request: web.Request) -> bytes:
        hold, limit = request[HOLD], self.config.max_message_bytes
        body = bytearray()
        while chunk := await request.content.readany():
            if len(body) + len(chunk) > limit:
                raise TooLarge(f"the request body is larger than the {limit >> 20} MiB limit (--max-message-mb)")
            hold.cover(len(body) + len(chunk))
            body += chunk
        return bytes(body)

    async def _within_timeout(self, reading: Awaitable[Any]) -> Any:
        """Reading a body, bounded in time (408) as in size (413): a slow sender holds nothing long."""
        try:
            return await asyncio.wait_for(reading, self.config.http_timeout_s)
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason=f"the request body did not arrive within "
                                                f"{self.config.http_timeout_s:g} s (--http-timeout-s)") from None

    # ---- Open Inference Protocol ---------------------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.Response:
        m = self.plane.server_metadata()
        return web.json_response({"name": m.name, "version": m.version,
                                  "extensions": [*m.extensions, "binary_tensor_data"]})

    async def server_live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def server_ready(self, request: web.Request) -> web.Response:
        return _health(self.plane.server_ready(), "the server")

    async def model_metadata(self, request: web.Request) -> web.Response:
        m = self.plane.model_metadata(request.match_info["name"], request.match_info.get("version", ""))
        return web.json_response({"name": m.name, "versions": m.versions, "platform": m.platform,
                                  "inputs": [asdict(t) for t in m.inputs], "outputs": [asdict(t) for t in m.outputs]})

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return _health(self.plane.model_ready(name, request.match_info.get("version", "")), f"model {name!r}")

    async def model_config(self, request: web.Request) -> web.Response:
        config = self.plane.model_config(request.match_info["name"], request.match_info.get("version", ""))
        return web.json_response(to_json(config, every_field=False))

    async def model_statistics(self, request: web.Request) -> web.Response:
        stats = self.plane.statistics(request.match_info.get("name", ""), request.match_info.get("version", ""))
        return web.json_response({"model_stats": [_statistics_json(s) for s in stats]})

    async def repository_index(self, request: web.Request) -> web.Response:
        ready = (await self._control_body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"'ready' must be true or false, got {str(ready)[:40]!r}")
        models = await self.plane.repository_index(ready)
        return web.json_response([{"name": m.name, **({"version": m.version} if m.version else {}), "state": m.state,
                                   "reason": m.reason} for m in models])

    async def load_model(self, request: web.Request) -> web.Response:
        await self.plane.load_model(await self._repository_request(request))
        return web.json_response({})

    async def unload_model(self, request: web.Request) -> web.Response:
        await self.plane.unload_model(await self._repository_request(request))
        return web.json_response({})

    async def _repository_request(self, request: web.Request) -> api.RepositoryRequest:
        parameters = (await self._control_body(request)).get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be a JSON object")
        return api.RepositoryRequest(model=request.match_info["name"], parameters=parameters)

    async def _control_body(self, request: web.Request) -> dict[str, Any]:
        """A repository request's JSON object (an empty body: {}). Small by nature (model files are never
        uploaded), so a large one is refused before it is parsed on the event loop."""
        if (request.content_length or 0) > CONTROL_BODY_LIMIT:
            raise TooLarge(f"a repository request body is at most {CONTROL_BODY_LIMIT >> 10} KiB (models load only "
                           "from the server's repository)")
        body = await self._body(request)
        if len(body) > CONTROL_BODY_LIMIT:
            raise TooLarge(f"a repository request body is at most {CONTROL_BODY_LIMIT >> 10} KiB (models load only "
                           "from the server's repository)")
        if not body.strip():
            return {}
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"the body is not valid JSON: {str(e)[:100]}") from None
        if not isinstance(parsed, dict):
            raise InvalidInput("the body must be a JSON object")
        return parsed

    async def infer(self, request: web.Request) -> web.Response:
        self.plane.check_room(request.match_info["name"], request.match_info.get("version", ""))
        body = await self._body(request)
        header_length = request.headers.get(kserve.HEADER_LENGTH)
        json_bytes = len(body) if header_length is None else int(header_length) if header_length.isdigit() else 0
        parsed, (outputs, binary), inputs = await offload.step(
            _parse_infer, body, header_length, items=json_bytes // offload.JSON_BYTES_PER_ITEM)
        timeout_s = parsed.timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s if timeout_s else None
        result = await self.plane.infer(api.InferRequest(
            model=request.match_info["name"], version=request.match_info.get("version", ""),
            inputs=inputs, outputs=outputs, id=sane_request_id(parsed.id) or request[RID], deadline=deadline))
        body, headers = await offload.step(kserve.infer_response, result, binary,
                                           items=sum(len(t.data) for t in result.outputs if t.datatype == "BYTES"))
        return web.Response(body=body, headers=headers,
                            content_type="application/octet-stream" if headers else "application/json")

    # ---- Triton's shared-memory extensions (the regions of the calling client) ------------------------------------
    async def shm_status(self, request: web.Request) -> web.Response:
        return web.json_response(kserve.shm_status(self.plane.shm_status(request.match_info.get("region", ""))))

    async def shm_register(self, request: web.Request) -> web.Response:
        key, offset, byte_size = kserve.shm_register_request(await self._body(request))
        self.plane.shm_register(request.match_info["region"], key, offset, byte_size)
        return web.Response(status=200)

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.plane.shm_unregister(request.match_info.get("region", ""))
        return web.Response(status=200)

    async def cuda_shm_status(self, request: web.Request) -> web.Response:
        return web.json_response(kserve.shm_status(self.plane.cuda_shm_status(request.match_info.get("region", ""))))

    async def cuda_shm_register(self, request: web.Request) -> web.Response:
        self.plane.cuda_shm_register(request.match_info["region"])
        return web.Response(status=200)

    async def cuda_shm_unregister(self, request: web.Request) -> web.Response:
        self.plane.cuda_shm_unregister(request.match_info.get("region", ""))
        return web.Response(status=200)

    # ---- the simple API ------------------------------------------------------------------------------------------
    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(to_json(classifier.list_models(self.plane.models())))

    async def get_model(self, request: web.Request) -> web.Response:
        status = self.plane.model_status(request.match_info["name"], _version(request))
        return web.json_response(to_json(classifier.model_info(status)))

    async def classify(self, request: web.Request) -> web.Response:
        top_k = _int_query(request, "top_k")
        self.plane.check_room(request.match_info["name"], _version(request))  # before the body is read
        images = await self._within_timeout(self._images(request))
        result = await self.plane.classify(api.ClassifyRequest(
            model=request.match_info["name"], version=_version(request), images=[data for _, data in images],
            top_k=top_k, id=request[RID]))
        body = await offload.step(_classify_json, result, [name for name, _ in images],
                                  items=sum(map(len, result.results)))
        return web.Response(body=body, content_type="application/json")

    async def explain(self, request: web.Request) -> web.Response:
        query = request.query
        class_index = _int_query(request, "class") if "class" in query else None
        stages = query.get("stages", "0").lower() in ("1", "true", "yes")
        self.plane.check_room(request.match_info["name"], _version(request))
        images = await self._within_timeout(self._images(request))
        if len(images) != 1:
            raise InvalidInput(f"explain takes one image, got {len(images)}")
        result = await self.plane.explain(api.ExplainRequest(
            model=request.match_info["name"], version=_version(request), image=images[0][1],
            class_index=class_index, method=query.get("method", ""), top_k=_int_query(request, "top_k"),
            stages=stages, id=request[RID]))
        return web.json_response(to_json(classifier.explain_response(result)))

    async def page(self, request: web.Request) -> web.StreamResponse:
        return await self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return await self._file(request.match_info["file"])

    async def _file(self, name: str) -> web.StreamResponse:
        """One file of the page (the folder's own files only: no path from the client reaches the file system)."""
        files = {f.name: f for f in STATIC.iterdir() if f.suffix in STATIC_TYPES}
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name].read_bytes(), content_type=STATIC_TYPES[files[name].suffix],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:"})

    async def _images(self, request: web.Request) -> list[tuple[str, bytes]]:
        """The raw body as one image, or each file of a multipart form; limits checked while reading."""
        if not request.content_type.startswith("multipart/"):
            body = await self._read(request)
            if not body:
                raise InvalidInput("no image: send it as the request body, or as multipart files "
                                   "(curl -F image=@photo.jpg …)")
            return [("", body)]
        try:
            images = await self._form_files(await request.multipart(), request[HOLD])
        except (ValueError, HttpProcessingError) as e:  # aiohttp's complaints about the client's multipart bytes
            reason = str(getattr(e, "message", "") or e).strip().splitlines()[0][:200]
            raise InvalidInput(f"malformed multipart body: {reason}") from None
        if not images:
            raise InvalidInput("no image in the multipart body: add files (curl -F image=@photo.jpg …)")
        return images

    async def _form_files(self, reader: MultipartReader, hold: Hold) -> list[tuple[str, bytes]]:
        images: list[tuple[str, bytes]] = []
        size, limit = 0, self.config.max_message_bytes
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("nested multipart bodies are not accepted")
            if len(images) == self.config.max_images_per_request:
                raise InvalidInput(f"more than {self.config.max_images_per_request} images in one request "
                                   "(--max-images-per-request); split the request")
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the request body is larger than the {limit >> 20} MiB limit (--max-message-mb)")
                hold.cover(size)  # a chunked form's bytes, as they arrive
                data += chunk
            images.append((part.filename or part.name or "", bytes(data)))
        return images

    # ---- Triton's logging and trace extensions -------------------------------------------------------------------
    async def log_settings(self, request: web.Request) -> web.Response:
        changes = await self._settings_body(request) if request.method == "POST" else None
        return web.json_response(self.plane.log_settings(changes))

    async def trace_settings(self, request: web.Request) -> web.Response:
        """Triton's answer: ``trace_level`` a list of strings, every other setting one string."""
        changes = None
        if request.method == "POST":
            changes = {name: _trace_values(name, value) for name, value in (await self._settings_body(request)).items()}
        settings = self.plane.trace_settings(request.match_info.get("name", ""), changes)
        return web.json_response({name: values if name == "trace_level" else values[0]
                                  for name, values in settings.items()})

    async def _settings_body(self, request: web.Request) -> dict[str, Any]:
        """The settings object of a POST; a few hundred bytes in practice, refused above SETTINGS_BODY_LIMIT before
        it is parsed (on the event loop)."""
        if (request.content_length or 0) > SETTINGS_BODY_LIMIT:
            raise TooLarge(f"a settings body larger than {SETTINGS_BODY_LIMIT >> 10} KiB")
        body = await self._body(request)
        if len(body) > SETTINGS_BODY_LIMIT:
            raise TooLarge(f"a settings body larger than {SETTINGS_BODY_LIMIT >> 10} KiB")
        try:
            settings = json.loads(body or b"{}")
        except ValueError as e:
            raise InvalidInput(f"the body is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(settings, dict):
            raise InvalidInput('the body must be a JSON object of settings: {"name": value, ...}')
        return settings


def _version(request: web.Request) -> str:
    """The version from the path (``…/versions/V/…``) or the ``version`` query parameter; "" for the served one."""
    return request.match_info.get("version") or request.query.get("version", "")


def _int_query(request: web.Request, key: str) -> int:
    value = request.query.get(key, "0")
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"query parameter {key} must be an integer, got {value[:40]!r}") from None


def _duration(d: api.StatisticDuration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def _parse_infer(body: bytes, header_length: str | None) -> tuple[kserve.Body, tuple[list[api.RequestedOutput], bool],
                                                                   list[api.InputTensor]]:
    """An Open Inference request body → (its JSON, (the outputs asked for, binary answer or not), its inputs)."""
    parsed = kserve.parse_request(body, header_length)
    return parsed, kserve.requested_outputs(parsed), kserve.inputs(parsed)


def _classify_json(result: api.ClassifyResult, filenames: list[str]) -> bytes:
    """The classify answer's JSON (the proto3 JSON mapping of ClassifyResponse), each result with its file's name
    when it came from a multipart file."""
    answer = to_json(classifier.classify_response(result))
    for item, filename in zip(answer["results"], filenames, strict=True):
        if filename:
            item["image"] = filename
    return orjson.dumps(answer)


def _statistics_json(s: api.ModelStatistics) -> dict[str, Any]:
    """One model version's statistics as Triton's HTTP answer writes them: the gRPC message's field names, every
    field present, uint64 values as JSON numbers (not the proto3 mapping's strings)."""
    zero = _duration(api.StatisticDuration())
    return {
        "name": s.name, "version": str(s.version), "last_inference": s.last_inference,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {"success": _duration(s.success), "fail": _duration(s.fail), "queue": _duration(s.queue),
                            "compute_input": _duration(s.compute_input), "compute_infer": _duration(s.compute_infer),
                            "compute_output": _duration(s.compute_output), "cache_hit": zero, "cache_miss": zero},
        "response_stats": {},
        "batch_stats": [{"batch_size": b.batch_size, "compute_input": _duration(b.compute_input),
                         "compute_infer": _duration(b.compute_infer), "compute_output": _duration(b.compute_output)}
                        for b in s.batch_stats],
        "memory_usage": [],
    }


def _trace_values(name: str, value: Any) -> list[str] | None:
    """A trace setting's JSON value as the data plane takes it: a string or a list of strings (a number is taken as
    its digits); null or [] clears the setting."""
    if value is None or value == []:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidInput(f"trace setting {name[:60]!r} takes a string or a list of strings, got {json.dumps(value)[:60]}")
