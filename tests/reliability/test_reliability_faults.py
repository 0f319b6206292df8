"""Faults: SIGKILL and restart, broken model folders, models and versions added while running.

(SIGTERM under load — every accepted request answered, new ones UNAVAILABLE, exit 0 within the grace period — is
tests/serving/test_serving_cli.py::test_serve_health_classify_and_sigterm_under_load.)
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from tests.support.hostile import seed_images
from tests.support.repositories import Repo, add_version, tamper_golden, truncate_onnx, wrong_sha
from tests.support.servers import (
    NOT_SERVING,
    SERVING,
    ServerProcess,
    ServerThread,
    base_config,
    call,
    classify_request,
    wait_until,
)

pytestmark = pytest.mark.slow


def answers(server: ServerProcess) -> tuple[list[bytes], bytes]:
    """Every probability for each seed image (Classify, top 10) and raw ModelInfer logits, one request at a time."""
    classified = [server.classifier.Classify(classify_request(p, top_k=10), timeout=10).results[0].SerializeToString()
                  for p in seed_images().values()]
    x = np.random.default_rng(3).standard_normal((3, 1, 28, 28)).astype(np.float32)
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[3, 1, 28, 28])
    response = server.inference.ModelInfer(kserve_pb2.ModelInferRequest(
        model_name="digits", inputs=[tensor], raw_input_contents=[x.tobytes()]), timeout=10)
    return classified, response.raw_output_contents[0]


class Traffic:
    """A client thread classifying continuously; records (status code, served version) of every answer."""

    def __init__(self, server: ServerProcess, model: str = "digits") -> None:
        self.results: list[tuple[grpc.StatusCode, int]] = []
        self._stop = threading.Event()
        request = classify_request(seed_images()["seed0.png"], model=model)

        def run() -> None:
            while len(self.results) < 100_000:
                code, _, response = call(lambda: server.classifier.Classify(request, timeout=10))
                self.results.append((code, response.version if response is not None else 0))
                if self._stop.wait(0.005):  # a paced client (not synchronisation): about 200 requests a second
                    return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_sigkill_then_restart_serves_identical_answers(repository: Repo, figures: dict[str, object]) -> None:
    first = ServerProcess(repository.path)
    before = answers(first)
    traffic = Traffic(first)
    wait_until(lambda: len(traffic.results) >= 20, 10, "traffic")
    first.signal(signal.SIGKILL)  # no shutdown code runs
    assert first.proc.wait(10) == -signal.SIGKILL
    traffic.stop()
    first.stop()
    started = time.perf_counter()
    second = ServerProcess(repository.path, port=first.port, wait_ready=False)  # same address: clients need no change
    try:
        second.wait_serving(timeout=30)
        ready_s = time.perf_counter() - started
        assert second.status("digits") == SERVING
        after = answers(second)
        assert after == before  # bit for bit: same files, same checks, same numbers
        info = second.classifier.GetModel(ic_pb2.GetModelRequest(name="digits"), timeout=10)
        assert (info.state, info.version, info.reason) == (ic_pb2.ModelInfo.SERVING, 1, "")
        figures["SIGKILL + restart"] = (f"SERVING again {ready_s:.2f} s after the restart on the same port; "
                                        f"{len(before[0])} classifications and the ModelInfer logits identical "
                                        "bit for bit")
    finally:
        assert second.stop() == 0


def test_broken_model_folders_are_refused_while_others_serve(repository: Repo, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    source = repository.path / "digits" / "1"
    add_version(repo, source, "digits", 1)
    add_version(repo, source, "badsha", 1, wrong_sha)
    add_version(repo, source, "truncated", 1, truncate_onnx)
    add_version(repo, source, "truncated-rehashed", 1, lambda d: truncate_onnx(d, rehash=True))
    add_version(repo, source, "badgolden", 1, tamper_golden)
    add_version(repo, source, "badjson", 1, lambda d: (d / "model.json").write_text('{"name": "badjson", '))
    expected = {
        "badsha": r"model\.onnx sha256 is [0-9a-f]{64}, model\.json says 0{64}: file changed",
        "truncated": r"model\.onnx sha256 is [0-9a-f]{64}, model\.json says [0-9a-f]{64}: file changed",
        "truncated-rehashed": r"onnxruntime cannot load model\.onnx: .+",
        "badgolden": r"golden self-check failed: max \|logit - reference\| = 0\.5 > golden_atol [0-9.e-]+ over \d+ "
                     r"samples",
        "badjson": r"cannot read model\.json: .+",
    }
    server = ServerProcess(repo)
    try:
        for name, reason in expected.items():
            lines = server.entries(lambda e, n=name: e.get("level") == "error"
                                   and str(e.get("msg", "")).startswith(f"model {n} version 1 refused: "))
            assert len(lines) == 1, (name, server.entries()[-10:])
            assert re.fullmatch(f"model {re.escape(name)} version 1 refused: {reason}", lines[0]["msg"]), lines[0]
            assert (lines[0]["model"], lines[0]["version"]) == (name, 1)
            info = server.classifier.GetModel(ic_pb2.GetModelRequest(name=name), timeout=10)
            assert info.state == ic_pb2.ModelInfo.NOT_SERVING
            assert re.fullmatch(reason, info.reason), info.reason
            assert server.status(name) == NOT_SERVING
            code, details, _ = call(lambda n=name: server.classifier.Classify(
                classify_request(seed_images()["seed0.png"], model=n), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert details.startswith(f"model {name!r} is not serving: ")
        assert server.status() == SERVING
        assert server.status("digits") == SERVING
        assert server.classifier.Classify(classify_request(seed_images()["seed0.png"]), timeout=10).results
    finally:
        assert server.stop() == 0


def test_models_and_versions_added_while_running(repository: Repo, tmp_path: Path, figures: dict[str, object]) -> None:
    repo = tmp_path / "repository"
    add_version(repo, repository.path / "digits" / "1", "digits", 1)
    server = ServerProcess(repo, "--poll-s", "0.2")
    traffic = Traffic(server)
    try:
        def get(name: str = "digits") -> ic_pb2.ModelInfo:
            return server.classifier.GetModel(ic_pb2.GetModelRequest(name=name), timeout=10)

        # A new model is picked up without a restart.
        added = time.perf_counter()
        add_version(repo, repository.path / "rgb" / "1", "rgb", 1)
        wait_until(lambda: call(lambda: server.status("rgb"))[2] == SERVING, 15, "rgb SERVING")
        new_model_s = time.perf_counter() - added
        assert server.classifier.Classify(classify_request(seed_images()["seed1.png"], model="rgb"), timeout=10)
        server.wait_log(lambda e: e.get("msg") == "model rgb appeared in the repository (versions [1])", 5)

        # A broken new version never replaces the working one; the reason is logged and shown.
        v2 = add_version(repo, repository.path / "digits" / "1", "digits", 2, tamper_golden)
        server.wait_log(lambda e: str(e.get("msg", "")).startswith(
            "model digits version 2 refused: golden self-check failed"), 15)
        kept = server.wait_log(lambda e: str(e.get("msg", "")).startswith("model digits serves version 1; "), 5)
        assert kept["level"] == "error"
        info = get()
        assert (info.state, info.version) == (ic_pb2.ModelInfo.SERVING, 1)
        assert info.reason.startswith("version 2 refused: golden self-check failed: max |logit - reference| = 0.5")
        assert list(info.available_versions) == [1, 2]
        listed = {m.name: m for m in server.classifier.ListModels(ic_pb2.ListModelsRequest(), timeout=10).models}
        assert listed["digits"].reason == info.reason
        # An unchanged refused version is not retried: after two more rescans there is still one refusal line. Each
        # rescan is made visible by a marker version it refuses (a rescan looks at digits before marker).
        for version in (1, 2):
            add_version(repo, repository.path / "digits" / "1", "marker", version, wrong_sha)
            server.wait_log(lambda e, v=version: e.get("msg", "").startswith(f"model marker version {v} refused"), 15)
        assert len(server.entries(lambda e: str(e.get("msg", "")).startswith("model digits version 2 refused"))) == 1

        # Repaired in place, it is retried and replaces version 1.
        fixed = time.perf_counter()
        shutil.copy(repository.path / "digits" / "1" / "golden.npz", v2 / "golden.npz.tmp")
        (v2 / "golden.npz.tmp").replace(v2 / "golden.npz")
        server.wait_log(lambda e: e.get("msg") == "model digits: version 2 replaces version 1", 15)
        swap_s = time.perf_counter() - fixed
        info = get()
        assert (info.state, info.version, info.reason) == (ic_pb2.ModelInfo.SERVING, 2, "")
        assert server.classifier.Classify(classify_request(seed_images()["seed0.png"]), timeout=10).version == 2

        # A truncated version 3 is refused too; version 2 keeps serving.
        add_version(repo, repository.path / "digits" / "1", "digits", 3, truncate_onnx)
        server.wait_log(lambda e: str(e.get("msg", "")).startswith("model digits version 3 refused: model.onnx "
                                                                   "sha256 is "), 15)
        wait_until(lambda: get().reason.startswith("version 3 refused: model.onnx sha256 is "), 5, "reason")
        assert get().version == 2
        traffic.stop()
        codes = {code for code, _ in traffic.results}
        versions = [v for _, v in traffic.results]
        assert codes == {grpc.StatusCode.OK}, [r for r in traffic.results if r[0] != grpc.StatusCode.OK][:3]
        assert versions == sorted(versions)
        assert {1, 2} <= set(versions)
        figures["hot reload (--poll-s 0.2)"] = (
            f"new model SERVING {new_model_s:.2f} s after it appeared; repaired version 2 served {swap_s:.2f} s after "
            f"the fix; broken versions 2 and 3 never served; {len(versions)} requests during the changes, all OK")
    finally:
        traffic.stop()
        assert server.stop() == 0


def test_sighup_rescans_when_polling_is_off(repository: Repo, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_version(repo, repository.path / "digits" / "1", "digits", 1)
    server = ServerProcess(repo)  # --poll-s 0 (the default): only SIGHUP rescans
    try:
        add_version(repo, repository.path / "digits" / "1", "digits", 2)
        time.sleep(0.8)  # the subject: nothing happens on its own; a span of time is the only way to show that
        assert server.classifier.GetModel(ic_pb2.GetModelRequest(name="digits"), timeout=10).version == 1
        server.signal(signal.SIGHUP)
        server.wait_log(lambda e: e.get("msg") == "model digits: version 2 replaces version 1", 15)
        assert server.classifier.Classify(classify_request(seed_images()["seed0.png"]), timeout=10).version == 2
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("models", "state", "version", "reason"), [
    ((), "SERVING", 1, "version 2 refused: golden self-check failed"),
    (("digits:2",), "NOT_SERVING", 2, "golden self-check failed"),
], ids=["latest", "pinned"])
def test_a_broken_newest_version_at_start_serves_the_previous_one(
        repository: Repo, tmp_path: Path, make_server: Callable[..., ServerThread], models: tuple[str, ...],
        state: str, version: int, reason: str) -> None:
    """After a restart too, a broken new version never replaces a working one; a pinned version never falls back."""
    repo = tmp_path / "repository"
    add_version(repo, repository.path / "digits" / "1", "digits", 1)
    add_version(repo, repository.path / "digits" / "1", "digits", 2, tamper_golden)
    model = make_server(base_config(repo, models=models)).model("digits")
    assert (model.state.value, model.version) == (state, version)
    assert model.reason.startswith(reason)
