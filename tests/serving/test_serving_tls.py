"""TLS and mutual TLS, with certificates made by the openssl CLI for this test (a throwaway CA)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from serving.client import Client
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config
from tests.support.tls import CLIENT_EXT, issue, make_ca, make_certs, needs_openssl

pytestmark = needs_openssl


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca with server and client certificates, and rogue-ca (same subject layout, another key) with an intruder."""
    d = make_certs(tmp_path_factory.mktemp("certs"))
    make_ca(d, "rogue-ca")  # a certificate it signs proves nothing to us
    issue(d, "rogue-ca", "intruder", CLIENT_EXT)
    return d


def test_tls(make_server: Callable[..., ServerThread], repository: Repo, certs: Path,
             image_files: dict[str, Path]) -> None:
    server = make_server(base_config(repository.path, models=("digits",), tls_cert=certs / "server.crt",
                                     tls_key=certs / "server.key"))
    with Client(f"localhost:{server.port}", "digits", tls_ca=certs / "ca.crt") as client:
        assert client.classify(image_files["img0.png"], top_k=1)[0][0].label.startswith("digit_")
    with Client(f"localhost:{server.port}", "digits", timeout=3) as plaintext, pytest.raises(grpc.RpcError) as e:
        plaintext.health()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_anonymous_and_foreign_certificates(make_server: Callable[..., ServerThread],
                                                                repository: Repo, certs: Path) -> None:
    server = make_server(base_config(repository.path, models=("digits",), tls_cert=certs / "server.crt",
                                     tls_key=certs / "server.key", tls_client_ca=certs / "ca.crt"))
    target = f"localhost:{server.port}"
    with Client(target, tls_ca=certs / "ca.crt", tls_cert=certs / "client.crt", tls_key=certs / "client.key") as c:
        assert c.health() == "SERVING"
    refused = {
        "no client certificate": dict(tls_ca=certs / "ca.crt"),
        "a client certificate from another CA": dict(tls_ca=certs / "ca.crt", tls_cert=certs / "intruder.crt",
                                                     tls_key=certs / "intruder.key"),
        # The client checks the server too: a server certificate from a CA it does not trust is refused.
        "a server the client does not trust": dict(tls_ca=certs / "rogue-ca.crt", tls_cert=certs / "client.crt",
                                                   tls_key=certs / "client.key"),
    }
    for case, credentials in refused.items():
        with Client(target, timeout=3, **credentials) as client, pytest.raises(grpc.RpcError) as e:
            client.health()  # the handshake fails
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, case
