"""Triton's system shared-memory extension: the region table's rules in process, then both transports through
``tritonclient`` with token identities, and hostile clients (wrong keys, offsets and sizes, truncated and unlinked
objects, another client's region and key): every case a clean error, the server unharmed.

The objects are real POSIX shared memory (``/dev/shm``), created here with ``os.open`` as ``shm_open`` does (Python's
``multiprocessing.shared_memory`` would start a resource-tracker process, which the quick tier forbids).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from serving.config import ServerConfig
from serving.contract.api import InferRequest, InputTensor, RequestedOutput, SharedMemoryRef
from serving.contract.tensors import encode_bytes_elements
from serving.errors import InvalidInput, Overloaded, ServingError, TooLarge
from serving.runtime.auth import ANONYMOUS, client_var
from serving.runtime.dataplane import DataPlane
from serving.runtime.registry import ModelRegistry
from serving.runtime.shared_memory import SHM_DIR, RegionNotFound, RegionStatus, SharedMemory
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess, ServerThread, base_config, sample

T = TypeVar("T")


class Shm:
    """A POSIX shared-memory object of this test: created, written, truncated and unlinked as a client would."""

    def __init__(self, size: int, tag: str = "t") -> None:
        self.key = f"/serving-test-{tag}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = SHM_DIR / self.key[1:]
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, size)

    def write(self, data: bytes | np.ndarray, offset: int = 0) -> None:
        os.pwrite(self.fd, memoryview(data).cast("B"), offset)

    def read(self, size: int, offset: int = 0) -> bytes:
        return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def unlink(self) -> None:
        if self.path.exists():
            self.path.unlink()

    def close(self) -> None:
        self.unlink()
        os.close(self.fd)


@pytest.fixture
def shm() -> Iterator[Callable[..., Shm]]:
    """``shm(size)``: a new object, unlinked and closed at the end of the test."""
    made: list[Shm] = []

    def make(size: int, tag: str = "t") -> Shm:
        made.append(Shm(size, tag))
        return made[-1]

    yield make
    for obj in made:
        obj.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- the region table, in process ----------------------------------------------------------------------------------

def refusal(call: Callable[[], object]) -> tuple[type, str]:
    """(error class, message) of a call that must be refused."""
    with pytest.raises(ServingError) as refused:
        call()
    return type(refused.value), str(refused.value)


def use(table: SharedMemory, client: str, name: str, offset: int, size: int, data: bytes | None = None) -> bytes:
    """Read ``size`` bytes from ``offset`` of a region, or write ``data`` there, as an inference would."""
    with table.window(client, name, offset, size, write=data is not None) as window:
        if data is None:
            return bytes(window.read())
        window.write(data)
        return b""


def test_register_status_unregister(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a, b = shm(64), shm(128)
    table.register("alice", "in", a.key, 0, 64)
    table.register("alice", "out", b.key, 32, 96)
    table.register("alice", "in-again", a.key, 16, 16)  # one object, several windows: allowed
    assert table.status("alice") == [RegionStatus("in", a.key, 0, 64), RegionStatus("in-again", a.key, 16, 16),
                                     RegionStatus("out", b.key, 32, 96)]
    assert table.status("alice", "out") == [RegionStatus("out", b.key, 32, 96)]
    assert refusal(lambda: table.status("alice", "nope")) == (
        RegionNotFound, "Unable to find system shared memory region: 'nope'")
    assert refusal(lambda: table.register("alice", "in", b.key, 0, 8)) == (
        InvalidInput, "shared memory region 'in' is already registered; unregister it first")
    table.unregister("alice", "in")
    table.unregister("alice", "never-registered")  # as Triton: unregistering what is not there succeeds
    assert [s.name for s in table.status("alice")] == ["in-again", "out"]
    table.unregister("alice")
    assert table.status("alice") == []
    assert len(table) == 0


def test_each_region_belongs_to_its_client_and_so_does_its_key(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a, b = shm(64), shm(64)
    a.write(b"alice's data")
    table.register("alice", "input", a.key, 0, 64)
    # Names are per client: bob has his own "input", and sees, uses and unregisters only his own regions.
    table.register("bob", "input", b.key, 0, 64)
    assert table.status("bob") == [RegionStatus("input", b.key, 0, 64)]
    assert use(table, "bob", "input", 0, 12) == b"\0" * 12
    assert refusal(lambda: use(table, "carol", "input", 0, 12)) == (
        RegionNotFound, "Unable to find shared memory region: 'input'")
    # Alice's key is hers, under whatever name another client tries it, and so is the object behind it.
    assert refusal(lambda: table.register("bob", "sneaky", a.key, 0, 8)) == (
        InvalidInput, f"failed to register shared memory region 'sneaky': the key '{a.key}' is registered by another "
                      "client")
    alias = SHM_DIR / f"{a.key[1:]}-alias"
    os.link(a.path, alias)  # a second name for the same object
    try:
        assert refusal(lambda: table.register("bob", "sneaky", "/" + alias.name, 0, 8)) == (
            InvalidInput, f"failed to register shared memory region 'sneaky': the object of '/{alias.name}' is "
                          "registered by another client")
    finally:
        alias.unlink()
    table.unregister("bob")  # all of bob's: none of alice's
    assert table.status("alice") == [RegionStatus("input", a.key, 0, 64)]
    assert use(table, "alice", "input", 0, 12) == b"alice's data"
    table.unregister("alice")
    table.register("bob", "now-free", a.key, 0, 8)  # once alice let go, the key is free


BAD_KEYS = ["serving-test-no-slash", "/etc/passwd", "/../../etc/passwd", "/..", "/.", "/", "/a b", "/a\0b",
            "/" + "x" * 255]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[k[:20] for k in BAD_KEYS])
def test_a_key_is_a_shared_memory_name_never_a_path(key: str) -> None:
    assert refusal(lambda: SharedMemory(8).register("alice", "r", key, 0, 8)) == (
        InvalidInput, f"failed to register shared memory region 'r': the key {key[:100]!r} is not a POSIX shared "
                      "memory name: '/' then 1-254 letters, digits, '.', '_' or '-' (no other '/')")


def test_what_is_not_a_shared_memory_object_is_refused(tmp_path: Path) -> None:
    """A missing object, and links, folders and FIFOs that a local user put in /dev/shm."""
    table = SharedMemory(8)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for clients")
    tag = f"serving-test-odd-{os.getpid()}-{secrets.token_hex(4)}"
    link, folder, fifo = (SHM_DIR / f"{tag}-{kind}" for kind in ("link", "dir", "fifo"))
    link.symlink_to(secret)
    folder.mkdir()
    os.mkfifo(fifo)
    what = "failed to register shared memory region 'r':"
    try:
        assert refusal(lambda: table.register("alice", "r", f"/{tag}-missing", 0, 8)) == (
            InvalidInput, f"{what} unable to open the shared memory object '/{tag}-missing': No such file or directory")
        assert refusal(lambda: table.register("alice", "r", f"/{link.name}", 0, 8)) == (
            InvalidInput, f"{what} unable to open the shared memory object '/{link.name}': it is a symbolic link")
        for path in (folder, fifo):
            assert refusal(lambda: table.register("alice", "r", f"/{path.name}", 0, 8)) == (  # noqa: B023
                InvalidInput, f"{what} '/{path.name}' is not a shared memory object")
    finally:
        link.unlink()
        folder.rmdir()
        fifo.unlink()
    assert len(table) == 0


def test_a_window_must_lie_inside_the_object_and_the_region(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a = shm(100)
    what = "failed to register shared memory region 'r':"
    for offset, size, message in [
            (0, 101, f"invalid args: offset 0 + byte_size 101 is beyond the end of '{a.key}' (100 bytes)"),
            (60, 41, f"invalid args: offset 60 + byte_size 41 is beyond the end of '{a.key}' (100 bytes)"),
            (0, 0, "offset must be >= 0 and byte_size >= 1, got 0 and 0"),
            (-1, 8, "offset must be >= 0 and byte_size >= 1, got -1 and 8")]:
        assert refusal(lambda: table.register("alice", "r", a.key, offset, size)) == (  # noqa: B023
            InvalidInput, f"{what} {message}")
    table.register("alice", "r", a.key, 40, 60)
    for offset, size in [(0, 61), (60, 1), (59, 2), (-1, 2), (0, -1), (2**63, 2**63)]:
        assert refusal(lambda: use(table, "alice", "r", offset, size)) == (  # noqa: B023
            InvalidInput, f"Invalid offset + byte size for shared memory region: 'r': offset {offset} + byte size "
                          f"{size} is beyond the region's 60 bytes")


def test_read_and_write_only_inside_the_window(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a = shm(64)
    a.write(bytes(range(64)))
    table.register("alice", "r", a.key, 16, 32)
    assert use(table, "alice", "r", 8, 8) == bytes(range(24, 32))
    with table.window("alice", "r", 4, 8, write=True) as window:
        assert window.write(b"\xff" * 8) == 8
        assert refusal(lambda: window.write(b"\xff" * 9)) == (
            InvalidInput, "shared memory region 'r': 9 bytes to write, the request gave 8")
    assert a.read(64) == bytes(range(20)) + b"\xff" * 8 + bytes(range(28, 64))


def test_truncated_and_unlinked_objects_are_clean_errors(shm: Callable[..., Shm]) -> None:
    """The cases that would raise SIGBUS through a mapping: every one answered, nothing mapped."""
    table = SharedMemory(8)
    a = shm(4096)
    table.register("alice", "r", a.key, 1024, 2048)
    a.truncate(2000)
    truncated = (InvalidInput, f"shared memory region 'r': its object '{a.key}' holds 2000 bytes, fewer than the 3072 "
                               "this request needs (truncated after it was registered)")
    assert refusal(lambda: use(table, "alice", "r", 0, 2048)) == truncated
    assert refusal(lambda: use(table, "alice", "r", 0, 2048, b"\1" * 2048)) == truncated
    assert os.fstat(a.fd).st_size == 2000  # the refused write wrote nothing
    assert len(use(table, "alice", "r", 0, 900)) == 900  # what is still there can still be used
    a.truncate(4096)
    a.unlink()
    assert refusal(lambda: use(table, "alice", "r", 0, 8)) == (
        RegionNotFound, f"shared memory region 'r': its object '{a.key}' was unlinked; the region is unregistered")
    assert table.status("alice") == []
    # Status forgets a region whose object was unlinked, too.
    b = shm(64)
    table.register("alice", "s", b.key, 0, 64)
    b.unlink()
    assert table.status("alice") == []
    assert len(table) == 0


def test_unregistering_a_region_in_use_closes_it_after_its_last_use(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a = shm(64)
    a.write(b"x" * 64)
    before = open_fds()
    table.register("alice", "r", a.key, 0, 64)
    assert open_fds() == before + 1
    with table.window("alice", "r", 0, 64) as window:
        table.unregister("alice", "r")
        assert table.status("alice") == []
        assert bytes(window.read()) == b"x" * 64  # the request that held it finishes with it
        assert open_fds() == before + 1
    assert open_fds() == before
    table.register("alice", "r", a.key, 0, 64)
    table.close()
    assert open_fds() == before
    assert len(table) == 0


def test_the_count_of_regions_is_bounded(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(2)
    a = shm(64)
    table.register("alice", "one", a.key, 0, 8)
    table.register("bob", "two", shm(64).key, 8, 8)
    assert refusal(lambda: table.register("alice", "three", a.key, 16, 8)) == (
        Overloaded, "failed to register shared memory region 'three': the server holds 2 shared memory regions, its "
                    "limit (--max-shm-regions); unregister regions no longer used")
    table.unregister("alice", "one")
    table.register("alice", "three", a.key, 16, 8)
    assert refusal(lambda: SharedMemory(0).register("alice", "r", a.key, 0, 8)) == (
        InvalidInput, "system shared memory is off on this server (--max-shm-regions 0)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write whatever the mode says")
def test_an_object_the_server_may_only_read_carries_inputs_only(shm: Callable[..., Shm]) -> None:
    table = SharedMemory(8)
    a = shm(64)
    os.fchmod(a.fd, stat.S_IRUSR)
    table.register("alice", "r", a.key, 0, 64)
    assert use(table, "alice", "r", 0, 64) == b"\0" * 64
    assert refusal(lambda: use(table, "alice", "r", 0, 8, b"x" * 8)) == (
        InvalidInput, f"shared memory region 'r' is read-only to the server (its object '{a.key}' is not writable by "
                      "the server's user): inputs only")


# ---- inference through regions: the data plane in process --------------------------------------------------------

def plane_config(repository: Repo, **kwargs: object) -> ServerConfig:
    return replace(ServerConfig(repository=repository.path, models=("digits",), threads=1, decode_workers=1,
                                max_batch=4, max_queue=8), **kwargs)


def on_plane(config: ServerConfig, test: Callable[[DataPlane], Awaitable[T]], client: str = ANONYMOUS) -> T:
    """``test(plane)`` on a fresh event loop as ``client``, with the plane's models loaded; closes everything after."""
    async def main() -> T:
        registry = ModelRegistry(config)
        await registry.load_all()
        plane = DataPlane(registry)
        client_var.set(client)
        try:
            return await test(plane)
        finally:
            await registry.close()
            plane.close()

    return asyncio.run(main())


def digits_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 28, 28)).astype("<f4")


def shm_infer(x_ref: SharedMemoryRef, out_ref: SharedMemoryRef | None = None, shape: Sequence[int] = (2, 1, 28, 28),
              datatype: str = "FP32") -> InferRequest:
    outputs = [RequestedOutput("logits", shm=out_ref)] if out_ref else []
    return InferRequest("digits", inputs=[InputTensor("input", datatype, list(shape), shm=x_ref)], outputs=outputs)


def test_inference_through_regions_is_bit_equal_to_inline(repository: Repo, shm: Callable[..., Shm],
                                                          image_files: dict[str, Path]) -> None:
    x = digits_batch(2)
    images = encode_bytes_elements([image_files["img0.png"].read_bytes(), image_files["img3.jpg"].read_bytes()])
    data, out = shm(8192), shm(256)
    data.write(b"\xab" * 8192)
    data.write(x, 512)
    data.write(images, 512 + x.nbytes)
    out.write(b"\xcd" * 256)

    async def test(plane: DataPlane) -> None:
        plane.shm_register("data", data.key, 512, 8192 - 512)
        plane.shm_register("out", out.key, 64, 192)
        for datatype, raw, shape, offset in [("FP32", x.tobytes(), x.shape, 0),
                                             ("BYTES", images, [2], x.nbytes)]:
            inline = await plane.infer(InferRequest("digits", inputs=[InputTensor("input", datatype, list(shape),
                                                                                  raw=raw)]))
            result = await plane.infer(shm_infer(SharedMemoryRef("data", len(raw), offset),
                                                 SharedMemoryRef("out", 120, 16), shape, datatype))
            [output] = result.outputs
            assert (output.name, output.datatype, output.shape) == ("logits", "FP32", [2, 10])
            assert output.shm == SharedMemoryRef("out", 80, 16)  # where, and the bytes written
            expected = np.ascontiguousarray(inline.outputs[0].data, "<f4").tobytes()
            assert out.read(80, 64 + 16) == expected  # bit for bit
            assert out.read(64 + 16) == b"\xcd" * (64 + 16)  # nothing before the window…
            assert out.read(256 - 160, 160) == b"\xcd" * 96  # …nor after the 80 bytes
            # An input in a region with the output inline, and the other way round.
            mixed = await plane.infer(shm_infer(SharedMemoryRef("data", len(raw), offset), shape=shape,
                                                datatype=datatype))
            assert mixed.outputs[0].shm is None
            assert np.ascontiguousarray(mixed.outputs[0].data, "<f4").tobytes() == expected
        assert data.read(512) == b"\xab" * 512  # inputs are only read

    on_plane(plane_config(repository), test)


def _refusals(plane: DataPlane, a: Shm) -> list[tuple[InferRequest, type, str]]:
    x = digits_batch(2)
    n = x.nbytes
    return [
        (shm_infer(SharedMemoryRef("nope", n)), RegionNotFound, "Unable to find shared memory region: 'nope'"),
        (shm_infer(SharedMemoryRef("in", n - 4)), InvalidInput,
         f"input 'input': shared_memory_byte_size is {n - 4}, FP32 [2, 1, 28, 28] needs {n}"),
        (shm_infer(SharedMemoryRef("in", n, 8)), InvalidInput,
         f"Invalid offset + byte size for shared memory region: 'in': offset 8 + byte size {n} is beyond the "
         f"region's {n} bytes"),
        (shm_infer(SharedMemoryRef("in", n, -8)), InvalidInput,
         f"Invalid offset + byte size for shared memory region: 'in': offset -8 + byte size {n} is beyond the "
         f"region's {n} bytes"),
        (shm_infer(SharedMemoryRef("in", 2**62), shape=[2**60, 1, 1, 1]), InvalidInput,
         f"{2**60} images in one request, more than the limit of 256 (--max-images-per-request); split the "
         "request"),
        (shm_infer(SharedMemoryRef("in", 2**40), shape=[2], datatype="BYTES"), TooLarge,
         "input 'input': 1099511627776 bytes in shared memory, more than the 64 MiB limit (--max-message-mb)"),
        (shm_infer(SharedMemoryRef("in", n), SharedMemoryRef("out", 79)), InvalidInput,
         "output 'logits': the shared memory size specified with the request (79 bytes) should be at least 80 bytes "
         "to hold the results"),
        (shm_infer(SharedMemoryRef("in", n), SharedMemoryRef("out", 80, 1)), InvalidInput,
         "Invalid offset + byte size for shared memory region: 'out': offset 1 + byte size 80 is beyond the "
         "region's 80 bytes"),
        (shm_infer(SharedMemoryRef("in", n), SharedMemoryRef("elsewhere", 80)), RegionNotFound,
         "Unable to find shared memory region: 'elsewhere'"),
        (InferRequest("digits", inputs=[InputTensor("input", "FP32", [2, 1, 28, 28], raw=x.tobytes(),
                                                    shm=SharedMemoryRef("in", n))]), InvalidInput,
         "input 'input': an input in shared memory carries no data of its own; send one of the two"),
    ]


def test_hostile_references_are_clean_errors_and_the_server_goes_on(repository: Repo,
                                                                     shm: Callable[..., Shm]) -> None:
    """Wrong offsets and sizes, regions that do not exist (or are another client's), truncated and unlinked
    objects, during inference: each refused with its reason, nothing written, and the next request answered."""
    x = digits_batch(2)
    a, out, theirs = shm(x.nbytes), shm(80), shm(80)
    a.write(x)
    out.write(b"\xcd" * 80)

    async def test(plane: DataPlane) -> None:
        plane.shm_register("in", a.key, 0, x.nbytes)
        plane.shm_register("out", out.key, 0, 80)
        token = client_var.set("bob")
        plane.shm_register("elsewhere", theirs.key, 0, 80)  # bob's: alice cannot name it
        client_var.reset(token)
        for request, error, message in _refusals(plane, a):
            with pytest.raises(error) as refused:
                await plane.infer(request)
            assert str(refused.value) == message
        assert out.read(80) == b"\xcd" * 80
        a.truncate(100)
        with pytest.raises(InvalidInput) as refused:
            await plane.infer(shm_infer(SharedMemoryRef("in", x.nbytes)))
        assert str(refused.value) == (f"shared memory region 'in': its object '{a.key}' holds 100 bytes, fewer than "
                                      f"the {x.nbytes} this request needs (truncated after it was registered)")
        a.truncate(x.nbytes)
        a.write(x)
        out.truncate(40)
        with pytest.raises(InvalidInput) as refused:  # checked before the model runs
            await plane.infer(shm_infer(SharedMemoryRef("in", x.nbytes), SharedMemoryRef("out", 80)))
        assert "holds 40 bytes, fewer than the 80 this request needs" in str(refused.value)
        out.truncate(80)
        out.unlink()
        with pytest.raises(RegionNotFound) as refused:
            await plane.infer(shm_infer(SharedMemoryRef("in", x.nbytes), SharedMemoryRef("out", 80)))
        assert str(refused.value) == (f"shared memory region 'out': its object '{out.key}' was unlinked; the region "
                                      "is unregistered")
        assert [r.name for r in plane.shm_status()] == ["in"]
        answer = await plane.infer(shm_infer(SharedMemoryRef("in", x.nbytes)))  # unharmed
        assert answer.outputs[0].shape == [2, 10]

    on_plane(plane_config(repository), test, client="alice")


def test_a_region_unregistered_during_inference_is_written_then_closed(repository: Repo,
                                                                        shm: Callable[..., Shm]) -> None:
    x = digits_batch(1)
    a, out = shm(x.nbytes), shm(40)
    a.write(x)

    async def test(plane: DataPlane) -> None:
        expected = (await plane.infer(InferRequest("digits", inputs=[InputTensor(
            "input", "FP32", [1, 1, 28, 28], raw=x.tobytes())]))).outputs[0].data
        before = open_fds()
        plane.shm_register("in", a.key, 0, x.nbytes)
        plane.shm_register("out", out.key, 0, 40)
        batcher = plane.registry.models["digits"].batcher
        assert batcher is not None
        gate = threading.Event()
        for instance in batcher.instances:
            instance.executor.submit(gate.wait, 30)  # the model's compute threads wait: the request stays in flight
        task = asyncio.ensure_future(plane.infer(shm_infer(SharedMemoryRef("in", x.nbytes), SharedMemoryRef("out", 40),
                                                           shape=x.shape)))
        for _ in range(30_000):  # the event loop's turns (no event marks a batch taken), 30 s at most
            if any(instance.running for instance in batcher.instances):
                break
            await asyncio.sleep(0.001)
        assert any(instance.running for instance in batcher.instances), "the request never reached the model"
        plane.shm_unregister()
        assert plane.shm_status() == []
        assert open_fds() == before + 1  # the output's region stays open for the request that holds it
        gate.set()
        result = await task
        assert result.outputs[0].shm == SharedMemoryRef("out", 40, 0)
        assert out.read(40) == np.ascontiguousarray(expected, "<f4").tobytes()
        assert open_fds() == before

    on_plane(plane_config(repository), test)


# ---- both transports, through tritonclient -------------------------------------------------------------------------

TOKENS = "tok-alice alice\ntok-bob bob\ntok-bare\n"


def _clients(server: ServerThread, token: str | None = None):  # type: ignore[no-untyped-def]
    """A tritonclient of each transport, with the token's header when given."""
    headers = {"authorization": f"Bearer {token}"} if token else None
    return (Triton(tgrpc.InferenceServerClient(server.address), headers),
            Triton(thttp.InferenceServerClient(server.http_url.removeprefix("http://")), headers))


class Triton:
    """A tritonclient (either transport) that sends the same headers with every call."""

    def __init__(self, client, headers: dict[str, str] | None) -> None:  # type: ignore[no-untyped-def]
        self.client, self.headers, self.http = client, headers, isinstance(client, thttp.InferenceServerClient)

    def __getattr__(self, method: str) -> Callable[..., object]:
        # A copy each call: tritonclient.http adds its own headers (Inference-Header-Content-Length) to the dict.
        return lambda *args, **kwargs: getattr(self.client, method)(*args, headers=self._headers(), **kwargs)

    def _headers(self) -> dict[str, str] | None:
        return dict(self.headers) if self.headers else None

    def regions(self, name: str = "") -> dict[str, dict[str, int | str]]:
        """The status answer as {name: {key, offset, byte_size}}, whichever transport carried it."""
        if self.http:
            return {r["name"]: {k: r[k] for k in ("key", "offset", "byte_size")}
                    for r in self.client.get_system_shared_memory_status(name, headers=self._headers())}
        answer = self.client.get_system_shared_memory_status(name, headers=self._headers())
        return {n: {"key": r.key, "offset": r.offset, "byte_size": r.byte_size} for n, r in answer.regions.items()}

    def refusal(self, method: str, *args: object) -> tuple[str, str]:
        """(status, message) of a call that must fail: the gRPC code or the HTTP status."""
        with pytest.raises(InferenceServerException) as refused:
            getattr(self, method)(*args)
        return str(refused.value.status()), refused.value.message()


def test_register_status_unregister_over_both_transports(make_server, repository,  # type: ignore[no-untyped-def]
                                                         shm: Callable[..., Shm]) -> None:
    server = make_server(base_config(repository.path, models=("digits",)))
    over_grpc, over_http = _clients(server)
    a, b = shm(4096), shm(64)
    over_grpc.register_system_shared_memory("input", a.key, 3136, offset=512)
    over_http.register_system_shared_memory("output", b.key, 40)
    # Tokens off: one anonymous client, whichever transport it calls on.
    expected = {"input": {"key": a.key, "offset": 512, "byte_size": 3136},
                "output": {"key": b.key, "offset": 0, "byte_size": 40}}
    for client in (over_grpc, over_http):
        assert client.regions() == expected
        assert client.regions("output") == {"output": expected["output"]}
    assert over_grpc.refusal("get_system_shared_memory_status", "nope") == (
        "StatusCode.NOT_FOUND", "Unable to find system shared memory region: 'nope'")
    assert over_http.refusal("get_system_shared_memory_status", "nope") == (
        "404", "Unable to find system shared memory region: 'nope'")
    assert over_http.refusal("register_system_shared_memory", "input", b.key, 8) == (
        "400", "shared memory region 'input' is already registered; unregister it first")
    assert over_grpc.refusal("register_system_shared_memory", "big", b.key, 65) == (
        "StatusCode.INVALID_ARGUMENT", f"failed to register shared memory region 'big': invalid args: offset 0 + "
                                       f"byte_size 65 is beyond the end of '{b.key}' (64 bytes)")
    over_http.unregister_system_shared_memory("input")
    assert over_grpc.regions() == {"output": expected["output"]}
    over_grpc.unregister_system_shared_memory()
    assert over_http.regions() == {}
    for client in (over_grpc, over_http):
        extensions = client.get_server_metadata()
        extensions = extensions["extensions"] if client.http else list(extensions.extensions)
        assert "system_shared_memory" in extensions
        assert "cuda_shared_memory" not in extensions
    assert sample(server, "serving_requests_total", model="", method="SystemSharedMemoryRegister", code="OK") == 1
    assert sample(server, "serving_requests_total", model="", method="http.SystemSharedMemoryStatus",
                  code="NOT_FOUND") == 1


def test_cuda_shared_memory_is_answered_as_a_cpu_build_of_triton(make_server, repository,  # type: ignore[no-untyped-def]
                                                                  shm: Callable[..., Shm]) -> None:
    server = make_server(base_config(repository.path, models=("digits",)))
    over_grpc, over_http = _clients(server)
    message = "failed to register CUDA shared memory region: 'gpu', GPUs not supported"
    assert over_grpc.refusal("register_cuda_shared_memory", "gpu", b"\0" * 64, 0, 64) == (
        "StatusCode.INVALID_ARGUMENT", message)
    assert over_http.refusal("register_cuda_shared_memory", "gpu", "AAAA", 0, 64) == ("400", message)
    over_grpc.register_system_shared_memory("host", shm(64).key, 64)
    for client in (over_grpc, over_http):
        answer = client.get_cuda_shared_memory_status()
        assert (answer if client.http else list(answer.regions)) == []
        assert client.refusal("get_cuda_shared_memory_status", "gpu")[1] == \
            "Unable to find cuda shared memory region: 'gpu'"
        assert client.refusal("get_cuda_shared_memory_status", "host")[1] == \
            "The region named 'host' is registered as system shared memory, not CUDA shared memory"
        client.unregister_cuda_shared_memory("host")  # nothing: it is no CUDA region
        client.unregister_cuda_shared_memory()
    assert list(over_http.regions()) == ["host"]


def test_a_token_owns_its_regions_and_their_keys(make_server, repository, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 shm: Callable[..., Shm]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = make_server(base_config(repository.path, models=("digits",), auth_token_file=tokens))
    alice, bob, bare = (_clients(server, token) for token in ("tok-alice", "tok-bob", "tok-bare"))
    a, b = shm(64), shm(64)
    alice[0].register_system_shared_memory("input", a.key, 64)
    for client in (*bob, *bare):
        assert client.regions() == {}
        assert client.refusal("get_system_shared_memory_status", "input")[1] == \
            "Unable to find system shared memory region: 'input'"
        # Alice's key is hers whatever the region's name: no other client may read or write through it.
        assert client.refusal("register_system_shared_memory", "mine", a.key, 8)[1] == \
            f"failed to register shared memory region 'mine': the key '{a.key}' is registered by another client"
        client.unregister_system_shared_memory("input")  # someone else's: nothing happens
        client.unregister_system_shared_memory()
    bob[1].register_system_shared_memory("input", b.key, 64)  # the same name, his own
    assert alice[1].regions() == {"input": {"key": a.key, "offset": 0, "byte_size": 64}}
    assert bob[0].regions() == {"input": {"key": b.key, "offset": 0, "byte_size": 64}}
    for client in _clients(server):  # no token: refused before anything
        status, message = client.refusal("get_system_shared_memory_status")
        assert status == ("401" if client.http else "StatusCode.UNAUTHENTICATED")
        assert message.startswith("missing or invalid token")
    alice[0].unregister_system_shared_memory()
    bare[0].register_system_shared_memory("now-free", a.key, 64)


def test_the_extension_can_be_turned_off(make_server, repository,  # type: ignore[no-untyped-def]
                                         shm: Callable[..., Shm]) -> None:
    server = make_server(base_config(repository.path, models=("digits",), max_shm_regions=0))
    for client in _clients(server):
        assert client.refusal("register_system_shared_memory", "r", shm(64).key, 8)[1] == \
            "system shared memory is off on this server (--max-shm-regions 0)"
        extensions = client.get_server_metadata()
        assert "system_shared_memory" not in (extensions["extensions"] if client.http else extensions.extensions)


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "the request is not valid JSON"),
    (b"[]", "must be a JSON object with a string 'key'"),
    (b'{"key": 5, "byte_size": 8}', "must be a JSON object with a string 'key'"),
    (b'{"key": "/k"}', "'byte_size' must be a non-negative integer"),
    (b'{"key": "/k", "byte_size": -8}', "'byte_size' must be a non-negative integer"),
    (b'{"key": "/k", "byte_size": true}', "'byte_size' must be a non-negative integer"),
    (b'{"key": "/k", "byte_size": 8, "offset": 1.5}', "'offset' must be a non-negative integer"),
])
def test_malformed_register_bodies_over_http(server: ServerThread, body: bytes, message: str) -> None:
    answer = httpx.post(f"{server.http_url}/v2/systemsharedmemory/region/r/register", content=body)
    assert answer.status_code == 400
    assert message in answer.json()["error"]


# ---- inference through regions over both transports ----------------------------------------------------------------

@pytest.fixture
def triton_regions() -> Iterator[Callable[[int], tuple[str, object]]]:
    """``region(size)``: (key, handle) of a region made with tritonclient's own shared-memory utilities."""
    import tritonclient.utils.shared_memory as tshm

    made = []

    def make(size: int) -> tuple[str, object]:
        key = f"/serving-test-triton-{os.getpid()}-{secrets.token_hex(4)}"
        made.append(tshm.create_shared_memory_region(key[1:], key, size))
        return key, made[-1]

    yield make
    for handle in made:
        tshm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_tritonclient_inference_through_regions_is_bit_equal_to_inline(  # type: ignore[no-untyped-def]
        make_server, repository, tmp_path: Path, triton_regions, transport: str) -> None:
    """Triton's own client utilities, as its shared-memory examples use them, with a token: the output read from
    the region is the inline answer, bit for bit."""
    import tritonclient.utils.shared_memory as tshm

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = make_server(base_config(repository.path, models=("digits",), auth_token_file=tokens))
    client = _clients(server, "tok-alice")[transport == "http"]
    module = thttp if client.http else tgrpc
    x = digits_batch(3, seed=5)
    in_key, in_handle = triton_regions(x.nbytes + 64)
    out_key, out_handle = triton_regions(3 * 10 * 4)
    tshm.set_shared_memory_region(in_handle, [x], offset=64)
    client.register_system_shared_memory("input_data", in_key, x.nbytes + 64)
    client.register_system_shared_memory("output_data", out_key, 3 * 10 * 4)

    inline = module.InferInput("input", list(x.shape), "FP32")
    inline.set_data_from_numpy(x)
    expected = client.infer("digits", [inline]).as_numpy("logits")
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_shared_memory("input_data", x.nbytes, offset=64)
    output = module.InferRequestedOutput("logits")
    output.set_shared_memory("output_data", 3 * 10 * 4)
    answer = client.infer("digits", [tensor], outputs=[output]).get_output("logits")
    if client.http:  # the answer says where the output went, and carries no data
        assert answer == {"name": "logits", "datatype": "FP32", "shape": [3, 10], "parameters": {
            "shared_memory_region": "output_data", "shared_memory_byte_size": 120}}
    else:
        assert (answer.name, answer.datatype, list(answer.shape)) == ("logits", "FP32", [3, 10])
        assert answer.parameters["shared_memory_region"].string_param == "output_data"
        assert answer.parameters["shared_memory_byte_size"].int64_param == 120
    logits = tshm.get_contents_as_numpy(out_handle, np.float32, [3, 10])
    assert logits.tobytes() == expected.astype("<f4").tobytes()
    # Bob names alice's regions: they do not exist for him.
    bob = _clients(server, "tok-bob")[transport == "http"]
    status, message = bob.refusal("infer", "digits", [tensor])
    assert (status, message) == ("404" if bob.http else "StatusCode.NOT_FOUND",
                                 "Unable to find shared memory region: 'input_data'")
    client.unregister_system_shared_memory()


def test_a_stream_carries_its_tokens_identity_to_every_message(make_server, repository,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path, shm: Callable[..., Shm]) -> None:
    """ModelStreamInfer: each message is answered in a task of its own, and still as the stream's client."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = make_server(base_config(repository.path, models=("digits",), auth_token_file=tokens))
    x = digits_batch(1, seed=2)
    a = shm(x.nbytes)
    a.write(x)
    alice = _clients(server, "tok-alice")[0]
    alice.register_system_shared_memory("in", a.key, x.nbytes)
    inline = tgrpc.InferInput("input", list(x.shape), "FP32")
    inline.set_data_from_numpy(x)
    expected = alice.infer("digits", [inline]).as_numpy("logits")
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_shared_memory("in", x.nbytes)
    for token, answer in (("tok-alice", expected.tobytes()), ("tok-bob", "Unable to find shared memory region: 'in'")):
        assert _streamed(server, token, tensor, 3) == [answer] * 3


def _streamed(server: ServerThread, token: str, tensor: object, count: int) -> list[bytes | str]:
    """``count`` messages of one ModelStreamInfer stream: each answer's logits bytes, or its error's message."""
    answers: list[bytes | str] = []
    done = threading.Event()
    client = tgrpc.InferenceServerClient(server.address)

    def collect(result, error) -> None:  # type: ignore[no-untyped-def]
        answers.append(result.as_numpy("logits").tobytes() if error is None else error.message().split(": ", 1)[-1])
        if len(answers) == count:
            done.set()

    client.start_stream(collect, headers={"authorization": f"Bearer {token}"})
    for i in range(count):
        client.async_stream_infer("digits", [tensor], request_id=str(i))
    assert done.wait(30), answers
    client.stop_stream()
    client.close()
    return answers


# The refusals a client that shrinks or unlinks its objects may get: nothing else.
CLEAN_REFUSAL = re.compile(r"^shared memory region '(in|out)': its object '[^']+' (holds \d+ bytes, fewer than the "
                           r"\d+ this request needs \(truncated after it was registered\)|was unlinked; the region is "
                           r"unregistered|was truncated while it was read)$")


@pytest.mark.not_quick  # a server process
def test_a_hostile_client_truncating_and_unlinking_its_regions_never_harms_the_server(
        repository: Repo, shm: Callable[..., Shm]) -> None:
    """A server process, and a client that shrinks and regrows its objects as fast as it can (and now and then
    unlinks one) while it sends inferences that read from and write into them: through a mapping, a read or a write
    beyond a truncated object would raise SIGBUS and kill the server. Every answer must be the logits or one of the
    clean refusals, and the server must go on."""
    server = ServerProcess(repository.path, "--models", "digits")
    try:
        triton = tgrpc.InferenceServerClient(server.address)
        x = digits_batch(8, seed=9)
        out = shm(320)
        current = {"in": shm(x.nbytes)}
        current["in"].write(x)
        triton.register_system_shared_memory("in", current["in"].key, x.nbytes)
        triton.register_system_shared_memory("out", out.key, 320)
        tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_shared_memory("in", x.nbytes)
        output = tgrpc.InferRequestedOutput("logits")
        output.set_shared_memory("out", 320)
        lock, stop = threading.Lock(), threading.Event()

        def vandal() -> None:
            while not stop.is_set():
                with lock:
                    for obj, size in ((current["in"], x.nbytes), (out, 320)):
                        obj.truncate(0)
                        obj.truncate(size // 3)
                        obj.truncate(size)
                    current["in"].write(x)

        answers: dict[str, int] = {}
        thread = threading.Thread(target=vandal)
        thread.start()
        try:
            for i in range(300):
                if i % 100 == 50:
                    with lock:
                        current["in"].unlink()  # the object disappears: the next request finds out
                try:
                    triton.infer("digits", [tensor], outputs=[output])
                    status, message = "OK", ""
                except InferenceServerException as e:
                    status, message = e.status(), e.message()
                answers[status] = answers.get(status, 0) + 1
                if status != "OK":
                    assert CLEAN_REFUSAL.match(message), message
                    if "was unlinked" in message:  # unregistered by the server: a new object, registered again
                        with lock:  # whole while registered: the vandal waits
                            current["in"] = shm(x.nbytes)
                            current["in"].write(x)
                            triton.register_system_shared_memory("in", current["in"].key, x.nbytes)
        finally:
            stop.set()
            thread.join()
        assert server.alive(), server.entries()[-5:]
        assert answers.get("StatusCode.NOT_FOUND") == 3, answers  # each unlinked object found out once
        inline = tgrpc.InferInput("input", list(x.shape), "FP32")
        inline.set_data_from_numpy(x)
        expected = triton.infer("digits", [inline]).as_numpy("logits")
        triton.infer("digits", [tensor], outputs=[output])  # unharmed, and right
        assert out.read(320) == expected.astype("<f4").tobytes()
        assert not server.entries(lambda e: e.get("level") == "error")
        triton.close()
    finally:
        assert server.stop() == 0


def test_an_http_input_in_shared_memory_carries_no_data(server: ServerThread) -> None:
    parameters = {"shared_memory_region": "in", "shared_memory_byte_size": 3136}
    for extra in ({"data": [0.0] * 784}, {"parameters": {**parameters, "binary_data_size": 3136}}):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": parameters,
                            **extra}]}
        answer = httpx.post(f"{server.http_url}/v2/models/digits/infer", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"] == ("input 'input': an input in shared memory carries no data of its own "
                                          "('data' or binary_data_size); send one of the two")


def test_the_limit_is_a_flag_and_a_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from serving.cli import build_parser

    serve = ["serve", "--repository", str(tmp_path)]
    assert build_parser().parse_args(serve).max_shm_regions == 64
    monkeypatch.setenv("SERVING_MAX_SHM_REGIONS", "0")
    assert build_parser().parse_args(serve).max_shm_regions == 0
    assert build_parser().parse_args([*serve, "--max-shm-regions", "5"]).max_shm_regions == 5  # the flag wins
    with pytest.raises(ValueError, match=r"^--max-shm-regions must be >= 0$"):
        ServerConfig(repository=tmp_path, max_shm_regions=-1)
