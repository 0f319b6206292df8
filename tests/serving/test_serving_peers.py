"""The client's address: the connection's peer, or through trusted proxies the address X-Forwarded-For names.

The rules in process (serving.runtime.peers, the gRPC peer strings of serving.grpc.clients); then both front ends of
a real server on loopback, where a forwarding header counts only when the connection comes from a trusted proxy.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.config import ServerConfig
from serving.grpc.clients import peer_host
from serving.runtime.peers import Peers, parse_networks
from tests.support.hostile import seed_images
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config, classify_request, wait_until

PROXY = "10.0.0.0/8"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.1.2.3", "203.0.113.7", "203.0.113.7"),  # a trusted proxy forwards for a client
        ("10.1.2.3", "203.0.113.7, 10.9.9.9", "203.0.113.7"),  # through two trusted proxies
        ("10.1.2.3", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # what the client wrote itself is not believed
        ("10.1.2.3", "203.0.113.7,10.9.9.9 , 10.8.8.8", "203.0.113.7"),  # spacing as proxies write it
        ("10.1.2.3", "10.9.9.9, 10.8.8.8", "10.9.9.9"),  # all trusted: the left-most
        ("10.1.2.3", "203.0.113.7, not-an-address", "10.1.2.3"),  # garbage stops at the proxy that wrote it
        ("10.1.2.3", "2001:db8::1", "2001:db8::1"),
        ("10.1.2.3", "[2001:db8::1]", "2001:db8::1"),
        ("10.1.2.3", "::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped: one spelling per client
        ("10.1.2.3", "", "10.1.2.3"),  # no header: the proxy itself
        ("10.1.2.3", None, "10.1.2.3"),
        ("198.51.100.4", "203.0.113.7", "198.51.100.4"),  # an untrusted peer's header is ignored
        ("::ffff:198.51.100.4", "203.0.113.7", "198.51.100.4"),
        ("::ffff:10.1.2.3", "203.0.113.7", "203.0.113.7"),  # a trusted proxy reached over IPv6
        ("/run/serving.sock", "203.0.113.7", "/run/serving.sock"),  # not an IP peer: never a proxy
    ],
)
def test_the_client_is_the_right_most_untrusted_address(peer: str, forwarded: str | None, client: str) -> None:
    assert Peers([PROXY]).client(peer, forwarded) == client


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    peers = Peers()
    assert peers.client("127.0.0.1", "203.0.113.7") == "127.0.0.1"
    assert peers.client("::ffff:127.0.0.1", "203.0.113.7") == "127.0.0.1"
    assert peers.client("::1") == "::1"


def test_trusted_proxies_are_networks_or_single_addresses() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/8", " 192.168.1.7 ", "fd00::/8"])] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "fd00::/8",
    ]
    with pytest.raises(ValueError, match=r"--trusted-proxies: '10\.0\.0\.1/8' is not an address or CIDR network"):
        parse_networks(["10.0.0.1/8"])
    with pytest.raises(ValueError, match=r"--trusted-proxies: 'haproxy' is not an address or CIDR network"):
        ServerConfig(repository=Path("."), trusted_proxies=("haproxy",))


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B::ffff:127.0.0.1%5D:54321", "::ffff:127.0.0.1"),
        ("unix:/run/serving.sock", "unix:/run/serving.sock"),
    ],
)
def test_grpc_peer_strings(peer: str, host: str) -> None:
    assert peer_host(peer) == host


# ---- on a real server ------------------------------------------------------------------------------------------


@contextmanager
def holder(server: ServerThread) -> Iterator[Callable[[], str]]:
    """While the block runs the model's compute is held, so an admitted request stays in progress; the yielded
    function waits for one and returns the identity it is held under."""
    model = server.model("digits")
    with server.hold_compute("digits"):

        def held() -> str:
            wait_until(lambda: len(model.holders) == 1, 10, "a request in progress")
            return next(iter(model.holders))

        yield held


def _grpc_identity(server: ServerThread, forwarded: str) -> str:
    stub = ic_grpc.ImageClassifierStub(grpc.insecure_channel(server.address))
    with holder(server) as held:
        future = stub.Classify.future(
            classify_request(seed_images()["seed0.png"]), timeout=30, metadata=(("x-forwarded-for", forwarded),)
        )
        identity = held()
    assert future.result().results
    return identity


def _http_identity(server: ServerThread, forwarded: str, source: str) -> str:
    port = server.server.http_port
    answer: list[int] = []

    def send() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        connection.request(
            "POST",
            "/v1/models/digits/classify",
            body=seed_images()["seed0.png"],
            headers={"X-Forwarded-For": forwarded},
        )
        answer.append(connection.getresponse().status)
        connection.close()

    with holder(server) as held:
        thread = threading.Thread(target=send)
        thread.start()
        identity = held()
    thread.join(30)
    assert answer == [200]
    return identity


def test_a_forwarding_header_counts_only_from_a_trusted_proxy(
    repository: Repo, make_server: Callable[..., ServerThread]
) -> None:
    """127.0.0.2 is the trusted proxy; the same header from 127.0.0.3 (HTTP) or 127.0.0.1 (gRPC) names nobody."""
    server = make_server(base_config(repository.path, models=("digits",), trusted_proxies=("127.0.0.2",)))
    assert _http_identity(server, "203.0.113.7", source="127.0.0.2") == "203.0.113.7"
    assert _http_identity(server, "6.6.6.6, 203.0.113.7", source="127.0.0.2") == "203.0.113.7"
    assert _http_identity(server, "203.0.113.7", source="127.0.0.3") == "127.0.0.3"
    assert _grpc_identity(server, "203.0.113.7") == "127.0.0.1"


def test_grpc_metadata_from_a_trusted_proxy_names_the_client(
    repository: Repo, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(base_config(repository.path, models=("digits",), trusted_proxies=("127.0.0.1/32",)))
    assert _grpc_identity(server, "203.0.113.7") == "203.0.113.7"
    assert _grpc_identity(server, "203.0.113.7, 127.0.0.1") == "203.0.113.7"
