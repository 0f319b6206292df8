"""Model control: ``--model-control poll|explicit|none`` and Triton's repository extension (index, load, unload) on
both transports, through tritonclient itself, with real servers on loopback and real models."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.config import ServerConfig
from serving.runtime.predictor import Predictor
from tests.support.repositories import Repo, add_version, tamper_golden
from tests.support.servers import NOT_SERVING, SERVING, ServerThread, base_config, call, classify_request, wait_until

NOT_ALLOWED = "explicit model load / unload is not allowed with --model-control"


def outcome(fn: Callable[[], object]) -> tuple[str, str]:
    """("OK", "") or (status, message) of one tritonclient call; gRPC statuses without their "StatusCode." prefix,
    HTTP ones as the number."""
    try:
        fn()
    except InferenceServerException as e:
        return str(e.status()).removeprefix("StatusCode."), e.message() or ""
    return "OK", ""


def index(client: tgrpc.InferenceServerClient) -> dict[str, tuple[str, str, str]]:
    """The repository index through tritonclient.grpc: name → (version, state, reason)."""
    rows = client.get_model_repository_index(as_json=True).get("models", [])
    return {r["name"]: (r.get("version", ""), r.get("state", ""), r.get("reason", "")) for r in rows}


@pytest.fixture
def own_repo(repository: Repo, tmp_path: Path) -> Path:
    """A private copy of digits/1 and rgb/1, to add versions to."""
    target = tmp_path / "repository"
    shutil.copytree(repository.path, target)
    return target


@pytest.fixture
def explicit(make_server: Callable[..., ServerThread], serving_repo: Repo) -> ServerThread:
    """--model-control explicit and no --models: nothing loaded at start."""
    return make_server(base_config(serving_repo.path, model_control="explicit"))


@pytest.fixture
def triton(explicit: ServerThread) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(explicit.address)
    yield client
    client.close()


def infer_input(digits: Predictor, image: Path) -> tgrpc.InferInput:
    x = digits.preprocess(image)[None]
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


# ---- settings ------------------------------------------------------------------------------------------------------

def test_model_control_settings_are_checked(tmp_path: Path) -> None:
    assert ServerConfig(tmp_path).model_control == "poll"  # today's behaviour stays the default
    with pytest.raises(ValueError, match=r"--model-control must be one of poll, explicit, none, got 'manual'"):
        ServerConfig(tmp_path, model_control="manual")
    with pytest.raises(ValueError, match=r"--poll-s rescans the repository, which --model-control explicit never"):
        ServerConfig(tmp_path, model_control="explicit", poll_s=5)


# ---- explicit mode over gRPC ---------------------------------------------------------------------------------------

def test_explicit_starts_with_nothing_loaded_then_loads_and_unloads_on_request(
        explicit: ServerThread, triton: tgrpc.InferenceServerClient, digits: Predictor,
        image_files: dict[str, Path]) -> None:
    # Live and ready with no model: Triton's rule (nothing asked for has failed). Every model on disk is listed.
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert explicit.server.registry.models == {}
    assert index(triton) == {name: ("", "UNAVAILABLE", "not loaded")
                             for name in ("corrupt", "digits", "rgb", "tampered")}
    assert "model_repository" in triton.get_server_metadata(as_json=True)["extensions"]
    tensor = infer_input(digits, image_files["img0.png"])
    assert outcome(lambda: triton.infer("digits", [tensor])) == (
        "NOT_FOUND", "model 'digits' not found (this server has: none)")

    triton.load_model("digits")  # the newest version, after the golden self-check
    assert index(triton)["digits"] == ("2", "READY", "")
    result = triton.infer("digits", [tensor])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("logits"), digits.run(digits.preprocess(image_files["img0.png"])[None]),
                               atol=1e-5)
    assert triton.is_model_ready("digits")
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(explicit.address))
    assert health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=10).status == SERVING

    # A model that fails its checks: refused with the reason, listed UNAVAILABLE with it; the server stays ready.
    status, message = outcome(lambda: triton.load_model("tampered"))
    assert status == "UNAVAILABLE"
    assert message.startswith("model 'tampered' failed to load: golden self-check failed: max |logit - reference|")
    version, state, reason = index(triton)["tampered"]
    assert (version, state) == ("1", "UNAVAILABLE")
    assert reason.startswith("golden self-check failed")
    assert triton.is_server_ready()

    triton.unload_model("digits")
    assert index(triton)["digits"] == ("2", "UNAVAILABLE", "unloaded")  # Triton's reason
    assert not triton.is_model_ready("digits")  # false, not an error: the model is known
    assert health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=10).status == NOT_SERVING
    # Nothing serves and 'tampered' failed: not ready (as Triton's strict readiness). Unloading it clears that.
    assert not triton.is_server_ready()
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == NOT_SERVING
    triton.unload_model("tampered")
    assert triton.is_server_ready()
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == SERVING
    assert outcome(lambda: triton.infer("digits", [tensor])) == (
        "UNAVAILABLE", "model 'digits' is unloaded (load it again: RepositoryModelLoad, python -m serving models "
                       "load digits)")
    assert outcome(lambda: triton.unload_model("digits")) == ("OK", "")  # again: nothing to do
    triton.load_model("digits")
    assert triton.infer("digits", [tensor]).get_response().model_version == "2"


def test_the_index_filters_ready_models(explicit: ServerThread, triton: tgrpc.InferenceServerClient) -> None:
    from serving._generated import grpc_service_pb2 as kserve_pb2
    from serving._generated import grpc_service_pb2_grpc as kserve_grpc

    triton.load_model("rgb")
    stub = kserve_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(explicit.address))
    ready = stub.RepositoryIndex(kserve_pb2.RepositoryIndexRequest(ready=True), timeout=10)
    assert [(m.name, m.version, m.state, m.reason) for m in ready.models] == [("rgb", "1", "READY", "")]
    code, details, _ = call(lambda: stub.RepositoryIndex(
        kserve_pb2.RepositoryIndexRequest(repository_name="other"), timeout=10))
    assert (code, details) == (grpc.StatusCode.UNIMPLEMENTED,
                               "repository_name 'other': this server has one repository; leave the name empty")


@pytest.mark.parametrize("name", ["nope", "../digits", "digits/2", ".digits", ""])
def test_unknown_names_are_not_found_and_never_reach_the_file_system(
        triton: tgrpc.InferenceServerClient, name: str) -> None:
    for action in (triton.load_model, triton.unload_model):
        status, message = outcome(lambda: action(name))  # noqa: B023
        assert status == "NOT_FOUND", (name, message)
        assert message.startswith(f"no model {name!r} in the repository")


def test_a_path_outside_the_repository_is_never_loaded(make_server: Callable[..., ServerThread], own_repo: Path,
                                                      tmp_path: Path) -> None:
    """A valid model folder beside the repository: '../outside' names it as a path would, and is refused."""
    add_version(tmp_path, own_repo / "digits" / "1", "outside", 1)
    server = make_server(base_config(own_repo, model_control="explicit"))
    client = tgrpc.InferenceServerClient(server.address)
    status, message = outcome(lambda: client.load_model("../outside"))
    assert status == "NOT_FOUND"
    assert "a model name is a folder name" in message
    assert server.server.registry.models == {}
    assert sorted(index(client)) == ["digits", "rgb"]
    client.close()


def test_uploaded_files_and_config_overrides_are_refused(explicit: ServerThread,
                                                         triton: tgrpc.InferenceServerClient) -> None:
    onnx = (Path(explicit.config.repository) / "digits" / "1" / "model.onnx").read_bytes()
    status, message = outcome(lambda: triton.load_model("digits", config="{}", files={"file:1/model.onnx": onnx}))
    assert (status, message) == ("INVALID_ARGUMENT", "model files in a load request are refused ('file:1/model.onnx'"
                                 "…): models load only from the server's repository on disk; publish a version "
                                 "folder there instead")
    status, message = outcome(lambda: triton.load_model("digits", config=json.dumps({"max_batch_size": 1})))
    assert status == "INVALID_ARGUMENT"
    assert message.startswith("a 'config' override is refused: a model's configuration is its version folder's "
                              "model.json")
    assert explicit.server.registry.models == {}  # nothing was loaded


# ---- explicit mode over HTTP ---------------------------------------------------------------------------------------

def test_repository_extension_over_http(explicit: ServerThread) -> None:
    http = thttp.InferenceServerClient(explicit.http_url.removeprefix("http://"))
    try:
        assert {m["name"]: m for m in http.get_model_repository_index()}["digits"] == {
            "name": "digits", "state": "UNAVAILABLE", "reason": "not loaded"}  # no version: none loaded
        http.load_model("digits")
        assert http.is_model_ready("digits")
        rows = httpx.post(f"{explicit.http_url}/v2/repository/index", json={"ready": True}).json()
        assert rows == [{"name": "digits", "version": "2", "state": "READY", "reason": ""}]
        status, message = outcome(lambda: http.load_model("nope"))
        assert (status, message) == ("404", "no model 'nope' in the repository (it has: corrupt, digits, rgb, "
                                            "tampered)")
        assert outcome(lambda: http.load_model("digits", config="{}"))[0] == "400"
        http.unload_model("digits")
        assert not http.is_model_ready("digits")
        assert {m["name"]: m for m in http.get_model_repository_index()}["digits"]["reason"] == "unloaded"
    finally:
        http.close()
    # What tritonclient.http would send with files= (it cannot: its base64 bytes are not JSON), sent by hand.
    files = httpx.post(f"{explicit.http_url}/v2/repository/models/digits/load",
                       json={"parameters": {"config": "{}", "file:1/model.onnx": "AAAA"}})
    assert files.status_code == 400
    assert files.json()["error"].startswith("model files in a load request are refused")
    big = httpx.post(f"{explicit.http_url}/v2/repository/models/digits/load", content=b" " * (1 << 17))
    assert big.status_code == 413
    for body, error in ((b"[]", "the body must be a JSON object"), (b"{", "the body is not valid JSON"),
                        (b'{"parameters": 3}', "'parameters' must be a JSON object")):
        answer = httpx.post(f"{explicit.http_url}/v2/repository/models/digits/load", content=body)
        assert (answer.status_code, answer.json()["error"][:len(error)]) == (400, error)
    traversal = httpx.post(f"{explicit.http_url}/v2/repository/models/..%2Fdigits/load")
    assert traversal.status_code == 404
    assert explicit.server.registry.models == {}


# ---- versions: a reload picks a newer one, a failed load keeps the serving one -----------------------------------

def test_load_reloads_a_newer_version_and_a_refused_one_leaves_the_serving_one(
        make_server: Callable[..., ServerThread], own_repo: Path, digits: Predictor,
        image_files: dict[str, Path]) -> None:
    server = make_server(base_config(own_repo, model_control="explicit", models=("digits",)))
    client = tgrpc.InferenceServerClient(server.address)
    tensor = infer_input(digits, image_files["img1.png"])
    assert index(client) == {"digits": ("1", "READY", ""), "rgb": ("", "UNAVAILABLE", "not loaded")}
    client.load_model("digits")  # nothing newer: still version 1, nothing reloaded
    assert client.infer("digits", [tensor]).get_response().model_version == "1"

    add_version(own_repo, own_repo / "digits" / "1", "digits", 2)
    client.load_model("digits")
    assert client.infer("digits", [tensor]).get_response().model_version == "2"

    add_version(own_repo, own_repo / "digits" / "1", "digits", 3, tamper_golden)
    status, message = outcome(lambda: client.load_model("digits"))
    assert status == "UNAVAILABLE"
    assert message.startswith("model 'digits': version 3 refused: golden self-check failed")
    assert message.endswith("; version 2 serves")
    assert client.infer("digits", [tensor]).get_response().model_version == "2"
    version, state, reason = index(client)["digits"]
    assert (version, state) == ("2", "READY")
    assert reason.startswith("version 3 refused: golden self-check failed")
    client.close()


# ---- unload drains -------------------------------------------------------------------------------------------------

def test_unload_lets_requests_in_flight_finish_and_refuses_new_ones(
        make_server: Callable[..., ServerThread], serving_repo: Repo, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, model_control="explicit", models=("digits",), grace_s=60))
    stub = ic_grpc.ImageClassifierStub(grpc.insecure_channel(server.address))
    client = tgrpc.InferenceServerClient(server.address)
    png = image_files["img0.png"].read_bytes()
    with ThreadPoolExecutor(1) as pool, \
            server.held_batch("digits", lambda: stub.Classify.future(classify_request(png), timeout=60)) as held:
        unloading = pool.submit(client.unload_model, "digits")
        wait_until(lambda: server.model("digits").unloading, 10, "the unload to start draining")
        # While the held request runs (its compute thread is blocked: the drain cannot end), new ones are refused.
        code, details, _ = call(lambda: stub.Classify(classify_request(png), timeout=10))
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "model 'digits' is not serving: unloading")
        assert index(client)["digits"] == ("2", "UNLOADING", "unloading")
        assert not unloading.done()
    assert held.result().results[0].predictions  # the request in flight finished OK
    unloading.result(30)
    assert index(client)["digits"] == ("2", "UNAVAILABLE", "unloaded")
    assert "digits" not in server.server.registry.models
    client.close()


def test_a_load_finishes_even_when_its_caller_goes_away(make_server: Callable[..., ServerThread],
                                                       serving_repo: Repo) -> None:
    server = make_server(base_config(serving_repo.path, model_control="explicit"))
    registry = server.server.registry

    async def load_then_cancel() -> None:
        caller = asyncio.ensure_future(registry.load("rgb"))
        await asyncio.sleep(0)  # the load started: its shielded task exists
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await asyncio.gather(*registry._control)

    server.call(load_then_cancel())
    assert registry.models["rgb"].state.value == "SERVING"
    assert not registry._lock.locked()


# ---- the done-when: unload → load round trips while other clients keep sending ---------------------------

class Sender(threading.Thread):
    """Sends one request after another until stopped; records (phase when the request started, outcome)."""

    def __init__(self, send: Callable[[], str], phase: list[int]) -> None:
        super().__init__(daemon=True)
        self.send, self.phase = send, phase
        self.records: list[tuple[int, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            phase = self.phase[0]
            result = self.send()
            self.records.append((phase, result))

    def seen(self, phase: int, predicate: Callable[[str], bool] = lambda o: True) -> int:
        return sum(1 for p, o in list(self.records) if p == phase and predicate(o))


def test_unload_load_round_trips_while_other_clients_send(make_server: Callable[..., ServerThread],
                                                          serving_repo: Repo, digits: Predictor,
                                                          image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, model_control="explicit", models=("digits",)))
    x = digits.preprocess(image_files["img2.jpg"])[None]
    grpc_client = tgrpc.InferenceServerClient(server.address)
    http_control = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    http = httpx.Client(base_url=server.http_url, timeout=30)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    http_outcomes = {200: "OK", 404: "NOT_FOUND", 503: "UNAVAILABLE"}

    def over_grpc() -> str:
        tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return outcome(lambda: grpc_client.infer("digits", [tensor], client_timeout=30))[0]

    def over_http() -> str:
        code = http.post("/v2/models/digits/infer", json=body).status_code
        return http_outcomes.get(code, f"HTTP {code}")

    # Even phases: the model is loaded (the load returned before the request started); odd: an unload was about to
    # start, is running, or the model is away and loading again.
    phase = [0]
    senders = [Sender(over_grpc, phase), Sender(over_http, phase)]
    for sender in senders:
        sender.start()
    try:
        for unload, load in ((grpc_client.unload_model, grpc_client.load_model),
                             (http_control.unload_model, http_control.load_model)):
            loaded = phase[0]
            wait_until(lambda: all(s.seen(loaded, lambda o: o == "OK") >= 3 for s in senders), 30,  # noqa: B023
                       "answers while the model is loaded")
            phase[0] = away = loaded + 1
            # Each sender's requests tagged "loaded" have all come back before the unload starts.
            wait_until(lambda: all(s.seen(away) for s in senders), 30, "a request of the new phase")  # noqa: B023
            unload("digits")
            wait_until(lambda: all(s.seen(away, lambda o: o != "OK") for s in senders), 30,  # noqa: B023
                       "every client to see the model gone")
            load("digits")
            phase[0] = away + 1
        wait_until(lambda: all(s.seen(phase[0], lambda o: o == "OK") >= 3 for s in senders), 30,
                   "answers after the last load")
    finally:
        for sender in senders:
            sender.stopped.set()
        for sender in senders:
            sender.join(30)
        grpc_client.close()
        http_control.close()
        http.close()
    for sender in senders:
        outcomes = {o for _, o in sender.records}
        assert outcomes <= {"OK", "NOT_FOUND", "UNAVAILABLE"}, outcomes
        assert {o for p, o in sender.records if p % 2 == 0} == {"OK"}  # loaded: every request answered
        assert "UNAVAILABLE" in outcomes  # the model was away while they sent


# ---- poll and none refuse control; none never looks at the repository again ---------------------------------------

@pytest.mark.parametrize("mode", ["poll", "none"])
def test_poll_and_none_refuse_load_and_unload(make_server: Callable[..., ServerThread], own_repo: Path,
                                              mode: str) -> None:
    server = make_server(base_config(own_repo, model_control=mode, models=("digits",)))
    client = tgrpc.InferenceServerClient(server.address)
    for action in (client.load_model, client.unload_model):
        status, message = outcome(lambda: action("digits"))  # noqa: B023
        assert (status, message) == ("UNAVAILABLE", f"{NOT_ALLOWED} {mode}: start the server with --model-control "
                                                    "explicit")
    answer = httpx.post(f"{server.http_url}/v2/repository/models/digits/unload")
    assert (answer.status_code, answer.json()["error"][:len(NOT_ALLOWED)]) == (503, NOT_ALLOWED)
    assert index(client)["digits"] == ("1", "READY", "")  # the index answers in every mode
    add_version(own_repo, own_repo / "digits" / "1", "digits", 2)
    server.call(server.server.registry.rescan())  # what SIGHUP and --poll-s do
    assert server.model("digits").version == (2 if mode == "poll" else 1)
    client.close()


# ---- tokens ----------------------------------------------------------------------------------------------------------

def test_control_needs_the_token(make_server: Callable[..., ServerThread], serving_repo: Repo,
                                 tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("control-token\n")
    server = make_server(base_config(serving_repo.path, model_control="explicit", auth_token_file=tokens))
    client = tgrpc.InferenceServerClient(server.address)
    refused = ("UNAUTHENTICATED", "missing or invalid token: send the header 'authorization: Bearer <token>'")
    for action in (lambda: client.load_model("digits"), lambda: client.unload_model("digits"),
                   lambda: client.get_model_repository_index()):
        assert outcome(action) == refused
    for path in ("index", "models/digits/load", "models/digits/unload"):
        assert httpx.post(f"{server.http_url}/v2/repository/{path}").status_code == 401
    assert server.server.registry.models == {}
    client.load_model("digits", headers={"authorization": "Bearer control-token"})
    assert server.model("digits").state.value == "SERVING"
    client.close()
