"""Row family ``photos``: what a phone photo costs, decoded in this process, through the server, and in the batch CLI.

The photos are generated (``benchmarks.assets.photo``: photo-like content that encodes to about 2 MB at 12 MP) and
the model is the benchmark ResNet-18 (224 px, random weights). Rows:

- decode: one 12-MP JPEG to the model's 224 px input with the server's own function
  (``serving.contract.preprocess.model_image``), decoded at full size (then resized) vs at the reduced libjpeg scale
  the server uses; and that reduced decode through Pillow vs through ``simplejpeg`` (libjpeg-turbo's own scaling,
  when installed), with its faster-but-different DCT/upsampling options as a detail;
- accuracy: the ResNet-18's outputs on generated 4-MP and 12-MP JPEGs, full vs reduced decode: top-1 agreement
  and the largest probability difference (speed is not the point of this row);
- server (target ``jpeg_12mp``): Classify with the 12-MP JPEG vs Classify with the ready tensor, same server,
  concurrency 1, p50 latency; and the same photo resized by the client to a 224 px PNG (what
  ``python -m serving classify`` sends by default) vs the tensor;
- batch (target ``batch_cli``): ``python -m serving batch --repository`` on a folder of 4-MP JPEGs, end to end,
  vs the same Predictor on pre-decoded batches of the same size.

``--quick`` runs only the decode rows, on a 4-MP photo.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import assets, procs
from benchmarks.batch_cli import _cli
from benchmarks.core import Context, Row, Stat, interleaved, judge
from benchmarks.server import CLASSIFY
from benchmarks.targets import BATCH_CLI, JPEG_12MP

BATCH_SIZE = 32
BATCH_PHOTOS, DISTINCT = 256, 8   # files in the batch folder, distinct pictures among them
ACCURACY_PHOTOS = 8               # 4-MP photos in the accuracy row (plus the 12-MP one)


def _spec(asset: assets.ModelAsset):  # type: ignore[no-untyped-def]
    from serving.contract.preprocess import PreprocessSpec

    return PreprocessSpec.from_dict({**asset.manifest["preprocess"], "labels": asset.manifest["labels"]})


def _rgb224():  # type: ignore[no-untyped-def]
    """The ResNet-18's preprocessing, without building the model (the decode rows need only the spec)."""
    from serving.contract.preprocess import PreprocessSpec

    return PreprocessSpec(size=(224, 224), color_mode="RGB", mean=assets.IMAGENET_MEAN, std=assets.IMAGENET_STD)


# ---- decode ---------------------------------------------------------------------------------------------------------

def decode_rows(ctx: Context, name: str) -> list[Row]:
    from serving.contract.preprocess import load_image, model_image, resize

    spec = _rgb224()
    data = assets.photo_file(ctx, name).read_bytes()
    h, w = spec.size
    fns: dict[str, Any] = {
        "full": lambda: model_image(load_image(data, "RGB"), spec),  # an already-open image is not reduced
        "reduced": lambda: model_image(data, spec),
    }
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
        ctx.note("photos: simplejpeg is not installed; the Pillow-vs-simplejpeg row is skipped")
    if simplejpeg is not None:
        from PIL import Image

        def turbo(**fast: bool):  # type: ignore[no-untyped-def]
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=h, min_width=w, **fast)
            return resize(Image.fromarray(pixels), spec)

        fns["simplejpeg"] = turbo
        fns["simplejpeg fast"] = lambda: turbo(fastdct=True, fastupsample=True)
    ctx.log(f"photos: decoding a {name} JPEG ({len(data) / 1e6:.1f} MB) to 224 px: {', '.join(fns)}")
    stats = {k: v.scaled(1e3, "ms") for k, v in interleaved(fns, ctx.repeats(5, quick=2), 0.5 if ctx.quick else 1.5,
                                                          budget_s=90).items()}
    pixels = {k: np.asarray(fn(), np.int16) for k, fn in fns.items()}
    reduced_size = load_image(data, "RGB", min_size=spec.size).size
    rows = [Row("photos", f"{name} JPEG → 224 px in-process: full-size decode vs reduced-size decode (the server's)",
                "Pillow full decode + resize", stats["full"], f"Pillow draft (decoded at {reduced_size[0]}x"
                f"{reduced_size[1]}) + resize", stats["reduced"], stats["full"].median / stats["reduced"].median,
                details={"jpeg_bytes": len(data), "max_pixel_diff": int(np.abs(pixels["full"] -
                                                                                pixels["reduced"]).max()),
                         "mean_pixel_diff": float(np.abs(pixels["full"] - pixels["reduced"]).mean())})]
    if "simplejpeg" in stats:
        rows.append(Row("photos", f"{name} JPEG → 224 px, reduced-size decode: Pillow draft vs simplejpeg",
                        "Pillow draft + resize", stats["reduced"], "simplejpeg min_height/min_width + resize",
                        stats["simplejpeg"], stats["reduced"].median / stats["simplejpeg"].median,
                        details={"max_pixel_diff_vs_pillow": int(np.abs(pixels["simplejpeg"] -
                                                                        pixels["reduced"]).max()),
                                 "fastdct_fastupsample_ms": stats["simplejpeg fast"].median,
                                 "fastdct_fastupsample_max_pixel_diff": int(np.abs(pixels["simplejpeg fast"] -
                                                                                   pixels["reduced"]).max())}))
    return rows


# ---- accuracy -------------------------------------------------------------------------------------------------------

def accuracy_row(ctx: Context, asset: assets.ModelAsset) -> Row:
    from serving.client.prepare import encode_for
    from serving.contract.prediction import softmax
    from serving.contract.preprocess import load_image, model_image, normalize, preprocess
    from serving.runtime.loader import load_model

    spec = _spec(asset)
    predictor = load_model(asset.version_dir, threads=ctx.threads).predictor
    files = [assets.photo_file(ctx, "4mp", seed=i) for i in range(ACCURACY_PHOTOS)] + [assets.photo_file(ctx, "12mp")]
    full, reduced, resent = [], [], []
    for f in files:
        data = f.read_bytes()
        full.append(normalize(np.asarray(model_image(load_image(data, "RGB"), spec)), spec))
        reduced.append(normalize(np.asarray(model_image(data, spec)), spec))
        resent.append(preprocess(encode_for(spec, data, "jpeg").encoded, spec))  # what `--send jpeg` gives
    logits = [predictor.run(np.stack(x)) for x in (full, reduced, resent)]
    p_full, p_reduced, p_resent = (softmax(z) for z in logits)
    agree = float((p_full.argmax(1) == p_reduced.argmax(1)).mean())
    input_diff = float(np.abs(np.stack(full) - np.stack(reduced)).max())
    return Row("photos", f"resnet18 224 px, {len(files)} generated 4/12-MP JPEGs: reduced vs full decode",
               "full decode", Stat.one(1.0, "top-1"), "reduced decode", Stat.one(agree, "top-1"), agree,
               ratio_label="top-1 agreement (reduced vs full decode)",
               details={"max_prob_diff": float(np.abs(p_full - p_reduced).max()),
                        "max_top1_prob": float(p_full.max()), "max_input_diff": input_diff,
                        # random weights give flat probabilities: the logits show the change on a scale that means
                        "max_logit_diff": float(np.abs(logits[0] - logits[1]).max()),
                        "logit_std": float(logits[0].std()),
                        "send_jpeg_top1_agreement": float((p_reduced.argmax(1) == p_resent.argmax(1)).mean()),
                        "send_jpeg_max_prob_diff": float(np.abs(p_reduced - p_resent).max()),
                        "note": "random weights: agreement and differences, not accuracy; send_jpeg: the client's "
                                "JPEG (quality 90) vs the server's own decode of the original"})


# ---- server ---------------------------------------------------------------------------------------------------------

def _payloads(ctx: Context, asset: assets.ModelAsset) -> dict[str, Path]:
    """Serialized Classify requests: the 12-MP JPEG, the same photo resized by the client, the ready tensor."""
    from serving._generated import imageclassifier_pb2 as ic
    from serving.client.prepare import encode_for
    from serving.contract.preprocess import preprocess

    spec = _spec(asset)
    data = assets.photo_file(ctx, "12mp").read_bytes()
    x = preprocess(data, spec).astype("<f4")
    images = {"jpeg 12mp": ic.Image(encoded=data), "png 224 (client-resized)": encode_for(spec, data, "png"),
              "tensor": ic.Image(tensor=ic.Tensor(shape=list(x.shape), data=x.tobytes()))}
    folder = ctx.work / "payloads" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (kind, image) in enumerate(images.items()):
        files[kind] = folder / f"{i}.bin"
        files[kind].write_bytes(ic.ClassifyRequest(model=asset.name, top_k=5, images=[image]).SerializeToString())
    return files


def server_rows(ctx: Context, asset: assets.ModelAsset) -> list[Row]:
    files = _payloads(ctx, asset)
    scenarios = [{"name": kind, "method": CLASSIFY, "payload": str(path), "concurrency": 1, "warmup_s": 1.0,
                  "windows": 3, "window_s": 2.0, "timeout_s": 30.0} for kind, path in files.items()]
    ctx.log(f"photos: {asset.name} server, Classify at concurrency 1: {', '.join(files)}")
    with procs.start_server(ctx, asset.repository, [asset.name], tag="photos") as server:
        found = dict(zip(files, procs.run_loadgen(ctx, server.address, scenarios, server.proc.pid), strict=True))
    tensor = Stat.of(found["tensor"]["p50_per_window_ms"], "ms")
    rows = []
    for kind in ("jpeg 12mp", "png 224 (client-resized)"):
        result = found[kind]
        p50 = Stat.of(result["p50_per_window_ms"], "ms")
        slower = p50.median / tensor.median
        details = {"request_bytes": result["request_bytes"], "latency_ms": result["latency_ms"],
                   "server_cpu_us_per_request": result["server_cpu_us_per_request"],
                   "tensor_server_cpu_us_per_request": found["tensor"]["server_cpu_us_per_request"],
                   "threads": ctx.threads}
        target, met, verdict = None, None, ""
        if kind == "jpeg 12mp":
            target = "jpeg_12mp"
            met = slower <= JPEG_12MP
            verdict = f"latency {slower:.2f}x {'<=' if met else '>'} {JPEG_12MP:g}x the tensor's"
        else:
            details["note"] = "the client's decode and resize are not in this latency: the client did them once"
        rows.append(Row("photos", f"{asset.name}: Classify p50 at concurrency 1, {kind} vs ready tensor",
                        "FP32 tensor (Classify)", tensor, kind, p50, tensor.median / p50.median,
                        target=target, met=met, verdict=verdict, details=details))
    return rows


# ---- batch CLI ------------------------------------------------------------------------------------------------------

def _photo_folder(ctx: Context) -> Path:
    folder = ctx.work / "batch-photos"
    if folder.is_dir():
        return folder
    folder.mkdir(parents=True)
    pictures = [assets.photo_file(ctx, "4mp", seed=i) for i in range(DISTINCT)]
    for i in range(BATCH_PHOTOS):
        shutil.copyfile(pictures[i % DISTINCT], folder / f"{i:05d}.jpg")
    return folder


def batch_row(ctx: Context, asset: assets.ModelAsset) -> Row:
    from serving.runtime.loader import load_model

    folder = _photo_folder(ctx)
    files = sorted(folder.glob("*.jpg"))
    predictor = load_model(asset.version_dir, threads=ctx.threads).predictor
    decoded = np.stack([predictor.preprocess(f.read_bytes()) for f in files[:BATCH_SIZE]])
    out = ctx.work / "batch-photos-out.csv"
    repeats = ctx.repeats(3)
    ctx.log(f"photos: batch CLI on {len(files)} 4-MP JPEGs, batch size {BATCH_SIZE}, {repeats} repeats")
    _cli(ctx, asset, folder, out)  # warm-up: file cache, imports
    cli_s, job_rates, base_s = [], [], []
    for _ in range(repeats):
        seconds, rate = _cli(ctx, asset, folder, out)
        cli_s.append(seconds)
        if rate:
            job_rates.append(rate)
        start = time.perf_counter()
        for _ in range(0, len(files), BATCH_SIZE):  # the same number of batches, of already-decoded photos
            predictor.run(decoded)
        base_s.append(time.perf_counter() - start)
    cli = Stat.of(cli_s, "s").rate(len(files), "img/s")
    base = Stat.of(base_s, "s").rate(len(files), "img/s")
    ratio = cli.median / base.median
    met, verdict = judge(ratio, BATCH_CLI)
    return Row("photos", f"{asset.name}: batch CLI (local, {len(files)} 4-MP JPEGs, batch {BATCH_SIZE}) vs in-process "
               "ORT on pre-decoded batches", f"in-process ORT, batch {BATCH_SIZE}, pre-decoded", base,
               "python -m serving batch --repository (end to end)", cli, ratio, target="batch_cli", met=met,
               verdict=verdict,
               details={"images": len(files), "distinct_photos": DISTINCT, "threads": ctx.threads,
                        "cli_job_only_img_s": Stat.of(job_rates, "img/s").median if job_rates else None,
                        "jpeg_bytes": files[0].stat().st_size,
                        "cli_includes": "model load + golden check, folder walk, reduced JPEG decode in worker "
                                        "processes, CSV writing"})


def run(ctx: Context) -> list[Row]:
    if ctx.quick:
        return decode_rows(ctx, "4mp")
    rows = decode_rows(ctx, "12mp")
    asset = assets.resnet18(ctx)
    rows.append(accuracy_row(ctx, asset))
    rows += server_rows(ctx, asset)
    rows.append(batch_row(ctx, asset))
    return rows

