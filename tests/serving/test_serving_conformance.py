"""Every method of ``tritonclient.grpc`` and ``tritonclient.http`` against a real server, as a Triton user calls it.

The tables below name each public method of both clients once: a call that must work (and what its answer must
say), a call that must be refused with Triton's own status (CUDA shared memory on a CPU server), or a method that
never reaches the server (closing, plugins, building a request body). A method a new tritonclient adds fails
``test_every_method_is_in_the_table`` until someone decides which it is. The server runs as a user who drives model
control would run it: tokens on (a client plugin adds the header), ``--model-control explicit`` with digits loaded
and rgb not.
"""

from __future__ import annotations

import inspect
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from serving.runtime.predictor import Predictor
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config

TOKEN = "conformance-token"


class Bearer:
    """A tritonclient plugin: the token header on every call (tritonclient's documented way to add headers)."""

    def __call__(self, request: Any) -> None:
        request.headers["authorization"] = f"Bearer {TOKEN}"


@dataclass
class Transport:
    name: str
    module: Any
    client: Any

    @property
    def grpc(self) -> bool:
        return self.name == "grpc"


@pytest.fixture(scope="module")
def server(repository: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tokens = tmp_path_factory.mktemp("conformance") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    thread = ServerThread(base_config(repository.path, auth_token_file=tokens, model_control="explicit",
                                      models=("digits",))).start()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def transports(server: ServerThread) -> Iterator[dict[str, Transport]]:
    """One client of each transport, with the token plugin."""
    grpc_client = tgrpc.InferenceServerClient(server.address)
    http_client = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    for client in (grpc_client, http_client):
        client.register_plugin(Bearer())
    yield {"grpc": Transport("grpc", tgrpc, grpc_client), "http": Transport("http", thttp, http_client)}
    grpc_client.close()
    http_client.close()


def _images(module: Any, x: np.ndarray) -> Any:
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _x(digits: Predictor, image_files: dict[str, Path]) -> np.ndarray:
    return np.stack([digits.preprocess(p) for p in image_files.values()])


def _json(t: Transport, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """gRPC answers as protobuf's JSON mapping (``as_json=True``); HTTP answers are JSON already."""
    return method(*args, **kwargs, as_json=True) if t.grpc else method(*args, **kwargs)


# ---- the calls that must work ------------------------------------------------------------------------------------

def health(t: Transport, ctx: Context) -> None:
    assert t.client.is_server_live()
    assert t.client.is_server_ready()
    assert t.client.is_model_ready("digits")
    assert not t.client.is_model_ready("rgb")  # in the repository, not loaded (explicit model control)


def server_metadata(t: Transport, ctx: Context) -> None:
    extensions = set(_json(t, t.client.get_server_metadata)["extensions"])
    assert {"classification", "model_configuration", "statistics", "model_repository", "system_shared_memory",
            "logging", "trace"} <= extensions, extensions
    assert "cuda_shared_memory" not in extensions


def model_metadata(t: Transport, ctx: Context) -> None:
    metadata = _json(t, t.client.get_model_metadata, "digits")
    assert metadata["name"] == "digits"
    assert [o["name"] for o in metadata["outputs"]] == ["logits"]


def model_config(t: Transport, ctx: Context) -> None:
    config = _json(t, t.client.get_model_config, "digits")
    config = config.get("config", config)
    assert config["name"] == "digits"


def infer(t: Transport, ctx: Context) -> None:
    result = t.client.infer("digits", [_images(t.module, ctx.x)], request_id="conf-1",
                            outputs=[t.module.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), ctx.logits, atol=1e-5)
    top = t.client.infer("digits", [_images(t.module, ctx.x)],
                         outputs=[t.module.InferRequestedOutput("logits", class_count=2)]).as_numpy("logits")
    assert top.shape == (len(ctx.x), 2)
    assert [int(str(item).split(":")[1]) for item in top[:, 0]] == list(ctx.logits.argmax(axis=1))


def async_infer(t: Transport, ctx: Context) -> None:
    if t.grpc:
        answers: queue.Queue = queue.Queue()
        t.client.async_infer("digits", [_images(t.module, ctx.x)], lambda result, error: answers.put((result, error)))
        result, error = answers.get(timeout=30)
        assert error is None, error
    else:
        result = t.client.async_infer("digits", [_images(t.module, ctx.x)]).get_result(timeout=30)
    np.testing.assert_allclose(result.as_numpy("logits"), ctx.logits, atol=1e-5)


def stream(t: Transport, ctx: Context) -> None:
    """start_stream, async_stream_infer, stop_stream (gRPC only: HTTP has no stream)."""
    answers: queue.Queue = queue.Queue()
    t.client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            t.client.async_stream_infer("digits", [_images(t.module, ctx.x)], request_id=f"s{i}")
        received = [answers.get(timeout=30) for _ in range(3)]
    finally:
        t.client.stop_stream()
    for result, error in received:
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy("logits"), ctx.logits, atol=1e-5)
    assert sorted(r.get_response().id for r, _ in received) == ["s0", "s1", "s2"]


def statistics(t: Transport, ctx: Context) -> None:
    t.client.infer("digits", [_images(t.module, ctx.x)])
    stats = _json(t, t.client.get_inference_statistics, "digits")["model_stats"]
    assert [s["name"] for s in stats] == ["digits"]
    inference = stats[0]["inference_stats"]
    assert int(stats[0]["inference_count"]) >= len(ctx.x)
    assert int(inference["success"]["count"]) >= 1
    for step in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inference[step]["ns"]) > 0, step


def repository(t: Transport, ctx: Context) -> None:
    """Index, load, unload; rgb goes from UNAVAILABLE to READY and back."""
    def states() -> dict[str, str]:
        index = _json(t, t.client.get_model_repository_index)
        index = index["models"] if isinstance(index, dict) else index
        return {m["name"]: m.get("state", "") for m in index}

    assert states()["digits"] == "READY"
    assert states().get("rgb", "") != "READY"
    t.client.load_model("rgb")
    assert t.client.is_model_ready("rgb")
    assert states()["rgb"] == "READY"
    t.client.unload_model("rgb")
    assert not t.client.is_model_ready("rgb")
    assert states()["rgb"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException, match=r"(?i)file"):
        t.client.load_model("rgb", files={"file:1/model.onnx": b"not a model"})  # models come only from the disk


def system_shared_memory(t: Transport, ctx: Context) -> None:
    """Register, status, an inference whose input and output live in shared memory (bit-equal to inline), and
    unregister."""
    inline = t.client.infer("digits", [_images(t.module, ctx.x)]).as_numpy("logits")
    x = np.ascontiguousarray(ctx.x, dtype=np.float32)
    key = f"/conformance-{t.name}"
    regions = {"in": shm.create_shared_memory_region(f"{t.name}-in", key + "-in", x.nbytes),
               "out": shm.create_shared_memory_region(f"{t.name}-out", key + "-out", inline.nbytes)}
    try:
        shm.set_shared_memory_region(regions["in"], [x])
        t.client.register_system_shared_memory(f"{t.name}-in", key + "-in", x.nbytes)
        t.client.register_system_shared_memory(f"{t.name}-out", key + "-out", inline.nbytes)
        status = _json(t, t.client.get_system_shared_memory_status)
        names = set(status["regions"]) if isinstance(status, dict) else {r["name"] for r in status}
        assert {f"{t.name}-in", f"{t.name}-out"} <= names
        tensor = t.module.InferInput("input", list(x.shape), "FP32")
        tensor.set_shared_memory(f"{t.name}-in", x.nbytes)
        output = t.module.InferRequestedOutput("logits")
        output.set_shared_memory(f"{t.name}-out", inline.nbytes)
        result = t.client.infer("digits", [tensor], outputs=[output])
        assert result.get_output("logits") is not None
        written = shm.get_contents_as_numpy(regions["out"], np.float32, list(inline.shape))
        np.testing.assert_array_equal(written, inline)
        t.client.unregister_system_shared_memory(f"{t.name}-in")
        t.client.unregister_system_shared_memory()  # every region of this client
        status = _json(t, t.client.get_system_shared_memory_status)
        assert not (status.get("regions") if isinstance(status, dict) else status)  # gRPC's JSON omits an empty map
    finally:
        for handle in regions.values():
            shm.destroy_shared_memory_region(handle)


def log_settings(t: Transport, ctx: Context) -> None:
    before = _json(t, t.client.get_log_settings)
    before = before.get("settings", before)
    assert "log_verbose_level" in before
    updated = _json(t, t.client.update_log_settings, {"log_verbose_level": 1})
    updated = updated.get("settings", updated)
    level = updated["log_verbose_level"]
    assert int(level.get("uint32_param", 0) if isinstance(level, dict) else level) == 1
    _json(t, t.client.update_log_settings, {"log_verbose_level": 0})
    with pytest.raises(InferenceServerException, match=r"(?i)file"):
        t.client.update_log_settings({"log_file": "/tmp/conformance.log"})  # never a path on the server


def trace_settings(t: Transport, ctx: Context) -> None:
    settings = _json(t, t.client.get_trace_settings)
    settings = settings.get("settings", settings)
    assert "trace_rate" in settings
    updated = _json(t, t.client.update_trace_settings, settings={"trace_rate": "7"})
    updated = updated.get("settings", updated)
    rate = updated["trace_rate"]
    assert (rate["value"] if isinstance(rate, dict) else rate) in (["7"], "7")
    _json(t, t.client.update_trace_settings, model_name="digits", settings={"trace_level": ["TIMESTAMPS"]})
    _json(t, t.client.update_trace_settings, settings={"trace_rate": None})  # back to the default
    with pytest.raises(InferenceServerException, match=r"(?i)file"):
        t.client.update_trace_settings(settings={"trace_file": "/tmp/conformance.trace"})


def cuda_shared_memory_refused(t: Transport, ctx: Context) -> None:
    """As Triton's CPU build answers: no regions, registering refused ("GPUs not supported"), unregistering a
    region that cannot exist succeeds."""
    status = _json(t, t.client.get_cuda_shared_memory_status)
    assert not (status.get("regions") if isinstance(status, dict) else status)
    with pytest.raises(InferenceServerException, match="GPUs not supported"):
        t.client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
    t.client.unregister_cuda_shared_memory("gpu")


def plugins(t: Transport, ctx: Context) -> None:
    """plugin(), unregister_plugin(): without the token plugin the server refuses; with it back, it answers."""
    plugin = t.client.plugin()
    assert isinstance(plugin, Bearer)
    t.client.unregister_plugin()
    try:
        with pytest.raises(InferenceServerException, match=r"(?i)token"):
            t.client.get_model_metadata("digits")
        assert t.client.is_server_live()  # health stays open
    finally:
        t.client.register_plugin(plugin)
    assert t.client.is_model_ready("digits")


def request_body(t: Transport, ctx: Context) -> None:
    """generate_request_body and parse_response_body (HTTP only): a body built offline, sent with another client."""
    body, header_length = thttp.InferenceServerClient.generate_request_body(
        [_images(thttp, ctx.x)], outputs=[thttp.InferRequestedOutput("logits", binary_data=True)])
    headers = {"authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    answer = httpx.post(f"{ctx.http_url}/v2/models/digits/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = answer.headers.get("Inference-Header-Content-Length")
    result = thttp.InferenceServerClient.parse_response_body(
        answer.content, header_length=int(length) if length else None)
    np.testing.assert_allclose(result.as_numpy("logits"), ctx.logits, atol=1e-5)


@dataclass
class Context:
    x: np.ndarray
    logits: np.ndarray
    http_url: str


# method name → the check that covers it; None: the method never reaches the server (or is covered by another row).
COMMON: dict[str, Callable[[Transport, Context], None] | None] = {
    "is_server_live": health, "is_server_ready": health, "is_model_ready": health,
    "get_server_metadata": server_metadata, "get_model_metadata": model_metadata, "get_model_config": model_config,
    "infer": infer, "async_infer": async_infer,
    "get_inference_statistics": statistics,
    "get_model_repository_index": repository, "load_model": repository, "unload_model": repository,
    "register_system_shared_memory": system_shared_memory, "get_system_shared_memory_status": system_shared_memory,
    "unregister_system_shared_memory": system_shared_memory,
    "get_log_settings": log_settings, "update_log_settings": log_settings,
    "get_trace_settings": trace_settings, "update_trace_settings": trace_settings,
    "get_cuda_shared_memory_status": cuda_shared_memory_refused,
    "register_cuda_shared_memory": cuda_shared_memory_refused,
    "unregister_cuda_shared_memory": cuda_shared_memory_refused,
    "register_plugin": plugins, "plugin": plugins, "unregister_plugin": plugins,
    "close": None,  # the fixture's teardown
}
METHODS = {
    "grpc": {**COMMON, "start_stream": stream, "async_stream_infer": stream, "stop_stream": stream},
    "http": {**COMMON, "generate_request_body": request_body, "parse_response_body": request_body},
}


@pytest.mark.parametrize("name", ["grpc", "http"])
def test_every_method_is_in_the_table(name: str) -> None:
    module = tgrpc if name == "grpc" else thttp
    public = {n for n, _ in inspect.getmembers(module.InferenceServerClient, inspect.isfunction)
              if not n.startswith("_")}
    assert public == set(METHODS[name]), f"tritonclient.{name} methods not in the table: {public - set(METHODS[name])}"


CASES = sorted({(name, check.__name__): check for name, table in METHODS.items()
                for check in table.values() if check is not None}.items())


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[f"{n}-{c}" for (n, c), _ in CASES])
def test_tritonclient_method(case: Callable[[Transport, Context], None], request: pytest.FixtureRequest,
                             transports: dict[str, Transport], server: ServerThread, digits: Predictor,
                             image_files: dict[str, Path]) -> None:
    name = request.node.callspec.id.split("-", 1)[0]
    x = _x(digits, image_files)
    case(transports[name], Context(x, digits.run(x), server.http_url))
