"""Fair share between clients, at the level of its rules: the admission rule, the queue taken in turn, the batcher
and the data plane in this process (no socket). The flood test on real servers is in tests/reliability."""

from __future__ import annotations

import asyncio
import threading
from contextlib import ExitStack
from dataclasses import replace

import numpy as np
import pytest

from serving.config import ServerConfig
from serving.errors import Overloaded
from serving.runtime.auth import ANONYMOUS, client_var
from serving.runtime.batcher import DynamicBatcher
from serving.runtime.dataplane import DataPlane
from serving.runtime.fairshare import FULL, OVER_SHARE, FairQueue, Holdings, kept_images, refusal, share, share_var
from serving.runtime.metrics import Metrics
from serving.runtime.registry import ModelRegistry
from tests.serving.test_serving_dataplane import config_for, run
from tests.support.repositories import Repo

LIMIT = 16
KEPT = kept_images(LIMIT, 0.25)


@pytest.mark.parametrize(
    ("active", "held", "clients", "images", "verdict"),
    [
        (10, 10, 1, 2, None),  # below the line: anyone, as many as fit
        (12, 12, 1, 1, OVER_SHARE),  # a client alone stops at the line: its share is half the limit
        (12, 0, 1, 1, None),  # one that holds nothing is admitted above it
        (12, 0, 1, 4, None),  # … with as many images as fit
        (12, 0, 1, 5, FULL),
        (14, 2, 2, 1, None),  # above the line, within its share (16 // 3 = 5)
        (14, 5, 2, 1, OVER_SHARE),
        (16, 0, 2, 1, FULL),  # nobody past the limit
    ],
)
def test_the_admission_rule(active: int, held: int, clients: int, images: int, verdict: str | None) -> None:
    assert KEPT == 4
    assert refusal(limit=LIMIT, kept=KEPT, active=active, held=held, clients=clients, images=images) == verdict


def test_without_kept_images_it_is_first_come_first_served() -> None:
    assert kept_images(LIMIT, 0.0) == 0
    assert refusal(limit=LIMIT, kept=0, active=15, held=15, clients=1, images=1) is None
    assert refusal(limit=LIMIT, kept=0, active=16, held=16, clients=1, images=1) == FULL


def test_a_share_leaves_room_for_one_more_client() -> None:
    assert [share(288, k) for k in (1, 2, 3, 287, 300)] == [144, 96, 72, 1, 0]
    for clients in range(1, 50):  # every client at its share still leaves a newcomer its own
        assert clients * share(288, clients) + share(288, clients + 1) <= 288


def test_the_queue_takes_one_item_of_each_client_in_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    for client, item in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("a", "a4"), ("c", "c1"), ("c", "c2")]:
        queue.append(client, item)
    assert (len(queue), queue.turn(), queue.head("a"), sorted(queue.heads())) == (7, "a", "a1", ["a1", "b1", "c1"])
    assert queue.turn() == "a"  # looking does not pass the turn
    assert queue.remove("c", "c2")
    assert not queue.remove("c", "c9")
    assert not queue.remove("z", "a1")
    assert [queue.pop(queue.turn()) for _ in range(len(queue))] == ["a1", "b1", "c1", "a2", "a3", "a4"]
    assert len(queue) == 0
    assert list(queue) == []


def test_a_preferred_client_goes_first_and_then_waits_its_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    for client, item in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("c", "c1")]:
        queue.append(client, item)
    assert queue.turn(lambda client: client == "b") == "b"
    assert queue.turn(lambda client: client == "z") == "a"  # none preferred: whoever's turn it is
    assert queue.pop("b") == "b1"
    assert [queue.pop(queue.turn()) for _ in range(len(queue))] == ["a1", "c1", "b2", "a2"]


def test_one_client_is_served_in_order() -> None:
    queue: FairQueue[int] = FairQueue()
    for i in range(5):
        queue.append("", i)
    queue.remove("", 2)
    assert [queue.pop("") for _ in range(4)] == [0, 1, 3, 4]


class Model:
    """Row values (each request is filled with one number), recording which numbers each call held; ``gate`` holds
    the calls until set."""

    def __init__(self, gate: threading.Event) -> None:
        self.calls: list[list[int]] = []
        self.gate, self.entered = gate, threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(5)
        self.calls.append([int(v) for v in x[:, 0, 0, 0]])
        return x.reshape(len(x), -1)[:, :1]


def _batches(client_of: dict[str, str], holdings: Holdings | None = None) -> list[list[int]]:
    """A flood of 12 one-image requests queued behind a held batch, then one request of another client (value
    100): the calls the model gets. ``client_of`` maps "flood" and "light" to the clients they submit as."""
    model = Model(threading.Event())

    async def main() -> None:
        batcher = DynamicBatcher([model], name="m", max_batch=4, holdings=holdings)
        batcher.start()
        x = lambda v: np.full((1, 1, 1, 1), v, np.float32)  # noqa: E731
        held = asyncio.ensure_future(batcher.submit(x(0), client=client_of["flood"]))
        await asyncio.to_thread(model.entered.wait, 5)
        flood = [asyncio.ensure_future(batcher.submit(x(i), client=client_of["flood"])) for i in range(1, 13)]
        await asyncio.sleep(0)
        light = asyncio.ensure_future(batcher.submit(x(100), client=client_of["light"]))
        await asyncio.sleep(0)
        assert batcher.depth == 13
        model.gate.set()
        results = await asyncio.gather(held, *flood, light)
        assert [int(r[0, 0]) for r in results] == [*range(13), 100]  # every caller gets its own answer
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    return model.calls


def test_a_light_clients_request_joins_the_next_batch_not_the_end_of_a_flood() -> None:
    assert _batches({"flood": "flood", "light": "light"}) == [[0], [1, 100, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]


def test_a_client_within_its_share_goes_first_in_a_batch_of_its_own() -> None:
    holdings = Holdings(limit=16)
    holdings.add("flood", 13)
    holdings.add("light", 1)  # its share: 16 // 3 = 5
    assert holdings.within_share("light")
    assert not holdings.within_share("flood")
    assert holdings.within_share("newcomer")
    calls = _batches({"flood": "flood", "light": "light"}, holdings)
    assert calls == [[0], [100], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]


def test_under_one_key_the_batches_are_first_come_first_served() -> None:
    assert _batches({"flood": "", "light": ""}) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [100]]


# ---- admission in the data plane -------------------------------------------------------------------------------


def _config(repository: Repo, **kwargs: object) -> ServerConfig:
    return replace(config_for(repository, max_batch=4, max_queue=12), **kwargs)  # holds 16 images, 4 kept


def _admit_until_refused(plane: DataPlane, held: ExitStack, client: str) -> tuple[int, str]:
    """Requests of one image from ``client``, held, until one is refused: how many were admitted, and why not."""
    token = share_var.set(client)
    try:
        for admitted in range(100):
            try:
                held.enter_context(plane.admit("digits", images=1))
            except Overloaded as e:
                return admitted, str(e)
        raise AssertionError("never refused")
    finally:
        share_var.reset(token)


def test_a_flooding_client_is_refused_near_the_limit_and_the_others_are_not(repository: Repo) -> None:
    async def test(plane: DataPlane) -> None:
        model = plane.registry.models["digits"]
        with ExitStack() as held:
            assert _admit_until_refused(plane, held, "flood") == (
                12,
                (
                    "model 'digits': queue nearly full (12 of 16 images in progress) and this client holds 12, more "
                    "than its share of 8 while 1 client holds images; retry later"
                ),
            )
            light = share_var.set("light")
            held.enter_context(plane.admit("digits"))  # holds nothing: admitted above the line
            held.enter_context(plane.admit("digits", images=2))  # within its share, 16 // 3
            share_var.reset(light)
            assert model.holders == {"flood": 12, "light": 3}
            assert _admit_until_refused(plane, held, "flood")[1].endswith(
                "this client holds 12, more than its share of 5 while 2 clients hold images; retry later"
            )
            assert _admit_until_refused(plane, held, "third") == (
                1,
                "model 'digits': queue full (16 images in progress); retry later",
            )
        assert (model.active, model.holders) == (0, {})

    run(_config(repository), test)


def test_with_fair_share_off_one_client_can_fill_the_model(repository: Repo) -> None:
    async def test(plane: DataPlane) -> None:
        with ExitStack() as held:
            assert _admit_until_refused(plane, held, "flood") == (
                16,
                "model 'digits': queue full (16 images in progress); retry later",
            )

    run(_config(repository, client_share=0.0), test)


# ---- decoding -----------------------------------------------------------------------------------------------------


def _decode_order(repository: Repo, client_share: float) -> list[str]:
    """Six images of "flood" sent to the decode pool (one worker, held on the first image), then one of "light": the
    order the worker decodes them in."""
    order: list[str] = []
    gate = threading.Event()

    def decode(name: object) -> np.ndarray:
        gate.wait(5)
        order.append(str(name))
        return np.zeros(1, np.float32)

    async def test(plane: DataPlane) -> None:
        async def send(client: str, name: str) -> np.ndarray:
            share_var.set(client)  # in this task's own context
            return await plane._decode(decode, name)  # type: ignore[arg-type]

        tasks = [asyncio.ensure_future(send("flood", f"f{i}")) for i in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(send("light", "L")))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    run(_config(repository, decode_workers=1, client_share=client_share), test)
    return order


def test_a_light_clients_image_is_decoded_before_a_floods_backlog(repository: Repo) -> None:
    # two images in the pool at once (one decoding, one waiting per worker), then the clients in turn
    assert _decode_order(repository, 0.25) == ["f0", "f1", "f2", "L", "f3", "f4", "f5"]
    assert _decode_order(repository, 0.0) == ["f0", "f1", "f2", "f3", "f4", "f5", "L"]


def test_admitted_images_are_counted_by_token_identity_never_by_address(repository: Repo) -> None:
    async def test() -> None:
        metrics = Metrics()
        registry = ModelRegistry(_config(repository), metrics)
        await registry.load_all()
        plane = DataPlane(registry)
        value = metrics.registry.get_sample_value
        try:
            with ExitStack() as held:
                for identity, address, images in (("alice", "10.0.0.7", 3), (ANONYMOUS, "10.0.0.8", 2)):
                    tokens = client_var.set(identity), share_var.set(address)
                    held.enter_context(plane.admit("digits", images=images))
                    client_var.reset(tokens[0])
                    share_var.reset(tokens[1])
                assert value("serving_client_admitted_images", {"client": "alice"}) == 3
                assert value("serving_client_admitted_images", {"client": ANONYMOUS}) == 2
                assert registry.models["digits"].holders == {"10.0.0.7": 3, "10.0.0.8": 2}  # shares: by address
            assert value("serving_client_admitted_images", {"client": "alice"}) == 0
            labels = {s.labels.get("client") for family in metrics.registry.collect() for s in family.samples}
            assert not labels & {"10.0.0.7", "10.0.0.8"}
        finally:
            await registry.close()
            plane.close()

    asyncio.run(test())
