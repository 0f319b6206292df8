"""Inline tensors against system shared memory, through ``tritonclient``, on a running server.

    python -m benchmarks.shm_client --server localhost:8001 --model resnet18 [--transport grpc|http] [--batch 1]
        [--concurrency 1] [--seconds 3] [--rounds 3] [--token-file F]

Each client thread (``--concurrency``) has its own connection and its own two regions (input, output), made and
registered with tritonclient's own shared-memory utilities. Rounds alternate between sending the input inline
(``raw_input_contents`` / Triton's binary HTTP extension, the answer's tensor inline) and naming the regions, so a
load change on the machine hits both alike. Before timing, the answer read from the output region is checked to be
the inline answer, bit for bit. Prints requests/s, median and p90 latency of each, and their ratio.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _token(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    return {"authorization": f"Bearer {path.read_text().split()[0]}"}


class Worker:
    """One client: its connection, its regions, and the two requests (inline and through shared memory)."""

    def __init__(self, args: argparse.Namespace, number: int) -> None:
        import tritonclient.utils.shared_memory as tshm

        self.module: Any = importlib.import_module(f"tritonclient.{args.transport}")
        self.client = self.module.InferenceServerClient(args.server)
        self.headers, self.model = _token(args.token_file), args.model
        meta = self.client.get_model_metadata(args.model, headers=self._headers())
        inputs = meta["inputs"] if isinstance(meta, dict) else [
            {"name": t.name, "shape": list(t.shape)} for t in meta.inputs]
        outputs = meta["outputs"] if isinstance(meta, dict) else [
            {"name": t.name, "shape": list(t.shape)} for t in meta.outputs]
        shape = [args.batch, *inputs[0]["shape"][1:]]
        self.input_name, self.output_name = inputs[0]["name"], outputs[0]["name"]
        self.x = np.random.default_rng(number).standard_normal(shape).astype("<f4")
        self.out_bytes = 4 * args.batch * int(outputs[0]["shape"][-1])
        tag = f"{os.getpid()}-{number}-{secrets.token_hex(3)}"
        self.names = (f"bench-in-{tag}", f"bench-out-{tag}")
        self.handles = [tshm.create_shared_memory_region(self.names[0], "/" + self.names[0], self.x.nbytes),
                        tshm.create_shared_memory_region(self.names[1], "/" + self.names[1], self.out_bytes)]
        tshm.set_shared_memory_region(self.handles[0], [self.x])
        for name, size in ((self.names[0], self.x.nbytes), (self.names[1], self.out_bytes)):
            self.client.register_system_shared_memory(name, "/" + name, size, headers=self._headers())

    def _headers(self) -> dict[str, str] | None:
        return dict(self.headers) if self.headers else None  # tritonclient.http adds to the dict it is given

    def inline(self) -> np.ndarray:
        tensor = self.module.InferInput(self.input_name, list(self.x.shape), "FP32")
        tensor.set_data_from_numpy(self.x)
        return self.client.infer(self.model, [tensor], headers=self._headers()).as_numpy(self.output_name)

    def shared(self) -> None:
        tensor = self.module.InferInput(self.input_name, list(self.x.shape), "FP32")
        tensor.set_shared_memory(self.names[0], self.x.nbytes)
        output = self.module.InferRequestedOutput(self.output_name)
        output.set_shared_memory(self.names[1], self.out_bytes)
        self.client.infer(self.model, [tensor], outputs=[output], headers=self._headers())

    def check(self) -> None:
        """The answer written into the output region is the inline answer, bit for bit."""
        import tritonclient.utils.shared_memory as tshm

        expected = self.inline()
        self.shared()
        got = tshm.get_contents_as_numpy(self.handles[1], np.float32, list(expected.shape))
        if got.tobytes() != expected.astype("<f4").tobytes():
            raise SystemExit("the answer through shared memory differs from the inline answer")

    def close(self) -> None:
        import tritonclient.utils.shared_memory as tshm

        for name in self.names:
            self.client.unregister_system_shared_memory(name, headers=self._headers())
        for handle in self.handles:
            tshm.destroy_shared_memory_region(handle)
        self.client.close()


def _window(workers: list[Worker], call: Callable[[Worker], object], seconds: float) -> list[float]:
    """Every worker calls ``call`` in a loop for ``seconds``; the latencies of all calls."""
    latencies: list[list[float]] = [[] for _ in workers]
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call(workers[i])
            latencies[i].append(time.perf_counter() - started)

    if len(workers) == 1:  # in this thread: tritonclient.http's gevent pool belongs to the thread that made it
        loop(0)
        return latencies[0]
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [t for per in latencies for t in per]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shm_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="localhost:8001", help="HOST:PORT of the transport's port")
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0, help="per window (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="windows of each kind, alternating (default 3)")
    p.add_argument("--token-file", type=Path, help="file whose first word is the bearer token")
    args = p.parse_args(argv)
    if args.transport == "http" and args.concurrency > 1:
        p.error("--transport http measures --concurrency 1 only (tritonclient.http's connections belong to one thread)")
    workers = [Worker(args, i) for i in range(args.concurrency)]
    try:
        for worker in workers:
            worker.check()
        _window(workers, Worker.shared, 0.5)  # warm-up
        _window(workers, Worker.inline, 0.5)
        found: dict[str, list[float]] = {"inline": [], "shared memory": []}
        rates: dict[str, list[float]] = {"inline": [], "shared memory": []}
        for _ in range(args.rounds):
            for kind, call in (("inline", Worker.inline), ("shared memory", Worker.shared)):
                latencies = _window(workers, call, args.seconds)
                found[kind] += latencies
                rates[kind].append(len(latencies) / args.seconds)
    finally:
        for worker in workers:
            worker.close()
    print(f"{args.model}, batch {args.batch}, concurrency {args.concurrency}, {args.transport}; "
          f"{workers[0].x.nbytes} input bytes per request")
    for kind, latencies in found.items():
        ordered = sorted(latencies)
        p50, p90 = statistics.median(ordered) * 1e3, ordered[int(0.9 * (len(ordered) - 1))] * 1e3
        print(f"  {kind:14} {statistics.median(rates[kind]):8.1f} req/s   p50 {p50:7.3f} ms   p90 {p90:7.3f} ms   "
              f"({len(ordered)} requests)")
    ratio = statistics.median(rates["shared memory"]) / statistics.median(rates["inline"])
    delta = (statistics.median(found["shared memory"]) - statistics.median(found["inline"])) * 1e3
    print(f"  shared memory / inline: {ratio:.3f}x requests/s, p50 {delta:+.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
