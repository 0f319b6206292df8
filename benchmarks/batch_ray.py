"""Row family ``ray``: the batch CLI's Ray engine vs its local engine, same inputs, images per second.

Both candidates are the CLI's public entry point (``serving.batch.run`` with the arguments ``python -m serving batch
FOLDER --repository DIR --model resnet18 --output F.parquet [--engine ray]`` would parse), timed end to end: model
load and golden check, walking the folder, reading and decoding every 4-MP JPEG, ResNet-18 at 224 px, the Parquet
rows. Ray runs on a local cluster of this machine's ``--threads`` CPUs, started once before the repeats (its
start-up is reported apart: a cluster outlives its jobs); each Ray repeat still starts its own actors, each loading
the model. Repeats alternate.

On one machine Ray cannot win: the same cores decode and infer, with Ray's scheduling, object store and actor
start-up on top. The ratio (``ray_engine`` in ``benchmarks/targets.py``, no threshold) is that overhead; Ray's gain
is in going past one machine.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import time
from pathlib import Path

import numpy as np

from benchmarks import assets
from benchmarks.core import Context, Row, Stat

BATCH_SIZE = 16
SIZE = (2304, 1728)   # 4 MP, a phone photo's order of size
DISTINCT = 8          # distinct pictures, written under many names


def _photos(ctx: Context, count: int) -> Path:
    """JPEGs that decode like photos: drawn shapes under sensor-like noise (flat drawings compress unrealistically)."""
    from PIL import Image

    folder = ctx.work / "ray-photos"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pictures = []
    for i in range(DISTINCT):
        base = np.asarray(assets.draw(2000 + i, SIZE, "RGB"), dtype=np.int16)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        pictures.append(assets.encode(Image.fromarray(noisy), "JPEG"))
    for i in range(count):
        (folder / f"{i:04d}.jpg").write_bytes(pictures[i % DISTINCT])
    return folder


def _cli(args: list[str]) -> tuple[float, float | None]:
    """Seconds for one CLI run, and the job-only images/s it printed (without the model load)."""
    from serving.batch import job as batch

    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code = batch.run(parser.parse_args(args), stdout=stdout, stderr=stderr)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"batch CLI exited {code}: {stderr.getvalue()[-1000:]}")
    rate = re.search(r"([\d.]+) images/s", stdout.getvalue())
    return seconds, float(rate.group(1)) if rate else None


def _start_ray(ctx: Context) -> float:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # one machine: Ray on 127.0.0.1 only
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=ctx.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return time.perf_counter() - start


def run(ctx: Context) -> list[Row]:
    import ray

    asset = assets.resnet18(ctx)
    count = 32 if ctx.quick else 96
    folder = _photos(ctx, count)
    out = ctx.work / "ray-out.parquet"
    common = [str(folder), "--repository", str(asset.repository), "--model", asset.name, "--output", str(out),
              "--overwrite", "--quiet", "--batch-size", str(BATCH_SIZE)]
    engines = {"local": ["--threads", str(ctx.threads)],
               "ray": ["--engine", "ray", "--threads", "1", "--workers", str(ctx.threads)]}
    ray_start_s = _start_ray(ctx)
    try:
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        rates: dict[str, list[float]] = {name: [] for name in engines}
        ctx.log(f"ray: {count} JPEGs of {SIZE[0]}x{SIZE[1]}, batch {BATCH_SIZE}, Ray started in {ray_start_s:.1f} s")
        _cli(common + engines["local"])  # warm-up: file cache, imports
        for _ in range(ctx.repeats(2, 1)):
            for name, extra in engines.items():
                s, rate = _cli(common + extra)
                seconds[name].append(s)
                if rate:
                    rates[name].append(rate)
    finally:
        ray.shutdown()
    local, remote = (Stat.of(seconds[n], "s").rate(count, "img/s") for n in engines)
    ratio = remote.median / local.median
    return [Row("ray", f"resnet18: batch CLI, Ray engine vs local engine ({count} 4-MP JPEGs, batch {BATCH_SIZE})",
                f"--engine local, {ctx.threads} threads, {ctx.threads} decoding processes", local,
                f"--engine ray, {ctx.threads} actors x 1 CPU on a local cluster", remote, ratio,
                target="ray_engine", met=True, verdict=f"{ratio:.2f}x reported (no threshold)",
                details={"images": count, "image_size": list(SIZE), "batch_size": BATCH_SIZE,
                         "ray_cluster_start_s": round(ray_start_s, 2),
                         "job_only_img_s": {n: Stat.of(r, "img/s").median if r else None for n, r in rates.items()},
                         "includes": "model load + golden check (Ray: in the driver and in every actor), actor "
                                     "start-up, folder walk, JPEG decode, ResNet-18, Parquet writing"})]
