"""Token auth on both transports: refused without a valid token, health open, the token file reread on SIGHUP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.errors import Unauthenticated
from serving.runtime.auth import Tokens, derived_identity
from tests.support.paths import ROOT
from tests.support.repositories import Repo
from tests.support.servers import SERVING, ServerProcess, call, classify_request, wait_until


def test_tokens_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ops team\nalpha-123\n\n  beta-456  \n")
    tokens = Tokens(path)
    assert len(tokens) == 2
    assert tokens.allows("Bearer alpha-123")
    assert tokens.allows("bearer beta-456")
    for header in (None, "", "alpha-123", "Bearer", "Bearer ", "Basic alpha-123", "Bearer alpha-12", "Bearer # ops"):
        assert not tokens.allows(header), header
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        Tokens(path)
    tokens.reload()  # an emptied file keeps the tokens read before: no lock-out by a half-written file
    assert tokens.allows("Bearer alpha-123")
    with pytest.raises(ValueError, match="cannot read the token file"):
        Tokens(tmp_path / "missing")


def test_each_token_names_its_client(tmp_path: Path) -> None:
    """``TOKEN NAME`` gives the client's identity; tokens may share one (rotation); a bare token gets a stable
    identity derived from its hash, never the token itself."""
    path = tmp_path / "tokens"
    path.write_text("alpha-123 alice\nalpha-new alice  # rotating\n# a comment\nbeta-456   bob@team.example\n"
                    "gamma-789 #no name\n")
    tokens = Tokens(path)
    assert (len(tokens), tokens.clients) == (4, 3)
    assert tokens.check("Bearer alpha-123") == tokens.check("Bearer alpha-new") == "alice"
    assert tokens.check("Bearer beta-456") == "bob@team.example"
    bare = tokens.check("Bearer gamma-789")
    assert bare == derived_identity("gamma-789")
    assert re.fullmatch(r"token:[0-9a-f]{12}", bare)
    assert "gamma" not in bare
    assert bare != derived_identity("gamma-780")
    assert tokens.identify("Bearer alice") is None  # a name is not a token
    with pytest.raises(Unauthenticated, match="missing or invalid token"):
        tokens.check("Bearer alice")
    path.write_text("gamma-789\n")
    tokens.reload()
    assert tokens.check("Bearer gamma-789") == bare  # the same after a reload (and a restart)


@pytest.mark.parametrize(("text", "message"), [
    ("alpha-123 alice extra\n", "line 1: 3 words; write TOKEN or TOKEN NAME"),
    ("# x\nalpha-123 token:0123456789ab\n", "line 2: a client name is 1-64 letters"),
    ("alpha-123 -alice\n", "line 1: a client name is 1-64 letters"),
    ("alpha-123 " + "a" * 65 + "\n", "line 1: a client name is 1-64 letters"),
    ("alpha-123 alice\n\nalpha-123 bob\n", "line 3: the same token as line 1"),
])
def test_a_malformed_line_is_named_by_its_number_never_its_token(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^the token file {re.escape(str(path))}, {message}") as refused:
        Tokens(path)
    assert "alpha" not in str(refused.value)


@pytest.fixture
def guarded(repository: Repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\n")
    server = ServerProcess(repository.path, "--models", "digits", "--auth-token-file", str(tokens))
    yield server, tokens
    server.stop()


def test_both_transports_want_the_token(guarded, image_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    server, _ = guarded
    png = image_files["img0.png"].read_bytes()
    good, bad = (("authorization", "Bearer first-token"),), (("authorization", "Bearer first-tokem"),)

    def classify(metadata):  # type: ignore[no-untyped-def]
        return call(lambda: server.classifier.Classify(classify_request(png), timeout=10, metadata=metadata))

    for metadata in (None, bad):
        code, details, _ = classify(metadata)
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED,
                                   "missing or invalid token: send the header 'authorization: Bearer <token>'")
    assert classify(good)[0] == grpc.StatusCode.OK
    code, _, _ = call(lambda: server.classifier.ListModels(ic_pb2.ListModelsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Health stays open: probes and load balancers carry no token.
    assert server.status() == SERVING
    assert server.inference.ServerReady(kserve_pb2.ServerReadyRequest(), timeout=10).ready
    assert server.inference.ModelReady(kserve_pb2.ModelReadyRequest(name="digits"), timeout=10).ready

    url = server.http_url
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/digits/ready").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-token"}):
        answer = httpx.post(f"{url}/v1/models/digits/classify", content=png, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json() == {"error": "missing or invalid token: send the header 'authorization: Bearer <token>'"}
    assert httpx.get(f"{url}/v2/models/digits").status_code == 401
    answer = httpx.post(f"{url}/v1/models/digits/classify", content=png,
                        headers={"Authorization": "Bearer first-token"})
    assert answer.status_code == 200, answer.text
    # The refusals are counted like any other answer.
    assert server.entries(lambda e: e.get("code") == "UNAUTHENTICATED")


def test_sighup_rereads_the_token_file(guarded, image_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    server, tokens = guarded
    url = f"{server.http_url}/v2/models/digits"
    assert httpx.get(url, headers={"Authorization": "Bearer first-token"}).status_code == 200
    tokens.write_text("second-token\n")
    server.signal(signal.SIGHUP)
    server.wait_log(lambda e: str(e.get("msg", "")).startswith("token file reloaded"), 10)
    assert httpx.get(url, headers={"Authorization": "Bearer first-token"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer second-token"}).status_code == 200
    code, _, _ = call(lambda: server.classifier.GetModel(ic_pb2.GetModelRequest(name="digits"), timeout=10,
                                                         metadata=(("authorization", "Bearer second-token"),)))
    assert code == grpc.StatusCode.OK
    # The CLI reads its token from a file or the environment, never from a flag.
    env = {**os.environ, "SERVING_AUTH_TOKEN": "second-token"}
    done = subprocess.run([sys.executable, "-m", "serving", "classify", "--server", server.address, "--model",
                           "digits", str(image_files["img0.png"])], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = tokens.parent / "rows.csv"
    done = subprocess.run([sys.executable, "-m", "serving", "batch", str(image_files["img0.png"]), "--server",
                           server.address, "--model", "digits", "--output", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "img0.png" in out.read_text()
    env.pop("SERVING_AUTH_TOKEN")
    done = subprocess.run([sys.executable, "-m", "serving", "classify", "--server", server.address, "--model",
                           "digits", str(image_files["img0.png"])], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "UNAUTHENTICATED" in done.stderr
    wait_until(server.alive, 1, "the server still running")
    assert server.health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=5).status == SERVING


def test_a_missing_token_file_stops_the_start(repository: Repo, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "serving", "serve", "--repository", str(repository.path),
                           "--port", "0", "--http-port", "0", "--metrics-port", "-1",
                           "--auth-token-file", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: cannot read the token file {tmp_path / 'nope'}: " \
                                                   "No such file or directory"
