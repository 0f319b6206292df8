"""Row family ``runtime``: PyTorch eager vs onnxruntime FP32 vs onnxruntime INT8, same model, same input, same threads.

PyTorch runs the run's checkpoint (BatchNorm not folded, ``torch.inference_mode``); onnxruntime runs the exported
``model.onnx`` (BatchNorm folded by ``training.export``) with the server's own session options
(``serving.runtime.predictor.session_options``: ORT_ENABLE_ALL, intra-op threads pinned, no spinning). Both get the same
random input; repeats alternate between the three so that a load change hits them alike.
"""

from __future__ import annotations

import numpy as np

from benchmarks import assets
from benchmarks.core import Context, Row, interleaved, judge, speed_ratio
from benchmarks.targets import INT8_DROP_POINTS, INT8_SPEED


def session(path, threads: int):  # type: ignore[no-untyped-def]
    """An onnxruntime CPU session configured exactly as the server configures its own."""
    import onnxruntime as ort

    from serving.runtime.predictor import session_options

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def runner(sess):  # type: ignore[no-untyped-def]
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    batches = (1, 8) if ctx.quick else (1, 8, 32)
    rows: list[Row] = []
    for asset in models:
        rows += _model_rows(ctx, asset, batches)
    return rows


def _model_rows(ctx: Context, asset: assets.ModelAsset, batches: tuple[int, ...]) -> list[Row]:
    import torch

    torch.set_num_threads(ctx.threads)
    model = asset.torch_model()
    fp32 = runner(session(asset.onnx, ctx.threads))
    int8 = runner(session(asset.int8_dir / "model.onnx", ctx.threads)) if asset.int8_dir else None
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    big = asset.input_shape[1] >= 100
    for batch in batches:
        x = rng.standard_normal((batch, *asset.input_shape)).astype(np.float32)
        xt = torch.from_numpy(x)

        def eager(xt=xt):  # type: ignore[no-untyped-def]
            with torch.inference_mode():
                return model(xt)

        fns = {"pytorch": eager, "ort_fp32": lambda x=x: fp32(x)}
        if int8 is not None:
            fns["ort_int8"] = lambda x=x: int8(x)
        repeats = ctx.repeats(3 if big and batch > 1 else 5)
        ctx.log(f"runtime: {asset.name} batch {batch} ({', '.join(fns)}; {repeats} repeats)")
        stats = {k: v.scaled(1e3, "ms") for k, v in interleaved(fns, repeats, 0.1 if ctx.quick else 0.3).items()}
        common = {"batch": batch, "threads": ctx.threads, "input": list(asset.input_shape), "model": asset.name,
                  "images_per_s": {k: batch / (v.median / 1e3) for k, v in stats.items()}}
        ratio = speed_ratio(stats["pytorch"], stats["ort_fp32"])
        rows.append(Row("runtime", f"{asset.name} {_shape(asset)} batch {batch}: ORT FP32 vs PyTorch eager",
                        "PyTorch eager", stats["pytorch"], "onnxruntime FP32 (folded, ORT_ENABLE_ALL)",
                        stats["ort_fp32"], ratio, details=common))
        if "ort_int8" in stats:
            ratio = speed_ratio(stats["ort_fp32"], stats["ort_int8"])
            # The INT8 speed target is set on ResNet-18; the 16-px digits model's rows are reported, not judged.
            target = "int8_speed" if asset.name == "resnet18" else None
            met, verdict = judge(ratio, INT8_SPEED) if target else (None, "")
            rows.append(Row("runtime", f"{asset.name} {_shape(asset)} batch {batch}: ORT INT8 vs ORT FP32",
                            "onnxruntime FP32", stats["ort_fp32"], "onnxruntime INT8 (QDQ, static)",
                            stats["ort_int8"], ratio, target=target, met=met, verdict=verdict,
                            details={**common, "int8_vs_pytorch": speed_ratio(stats["pytorch"], stats["ort_int8"]),
                                     "int8_top1_agreement": _agreement(asset)}))
    if asset.int8_dir is not None and asset.name == "digits":  # a trained model: its accuracy means something
        rows.append(_int8_accuracy(asset))
    elif asset.int8_note and not ctx.quick:
        rows.append(Row("runtime", f"{asset.name}: INT8", "onnxruntime FP32", None, "onnxruntime INT8", None, None,
                        details={"why": asset.int8_note}))
    return rows


def _shape(asset: assets.ModelAsset) -> str:
    c, h, w = asset.input_shape
    return f"{c}x{h}x{w}"


def _agreement(asset: assets.ModelAsset) -> float | None:
    """INT8 vs FP32 top-1 agreement on the validation images, as the export measured it."""
    import json

    doc = json.loads((asset.int8_dir / "verification.json").read_text())  # type: ignore[operator]
    return doc.get("top1_agreement")


def _int8_accuracy(asset: assets.ModelAsset) -> Row:
    """Top-1 accuracy of INT8 vs FP32 on the validation set, as the export measured it (its verification.json)."""
    import json

    from benchmarks.core import Stat

    doc = json.loads((asset.int8_dir / "verification.json").read_text())  # type: ignore[operator]
    fp32, int8 = float(doc["accuracy"]["fp32"]), float(doc["accuracy"]["int8"])
    drop = (fp32 - int8) * 100
    met = drop <= INT8_DROP_POINTS
    return Row("runtime", f"{asset.name}: INT8 top-1 accuracy vs FP32 ({doc['samples']} validation images)",
               "FP32 accuracy", Stat.one(fp32 * 100, "%"), "INT8 accuracy", Stat.one(int8 * 100, "%"),
               int8 / fp32, ratio_label="accuracy ratio (INT8 / FP32)", target="int8_accuracy", met=met,
               verdict=f"drop {drop:+.2f} points {'<=' if met else '>'} {INT8_DROP_POINTS:g}",
               details={"top1_agreement": doc.get("top1_agreement"), "calibration_samples":
                        doc.get("calibration_samples"), "drop_points": drop})
