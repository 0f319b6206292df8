"""The ``shm`` and ``perf_analyzer`` families' own arithmetic and wire formats: the server's breakdown from two
statistics snapshots, the shared-memory requests as tritonclient would send them, perf_analyzer's report read back,
and where perf_analyzer is looked for. (``test_bench_quick`` runs both families end to end.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2

from benchmarks.get_perf_analyzer import ENV_OVERRIDE, Unavailable, locate
from benchmarks.perf_analyzer import parse
from benchmarks.shared_memory import breakdown, grpc_shm_request, http_shm_request, regions_for


def _snapshot(versions: list[dict[str, int]]) -> dict:
    """A ModelStatisticsResponse as tritonclient's ``get_inference_statistics(as_json=True)`` returns it: int64 as
    strings, zero fields left out."""
    stats = []
    for i, v in enumerate(versions):
        durations = {d: {"count": str(v["n"]), "ns": str(v[d])} for d in
                     ("success", "queue", "compute_input", "compute_infer", "compute_output") if v.get(d)}
        stats.append({"name": "m", "version": str(i + 1), "inference_count": str(v["n"]),
                      "execution_count": str(v["batches"]), "inference_stats": durations})
    return {"model_stats": stats}


def test_breakdown_is_per_request_between_the_snapshots_over_every_version() -> None:
    before = _snapshot([{"n": 10, "batches": 5, "success": 10_000_000, "queue": 2_000_000, "compute_input": 100_000,
                         "compute_infer": 5_000_000, "compute_output": 50_000}])
    after = _snapshot([{"n": 50, "batches": 15, "success": 50_000_000, "queue": 10_000_000,
                        "compute_input": 500_000, "compute_infer": 25_000_000, "compute_output": 250_000},
                       {"n": 10, "batches": 5, "success": 10_000_000, "queue": 2_000_000, "compute_input": 100_000,
                        "compute_infer": 5_000_000, "compute_output": 50_000}])
    us = breakdown({"before": before, "after": after})
    assert us is not None
    # 50 requests in 15 batches between the snapshots: 50 ms in the server, 10 ms queued, 25 ms inferring
    assert (us["requests"], us["batches"], us["mean_batch"]) == (50, 15, 3.333)
    assert (us["request"], us["queue"], us["compute_infer"]) == (1000, 200, 500)
    assert (us["compute_input"], us["compute_output"]) == (10, 5)
    assert us["overhead"] == 285


def test_no_breakdown_without_statistics_or_without_requests() -> None:
    same = _snapshot([{"n": 3, "batches": 1, "success": 1000}])
    assert breakdown(None) is None
    assert breakdown({"error": "InferenceServerException: [StatusCode.UNIMPLEMENTED] Method not implemented!"}) is None
    assert breakdown({"before": same, "after": same}) is None
    assert breakdown({"before": {}, "after": {}}) is None  # a model never asked: no model_stats at all


def test_shared_memory_requests_carry_what_tritonclient_sets() -> None:
    shape, classes = (1, 3, 4, 4), 10
    worker = regions_for("m", "grpc", 2)[1]
    assert worker["input"][1] == "/" + worker["input"][0]  # the key: a POSIX name
    request = service_pb2.ModelInferRequest.FromString(grpc_shm_request("m", shape, classes, worker))
    expected_input = triton_grpc.InferInput("input", list(shape), "FP32").set_shared_memory(worker["input"][0],
                                                                                            4 * 48)._get_tensor()
    expected_output = triton_grpc.InferRequestedOutput("logits")
    expected_output.set_shared_memory(worker["output"][0], 4 * classes)
    assert request.model_name == "m"
    assert list(request.inputs) == [expected_input]
    assert list(request.outputs) == [expected_output._get_tensor()]
    assert not request.raw_input_contents

    body = json.loads(http_shm_request(shape, classes, worker))
    http_input = triton_http.InferInput("input", list(shape), "FP32").set_shared_memory(worker["input"][0], 4 * 48)
    http_output = triton_http.InferRequestedOutput("logits")
    http_output.set_shared_memory(worker["output"][0], 4 * classes)
    assert body["inputs"] == [http_input._get_tensor()]
    (output,) = body["outputs"]
    expected = http_output._get_tensor()
    assert output["parameters"].items() <= expected["parameters"].items()  # tritonclient adds binary_data: False
    assert output["name"] == expected["name"]


def test_every_worker_has_regions_of_its_own() -> None:
    workers = regions_for("resnet18", "http", 8)
    names = [r[0] for w in workers for r in (w["input"], w["output"])]
    keys = [r[1] for w in workers for r in (w["input"], w["output"])]
    assert len(set(names)) == len(set(keys)) == 16


# perf_analyzer 2.51.0 against this server's digits model (concurrency 8, statistics extension on), as it printed
# it and wrote its -f CSV.
REPORT = """\
Request concurrency: 8
  Client:
    Request count: 818
    Throughput: 750.035 infer/sec
    Avg latency: 10577 usec (standard deviation 2509 usec)
    p50 latency: 10370 usec
    p90 latency: 13676 usec
    p95 latency: 14666 usec
    p99 latency: 19724 usec
    Avg gRPC time: 10563 usec ((un)marshal request/response 7 usec + response wait 10556 usec)
  Server:
    Inference count: 822
    Execution count: 211
    Successful request count: 822
    Avg request latency: 6803 usec (overhead 1568 usec + queue 2974 usec + compute input 82 usec + compute infer \
2134 usec + compute output 45 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 8, throughput: 750.035 infer/sec, latency 10577 usec
"""
CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute \
Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
8,750.035,5,5333,2974,82,2134,45,2,10370,13676,14666,19724
"""
# the same tool against a server without the statistics extension: no "Server:" section, fewer columns
CSV_NO_SERVER = """\
Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,\
request/response,response wait
2,760.037,3,1,2508,3399,3682,6160,2627,4,2610
"""


def test_perf_analyzer_report_is_read_back() -> None:
    found = parse(CSV, REPORT)
    assert found["throughput"] == 750.035
    assert (found["p50_ms"], found["p90_ms"], found["p99_ms"]) == (10.37, 13.676, 19.724)
    assert found["server_us"] == {"request": 6803, "overhead": 1568, "queue": 2974, "compute_input": 82,
                                  "compute_infer": 2134, "compute_output": 45, "requests": 822, "batches": 211,
                                  "mean_batch": 3.896}


def test_perf_analyzer_report_without_the_server_section() -> None:
    found = parse(CSV_NO_SERVER, "Request concurrency: 2\n  Client: \n    Throughput: 760.037 infer/sec\n")
    assert found["throughput"] == 760.037
    assert found["server_us"] is None
    with pytest.raises(ValueError, match="expected one row in perf_analyzer's CSV, found 0"):
        parse(CSV_NO_SERVER.splitlines()[0], "")


@pytest.mark.not_quick  # runs ldd and the file it is pointed at
def test_perf_analyzer_that_cannot_run_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_OVERRIDE, str(tmp_path / "missing"))
    with pytest.raises(Unavailable, match=r"perf_analyzer not found \(PERF_ANALYZER=.*/missing is not a file\)"):
        locate()
    script = tmp_path / "perf_analyzer"
    script.write_text("#!/bin/sh\necho 'unknown option'; exit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv(ENV_OVERRIDE, str(script))
    with pytest.raises(Unavailable, match=r"does not run here \(exit 3\): unknown option"):
        locate()
    script.chmod(0o644)
    with pytest.raises(Unavailable, match=r"does not start: .*Permission denied"):
        locate()
