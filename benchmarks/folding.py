"""Row family ``folding``: what BatchNorm folding buys at run time inside onnxruntime.

Two graphs of the same network, from the same exporter, differing only in BatchNorm: "kept" (the eval-mode model
exported as is: Conv → BatchNormalization) and "folded" (``training.fold.fold_batchnorm`` first: Conv with adjusted
weights). The TorchScript exporter is used for both, with constant folding off and training mode preserved,
because the dynamo exporter's optimizer folds conv→BN by itself: with it there would be no "kept" graph to
compare. Each graph runs with all of onnxruntime's graph optimizations (what the server does) and with none (what
a runtime without a Conv+BN fusion would see); the node counts say what each graph holds before and after
onnxruntime's own rewrites.
"""

from __future__ import annotations

import collections
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import assets
from benchmarks.core import Context, Row, Stat, interleaved, speed_ratio


def _export(model, example, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)


def _ops(path: Path) -> dict[str, int]:
    import onnx

    return dict(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node))


def _session(path: Path, threads: int, optimize: bool, save: Path | None = None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from serving.runtime.predictor import session_options

    opts = session_options(threads)
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save is not None:
        opts.optimized_model_filepath = str(save)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    rows: list[Row] = []
    for asset in models:
        rows += _model_rows(ctx, asset)
    return rows


def _model_rows(ctx: Context, asset: assets.ModelAsset) -> list[Row]:
    import torch

    from training.fold import fold_batchnorm

    torch.set_num_threads(ctx.threads)
    model = asset.torch_model()
    example = torch.randn(2, *asset.input_shape)
    folded, _ = fold_batchnorm(model, example)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fold-", dir=ctx.work) as tmp:
        paths = {"kept": Path(tmp) / "kept.onnx", "folded": Path(tmp) / "folded.onnx"}
        _export(model, example, paths["kept"])
        _export(folded, example, paths["folded"])
        ops = {k: _ops(p) for k, p in paths.items()}
        # What onnxruntime itself makes of each graph at ORT_ENABLE_ALL (does it fuse Conv+BN on its own?).
        after = {}
        for k, p in paths.items():
            _session(p, ctx.threads, True, save=Path(tmp) / f"{k}.ort.onnx")
            after[k] = _ops(Path(tmp) / f"{k}.ort.onnx")
        graphs = {k: {"nodes": sum(v.values()), "batchnorm": v.get("BatchNormalization", 0), "ops": v}
                  for k, v in ops.items()}
        for k, v in after.items():
            graphs[k]["after_ort_enable_all"] = {"nodes": sum(v.values()), "batchnorm": v.get("BatchNormalization", 0)}
        graphs["served"] = {"file": str(asset.onnx), "ops": _ops(asset.onnx),
                            "batchnorm": _ops(asset.onnx).get("BatchNormalization", 0),
                            "exporter": "dynamo (training.export, folded first)"}
        ctx.log(f"folding: {asset.name}: kept {graphs['kept']['batchnorm']} BatchNormalization of "
                f"{graphs['kept']['nodes']} nodes, folded {graphs['folded']['batchnorm']} of "
                f"{graphs['folded']['nodes']}")

        ctx.note(f"folding, {asset.name}: at ORT_ENABLE_ALL onnxruntime fuses Conv+BatchNormalization by itself "
                 f"(BN kept: {graphs['kept']['nodes']} nodes, {graphs['kept']['batchnorm']} BN → "
                 f"{graphs['kept']['after_ort_enable_all']['nodes']} nodes, "
                 f"{graphs['kept']['after_ort_enable_all']['batchnorm']} BN after its rewrites; folded: "
                 f"{graphs['folded']['nodes']} → {graphs['folded']['after_ort_enable_all']['nodes']}), so at that "
                 "level the two graphs run the same kernels; the served model (dynamo exporter, folded first) has "
                 f"{graphs['served']['batchnorm']} BN")
        rows.append(_load_row(ctx, asset, paths, graphs))
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, *asset.input_shape)).astype(np.float32)
            for optimize, level in ((True, "ORT_ENABLE_ALL"), (False, "ORT_DISABLE_ALL")):
                sessions = {k: _session(p, ctx.threads, optimize) for k, p in paths.items()}
                fns = {k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in sessions.items()}
                repeats = ctx.repeats(3 if asset.input_shape[1] >= 100 else 5)
                stats = {k: v.scaled(1e3, "ms") for k, v in
                         interleaved(fns, repeats, 0.1 if ctx.quick else 0.25).items()}
                rows.append(Row(
                    "folding", f"{asset.name} batch {batch}, {level}: BN folded vs kept", "BN kept", stats["kept"],
                    "BN folded", stats["folded"], speed_ratio(stats["kept"], stats["folded"]),
                    details={"batch": batch, "threads": ctx.threads, "graph_optimization_level": level,
                             "batchnorm_nodes": {k: graphs[k]["batchnorm"] for k in paths}}))
    return rows


def _load_row(ctx: Context, asset: assets.ModelAsset, paths: dict[str, Path], graphs: dict) -> Row:
    """Session creation (parse + ORT_ENABLE_ALL rewrites), which the fold also shortens: the server pays it per
    model load."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(ctx.repeats(5)):
        for k, p in paths.items():
            start = time.perf_counter()
            _session(p, ctx.threads, True)
            times[k].append((time.perf_counter() - start) * 1e3)
    kept, folded = Stat.of(times["kept"], "ms"), Stat.of(times["folded"], "ms")
    return Row("folding", f"{asset.name}: session creation, BN folded vs kept", "BN kept", kept, "BN folded", folded,
               speed_ratio(kept, folded), details={"graphs": graphs})
