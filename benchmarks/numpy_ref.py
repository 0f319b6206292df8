"""Row family ``numpy``: the from-scratch NumPy ResNet forward (``models.scratch``) vs PyTorch eager.

Both run the same random resnet20 with real BatchNorm statistics, on the same input and with the same thread count
(``models.scratch.bench.time_numpy_vs_torch`` pins BLAS and PyTorch). The ratio is how much slower the readable
reference is — the price of a forward pass you can read in one file — and ``max_abs_diff`` shows they agree.
"""

from __future__ import annotations

from benchmarks.core import Context, Row, Stat


def run(ctx: Context) -> list[Row]:
    from models.scratch.bench import time_numpy_vs_torch

    rows = []
    batch = 8 if ctx.quick else 128
    for fold in (False,) if ctx.quick else (False, True):
        ctx.log(f"numpy: resnet20 1x16x16 batch {batch}, fold_bn={fold}")
        # One timed forward per call, several calls: time_numpy_vs_torch reports a median only, and the calls
        # give the spread (each call times NumPy then PyTorch, back to back).
        calls = [time_numpy_vs_torch(arch="resnet20", input_chw=(1, 16, 16), batch=batch, threads=ctx.threads,
                                     repeats=1, warmup=1 if i == 0 else 0, fold_bn=fold)
                 for i in range(ctx.repeats(5))]
        torch_ms = Stat.of([c["torch_s"] * 1e3 for c in calls], "ms")
        numpy_ms = Stat.of([c["numpy_s"] * 1e3 for c in calls], "ms")
        rows.append(Row("numpy", f"resnet20 1x16x16 batch {batch}{' (BN folded)' if fold else ''}: NumPy reference "
                        "vs PyTorch eager", "PyTorch eager", torch_ms, "NumPy reference (models.scratch)", numpy_ms,
                        torch_ms.median / numpy_ms.median,
                        details={"batch": batch, "threads": ctx.threads, "fold_bn": fold,
                                 "max_abs_diff": max(c["max_abs_diff"] for c in calls),
                                 "numpy_images_per_s": batch / numpy_ms.median * 1e3,
                                 "torch_images_per_s": batch / torch_ms.median * 1e3}))
    return rows
