"""Row family ``batch``: the batch CLI in local mode vs in-process onnxruntime on pre-decoded batches.

The candidate is the CLI's public entry point (``serving.batch.run`` with the arguments ``python -m serving batch
FOLDER --repository DIR --model digits --output F.csv`` would parse), timed end to end: model load and golden
check, walking the folder, reading and decoding every PNG, onnxruntime, the CSV. The baseline is the same Predictor
running the same images, already decoded, in batches of the same size — the model's own ceiling. Repeats alternate.

The project's batch-CLI target (``batch_cli`` in ``benchmarks/targets.py``) is set on realistic JPEGs; this row's
small PNGs, where decoding costs as much as the model, are reported but do not judge it.
"""

from __future__ import annotations

import argparse
import io
import re
import time

import numpy as np

from benchmarks import assets
from benchmarks.core import Context, Row, Stat

BATCH_SIZE = 32
DISTINCT = 64  # distinct pictures, written under many names: generating thousands of drawings is not the point


def _folder(ctx: Context, count: int):  # type: ignore[no-untyped-def]
    folder = ctx.work / "batch-images"
    pictures = [assets.encode(assets.draw(1000 + i, (28, 28), "L"), "PNG") for i in range(DISTINCT)]
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"  # a few sub-folders, as real collections have
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.png").write_bytes(pictures[i % DISTINCT])
    return folder


def _cli(ctx: Context, asset: assets.ModelAsset, folder, out) -> tuple[float, float | None]:  # type: ignore[no-untyped-def]
    """Seconds for one CLI run, and the job-only images/s it printed (without the model load)."""
    from serving.batch import job as batch

    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    args = parser.parse_args([str(folder), "--repository", str(asset.repository), "--model", asset.name,
                              "--output", str(out), "--overwrite", "--quiet", "--batch-size", str(BATCH_SIZE),
                              "--threads", str(ctx.threads)])
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code = batch.run(args, stdout=stdout, stderr=stderr)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"batch CLI exited {code}: {stderr.getvalue()[-1000:]}")
    rate = re.search(r"([\d.]+) images/s", stdout.getvalue())
    return seconds, float(rate.group(1)) if rate else None


def run(ctx: Context) -> list[Row]:
    from serving.runtime.loader import load_model

    asset = assets.digits(ctx)
    count = 300 if ctx.quick else 3000
    folder = _folder(ctx, count)
    files = sorted(folder.rglob("*.png"))
    predictor = load_model(asset.version_dir, threads=ctx.threads).predictor
    decoded = np.stack([predictor.preprocess(f.read_bytes()) for f in files])
    batches = [decoded[i:i + BATCH_SIZE] for i in range(0, len(decoded), BATCH_SIZE)]
    out = ctx.work / "batch-out.csv"
    cli_s, job_rates, base_s = [], [], []
    ctx.log(f"batch: {count} PNGs, batch size {BATCH_SIZE}, {ctx.repeats(3)} repeats")
    _cli(ctx, asset, folder, out)  # warm-up: file cache, imports
    for _ in range(ctx.repeats(3)):
        seconds, rate = _cli(ctx, asset, folder, out)
        cli_s.append(seconds)
        if rate:
            job_rates.append(rate)
        start = time.perf_counter()
        for x in batches:
            predictor.run(x)
        base_s.append(time.perf_counter() - start)
    rows_written = sum(1 for _ in out.open()) - 1
    if rows_written != count:
        raise RuntimeError(f"the batch CLI wrote {rows_written} rows for {count} files")
    cli, base = Stat.of(cli_s, "s").rate(count, "img/s"), Stat.of(base_s, "s").rate(count, "img/s")
    ratio = cli.median / base.median
    return [Row("batch", f"digits: batch CLI (local, {count} PNGs, batch {BATCH_SIZE}) vs in-process ORT on "
                "pre-decoded batches", f"in-process ORT, batch {BATCH_SIZE}, pre-decoded", base,
                "python -m serving batch --repository (end to end)", cli, ratio,
                details={"images": count, "batch_size": BATCH_SIZE, "threads": ctx.threads,
                         "cli_job_only_img_s": Stat.of(job_rates, "img/s").median if job_rates else None,
                         "cli_includes": "model load + golden check, folder walk, PNG decode, CSV writing"})]
