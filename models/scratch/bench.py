"""Benchmark: the NumPy ResNet forward against PyTorch eager on the same model, input and thread count.

The one file under models/scratch that uses torch, imported inside ``time_numpy_vs_torch`` only, so
``import models.scratch`` stays torch-free. Run by ``make bench``; not a test.

Both sides are pinned to ``threads`` (threadpoolctl for BLAS, ``torch.set_num_threads``): OpenBLAS's default of
one spinning thread per core slows a small forward many times over on a busy machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

__all__ = ["time_numpy_vs_torch"]


def _blas_threads(n: int) -> AbstractContextManager[Any]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn in the train set
        return nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_numpy_vs_torch(
    arch: str = "resnet20",
    input_chw: tuple[int, int, int] = (1, 16, 16),
    batch: int = 360,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    num_classes: int = 10,
    fold_bn: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Median forward time of ``models.scratch`` vs PyTorch eager (``torch.inference_mode``) on one random model.

    The model gets non-trivial BatchNorm statistics from three train-mode batches first, so the two outputs are
    also compared (``max_abs_diff``). Returns a JSON-ready dict; ``ratio`` = NumPy time / PyTorch time.
    """
    import torch

    from models import registry
    from models.scratch import from_checkpoint

    torch.manual_seed(seed)
    model = registry.create(arch, num_classes, input_chw[0])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *input_chw))
    model.eval()
    x = np.random.default_rng(seed).standard_normal((batch, *input_chw)).astype(np.float32)
    net = from_checkpoint(arch, {"num_classes": num_classes, "in_chans": input_chw[0]}, model.state_dict(),
                          fold_bn=fold_bn)
    x_t = torch.from_numpy(x)

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return model(x_t).numpy()

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _blas_threads(threads):
            numpy_s = _median_seconds(lambda: net.forward(x), repeats, warmup)
            torch_s = _median_seconds(run_torch, repeats, warmup)
            diff = float(np.abs(net.forward(x) - run_torch()).max())
    finally:
        torch.set_num_threads(previous)
    return {
        "arch": arch,
        "input": list(input_chw),
        "batch": batch,
        "threads": threads,
        "fold_bn": fold_bn,
        "numpy_s": numpy_s,
        "torch_s": torch_s,
        "ratio": numpy_s / torch_s,
        "numpy_images_per_s": batch / numpy_s,
        "torch_images_per_s": batch / torch_s,
        "max_abs_diff": diff,
    }


if __name__ == "__main__":  # python -m models.scratch.bench
    import json

    print(json.dumps(time_numpy_vs_torch(), indent=2))
