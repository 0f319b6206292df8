"""Processes seen from outside: resident memory from the kernel, child processes, and running without root's
privileges (Linux ``/proc``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import pytest


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB, from the kernel (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def settled_rss_kb(pid: int, tolerance_kb: int = 256, interval: float = 0.05, timeout: float = 5.0) -> int:
    """VmRSS once two readings ``interval`` apart agree within ``tolerance_kb`` (a server frees the buffers of its
    last answers just after sending them); the last reading if it never settles within ``timeout``."""
    deadline = time.monotonic() + timeout
    before = rss_kb(pid)
    while True:
        time.sleep(interval)  # the sampling period of a measurement, not a wait for an event
        now = rss_kb(pid)
        if abs(now - before) <= tolerance_kb or time.monotonic() > deadline:
            return now
        before = now


def slope_kb_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per minute."""
    t = np.array([s[0] for s in samples], dtype=np.float64)
    kb = np.array([s[1] for s in samples], dtype=np.float64)
    return float(np.polyfit(t / 60.0, kb, 1)[0])


class Periodic:
    """Calls ``tick()`` every ``period`` seconds in a thread while the ``with`` block runs, and once more at its end;
    a ``tick`` returning False stops it early."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def tick(self) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        while self.tick() and not self._stop.wait(self.period):
            pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.tick()


class RssSampler(Periodic):
    """(seconds, VmRSS KiB) of a process every ``period`` seconds while the ``with`` block runs."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(period)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()

    def tick(self) -> bool:
        try:
            self.samples.append((time.perf_counter() - self._t0, rss_kb(self.pid)))
        except (OSError, RuntimeError):
            return False  # the process is gone
        return True

    @property
    def peak(self) -> int:
        return max(kb for _, kb in self.samples)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, children.read_text().split()):
            found += [child, *descendants(child)]
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def drop_root_privileges() -> list[str]:
    """A command prefix under which file permissions hold: as root they stop nothing (CAP_DAC_OVERRIDE), so the
    command runs without that capability (setpriv); skips the test where that is impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to hold")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
