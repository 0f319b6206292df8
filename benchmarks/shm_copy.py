"""Row family ``shm``: what reading and writing a shared-memory region with ``pread``/``pwrite`` costs against a copy
through a mapping, on the tensors the server moves (``python -m benchmarks.shm_copy``, or a family of the run).

The candidate is the server's own path (:class:`serving.runtime.shared_memory.SharedMemory`: ``fstat``, then
``preadv`` into a new array, or ``pwrite``); the baseline maps the object once, as Triton does at registration, and
copies through the mapping after the same ``fstat``. The mapping is faster, but a page beyond the end of an object
its client truncated raises SIGBUS in the server, which no check made before the copy can rule out; the rows say
what that safety costs per request. The zero-copy view of the mapping is reported too (what a server that hands
the mapping itself to onnxruntime would pay). Sizes: a digits input (1×1×28×28 FP32, 3136 B), a ResNet-18 input
(1×3×224×224, 602 112 B), a batch of 8 of those (4.8 MB), and the outputs (10 and 1000 logits).
"""

from __future__ import annotations

import mmap
import os
import secrets
import sys
from pathlib import Path

import numpy as np

from benchmarks.core import Context, Row, Stat, interleaved, speed_ratio
from serving.runtime.shared_memory import SHM_DIR, SharedMemory

SIZES = {"digits input (3136 B)": 3136, "ResNet-18 input (602 kB)": 3 * 224 * 224 * 4,
         "8 ResNet-18 inputs (4.8 MB)": 8 * 3 * 224 * 224 * 4, "digits logits (40 B)": 40,
         "ResNet-18 logits (4000 B)": 4000}


def _object(size: int) -> tuple[str, int]:
    key = f"/bench-shm-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(SHM_DIR / key[1:], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    os.pwrite(fd, np.random.default_rng(0).bytes(size), 0)
    return key, fd


def measure(size: int, repeats: int, seconds: float) -> dict[str, Stat]:
    """Seconds per call of each way to read and write ``size`` bytes of a region."""
    key, fd = _object(size)
    table = SharedMemory(1)
    try:
        table.register("bench", "r", key, 0, size)
        mapping = mmap.mmap(fd, size)
        out = np.empty(size, np.uint8)
        data = np.random.default_rng(1).bytes(size)
        with table.window("bench", "r", 0, size, write=True) as window:
            def mapped_read() -> None:
                os.fstat(fd)
                np.copyto(out, np.frombuffer(mapping, np.uint8, size))

            def mapped_write() -> None:
                os.fstat(fd)
                mapping[:size] = data

            fns = {"pread": window.read, "mmap copy": mapped_read, "mmap view": lambda: np.frombuffer(mapping,
                                                                                                      np.uint8, size),
                   "pwrite": lambda: window.write(data), "mmap write": mapped_write}
            stats = interleaved(fns, repeats, seconds, budget_s=30.0)
        mapping.close()
        return stats
    finally:
        table.close()
        os.close(fd)
        (SHM_DIR / key[1:]).unlink()


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for label, size in SIZES.items():
        stats = {k: v.scaled(1e6, "µs") for k, v in measure(size, ctx.repeats(7, 3), 0.05).items()}
        reading = "logits" not in label
        candidate, baseline = ("pread", "mmap copy") if reading else ("pwrite", "mmap write")
        rows.append(Row("shm", f"{'read' if reading else 'write'} {label}", f"{baseline} (fstat + copy)",
                        stats[baseline], f"{candidate} (fstat + {candidate}, the server's path)", stats[candidate],
                        speed_ratio(stats[baseline], stats[candidate]),
                        details={"bytes": size, "mmap_view_us": round(stats["mmap view"].median, 3)}))
    return rows


def main() -> int:
    ctx = Context(work=Path("."), quick="--quick" in sys.argv, threads=1, root=Path("."))
    print(f"{'what':40} {'mmap (fstat + copy)':>22} {'pread/pwrite':>22} {'ratio':>6}")
    for row in run(ctx):
        assert row.baseline_stat is not None
        assert row.candidate_stat is not None
        print(f"{row.name:40} {row.baseline_stat.text():>22} {row.candidate_stat.text():>22} {row.ratio:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
