"""Benchmarks: the NumPy ResNet forward against PyTorch eager on the same model, input and thread count; and the
pure-Python layers (``models.scratch.pure``) against the NumPy ones on one small input.

The one file under models/scratch that uses torch, imported inside ``time_numpy_vs_torch`` only, so
``import models.scratch`` stays torch-free. ``time_numpy_vs_torch`` runs in ``make bench``;
``python -m models.scratch.bench pure`` prints ``time_pure_vs_numpy``. Not tests.

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

__all__ = ["random_block_state", "time_numpy_vs_torch", "time_pure_vs_numpy"]


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


def random_block_state(inplanes: int, planes: int, stride: int = 1, seed: int = 0,
                       dtype: type = np.float64) -> dict[str, np.ndarray]:
    """A BasicBlock's state_dict (torch's key names) with random weights and non-trivial BN statistics; a projection
    shortcut where the stride or the width changes, as models/resnet.py builds it."""
    rng = np.random.default_rng(seed)

    def bn(prefix: str, n: int) -> dict[str, np.ndarray]:
        return {prefix + "weight": rng.uniform(0.5, 1.5, n), prefix + "bias": rng.normal(0, 0.2, n),
                prefix + "running_mean": rng.normal(0, 0.3, n), prefix + "running_var": rng.uniform(0.5, 2.0, n)}

    state = {"conv1.weight": rng.normal(0, 0.3, (planes, inplanes, 3, 3)), **bn("bn1.", planes),
             "conv2.weight": rng.normal(0, 0.3, (planes, planes, 3, 3)), **bn("bn2.", planes)}
    if stride != 1 or inplanes != planes:
        state |= {"downsample.0.weight": rng.normal(0, 0.3, (planes, inplanes, 1, 1)), **bn("downsample.1.", planes)}
    return {k: v.astype(dtype) for k, v in state.items()}


def time_pure_vs_numpy(channels: int = 16, size: int = 16, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Median time of one 3×3 convolution (``channels`` → ``channels``, padding 1) and of one BasicBlock on a
    (channels, size, size) image: pure Python lists and loops, NumPy's loop-per-output ``conv2d_naive``, and NumPy
    im2col + BLAS, in float64 on one BLAS thread. Returns a JSON-ready dict; ``*_ratio`` = slower / im2col."""
    from models.scratch import conv2d, conv2d_naive, pure
    from models.scratch.blocks import BasicBlock
    from models.scratch.layout import to_nchw, to_nhwc
    from models.scratch.state import StateReader

    state = random_block_state(channels, channels, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((1, channels, size, size))
    x_list, lists = x[0].tolist(), {k: v.tolist() for k, v in state.items()}
    block = BasicBlock.from_state(StateReader(state, dtype=np.float64), "", stride=1, in_channels=channels)
    w = state["conv1.weight"]
    runs: dict[str, Callable[[], object]] = {
        "conv_pure": lambda: pure.conv2d(x_list, lists["conv1.weight"], padding=1),
        "conv_numpy_naive": lambda: conv2d_naive(x, w, padding=1),
        "conv_numpy_im2col": lambda: conv2d(x, w, padding=1),
        "block_pure": lambda: pure.basic_block_from_state(x_list, lists),
        "block_numpy": lambda: to_nchw(block(to_nhwc(x))),  # the NumPy network works channels-last
    }
    with _blas_threads(1):
        seconds = {name: _median_seconds(fn, repeats, warmup=1) for name, fn in runs.items()}
        diff = float(np.abs(np.array(runs["block_pure"]()) - runs["block_numpy"]()[0]).max())
    macs = channels * size * size * channels * 9
    return {
        "input": [channels, size, size], "repeats": repeats, "conv_macs": macs,
        **{f"{name}_s": s for name, s in seconds.items()},
        "conv_pure_ratio": seconds["conv_pure"] / seconds["conv_numpy_im2col"],
        "conv_naive_ratio": seconds["conv_numpy_naive"] / seconds["conv_numpy_im2col"],
        "block_pure_ratio": seconds["block_pure"] / seconds["block_numpy"],
        "pure_macs_per_s": macs / seconds["conv_pure"],
        "block_max_abs_diff": diff,
    }


if __name__ == "__main__":  # python -m models.scratch.bench [pure]
    import json
    import sys

    print(json.dumps(time_pure_vs_numpy() if sys.argv[1:] == ["pure"] else time_numpy_vs_torch(), indent=2))
