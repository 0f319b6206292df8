"""Resident memory per input, to tell a leak from the allocator's high-water (docs/reliability.md#memory).

    python -m tests.reliability.rss_per_input server --inputs 200000 [--replay 50000] [--fixed-malloc] [--seed S]
    python -m tests.reliability.rss_per_input decode --inputs 30000

``server``: a server process started and warmed up as in test_reliability_fuzz.py receives that test's mutation run
(same seed, same sequence, the same two APIs); VmRSS is read after every input, and malloc's own figures (bytes in
use, free bytes it keeps) every 1,000 inputs from inside the process, by a thread that answers on a Unix socket.
``--replay`` sends the first inputs again; ``--fixed-malloc`` starts the server with ``FIXED_MALLOC_THRESHOLDS``.
A leak grows malloc's bytes in use, at the same pace on replay; high-water grows only the free bytes, in steps that
replaying the same inputs does not repeat.

``decode``: the decoder alone, in this process (one decoding thread, as the test's server has), one damage kind and
then one seed file at a time: VmRSS and malloc's bytes in use per 10,000 inputs of each.

Linux and glibc only (``mallinfo2``, glibc 2.33 or later). A measuring tool, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tests.reliability.memory import FIXED_MALLOC_THRESHOLDS, slope
from tests.support.hostile import mutate, seed_images, unusual_images
from tests.support.processes import rss_kb

KINDS = ("truncate", "flip", "flip-header", "overwrite", "insert", "delete", "splice-zero")
PROBE = "PROBE_SOCKET"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_kb() -> dict[str, int]:
    """This process's malloc, all arenas: bytes in use (``uordblks`` + mapped blocks) and free bytes kept, in KiB."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"in_use": (info.uordblks + info.hblkhd) // 1024, "free": info.fordblks // 1024,
            "rss": rss_kb(os.getpid())}


def _answer_probes(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(json.dumps(malloc_kb()).encode())


def probe(path: str) -> dict[str, int]:
    """``malloc_kb()`` of the server process listening on ``path``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        return json.loads(s.makefile().read())


def mutations(seed: int, count: int) -> Iterator[tuple[str, str, bytes]]:
    """(seed file, damage kind, bytes): test_mutated_images's sequence for ``seed``."""
    rng = np.random.default_rng(seed)
    seeds = list(seed_images().items()) + list(unusual_images().items())[:6]
    for i in range(count):
        name, data = seeds[i % len(seeds)]
        kind, payload = mutate(data, rng)
        if rng.random() < 0.25:
            _, payload = mutate(payload, rng) if payload else (kind, payload)
        yield name, kind, payload


def per_10k(points: list[tuple[int, int]]) -> float:
    return slope([(n / 1e4, kb) for n, kb in points])


def server(args: argparse.Namespace) -> None:
    from tests.support.repositories import build_repository

    with tempfile.TemporaryDirectory(prefix="rss-per-input-") as work:
        measure_server(args, build_repository(Path(work)).path, Path(work) / "probe.sock")


def measure_server(args: argparse.Namespace, repository: Path, probe_path: Path) -> None:
    from tests.reliability import test_reliability_fuzz as fuzz
    from tests.support.servers import ServerProcess, call, classify_request

    env = {PROBE: str(probe_path), "SERVING_INSTANCES": "2",
           **(FIXED_MALLOC_THRESHOLDS if args.fixed_malloc else {})}
    process = ServerProcess(repository, "--max-pixels", str(fuzz.MAX_PIXELS), "--max-message-mb",
                            str(fuzz.MAX_MESSAGE_MB), "--max-images-per-request", "4000", "--max-queue", "4000",
                            "--max-queue-delay-ms", "1", launcher=[sys.executable, "-m", __spec__.name, "probed"],
                            env=env)
    try:
        fuzz.warm_up(process)
        print(f"after the warm-up: {probe(env[PROBE])}", flush=True)
        rows: list[tuple[int, str, str, int]] = []  # (pass, seed file, damage, VmRSS KiB after it)
        malloc: list[tuple[int, dict[str, int]]] = []
        for passed, count in ((1, args.inputs), (2, args.replay)):
            for i, (name, kind, payload) in enumerate(mutations(args.seed, count)):
                if i % 4 == 3:
                    call(lambda p=payload: process.inference.ModelInfer(fuzz.bytes_request([p]), timeout=30))
                else:
                    call(lambda p=payload: process.classifier.Classify(classify_request(p), timeout=30))
                rows.append((passed, name, kind, rss_kb(process.proc.pid)))
                if len(rows) % 1000 == 0:
                    malloc.append((len(rows), probe(env[PROBE])))
                if len(rows) % 20000 == 0:
                    print(f"{len(rows)} inputs: {malloc[-1][1]}", flush=True)
        report(rows, malloc, args.inputs)
    finally:
        process.stop()


def report(rows: list[tuple[int, str, str, int]], malloc: list[tuple[int, dict[str, int]]], first: int) -> None:
    rss = [(n + 1, row[3]) for n, row in enumerate(rows)]
    second = rss[first // 2:first]
    print(f"VmRSS over the first pass: {rss[0][1] / 1024:.1f} → {rss[first - 1][1] / 1024:.1f} MiB, between "
          f"{min(kb for _, kb in rss[:first]) / 1024:.1f} and {max(kb for _, kb in rss[:first]) / 1024:.1f}; second "
          f"half {per_10k(second):+.0f} KiB per 10,000 inputs")
    for key in ("in_use", "free"):
        points = [(n, m[key]) for n, m in malloc if first // 2 < n <= first]
        values = [m[key] for n, m in malloc if n <= first]
        if len(points) > 1:
            print(f"malloc {key}: {min(values) / 1024:.1f}–{max(values) / 1024:.1f} MiB, second half "
                  f"{per_10k(points):+.1f} KiB per 10,000 inputs")
    if len(rss) > first + 1:
        print(f"replay of {len(rss) - first} inputs: VmRSS {per_10k(rss[first:]):+.0f} KiB per 10,000 inputs, "
              f"{(rss[-1][1] - rss[first - 1][1]) / 1024:+.1f} MiB")
    # Each input's change of VmRSS charged to its seed file and its (first) damage, over the first pass's second half:
    # which inputs bring the steps (a reading right after an answer also sees buffers freed just after it).
    for column, title in ((1, "seed file"), (2, "damage")):
        net: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        for n in range(first // 2, first):
            net[rows[n][column]] += rows[n][3] - rows[n - 1][3]
            count[rows[n][column]] += 1
        print(f"by {title}: VmRSS change after its inputs, KiB per 10,000 of them (second half)")
        for name in sorted(net, key=lambda k: -net[k]):
            print(f"  {name:16} {count[name]:7} inputs {net[name] / count[name] * 1e4:+10.0f}")


def decode(args: argparse.Namespace) -> None:
    """The decoder alone, one damage kind and then one seed file at a time."""
    from serving.contract.preprocess import PreprocessSpec, preprocess
    from serving.errors import InvalidInput

    spec = PreprocessSpec(size=(28, 28), color_mode="L")
    seeds = list(seed_images().items()) + list(unusual_images().items())[:6]
    rng = np.random.default_rng(args.seed)
    worker = ThreadPoolExecutor(1)

    def one(payload: bytes) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                preprocess(payload, spec, 4_000_000)
        except InvalidInput:
            pass

    def measure(label: str, pick: Iterator[bytes]) -> None:
        started = time.perf_counter()
        points: list[tuple[int, dict[str, int]]] = []
        step = max(10, args.inputs // 60)  # 60 readings of each
        for n in range(args.inputs // step):
            list(worker.map(one, [next(pick) for _ in range(step)]))
            points.append(((n + 1) * step, malloc_kb()))
        half = points[len(points) // 2:]
        print(f"  {label:16} malloc in use {per_10k([(n, m['in_use']) for n, m in half]):+8.1f}, VmRSS "
              f"{per_10k([(n, m['rss']) for n, m in half]):+8.0f} KiB per 10,000 inputs (second half; "
              f"{time.perf_counter() - started:.0f} s)", flush=True)

    def damaged(kind: str | None, files: list[tuple[str, bytes]]) -> Iterator[bytes]:
        while True:
            _, data = files[int(rng.integers(len(files)))]
            got, payload = mutate(data, rng)
            if kind is None or got == kind:
                yield mutate(payload, rng)[1] if payload and rng.random() < 0.25 else payload

    print(f"decoding alone, {args.inputs} inputs of each; by damage:")
    for kind in KINDS:
        measure(kind, damaged(kind, seeds))
    print("by seed file:")
    for name, data in seeds:
        measure(name, damaged(None, [(name, data)]))


def main(argv: list[str]) -> None:
    if argv[:1] == ["probed"]:  # the server process: the serve command, and a thread that answers probes
        threading.Thread(target=_answer_probes, args=(os.environ[PROBE],), daemon=True).start()
        from serving.cli import main as serve

        sys.exit(serve(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.rss_per_input")
    parser.add_argument("mode", choices=("server", "decode"))
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--replay", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1796661557)
    parser.add_argument("--fixed-malloc", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "server":
        server(args)
    else:
        decode(args)


if __name__ == "__main__":
    main(sys.argv[1:])
