"""TLS and mutual TLS, with certificates made by the openssl CLI for this test (a throwaway CA)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from serving_fixtures import Repo, ServerThread, base_config

from serving.grpc.client import Client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(cwd: Path, name: str, extensions: str) -> None:
    openssl(cwd, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    (cwd / f"{name}.ext").write_text(extensions)
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    openssl(d, "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca", "-days", "2")
    issue(d, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(d, "client", "extendedKeyUsage=clientAuth\n")
    return d


def test_tls(make_server: Callable[..., ServerThread], repo: Repo, certs: Path, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(repo.path, models=("digits",), tls_cert=certs / "server.crt",
                                     tls_key=certs / "server.key"))
    with Client(f"localhost:{server.port}", "digits", tls_ca=certs / "ca.crt") as client:
        assert client.classify(image_files["img0.png"], top_k=1)[0][0].label.startswith("digit_")
    with Client(f"localhost:{server.port}", "digits", timeout=3) as plaintext, pytest.raises(grpc.RpcError) as e:
        plaintext.health()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(make_server: Callable[..., ServerThread], repo: Repo, certs: Path) -> None:
    server = make_server(base_config(repo.path, models=("digits",), tls_cert=certs / "server.crt",
                                     tls_key=certs / "server.key", tls_client_ca=certs / "ca.crt"))
    target = f"localhost:{server.port}"
    with Client(target, tls_ca=certs / "ca.crt", tls_cert=certs / "client.crt", tls_key=certs / "client.key") as c:
        assert c.health() == "SERVING"
    with Client(target, tls_ca=certs / "ca.crt", timeout=3) as anonymous, pytest.raises(grpc.RpcError) as e:
        anonymous.health()  # no client certificate: the handshake fails
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
