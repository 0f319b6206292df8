"""Row family ``server``: the gRPC server against in-process onnxruntime and against a bare grpc.aio echo server.

Three things answer the same requests from the same load generator (a separate process, ``benchmarks.loadgen``):
the real server (``python -m serving serve``, a subprocess) with dynamic batching on (``--max-batch 32``, the
default) and off (``--max-batch 1``), and the echo ceiling (``benchmarks.echo``: gRPC alone, canned answers). The
in-process baseline is the server's own ``Predictor`` (serving.runtime) called directly in this process, on
pre-built batches of the concurrency's size — what perfect batching with zero transport cost would reach.

Requests go through the Open Inference Protocol's ModelInfer (one image each): FP32 tensors in
``raw_input_contents``, or a BYTES tensor holding one encoded image (decoded and preprocessed by the server); the
digits model also gets the project's own Classify with a tensor (top-k and labels computed on the server). The
server runs with ``--threads`` onnxruntime threads and otherwise default settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import assets, procs
from benchmarks.core import Context, Row, Stat, interleaved_raw, judge
from benchmarks.targets import DIGITS_VS_ECHO, SERVER_P50_SLACK_MS, SERVER_VS_INPROC

INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/imageclassifier.v1.ImageClassifier/Classify"


@dataclass(frozen=True)
class Plan:
    """Which scenarios to run for one model, and for how long."""

    warmup_s: float
    windows: int
    window_s: float
    echo: tuple[tuple[str, int], ...]        # (payload kind, concurrency)
    batching_on: tuple[tuple[str, int], ...]
    batching_off: tuple[tuple[str, int], ...]


FULL = {
    "digits": Plan(0.5, 3, 1.0,
                   echo=(("tensor", 1), ("tensor", 4), ("tensor", 8), ("tensor", 16), ("bytes", 8), ("classify", 8)),
                   batching_on=(("tensor", 1), ("tensor", 4), ("tensor", 8), ("tensor", 16), ("bytes", 1),
                                ("bytes", 4), ("bytes", 8), ("bytes", 16), ("classify", 8)),
                   batching_off=(("tensor", 4), ("tensor", 8), ("tensor", 16))),
    "resnet18": Plan(1.0, 3, 1.5,
                     echo=(("tensor", 1), ("tensor", 8), ("bytes", 8)),
                     batching_on=(("tensor", 1), ("tensor", 4), ("tensor", 8), ("tensor", 16), ("bytes", 1),
                                  ("bytes", 8)),
                     batching_off=(("tensor", 8), ("tensor", 16))),
}
QUICK = Plan(0.2, 2, 0.4, echo=(("tensor", 1), ("tensor", 8)),
             batching_on=(("tensor", 1), ("tensor", 8), ("bytes", 8)), batching_off=())


# ---- payloads -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Payloads:
    files: dict[str, Path]          # kind → serialized request
    methods: dict[str, str]         # kind → gRPC method path
    responses: dict[str, Path]      # method → canned response (echo)
    image: bytes                    # the encoded image of the "bytes" payload
    image_text: str
    tensor: np.ndarray              # (C, H, W) float32, the "tensor" payload


def payloads(ctx: Context, asset: assets.ModelAsset) -> Payloads:
    from serving._generated import grpc_service_pb2 as kserve
    from serving._generated import imageclassifier_pb2 as ic
    from serving.contract.preprocess import PreprocessSpec, preprocess
    from serving.contract.tensors import encode_bytes_elements

    c, h, w = asset.input_shape
    spec = PreprocessSpec.from_dict({**asset.manifest["preprocess"], "labels": asset.manifest["labels"]})
    if c == 1:
        image, text = assets.encode(assets.draw(7, (28, 28), "L"), "PNG"), "PNG 28x28 greyscale"
    else:
        image, text = assets.encode(assets.draw(7, (256, 256), "RGB"), "JPEG"), "JPEG 256x256 RGB"
    tensor = preprocess(image, spec)
    name = asset.name
    tensor_input = kserve.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, c, h, w])
    bytes_input = kserve.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1])
    requests = {
        "tensor": kserve.ModelInferRequest(model_name=name, inputs=[tensor_input],
                                           raw_input_contents=[tensor.astype("<f4").tobytes()]),
        "bytes": kserve.ModelInferRequest(model_name=name, inputs=[bytes_input],
                                          raw_input_contents=[encode_bytes_elements([image])]),
        "classify": ic.ClassifyRequest(model=name, top_k=5, images=[ic.Image(tensor=ic.Tensor(
            shape=[c, h, w], data=tensor.astype("<f4").tobytes()))]),
    }
    k = asset.classes
    infer_response = kserve.ModelInferResponse(
        model_name=name, model_version="1", id="0123456789abcdef",
        outputs=[kserve.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, k])],
        raw_output_contents=[np.zeros((1, k), "<f4").tobytes()])
    classify_response = ic.ClassifyResponse(model=name, version=1, request_id="0123456789abcdef", results=[
        ic.Classification(predictions=[ic.Prediction(label=str(i), index=i, probability=0.1) for i in range(5)])])
    folder = ctx.work / "payloads" / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, message in requests.items():
        files[kind] = folder / f"{kind}.bin"
        files[kind].write_bytes(message.SerializeToString())
    responses = {INFER: folder / "infer-response.bin", CLASSIFY: folder / "classify-response.bin"}
    responses[INFER].write_bytes(infer_response.SerializeToString())
    responses[CLASSIFY].write_bytes(classify_response.SerializeToString())
    methods = {"tensor": INFER, "bytes": INFER, "classify": CLASSIFY}
    return Payloads(files, methods, responses, image, text, tensor)


# ---- in-process baselines -----------------------------------------------------------------------------------------

def in_process(ctx: Context, asset: assets.ModelAsset, p: Payloads, batches: set[int]) -> dict[str, Any]:
    """Functions timing the Predictor on pre-built batches ("tensor b{N}"), and with the decoding of N encoded
    images included ("bytes b{N}")."""
    from serving.runtime.loader import load_model

    predictor = load_model(asset.version_dir, threads=ctx.threads).predictor
    fns: dict[str, Any] = {}
    for b in sorted(batches):
        x = np.ascontiguousarray(np.broadcast_to(p.tensor, (b, *p.tensor.shape)))
        fns[f"tensor b{b}"] = lambda x=x: predictor.run(x)
    for b in sorted({1, 8} & batches):
        fns[f"bytes b{b}"] = lambda b=b: predictor.run(np.stack([predictor.preprocess(p.image) for _ in range(b)]))
    return fns


def bracketed(ctx: Context, fns: dict[str, Any], measure: Any) -> tuple[dict[str, Stat], Any]:
    """In-process repeats before *and* after the (long) server measurements, pooled: the baseline then spans the
    same stretch of time as the server numbers, so a load change on a shared machine affects both alike."""
    ctx.log(f"server: in-process baselines before ({', '.join(fns)})")
    before = interleaved_raw(fns, ctx.repeats(3, quick=1), 0.1 if ctx.quick else 0.25)
    found = measure()
    ctx.log("server: in-process baselines after")
    after = interleaved_raw(fns, ctx.repeats(3, quick=1), 0.1 if ctx.quick else 0.25)
    return {k: Stat.of(before[k] + after[k], "s") for k in fns}, found


# ---- measurements ---------------------------------------------------------------------------------------------------

def scenarios(plan: Plan, p: Payloads, which: tuple[tuple[str, int], ...], tag: str) -> list[dict[str, Any]]:
    return [{"name": f"{tag} {kind} c{conc}", "method": p.methods[kind], "payload": str(p.files[kind]),
             "concurrency": conc, "warmup_s": plan.warmup_s, "windows": plan.windows, "window_s": plan.window_s,
             "timeout_s": 30.0} for kind, conc in which]


def _by_key(results: list[dict[str, Any]], which: tuple[tuple[str, int], ...]) -> dict[tuple[str, int], dict]:
    return dict(zip(which, results, strict=True))


def measure(ctx: Context, asset: assets.ModelAsset, plan: Plan, p: Payloads) -> dict[str, Any]:
    found: dict[str, Any] = {}
    ctx.log(f"server: {asset.name}: echo ceiling ({len(plan.echo)} scenarios)")
    with procs.start_echo(ctx, p.responses) as echo:
        found["echo"] = _by_key(procs.run_loadgen(ctx, echo.address, scenarios(plan, p, plan.echo, "echo"),
                                                  echo.proc.pid), plan.echo)
        found["echo_memory"] = echo.memory()
    for tag, max_batch, which in (("on", 32, plan.batching_on), ("off", 1, plan.batching_off)):
        if not which:
            continue
        ctx.log(f"server: {asset.name}: batching {tag} (--max-batch {max_batch}, {len(which)} scenarios)")
        with procs.start_server(ctx, asset.repository, [asset.name], max_batch=max_batch,
                                tag=f"{asset.name}-{tag}") as server:
            found[tag] = _by_key(procs.run_loadgen(ctx, server.address, scenarios(plan, p, which, tag),
                                                   server.proc.pid), which)
            found[f"{tag}_memory"] = server.memory()
    return found


# ---- rows -----------------------------------------------------------------------------------------------------------

def _rate(result: dict[str, Any]) -> Stat:
    return Stat.of(result["throughput"], "req/s")


def latency(result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latency_ms"]
    return {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "mean_ms": lat["mean"],
            "requests": result["requests"], "errors": result["errors"],
            "client_cpu_us_per_request": result["client_cpu_us_per_request"],
            "server_cpu_us_per_request": result["server_cpu_us_per_request"],
            "request_bytes": result["request_bytes"], "response_bytes": result["response_bytes"]}


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    rows: list[Row] = []
    for asset in models:
        plan = QUICK if ctx.quick else FULL[asset.name]
        p = payloads(ctx, asset)
        concurrencies = {c for _, c in plan.batching_on + plan.batching_off} | {1, 8}
        base, found = bracketed(ctx, in_process(ctx, asset, p, concurrencies),
                                lambda asset=asset, plan=plan, p=p: measure(ctx, asset, plan, p))
        rows += _rows(ctx, asset, plan, p, base, found)
    return rows


KIND_TEXT = {"tensor": "FP32 tensor (ModelInfer)", "bytes": "encoded image (ModelInfer BYTES)",
             "classify": "FP32 tensor (Classify, top-5)"}


def _rows(ctx: Context, asset: assets.ModelAsset, plan: Plan, p: Payloads, base: dict[str, Stat],
          found: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    name = asset.name
    echo = found["echo"]
    for tag, which in (("on", plan.batching_on), ("off", plan.batching_off)):
        for kind, conc in which:
            result = found[tag][(kind, conc)]
            base_key = f"{'bytes' if kind == 'bytes' else 'tensor'} b{conc}"
            base_key = base_key if base_key in base else f"{base_key.split()[0]} b8"
            baseline = base[base_key].rate(int(base_key.split("b")[-1]), "req/s")
            server = _rate(result)
            details = {"concurrency": conc, "payload": KIND_TEXT[kind] if kind != "bytes" else
                       f"{KIND_TEXT[kind]}, {p.image_text}", "batching": tag, "threads": ctx.threads,
                       "baseline": f"in-process Predictor, {base_key} (1 request = 1 image)", **latency(result)}
            if (kind, conc) in echo:
                details["echo_req_s"] = _rate(echo[(kind, conc)]).median
                details["vs_echo"] = server.median / details["echo_req_s"]
            target, met, verdict = None, None, ""
            ratio = server.median / baseline.median
            if name == "resnet18" and kind == "tensor" and conc == 8 and tag == "on":
                target = "server_vs_inproc"
                met, verdict = judge(ratio, SERVER_VS_INPROC)
            rows.append(Row("server", f"{name} {kind} c{conc} batching {tag}: server vs in-process ORT",
                            f"in-process ORT ({base_key})", baseline,
                            f"server, batching {tag}", server, ratio, details=details, target=target, met=met,
                            verdict=verdict))
    for (kind, conc), result in echo.items():
        if (kind, conc) not in found["on"]:
            continue
        server, ceiling = _rate(found["on"][(kind, conc)]), _rate(result)
        rows.append(Row("server", f"{name} {kind} c{conc}: server (batching on) vs bare grpc.aio echo",
                        "grpc.aio echo (canned answer)", ceiling, "server, batching on", server,
                        server.median / ceiling.median,
                        details={"concurrency": conc, "echo": latency(result),
                                 "server": latency(found["on"][(kind, conc)])}))
    rows.append(_p50_row(ctx, asset, base, found))
    if name == "digits":
        rows.append(_digits_row(ctx, base, found))
    rows.append(Row("server", f"{name}: resident memory after the load (VmRSS)", "bare grpc.aio echo process",
                    Stat.one(found["echo_memory"]["VmRSS"], "MB"), "server process, batching on",
                    Stat.one(found["on_memory"]["VmRSS"], "MB"),
                    found["on_memory"]["VmRSS"] / found["echo_memory"]["VmRSS"],
                    ratio_label="memory ratio (server / echo)",
                    details={"server": found["on_memory"], "echo": found["echo_memory"],
                             "server_batching_off": found.get("off_memory")}))
    return rows


def _p50_row(ctx: Context, asset: assets.ModelAsset, base: dict[str, Stat], found: dict[str, Any]) -> Row:
    result = found["on"][("tensor", 1)]
    inproc = base["tensor b1"].scaled(1e3, "ms")
    server = Stat.of(result["p50_per_window_ms"], "ms")
    delta = server.median - inproc.median
    met = delta <= SERVER_P50_SLACK_MS
    return Row("server", f"{asset.name}: server p50 at concurrency 1 vs in-process batch 1", "in-process ORT batch 1",
               inproc, "server p50 (per window)", server, inproc.median / server.median,
               target="server_p50", met=met,
               verdict=f"{delta:+.2f} ms {'<=' if met else '>'} +{SERVER_P50_SLACK_MS:g} ms",
               details={"delta_ms": delta, "echo_p50_ms": found["echo"][("tensor", 1)]["latency_ms"]["p50"]
                        if ("tensor", 1) in found["echo"] else None, **latency(result)})


def _digits_row(ctx: Context, base: dict[str, Stat], found: dict[str, Any]) -> Row:
    """The digits server against the bare grpc.aio echo server (gRPC's own ceiling), same client and payload."""
    server = _rate(found["on"][("tensor", 8)])
    echo = _rate(found["echo"][("tensor", 8)])
    ratio = server.median / echo.median
    met, verdict = judge(ratio, DIGITS_VS_ECHO)
    return Row("server", "digits: server req/s at concurrency 8 vs bare grpc.aio echo (same run, same client)",
               "grpc.aio echo (canned answer)", echo, "server, batching on, FP32 tensor", server, ratio,
               target="digits_server", met=met, verdict=verdict,
               details={"echo_req_s": echo.median, "in_process_b8_req_s": base["tensor b8"].rate(8, "req/s").median,
                        **latency(found["on"][("tensor", 8)])})
