"""``python -m serving …`` as a user runs it: a real server process, the health and classify commands, SIGTERM
under load, settings from environment variables."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.runtime import loader
from tests.support.paths import ROOT
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess


@pytest.fixture
def serve_process(serving_repo: Repo) -> Iterator[ServerProcess]:
    """``serve`` configured the way containers do it: settings in SERVING_* variables, only a few flags."""
    env = {"SERVING_MODELS": "digits,rgb", "SERVING_MAX_QUEUE_DELAY_MS": "2", "SERVING_THREADS": "1"}
    process = ServerProcess(serving_repo.path, "--grace-s", "10", env=env, settings=("--decode-workers", "1"),
                            wait_ready=False)
    yield process
    process.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_serve_health_classify_and_sigterm_under_load(serve_process: ServerProcess, serving_repo: Repo,
                                                      image_files: dict[str, Path]) -> None:
    address = serve_process.address
    serve_process.wait_serving()
    # health: exit 0 iff SERVING (Docker HEALTHCHECK)
    ok = run_cli("health", "--server", address)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    missing = run_cli("health", "--server", address, "--model", "tampered")  # not loaded: --models digits,rgb
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    # classify: one JSON line per image, equal to the in-process predictor
    paths = [image_files["img0.png"], image_files["img2.jpg"]]
    out = run_cli("classify", "--server", address, "--model", "digits", "--top-k", "2", "--json", *map(str, paths))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    expected = loader.load(serving_repo.path, "digits", threads=1).predictor.classify(paths, top_k=2)
    assert [line["image"] for line in lines] == list(map(str, paths))
    for line, preds in zip(lines, expected, strict=True):
        assert [p["index"] for p in line["predictions"]] == [p.index for p in preds]
        assert [p["probability"] for p in line["predictions"]] == pytest.approx([p.probability for p in preds],
                                                                                abs=1e-6)
    text = run_cli("classify", "--server", address, "--model", "nope", str(paths[0]))
    assert text.returncode == 1
    assert "error: NOT_FOUND: model 'nope' not found" in text.stderr

    # SIGTERM while 6 clients keep sending: every request the server accepted is answered OK.
    stub = ic_grpc.ImageClassifierStub(grpc.insecure_channel(address))
    request = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=paths[0].read_bytes())])
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()
    busy = threading.Event()  # set by the clients once 50 answers came back: the server is under load

    def client() -> None:
        for _ in range(2000):
            try:
                stub.Classify(request, timeout=15)
                result = ("OK", "")
            except grpc.RpcError as e:
                result = (e.code().name, e.details() or "")
            with lock:
                outcomes.append(result)
                if sum(o[0] == "OK" for o in outcomes) >= 50:
                    busy.set()
            if result[0] != "OK":
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    assert busy.wait(60), f"only {len(outcomes)} answers under load"
    signalled = time.perf_counter()
    serve_process.signal(signal.SIGTERM)
    # A hang guard, not a speed target: draining takes milliseconds; exit 0 within the grace period (--grace-s 10).
    assert serve_process.proc.wait(20) == 0
    drain_s = time.perf_counter() - signalled
    assert drain_s < 10.0
    for t in threads:
        t.join(30)
    assert sum(code == "OK" for code, _ in outcomes) >= 50
    failures = [o for o in outcomes if o[0] != "OK"]
    print(f"SIGTERM under load: exit 0 after {drain_s:.2f} s (grace 10 s); {len(outcomes) - len(failures)} OK, "
          f"refused {sorted((code, outcomes.count((code, d))) for code, d in set(failures))}")
    # Refused before acceptance: UNAVAILABLE (GOAWAY / connection closed), or CANCELLED for calls that reached
    # gRPC core but no handler yet — core's known shutdown behaviour (grpc/grpc#41785), never our handlers.
    assert all(code == "UNAVAILABLE" or (code, details) == ("CANCELLED", "CANCELLED") for code, details in failures)
    assert not [d for _, d in failures if "shutting down" in d]
    assert serve_process.stop() == 0
    log = serve_process.entries()  # the whole log: stop() read it to the end
    # Every call that reached a handler finished OK: the handler logs any other outcome (CANCELLED included).
    handled = [e for e in log if e.get("method") == "Classify" and e.get("code") not in ("OK", "NOT_FOUND")]
    assert not handled, handled[:3]
    messages = [entry["msg"] for entry in log]
    assert any(m.startswith("shutting down (grace 10.0 s)") for m in messages)
    assert "stopped" in messages
    loaded = next(entry for entry in log if entry["msg"].startswith("models loaded"))
    assert loaded["models"] == {"digits": "SERVING", "rgb": "SERVING"}  # SERVING_MODELS was honoured
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in log)


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = run_cli("serve", "--repository", str(tmp_path / "nothing"), "--port", "0", "--metrics-port", "-1",
                     "--http-port", "-1")
    assert result.returncode == 2
    assert re.search(r"error: model repository .*nothing is not a directory", result.stderr)


def test_serve_refuses_an_unknown_model(repository: Repo) -> None:
    result = run_cli("serve", "--repository", str(repository.path), "--models", "nope", "--port", "0",
                     "--http-port", "-1")
    assert result.returncode == 2
    assert "error: model 'nope' is not in" in result.stderr


def test_serving_imports_neither_torch_nor_fastai() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(torch|torchvision|fastai)\b", re.MULTILINE)
    offenders = [p for p in (ROOT / "serving").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders
    code = ("import sys, serving.server, serving.client, serving.cli, serving.runtime.loader; "
            "print(sorted(m for m in ('torch', 'torchvision', 'fastai') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_models_list_load_unload_over_a_server_in_explicit_mode(serving_repo: Repo) -> None:
    """``serve`` told by SERVING_MODEL_CONTROL to load only --models (SERVING_MODELS), driven by ``models``."""
    server = ServerProcess(serving_repo.path, env={"SERVING_MODEL_CONTROL": "explicit", "SERVING_MODELS": "digits"})
    try:
        address = server.address
        listed = run_cli("models", "list", "--server", address)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == ["NAME      VERSION  STATE        REASON",
                                              "corrupt   -        UNAVAILABLE  not loaded",
                                              "digits    2        READY",
                                              "rgb       -        UNAVAILABLE  not loaded",
                                              "tampered  -        UNAVAILABLE  not loaded"]
        loaded = run_cli("models", "load", "--server", address, "rgb")
        assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, "rgb: loaded, version 1 serves\n", "")
        ready = run_cli("models", "list", "--ready", "--json", "--server", address)
        assert [json.loads(line) for line in ready.stdout.splitlines()] == [
            {"name": "digits", "version": "2", "state": "READY", "reason": ""},
            {"name": "rgb", "version": "1", "state": "READY", "reason": ""}]
        unloaded = run_cli("models", "unload", "--server", address, "rgb")
        assert (unloaded.returncode, unloaded.stdout) == (0, "rgb: unloaded\n")
        # Failures: exit 1 and one line naming the status, as the other client commands.
        failed = run_cli("models", "load", "--server", address, "tampered")
        assert failed.returncode == 1
        assert failed.stderr.startswith("error: UNAVAILABLE: model 'tampered' failed to load: golden self-check "
                                        "failed")
        assert len(failed.stderr.splitlines()) == 1
        missing = run_cli("models", "unload", "--server", address, "nope")
        assert (missing.returncode, missing.stderr) == (
            1, "error: NOT_FOUND: no model 'nope' in the repository or on this server\n")
        assert run_cli("models", "load", "--server", address).returncode == 2  # no NAME: a usage error
    finally:
        server.stop()
