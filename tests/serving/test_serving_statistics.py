"""Triton's statistics extension: the data plane's counting rules pinned in process, then both transports through
``tritonclient`` on a loopback server, and the Prometheus metrics agreeing with the statistics after a mixed load."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.config import ServerConfig
from serving.contract.api import ClassifyRequest, ExplainRequest, InferRequest, ModelStatistics, RepositoryRequest
from serving.errors import InvalidInput, ModelNotFound, NotReady, Overloaded
from serving.runtime.dataplane import DataPlane
from serving.runtime.statistics import RequestTiming, VersionStatistics
from tests.serving.test_serving_dataplane import batch, config_for, fp32, png, run
from tests.support.repositories import Repo, add_version
from tests.support.servers import ServerThread, base_config, classify_request, scrape

# The methods that carry inference requests, as serving_requests_total names them on both transports.
INFERENCE_METHODS = frozenset({"ModelInfer", "ModelStreamInfer", "Classify", "ClassifyStream", "Explain",
                               "http.ModelInfer", "http.Classify", "http.Explain"})


@pytest.fixture
def config(repository: Repo) -> ServerConfig:
    return config_for(repository)


def one(stats: list[ModelStatistics]) -> ModelStatistics:
    assert len(stats) == 1, stats
    return stats[0]


def phases(s: ModelStatistics) -> int:
    return s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns


# ---- the counting rules, in process ----------------------------------------------------------------------------------

def test_a_served_version_nobody_asked_has_zeros(config: ServerConfig) -> None:
    async def test(plane: DataPlane) -> ModelStatistics:
        return one(plane.statistics("digits"))

    s = run(config, test)
    assert (s.name, s.version, s.last_inference, s.inference_count, s.execution_count) == ("digits", 1, 0, 0, 0)
    assert (s.success.count, s.fail.count, s.queue.count, s.batch_stats) == (0, 0, 0, [])


def test_one_request_is_one_success_with_its_phases(config: ServerConfig) -> None:
    before_ms = time.time_ns() // 1_000_000

    async def test(plane: DataPlane) -> ModelStatistics:
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(3))]))
        return one(plane.statistics("digits", "1"))

    s = run(config, test)
    after_ms = time.time_ns() // 1_000_000
    assert (s.success.count, s.fail.count, s.inference_count, s.execution_count) == (1, 0, 3, 1)
    assert [d.count for d in (s.queue, s.compute_input, s.compute_infer, s.compute_output)] == [1, 1, 1, 1]
    assert before_ms <= s.last_inference <= after_ms
    (b,) = s.batch_stats
    assert (b.batch_size, b.compute_input.count, b.compute_infer.count, b.compute_output.count) == (3, 1, 1, 1)
    # One request alone in its batch: it got the whole of the batch's model call, and nothing else.
    assert s.compute_infer.ns == b.compute_infer.ns > 0
    assert s.compute_input.ns > b.compute_input.ns  # its own parsing and checks, then the batch's stacking
    assert s.compute_output.ns >= b.compute_output.ns
    assert 0 < phases(s) <= s.success.ns  # the phases are parts of the time from admission to answer


def test_a_classify_of_three_images_is_one_request_of_three_inferences(config: ServerConfig,
                                                                     image_files: dict[str, Path]) -> None:
    async def test(plane: DataPlane) -> ModelStatistics:
        await plane.classify(ClassifyRequest("digits", [png(image_files)] * 3, top_k=2))
        return one(plane.statistics("digits"))

    s = run(config, test)
    assert (s.success.count, s.inference_count, s.execution_count) == (1, 3, 1)
    assert [(b.batch_size, b.compute_infer.count) for b in s.batch_stats] == [(3, 1)]


def test_each_request_of_a_batch_gets_the_whole_batch(repository: Repo) -> None:
    """Triton's rule: three requests computed together count three times the batch's phases, the batch once."""
    config = config_for(repository, max_queue_delay_ms=500.0)  # the window holds until all three are queued

    async def test(plane: DataPlane) -> ModelStatistics:
        await asyncio.gather(*(plane.infer(InferRequest("digits", inputs=[fp32(batch(1, seed=i))]))
                               for i in range(3)))
        return one(plane.statistics("digits"))

    s = run(config, test)
    (b,) = s.batch_stats
    assert (b.batch_size, b.compute_infer.count, s.execution_count, s.inference_count) == (3, 1, 1, 3)
    assert (s.success.count, s.compute_infer.count, s.queue.count) == (3, 3, 3)
    assert s.compute_infer.ns == 3 * b.compute_infer.ns


def test_a_request_larger_than_max_batch_is_one_request_of_several_executions(config: ServerConfig) -> None:
    async def test(plane: DataPlane) -> ModelStatistics:
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(10))]))  # max_batch 4: 4 + 4 + 2
        return one(plane.statistics("digits"))

    s = run(config, test)
    assert (s.success.count, s.execution_count, s.inference_count) == (1, 3, 10)
    assert [(b.batch_size, b.compute_infer.count) for b in s.batch_stats] == [(2, 1), (4, 2)]
    assert s.compute_infer.count == 1
    assert s.compute_infer.ns == sum(b.compute_infer.ns for b in s.batch_stats)


def test_an_explanation_counts_every_image_it_computes(repository: Repo, image_files: dict[str, Path]) -> None:
    config = config_for(repository, max_queue=64, max_images_per_request=64)  # occlusion holds 50 images

    async def test(plane: DataPlane) -> list[ModelStatistics]:
        await plane.explain(ExplainRequest("digits", png(image_files), method="occlusion"))
        occlusion = one(plane.statistics("digits"))
        await plane.explain(ExplainRequest("digits", png(image_files), method="cam"))
        return [occlusion, one(plane.statistics("digits"))]

    occlusion, both = run(config, test)
    # occlusion: the image, then its 49 occluded copies (max_batch 4: twelve batches of 4, one of 1, one of 1)
    assert (occlusion.success.count, occlusion.inference_count, occlusion.execution_count) == (1, 50, 14)
    # cam: one run of the explain graph (the model with more outputs), a batch of one of its own
    assert (both.success.count, both.inference_count, both.execution_count) == (2, 51, 15)
    assert both.compute_infer.ns > occlusion.compute_infer.ns


def test_failures_count_once_the_version_is_chosen(config: ServerConfig) -> None:
    nan = np.full((1, 1, 28, 28), np.nan, np.float32)

    async def test(plane: DataPlane) -> ModelStatistics:
        with pytest.raises(InvalidInput, match="NaN"):
            await plane.infer(InferRequest("digits", inputs=[fp32(nan)]))
        with pytest.raises(InvalidInput, match="shape must be"):
            await plane.infer(InferRequest("digits", inputs=[fp32(np.zeros((1, 1, 27, 28), np.float32))]))
        with plane.admit("digits", images=config.max_admitted), pytest.raises(Overloaded):
            await plane.infer(InferRequest("digits", inputs=[fp32(batch(1))]))
        # refused before a version was chosen: no version's statistics count them
        with pytest.raises(ModelNotFound):
            await plane.infer(InferRequest("digits", version=9, inputs=[fp32(batch(1))]))
        with pytest.raises(InvalidInput, match="more than the limit"):
            await plane.classify(ClassifyRequest("digits", [b"x"] * (config.max_images_per_request + 1)))
        return one(plane.statistics("digits"))

    s = run(config, test)
    assert (s.success.count, s.fail.count, s.execution_count, s.queue.count) == (0, 3, 0, 0)
    assert s.fail.ns > 0


def test_a_cancelled_request_is_a_failure(repository: Repo) -> None:
    config = config_for(repository, max_queue_delay_ms=10_000.0)  # it waits in the queue until cancelled

    async def test(plane: DataPlane) -> ModelStatistics:
        task = asyncio.ensure_future(plane.infer(InferRequest("digits", inputs=[fp32(batch(1))])))
        while plane.registry.models["digits"].batcher.depth == 0:  # type: ignore[union-attr]
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return one(plane.statistics("digits"))

    s = run(config, test)
    assert (s.success.count, s.fail.count, s.execution_count) == (0, 1, 0)


def test_a_replaced_version_keeps_its_statistics(repository: Repo, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository.path / "digits", repo / "digits")
    config = config_for(Repo(repo, repository.runs))

    async def test(plane: DataPlane) -> tuple[list[ModelStatistics], ...]:
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(2))]))
        add_version(repo, repo / "digits" / "1", "digits", 2)
        await plane.registry.rescan()
        assert plane.registry.models["digits"].version == 2
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(3))]))
        with pytest.raises(ModelNotFound, match=r"^Request for unknown model: 'digits' version 7 is not found "
                                                r"\(versions with statistics: 1, 2\)$"):
            plane.statistics("digits", "7")
        with pytest.raises(ModelNotFound, match="model 'nope' not found"):
            plane.statistics("nope")
        return plane.statistics("digits"), plane.statistics("digits", "1"), plane.statistics(), \
            plane.statistics("", "2")

    every, first, everything, version_ignored = run(config, test)
    assert [(s.version, s.success.count, s.inference_count) for s in every] == [(1, 1, 2), (2, 1, 3)]
    assert first == every[:1]
    assert everything == every  # one model in this repository
    assert version_ignored == every  # no name: every model, whatever the version says (as Triton)


def test_unloading_and_loading_again_keep_counting_the_version(repository: Repo) -> None:
    """Triton forgets an unloaded model's statistics; here a version's last while the server runs, whatever comes."""
    config = config_for(repository, model_control="explicit")

    async def test(plane: DataPlane) -> tuple[ModelStatistics, ModelStatistics]:
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(2))]))
        await plane.unload_model(RepositoryRequest("digits"))
        unloaded = one(plane.statistics("digits"))
        await plane.load_model(RepositoryRequest("digits"))  # the same version, a new batcher
        await plane.infer(InferRequest("digits", inputs=[fp32(batch(3))]))
        return unloaded, one(plane.statistics("digits", "1"))

    unloaded, loaded_again = run(config, test)
    assert (unloaded.success.count, unloaded.inference_count) == (1, 2)
    assert (loaded_again.success.count, loaded_again.inference_count, loaded_again.execution_count) == (2, 5, 2)


def test_a_model_that_never_served_has_no_statistics(repository: Repo, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository.path / "digits", repo / "digits")
    (repo / "digits" / "1" / "model.onnx").write_bytes(b"not a model")
    config = config_for(Repo(repo, repository.runs))

    async def test(plane: DataPlane) -> None:
        with pytest.raises(NotReady, match="model 'digits' has no statistics: none of its versions has served"):
            plane.statistics("digits")
        assert plane.statistics() == []

    run(config, test)


def test_a_request_timing_splits_its_time_at_the_marks() -> None:
    counters = VersionStatistics("m")
    with counters.request() as timing:
        assert isinstance(timing, RequestTiming)
        timing.prepared()
        timing.infer_ns += 7
        timing.resumed()
    c = counters.counts()
    assert (c.success, c.infer_ns) == (1, 7)
    assert c.input_ns + c.output_ns <= c.success_ns  # the marks split the request's own time, nothing more


# ---- both transports -------------------------------------------------------------------------------------------------

@pytest.fixture
def stats_server(make_server, repository: Repo) -> ServerThread:  # type: ignore[no-untyped-def]
    """A fresh server (statistics from zero) on the shared repository: digits and rgb, version 1 each."""
    return make_server(base_config(repository.path, max_queue_delay_ms=2.0))


@pytest.fixture
def clients(stats_server: ServerThread) -> Iterator[tuple[tgrpc.InferenceServerClient, thttp.InferenceServerClient]]:
    over_grpc = tgrpc.InferenceServerClient(stats_server.address)
    over_http = thttp.InferenceServerClient(stats_server.http_url.removeprefix("http://"))
    yield over_grpc, over_http
    over_grpc.close()
    over_http.close()


def _input(module, x: np.ndarray):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_both_transports_give_the_same_statistics(stats_server: ServerThread, clients) -> None:  # type: ignore[no-untyped-def]
    over_grpc, over_http = clients
    over_grpc.infer("digits", [_input(tgrpc, batch(2))])
    over_http.infer("digits", [_input(thttp, batch(1))])
    assert "statistics" in over_grpc.get_server_metadata(as_json=True)["extensions"]
    assert "statistics" in over_http.get_server_metadata()["extensions"]
    for name, version in [("", ""), ("digits", ""), ("digits", "1"), ("rgb", "")]:
        from_grpc = over_grpc.get_inference_statistics(name, version)
        from_http = over_http.get_inference_statistics(name, version)
        # Triton's HTTP answer: the gRPC message's fields, uint64 as JSON numbers (the proto3 mapping has strings)
        assert isinstance(from_http["model_stats"][0]["inference_count"], int)
        assert from_grpc == json_format.ParseDict(from_http, service_pb2.ModelStatisticsResponse())
    every = over_grpc.get_inference_statistics()
    assert [(s.name, s.version) for s in every.model_stats] == [("digits", "1"), ("rgb", "1")]
    (digits,) = over_http.get_inference_statistics("digits", "1")["model_stats"]
    assert (digits["name"], digits["version"], digits["inference_count"], digits["execution_count"]) == \
        ("digits", "1", 3, 2)
    assert digits["inference_stats"]["success"]["count"] == 2
    assert digits["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in digits["batch_stats"]] == [1, 2]
    assert (digits["response_stats"], digits["memory_usage"]) == ({}, [])
    # curl's view: the route for every model is not taken for the metadata of a model named "stats"
    answer = httpx.get(f"{stats_server.http_url}/v2/models/stats")
    assert answer.status_code == 200
    assert [s["name"] for s in answer.json()["model_stats"]] == ["digits", "rgb"]


def test_unknown_models_and_versions_are_triton_errors(stats_server: ServerThread, clients) -> None:  # type: ignore[no-untyped-def]
    over_grpc, over_http = clients
    message = "Request for unknown model: 'digits' version 3 is not found (versions with statistics: 1)"
    for client, not_found in ((over_grpc, "StatusCode.NOT_FOUND"), (over_http, "404")):
        with pytest.raises(InferenceServerException) as raised:
            client.get_inference_statistics("digits", "3")
        assert (raised.value.status(), raised.value.message()) == (not_found, message)
        with pytest.raises(InferenceServerException, match="model 'nope' not found"):
            client.get_inference_statistics("nope")
    answer = httpx.get(f"{stats_server.http_url}/v2/models/digits/versions/3/stats")
    assert (answer.status_code, answer.json()) == (404, {"error": message})


def test_prometheus_metrics_agree_with_the_statistics(stats_server: ServerThread, clients,  # type: ignore[no-untyped-def]
                                                      image_files: dict[str, Path]) -> None:
    over_grpc, over_http = clients
    image = image_files["img0.png"].read_bytes()
    with grpc.insecure_channel(stats_server.address) as channel:
        classifier = ic_grpc.ImageClassifierStub(channel)
        over_grpc.infer("digits", [_input(tgrpc, batch(3))])                      # gRPC infer
        over_http.infer("digits", [_input(thttp, batch(2, seed=1))])              # HTTP infer
        over_grpc.infer("digits", [_input(tgrpc, batch(10, seed=2))])             # max_batch 8: two executions
        classifier.Classify(classify_request(image, top_k=2))                    # gRPC classify
        httpx.post(f"{stats_server.http_url}/v1/models/digits/classify",          # HTTP classify of two images
                   files=[("image", ("a.png", image)), ("image", ("b.png", image))]).raise_for_status()
        classifier.Explain(ic_pb2.ExplainRequest(model="digits", image=ic_pb2.Image(encoded=image)))  # cam
        with pytest.raises(InferenceServerException, match="NaN"):               # fails in the data plane
            over_grpc.infer("digits", [_input(tgrpc, np.full((1, 1, 28, 28), np.nan, np.float32))])
        with pytest.raises(InferenceServerException, match="has no version 9"):  # fails before: no version's
            over_grpc.infer("digits", [_input(tgrpc, batch(1))], model_version="9")
    s = one(over_grpc.get_inference_statistics("digits").model_stats)  # tritonclient's own message
    metrics = scrape(stats_server)

    def total(name: str, **labels: str) -> float:
        return sum(value for (n, key), value in metrics.items()
                   if n == name and all(dict(key).get(k) == v for k, v in labels.items()))

    calls = {(dict(key)["method"], dict(key)["code"]): value for (n, key), value in metrics.items()
             if n == "serving_requests_total" and dict(key)["model"] == "digits"
             and dict(key)["method"] in INFERENCE_METHODS}
    ok = sum(v for (_, code), v in calls.items() if code == "OK")
    refused = sum(v for (_, code), v in calls.items() if code != "OK")
    assert ok == s.inference_stats.success.count == 6
    assert refused == s.inference_stats.fail.count + 1 == 2  # + the unknown version: it never reached a version
    rows = sum(b.batch_size * b.compute_infer.count for b in s.batch_stats)
    assert total("serving_batch_size_count", model="digits") == s.execution_count == 7
    assert total("serving_batch_size_sum", model="digits") == s.inference_count == rows == 3 + 2 + 10 + 1 + 2 + 1
    assert total("serving_compute_duration_seconds_count", model="digits") == s.execution_count
    assert total("serving_compute_duration_seconds_sum", model="digits") == pytest.approx(
        sum(b.compute_infer.ns for b in s.batch_stats) / 1e9, rel=1e-9, abs=1e-12)
    assert total("serving_queue_duration_seconds_count", model="digits") == s.inference_stats.queue.count == 6
    assert total("serving_queue_duration_seconds_sum", model="digits") == pytest.approx(
        s.inference_stats.queue.ns / 1e9, rel=1e-9, abs=1e-12)
