"""The in-flight budget and the per-address connection count of the gRPC port, pinned where they live: the budget's
holds, its default from the machine's memory, the gRPC parser that takes a message's bytes, the stream handler that
gives them back, the peer bookkeeping, and grpc's log line for a client gone under its answer; no socket, no server
(tests/reliability/test_reliability_budget.py attacks a real one)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.config import ServerConfig
from serving.errors import Overloaded
from serving.grpc import servicers
from serving.grpc.gone import GRPC_LOGGER, ClientGone
from serving.grpc.handlers import Held, RefusedRequest, UndecodableRequest, _parser
from serving.grpc.peers import PeerCalls, client_of
from serving.grpc.servicers import _concurrent_answers
from serving.runtime.budget import MAX_DEFAULT_BYTES, MIB, InflightBudget, default_limit_bytes, memory_bytes

REFUSED_16 = ("server busy: this request's 16.0 MiB would take the requests in flight past the 40 MiB limit "
              "(--max-inflight-mb); retry later")


def _gauge() -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    return registry, Gauge("serving_inflight_request_bytes", "held", ("transport",), registry=registry)


def test_holds_add_up_to_the_limit_and_the_next_is_refused_with_its_size() -> None:
    registry, gauge = _gauge()
    budget = InflightBudget(40 * MIB)
    budget.publish(gauge)
    first, second = budget.take(16 * MIB, "http"), budget.take(16 * MIB, "grpc")
    assert budget.held == 32 * MIB
    with pytest.raises(Overloaded) as refused:
        budget.take(16 * MIB, "http")
    assert str(refused.value) == REFUSED_16
    assert budget.held == 32 * MIB  # a refusal holds nothing
    small = budget.take(8 * MIB, "http")  # what still fits, fits
    assert registry.get_sample_value("serving_inflight_request_bytes", {"transport": "http"}) == 24 * MIB
    assert registry.get_sample_value("serving_inflight_request_bytes", {"transport": "grpc"}) == 16 * MIB
    for hold in (first, second, small, small):  # a second release gives nothing back twice
        hold.release()
    assert budget.held == 0
    assert registry.get_sample_value("serving_inflight_request_bytes", {"transport": "http"}) == 0


def test_a_chunked_body_grows_its_hold_and_is_refused_once_over() -> None:
    budget = InflightBudget(40 * MIB)
    other = budget.take(24 * MIB, "grpc")
    with budget.take(0, "http") as body:
        body.cover(10 * MIB)
        body.cover(5 * MIB)  # less than it holds: no change
        assert budget.held == 34 * MIB
        body.cover(16 * MIB)  # the 6 MiB more fit exactly
        with pytest.raises(Overloaded) as refused:
            body.cover(20 * MIB)
        assert str(refused.value) == REFUSED_16.replace("16.0", "20.0")
        assert (body.size, budget.held) == (16 * MIB, 40 * MIB)
    assert budget.held == 24 * MIB  # the end of the block released it
    with pytest.raises(RuntimeError, match="released"):
        body.cover(1)
    other.release()


def test_a_request_the_size_of_the_whole_budget_fits_an_empty_one() -> None:
    budget = InflightBudget(64 * MIB)
    budget.take(64 * MIB, "http").release()
    with pytest.raises(Overloaded):
        budget.take(64 * MIB + 1, "http")


def test_the_default_is_a_quarter_of_the_memory_within_its_bounds() -> None:
    assert default_limit_bytes(64 * MIB, memory=8 << 30) == 2 << 30
    assert default_limit_bytes(64 * MIB, memory=(8 << 30) + 3) == 2 << 30  # whole MiB
    assert default_limit_bytes(64 * MIB, memory=1 << 40) == MAX_DEFAULT_BYTES
    assert default_limit_bytes(64 * MIB, memory=128 * MIB) == 64 * MIB  # one largest request always fits
    assert default_limit_bytes(64 * MIB) == max(64 * MIB, min(memory_bytes() // 4 // MIB * MIB, MAX_DEFAULT_BYTES))


def test_memory_is_the_cgroup_limit_when_it_is_lower(tmp_path: Path) -> None:
    physical = memory_bytes(())
    limited, unlimited, v1_unlimited = tmp_path / "limited", tmp_path / "max", tmp_path / "v1"
    limited.write_text("536870912\n")
    unlimited.write_text("max\n")
    v1_unlimited.write_text("9223372036854771712\n")  # cgroup v1's way of saying "no limit"
    assert memory_bytes((tmp_path / "absent", limited)) == 512 * MIB
    assert memory_bytes((unlimited,)) == physical
    assert memory_bytes((v1_unlimited,)) == physical


def test_the_config_refuses_a_budget_smaller_than_one_request(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--max-inflight-mb 32 is less than --max-message-mb 64"):
        ServerConfig(repository=tmp_path, max_inflight_mb=32)
    with pytest.raises(ValueError, match="--max-connections-per-client must be >= 0"):
        ServerConfig(repository=tmp_path, max_connections_per_client=-1)
    assert InflightBudget.for_config(ServerConfig(repository=tmp_path, max_inflight_mb=100)).limit == 100 * MIB
    assert InflightBudget.for_config(ServerConfig(repository=tmp_path)).limit == default_limit_bytes(64 * MIB)


# ---- gRPC: the parser takes a message's bytes, the stream gives them back ------------------------------------------

def test_the_parser_holds_a_message_and_refuses_one_that_does_not_fit_without_parsing_it() -> None:
    budget = InflightBudget(40 * MIB)
    parse = _parser(ic_pb2.ClassifyRequest, budget)
    data = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=bytes(24 * MIB))]).SerializeToString()
    held = parse(data)
    assert isinstance(held, Held)
    assert held.message.model == "digits"
    assert (held.hold.size, budget.held) == (len(data), len(data))
    refused = parse(data)
    assert isinstance(refused, RefusedRequest)
    assert str(refused.error()) == ("server busy: this request's 24.0 MiB would take the requests in flight past the "
                                    "40 MiB limit (--max-inflight-mb); retry later")
    undecodable = parse(b"\xff\xff\xff")  # held too, until its call is over: grpc keeps its bytes until then
    assert isinstance(undecodable, Held)
    assert isinstance(undecodable.message, UndecodableRequest)
    assert budget.held == len(data) + 3
    held.hold.release()
    undecodable.hold.release()
    assert budget.held == 0


def test_a_refused_message_keeps_nothing_of_its_bytes() -> None:
    """The refusal's exception, kept, would hold the parser's frame (its traceback) and with it the message's bytes,
    in a cycle only the garbage collector breaks: a client refused again and again piled them up (25 MB a round of
    two refused 12 MiB calls, measured on a server)."""
    parse = _parser(ic_pb2.ClassifyRequest, InflightBudget(MIB))
    data = bytes(2 * MIB)
    before = sys.getrefcount(data)
    refused = parse(data)
    assert isinstance(refused, RefusedRequest)
    assert sys.getrefcount(data) == before
    assert refused.error().__traceback__ is None


def _stream(budget: InflightBudget, n: int) -> AsyncIterator:
    """A stream of ``n`` messages, each parsed (and held) as it is read, as grpc's request iterator does."""
    parse = _parser(ic_pb2.ClassifyRequest, budget)

    async def requests() -> AsyncIterator:
        for i in range(n):
            yield parse(ic_pb2.ClassifyRequest(model=f"m{i}").SerializeToString())

    return requests()


def test_a_stream_gives_each_message_back_when_its_answer_is_done() -> None:
    budget = InflightBudget(MIB)
    requests = _stream(budget, 5)
    held_while_answering: list[int] = []

    async def answer(seq: int, request: ic_pb2.ClassifyRequest) -> str:
        held_while_answering.append(budget.held)
        await asyncio.sleep(0)
        return request.model

    async def run() -> list[str]:
        return [model async for model in _concurrent_answers(requests, answer)]

    assert sorted(asyncio.run(run())) == [f"m{i}" for i in range(5)]
    assert budget.held == 0
    assert max(held_while_answering) > 0  # the messages were held while answered


@pytest.mark.parametrize("window", [1, servicers.STREAM_WINDOW])
def test_a_stream_that_ends_early_gives_back_what_it_read_but_never_answered(monkeypatch: pytest.MonkeyPatch,
                                                                            window: int) -> None:
    """Window 1: the next message is read while the first is answered, and never answered (the stream ends first);
    the full window: the messages after the first are being answered when the stream ends (cancelled)."""
    monkeypatch.setattr(servicers, "STREAM_WINDOW", window)
    budget = InflightBudget(MIB)
    requests = _stream(budget, 5)
    never = asyncio.Event()

    async def answer(seq: int, request: ic_pb2.ClassifyRequest) -> str:
        if seq:
            await never.wait()  # still answering when the stream ends: cancelled
        await asyncio.sleep(0.01)  # meanwhile the next message is read
        return request.model

    async def run() -> None:
        answers = _concurrent_answers(requests, answer)
        assert await anext(answers) == "m0"
        await answers.aclose()  # the client went away

    asyncio.run(run())
    assert budget.held == 0


# ---- gRPC: connections per client address ---------------------------------------------------------------------------

@pytest.mark.parametrize(("peer", "client"), [
    ("ipv4:127.0.0.2:51000", ("127.0.0.2", "51000")),
    ("ipv6:[::1]:51000", ("::1", "51000")),
    ("ipv6:%5B::ffff:127.0.0.3%5D:51000", ("::ffff:127.0.0.3", "51000")),
    ("unix:/tmp/socket", ("unix:/tmp/socket", "")),
])
def test_a_peer_names_its_client_address_and_connection(peer: str, client: tuple[str, str]) -> None:
    assert client_of(peer) == client


def test_an_address_at_its_cap_keeps_its_connections_and_gets_no_more() -> None:
    peers = PeerCalls(2)
    a = peers.enter("ipv4:127.0.0.2:1000")
    b = peers.enter("ipv4:127.0.0.2:1001")
    again = peers.enter("ipv4:127.0.0.2:1000")  # another call on a connection it has: served
    with pytest.raises(Overloaded) as refused:
        peers.enter("ipv4:127.0.0.2:1002")
    assert str(refused.value) == ("too many connections from 127.0.0.2: 2 of its connections have calls in progress, "
                                  "the most one client address may use (--max-connections-per-client); send this call "
                                  "on one of them, or retry later")
    other = peers.enter("ipv4:127.0.0.3:1000")  # each address its own
    assert (peers.connections("127.0.0.2"), peers.connections("127.0.0.3")) == (2, 1)
    peers.leave(a)
    assert peers.connections("127.0.0.2") == 2  # connection 1000 still has a call
    peers.leave(again)
    c = peers.enter("ipv4:127.0.0.2:1002")  # now there is room
    for key in (b, c, other):
        peers.leave(key)
    assert peers.connections("127.0.0.2") == peers.connections("127.0.0.3") == 0


# ---- gRPC: a client gone under its answer is not an error --------------------------------------------------------

def _grpc_record(message: str) -> logging.LogRecord:
    try:
        raise RuntimeError("Failed \"execute_batch\": (<grpc._cython.cygrpc.SendMessageOperation object>,)")
    except RuntimeError:
        exc_info = sys.exc_info()
    return logging.LogRecord(GRPC_LOGGER, logging.ERROR, __file__, 1, message, None, exc_info)


def test_grpcs_send_failure_under_a_gone_client_is_one_info_line_a_second() -> None:
    gone = ClientGone()
    record = _grpc_record("ExecuteBatchError raised in core by servicer method "
                          "[/imageclassifier.v1.ImageClassifier/Classify]")
    assert gone.filter(record)
    assert (record.levelname, record.exc_info, record.getMessage()) == (
        "INFO", None, "/imageclassifier.v1.ImageClassifier/Classify CANCELLED: the client's connection ended before "
        "its answer was sent")
    assert not gone.filter(_grpc_record("ExecuteBatchError raised in core by servicer method [/x/Y]"))  # same second
    other = _grpc_record("Unexpected [ValueError] raised by servicer method [/x/Y]")
    assert gone.filter(other)  # anything else grpc reports keeps its level and traceback
    assert (other.levelname, other.exc_info is not None) == ("ERROR", True)
