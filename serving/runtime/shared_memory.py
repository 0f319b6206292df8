"""Triton's system shared-memory extension: regions of POSIX shared memory that clients register, that the server
reads inputs from and writes outputs into, each private to the client that registered it.

A region is a window (``offset``, ``byte_size``) of the shared-memory object named by its ``key``: a POSIX
shared-memory name (``/`` and a name with no other slash), never a file path. Registering opens the object
(``/dev/shm/NAME``, without following a symbolic link) read-write, or read-only when that is all the server's user
may do (such a region carries inputs only), keeps the descriptor and maps nothing. Every later use

- checks the part a request names (``shared_memory_offset``, ``shared_memory_byte_size``) against the registered
  window, and the window's size against the tensor (the data plane's part);
- looks at the object again (``fstat``): an object that its client unlinked is unregistered and the request refused;
  one truncated below the part is refused;
- copies with ``pread``/``pwrite`` on the descriptor. A mapped page beyond the end of a truncated object raises
  SIGBUS, which kills the server, and no check made before a copy from a mapping closes that race (the client can
  truncate in between); a read past the end is only short, and is refused. The copy costs more than one from a
  mapping (a 602 kB ResNet-18 input: 46 µs instead of 21 µs, ``python -m benchmarks.shm_copy``), under a tenth of
  a percent of that model's inference.

Privacy: regions are named per client (:data:`serving.runtime.auth.client_var`; one anonymous client with tokens
off): a client sees, uses and unregisters only its own, and two clients may use the same name. A key, and the
object behind it (its device and inode, whatever its name), that one client has registered cannot be registered by
another until the first has unregistered every region on it. At most ``max_regions`` regions exist at once
(``--max-shm-regions``; 0 turns the extension off).

A request holds each region it uses: unregistering takes the region out of the table at once, and its descriptor is
closed when the last request using it is done (a closed descriptor's number could meanwhile name another file).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.errors import InvalidInput, Kind, Overloaded, ServingError

SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared-memory objects (what shm_open opens)
KEY = re.compile(r"/[A-Za-z0-9._-]{1,254}")
MAX_NAME_CHARS = 128
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO put there must not block the open


class RegionNotFound(ServingError):
    """No region of that name is registered by this client (or its object was unlinked, which unregistered it)."""

    kind = Kind.NOT_FOUND


@dataclass(frozen=True)
class RegionStatus:
    """A registered region as the status call describes it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    def __init__(self, client: str, status: RegionStatus, fd: int, writable: bool, inode: tuple[int, int]) -> None:
        self.client, self.status, self.fd, self.writable, self.inode = client, status, fd, writable, inode
        self.users = 0              # requests holding it
        self.unregistered = False   # out of the table; the descriptor closes with its last user


class SharedMemory:
    """The registered regions of every client; thread-safe."""

    def __init__(self, max_regions: int, directory: Path = SHM_DIR) -> None:
        self.max_regions = max_regions
        self.directory = directory
        self._lock = threading.Lock()
        self._regions: dict[tuple[str, str], _Region] = {}  # (client, name) → region

    @property
    def enabled(self) -> bool:
        return self.max_regions > 0

    def __len__(self) -> int:
        return len(self._regions)

    # ---- register, status, unregister --------------------------------------------------------------------------
    def register(self, client: str, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes from ``offset`` of the object ``key`` as ``client``'s region ``name``."""
        if not self.enabled:
            raise InvalidInput("system shared memory is off on this server (--max-shm-regions 0)")
        _check_name(name)
        what = f"failed to register shared memory region '{name}'"
        if not isinstance(key, str) or not KEY.fullmatch(key) or key in ("/.", "/.."):
            raise InvalidInput(f"{what}: the key {str(key)[:100]!r} is not a POSIX shared memory name: '/' then 1-254 "
                               "letters, digits, '.', '_' or '-' (no other '/')")
        if offset < 0 or byte_size < 1:
            raise InvalidInput(f"{what}: offset must be >= 0 and byte_size >= 1, got {offset} and {byte_size}")
        with self._lock:
            if (client, name) in self._regions:
                raise InvalidInput(f"shared memory region '{name}' is already registered; unregister it first")
            if len(self._regions) >= self.max_regions:
                raise Overloaded(f"{what}: the server holds {len(self._regions)} shared memory regions, its limit "
                                 "(--max-shm-regions); unregister regions no longer used")
            if any(r.client != client and r.status.key == key for r in self._regions.values()):
                raise InvalidInput(f"{what}: the key '{key}' is registered by another client")
            fd, writable = self._open(what, key)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidInput(f"{what}: '{key}' is not a shared memory object")
                inode = (info.st_dev, info.st_ino)
                if any(r.client != client and r.inode == inode for r in self._regions.values()):
                    raise InvalidInput(f"{what}: the object of '{key}' is registered by another client")
                if offset + byte_size > info.st_size:
                    raise InvalidInput(f"{what}: invalid args: offset {offset} + byte_size {byte_size} is beyond the "
                                       f"end of '{key}' ({info.st_size} bytes)")
            except BaseException:
                os.close(fd)
                raise
            self._regions[(client, name)] = _Region(client, RegionStatus(name, key, offset, byte_size), fd, writable,
                                                    inode)

    def _open(self, what: str, key: str) -> tuple[int, bool]:
        """A descriptor of the object ``key``, and whether the server may write to it."""
        path = self.directory / key[1:]
        try:
            try:
                return os.open(path, os.O_RDWR | _OPEN_FLAGS), True
            except (PermissionError, IsADirectoryError):
                return os.open(path, os.O_RDONLY | _OPEN_FLAGS), False
        except OSError as e:
            reason = "it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
            raise InvalidInput(f"{what}: unable to open the shared memory object '{key}': {reason}") from None

    def status(self, client: str, name: str = "") -> list[RegionStatus]:
        """``client``'s regions (``name``: that one, else ``RegionNotFound``), without those whose object is gone."""
        with self._lock:
            for region in [r for r in self._regions.values() if r.client == client]:
                if _unlinked(region):
                    self._drop(region)
            if name:
                region = self._regions.get((client, name))
                if region is None:
                    raise RegionNotFound(f"Unable to find system shared memory region: '{name}'")
                return [region.status]
            return sorted((r.status for r in self._regions.values() if r.client == client), key=lambda s: s.name)

    def has(self, client: str, name: str) -> bool:
        return (client, name) in self._regions

    def unregister(self, client: str, name: str = "") -> None:
        """Unregister ``client``'s region ``name`` (none of that name: nothing, as Triton), or all its regions."""
        with self._lock:
            for region in [r for (c, n), r in self._regions.items() if c == client and (not name or n == name)]:
                self._drop(region)

    def close(self) -> None:
        """Unregister every region (the server stops)."""
        with self._lock:
            for region in list(self._regions.values()):
                self._drop(region)

    def _drop(self, region: _Region) -> None:
        # Holding the lock.
        if self._regions.get((region.client, region.status.name)) is region:
            del self._regions[(region.client, region.status.name)]
        region.unregistered = True
        if region.users == 0 and region.fd >= 0:
            os.close(region.fd)
            region.fd = -1

    # ---- use -----------------------------------------------------------------------------------------------------
    @contextmanager
    def window(self, client: str, name: str, offset: int, byte_size: int, *, write: bool = False) -> Iterator[Window]:
        """``byte_size`` bytes from ``offset`` of ``client``'s region ``name``, held (not unregistered under the
        caller) while the block runs. ``write``: for an output."""
        with self._lock:
            region = self._regions.get((client, name))
            if region is None:
                raise RegionNotFound(f"Unable to find shared memory region: '{name}'")
            registered = region.status.byte_size
            if offset < 0 or byte_size < 0 or offset + byte_size > registered:
                raise InvalidInput(f"Invalid offset + byte size for shared memory region: '{name}': offset {offset} + "
                                   f"byte size {byte_size} is beyond the region's {registered} bytes")
            if write and not region.writable:
                raise InvalidInput(f"shared memory region '{name}' is read-only to the server (its object "
                                   f"'{region.status.key}' is not writable by the server's user): inputs only")
            region.users += 1
        try:
            yield Window(self, region, offset, byte_size)
        finally:
            with self._lock:
                region.users -= 1
                if region.unregistered:
                    self._drop(region)


class Window:
    """A held part of a region: ``read()`` copies it out, ``write(data)`` copies into it from its start. Each looks
    at the object first: gone (unlinked) unregisters the region, too short is refused."""

    def __init__(self, owner: SharedMemory, region: _Region, offset: int, byte_size: int) -> None:
        self._owner, self._region = owner, region
        self.offset, self.byte_size = offset, byte_size  # offset: from the region's start
        self.start = region.status.offset + offset       # from the object's start

    @property
    def name(self) -> str:
        return self._region.status.name

    def _check(self, size: int) -> None:
        region = self._region
        info = os.fstat(region.fd)
        if info.st_nlink == 0:
            with self._owner._lock:
                self._owner._drop(region)
            raise RegionNotFound(f"shared memory region '{self.name}': its object '{region.status.key}' was unlinked; "
                                 "the region is unregistered")
        end = info.st_size
        if end < self.start + size:
            raise InvalidInput(f"shared memory region '{self.name}': its object '{region.status.key}' holds {end} "
                               f"bytes, fewer than the {self.start + size} this request needs (truncated after it was "
                               "registered)")

    def read(self) -> memoryview:
        """The window's bytes (a copy)."""
        self._check(self.byte_size)
        out = np.empty(self.byte_size, dtype=np.uint8)  # not zero-filled: every byte is read over
        view, done = memoryview(out), 0
        try:
            while done < self.byte_size:
                n = os.preadv(self._region.fd, [view[done:]], self.start + done)
                if n == 0:  # the object was truncated between the check and the read
                    raise InvalidInput(f"shared memory region '{self.name}': its object '{self._region.status.key}' "
                                       "was truncated while it was read")
                done += n
        except OSError as e:
            raise InvalidInput(f"shared memory region '{self.name}' cannot be read: {e.strerror or e}") from None
        return view

    def write(self, data: memoryview | bytes | np.ndarray) -> int:
        """Copy ``data`` into the window from its start; the bytes written. A write never reaches outside the
        window: an object truncated meanwhile grows back to what the window needs, nothing more."""
        view = memoryview(data).cast("B")
        if len(view) > self.byte_size:
            raise InvalidInput(f"shared memory region '{self.name}': {len(view)} bytes to write, the request gave "
                               f"{self.byte_size}")
        self._check(len(view))
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self._region.fd, view[done:], self.start + done)
                if n == 0:
                    raise InvalidInput(f"shared memory region '{self.name}': the object took no more bytes")
                done += n
        except OSError as e:  # ENOSPC: tmpfs allocates pages as they are first written
            raise InvalidInput(f"shared memory region '{self.name}' cannot be written: {e.strerror or e}") from None
        return done


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(f"a shared memory region's name must be 1-{MAX_NAME_CHARS} printable characters")


def _unlinked(region: _Region) -> bool:
    """Whether the region's object has no name left (its client unlinked it; the descriptor keeps it alive)."""
    return os.fstat(region.fd).st_nlink == 0
