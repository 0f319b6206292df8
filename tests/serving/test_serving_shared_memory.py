"""Triton's system shared-memory extension: the region table's rules in process, then both transports through
``tritonclient`` with token identities, and hostile clients (wrong keys, offsets and sizes, truncated and unlinked
objects, another client's region and key): every case a clean error, the server unharmed.

The objects are real POSIX shared memory (``/dev/shm``), created here with ``os.open`` as ``shm_open`` does (Python's
``multiprocessing.shared_memory`` would start a resource-tracker process, which the quick tier forbids).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from serving.errors import InvalidInput, Overloaded, ServingError
from serving.runtime.shared_memory import SHM_DIR, RegionNotFound, RegionStatus, SharedMemory
from tests.support.servers import ServerThread, base_config, sample


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
        return lambda *args, **kwargs: getattr(self.client, method)(*args, headers=self.headers, **kwargs)

    def regions(self, name: str = "") -> dict[str, dict[str, int | str]]:
        """The status answer as {name: {key, offset, byte_size}}, whichever transport carried it."""
        if self.http:
            return {r["name"]: {k: r[k] for k in ("key", "offset", "byte_size")}
                    for r in self.client.get_system_shared_memory_status(name, headers=self.headers)}
        answer = self.client.get_system_shared_memory_status(name, headers=self.headers)
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
