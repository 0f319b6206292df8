"""Row family ``shm``: Triton's system shared memory against inline tensors and against in-process onnxruntime.

One server (``python -m serving serve``, dynamic batching on, ``--threads`` onnxruntime threads) answers the same
FP32 tensor (one image per request) three ways, from the same load generator (``benchmarks.loadgen``, a separate
process): gRPC ModelInfer with the tensor inline (``raw_input_contents``); gRPC ModelInfer with input and output in
system shared memory; and, in a full run, the same pair over HTTP (Triton's binary-tensor extension vs shared memory).
A shared-memory worker does what a sidecar client does, every request: it writes the tensor into its own input region,
sends a request that names its regions, and copies the logits out of its output region (each worker registers its two
regions once, before the timing). The baseline is the ``server`` family's: the server's own Predictor in this
process, on pre-built batches of the concurrency's size (perfect batching, no transport).

Every repeat runs the in-process baseline, then each server scenario, once (A B C … A B C …); the rows are the
median of the repeats. Before measuring, one request through tritonclient's own shared-memory calls
(``register_system_shared_memory``, ``InferInput.set_shared_memory``, ``InferRequestedOutput.set_shared_memory``)
must give the inline request's logits; a server without the extension is noted and measured inline only. Beside
each scenario: the server's own breakdown per request (queue, compute input, compute infer, compute output) from
Triton's statistics extension, read before and after the measured window.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import assets, procs, server
from benchmarks.core import Context, Row, Stat, interleaved_raw, judge
from benchmarks.http_vs_grpc import _http_payloads
from benchmarks.server import INFER
from benchmarks.targets import SHM_VS_INPROC


@dataclass(frozen=True)
class Plan:
    repeats: int
    warmup_s: float
    window_s: float
    concurrencies: tuple[int, ...]
    http: tuple[int, ...]          # concurrencies measured over HTTP too
    inproc_s: float                # seconds per in-process repeat


FULL = {"digits": Plan(5, 0.3, 1.0, (1, 8), (8,), 0.25), "resnet18": Plan(5, 0.5, 1.5, (1, 8), (8,), 0.4)}
QUICK = Plan(2, 0.2, 0.4, (8,), (), 0.1)


# ---- requests -------------------------------------------------------------------------------------------------------

def regions_for(model: str, transport: str, concurrency: int) -> list[dict[str, list[str]]]:
    """Each worker's (name, key) of its input and output region; keys carry this process's id (one run's objects
    never meet another's)."""
    stem = f"bench-{os.getpid()}-{model}-{transport}"
    return [{"input": [f"{stem}-{i}-in", f"/{stem}-{i}-in"], "output": [f"{stem}-{i}-out", f"/{stem}-{i}-out"]}
            for i in range(concurrency)]


def grpc_shm_request(model: str, shape: tuple[int, ...], classes: int, worker: dict[str, list[str]]) -> bytes:
    """ModelInfer of one FP32 ``shape`` tensor with its input and output in the worker's regions: the parameters
    tritonclient's ``set_shared_memory`` sets, and no tensor bytes."""
    from serving._generated import grpc_service_pb2 as kserve

    request = kserve.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=shape)
    output = request.outputs.add(name="logits")
    for params, (name, _), size in ((tensor.parameters, worker["input"], 4 * math.prod(shape)),
                                    (output.parameters, worker["output"], 4 * classes)):
        params["shared_memory_region"].string_param = name
        params["shared_memory_byte_size"].int64_param = size
    return request.SerializeToString()


def http_shm_request(shape: tuple[int, ...], classes: int, worker: dict[str, list[str]]) -> bytes:
    """The HTTP /v2 infer body naming the worker's regions (JSON only: no tensor travels)."""
    def place(region: list[str], size: int) -> dict[str, Any]:
        return {"shared_memory_region": region[0], "shared_memory_byte_size": size}

    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(shape),
                                   "parameters": place(worker["input"], 4 * math.prod(shape))}],
                       "outputs": [{"name": "logits", "parameters": place(worker["output"], 4 * classes)}]
                       }).encode()


def scenarios(ctx: Context, asset: assets.ModelAsset, plan: Plan, p: server.Payloads, http_port: int | None,
              shm: bool) -> list[dict[str, Any]]:
    """The server scenarios of one repeat, named ``{grpc|http} {inline|shm} c{N}``."""
    folder = ctx.work / "payloads" / asset.name / "shm"
    folder.mkdir(parents=True, exist_ok=True)
    x = p.tensor[None].astype("<f4")
    tensor_file = folder / "tensor.f32"
    x.tofile(tensor_file)
    common = {"warmup_s": plan.warmup_s, "windows": 1, "window_s": plan.window_s, "timeout_s": 30.0,
              "statistics": asset.name}
    http = _http_payloads(folder, p) if http_port is not None else {}
    url = f"http://127.0.0.1:{http_port}/v2/models/{asset.name}/infer"
    found: list[dict[str, Any]] = []
    for transport, concurrencies in (("grpc", plan.concurrencies), ("http", plan.http if http else ())):
        for conc in concurrencies:
            where = {"method": INFER} if transport == "grpc" else {"url": url}
            inline = {"payload": str(p.files["tensor"])} if transport == "grpc" else \
                {"payload": str(http["tensor"][0]), "headers": http["tensor"][1]}
            found.append({"name": f"{transport} inline c{conc}", "concurrency": conc, **where, **inline, **common})
            if not shm:
                continue
            workers = regions_for(asset.name, transport, conc)
            files = []
            for i, worker in enumerate(workers):
                files.append(folder / f"{transport}-shm-c{conc}-{i}.bin")
                files[-1].write_bytes(grpc_shm_request(asset.name, x.shape, asset.classes, worker)
                                      if transport == "grpc" else http_shm_request(x.shape, asset.classes, worker))
            found.append({"name": f"{transport} shm c{conc}", "concurrency": conc, **where,
                          "payloads": [str(f) for f in files],
                          **({"headers": {"Content-Type": "application/json"}} if transport == "http" else {}),
                          "shm": {"tensor": str(tensor_file), "input_shape": list(x.shape),
                                  "output_bytes": 4 * asset.classes, "output_shape": [1, asset.classes],
                                  "regions": workers}, **common})
    return found


# ---- the check through tritonclient ---------------------------------------------------------------------------------

def probe(address: str, asset: assets.ModelAsset, tensor: np.ndarray) -> str | None:
    """One request with input and output in shared memory through tritonclient's standard calls, compared with the
    same tensor inline. ``None`` when shared memory works; the reason when the server does not offer it (gRPC
    UNIMPLEMENTED). A wrong answer raises: the benchmark must not time a server that answers wrongly."""
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    x = tensor[None].astype(np.float32)
    out_bytes = 4 * asset.classes
    with triton.InferenceServerClient(address) as client:
        inline_input = triton.InferInput("input", list(x.shape), "FP32")
        inline_input.set_data_from_numpy(x)
        expected = client.infer(asset.name, [inline_input]).as_numpy("logits")
        stem = f"bench-{os.getpid()}-{asset.name}-probe"
        handles = [shm.create_shared_memory_region(f"{stem}-in", f"/{stem}-in", x.nbytes, create_only=True),
                   shm.create_shared_memory_region(f"{stem}-out", f"/{stem}-out", out_bytes, create_only=True)]
        registered: list[str] = []
        try:
            for name, size in ((f"{stem}-in", x.nbytes), (f"{stem}-out", out_bytes)):
                client.register_system_shared_memory(name, f"/{name}", size)
                registered.append(name)
            shm.set_shared_memory_region(handles[0], [x])
            inp = triton.InferInput("input", list(x.shape), "FP32")
            inp.set_shared_memory(f"{stem}-in", x.nbytes)
            out = triton.InferRequestedOutput("logits")
            out.set_shared_memory(f"{stem}-out", out_bytes)
            client.infer(asset.name, [inp], outputs=[out])
            got = shm.get_contents_as_numpy(handles[1], np.float32, [1, asset.classes]).copy()
        except InferenceServerException as e:
            if e.status() == "StatusCode.UNIMPLEMENTED":
                return f"the server does not offer system shared memory ({e.message()})"
            raise
        finally:
            for name in registered:
                client.unregister_system_shared_memory(name)
            for handle in handles:
                shm.destroy_shared_memory_region(handle)
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"{asset.name}: logits through shared memory differ from the inline ones "
                           f"(max |diff| {float(np.abs(got - expected).max()):.3g})")
    return None


# ---- the server's breakdown (Triton's statistics extension) ---------------------------------------------------------

DURATIONS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def _totals(doc: dict[str, Any]) -> dict[str, int]:
    """Counters of a ModelStatisticsResponse (tritonclient's JSON: int64 as strings, zeros left out), summed over
    the model's versions."""
    totals = dict.fromkeys(["inference_count", "execution_count",
                            *(f"{d}_{part}" for d in DURATIONS for part in ("count", "ns"))], 0)
    for model in doc.get("model_stats", []):
        totals["inference_count"] += int(model.get("inference_count", 0))
        totals["execution_count"] += int(model.get("execution_count", 0))
        for d in DURATIONS:
            stat = model.get("inference_stats", {}).get(d, {})
            totals[f"{d}_count"] += int(stat.get("count", 0))
            totals[f"{d}_ns"] += int(stat.get("ns", 0))
    return totals


def breakdown(statistics: dict[str, Any] | None) -> dict[str, float] | None:
    """Per request, in µs, between two snapshots: the server's whole time (``request``), its ``queue``,
    ``compute_input``, ``compute_infer`` and ``compute_output`` parts and what is left (``overhead``); plus requests,
    batches and the mean batch. ``None`` without statistics or without a request between the snapshots."""
    if not statistics or "before" not in statistics:
        return None
    before, after = _totals(statistics["before"]), _totals(statistics["after"])
    delta = {k: after[k] - before[k] for k in before}
    requests = delta["success_count"]
    if requests <= 0:
        return None
    found = {d if d != "success" else "request": delta[f"{d}_ns"] / max(delta[f"{d}_count"], 1) / 1e3
             for d in DURATIONS}
    found["overhead"] = found["request"] - sum(found[d] for d in DURATIONS[1:])
    found |= {"requests": float(requests), "batches": float(delta["execution_count"]),
              "mean_batch": delta["inference_count"] / delta["execution_count"] if delta["execution_count"] else 0.0}
    return {k: round(v, 3) for k, v in found.items()}


# ---- measuring ------------------------------------------------------------------------------------------------------

def measure(ctx: Context, asset: assets.ModelAsset, plan: Plan) -> dict[str, Any]:
    """Per scenario, every repeat's load-generator result; per in-process batch size, every repeat's seconds per
    call; and whether shared memory was measured (with the reason when not)."""
    p = server.payloads(ctx, asset)
    inproc = {k: fn for k, fn in server.in_process(ctx, asset, p, set(plan.concurrencies)).items()
              if k.startswith("tensor")}
    http_port = procs.free_port() if plan.http else None
    extra = ("--http-port", str(http_port)) if http_port else ()
    found: dict[str, Any] = {"inproc": {k: [] for k in inproc}, "server": {}}
    with procs.start_server(ctx, asset.repository, [asset.name], extra=extra, tag=f"{asset.name}-shm") as proc:
        reason = probe(proc.address, asset, p.tensor)
        if reason:
            ctx.note(f"shm: {asset.name}: {reason}: measured inline tensors only")
        found["shm_missing"] = reason
        which = scenarios(ctx, asset, plan, p, http_port, shm=reason is None)
        for r in range(plan.repeats):
            ctx.log(f"shm: {asset.name}: repeat {r + 1} of {plan.repeats}: in-process, then "
                    f"{', '.join(s['name'] for s in which)}")
            for k, seconds in interleaved_raw(inproc, 1, plan.inproc_s).items():
                found["inproc"][k] += seconds
            for s, result in zip(which, procs.run_loadgen(ctx, proc.address, which, proc.proc.pid), strict=True):
                found["server"].setdefault(s["name"], []).append(result)
    return found


# ---- rows -----------------------------------------------------------------------------------------------------------

def throughput(results: list[dict[str, Any]]) -> Stat:
    """Requests/s of each repeat (its windows pooled), as a Stat over the repeats."""
    return Stat.of([sum(r["throughput"]) / len(r["throughput"]) for r in results], "req/s")


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the repeats of each latency percentile and of the server's breakdown; errors summed."""
    def median(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    found: dict[str, Any] = {f"{q}_ms": median([r["latency_ms"][q] for r in results]) for q in ("p50", "p90", "p99")}
    found |= {"requests": sum(r["requests"] for r in results), "errors": errors, "repeats": len(results),
              "server_cpu_us_per_request": median([r["server_cpu_us_per_request"] for r in results]),
              "client_cpu_us_per_request": median([r["client_cpu_us_per_request"] for r in results]),
              "request_bytes": results[0]["request_bytes"], "response_bytes": results[0]["response_bytes"]}
    parts = [b for b in (breakdown(r.get("server_statistics")) for r in results) if b]
    found["server_us"] = {k: round(float(np.median([b[k] for b in parts])), 3) for k in parts[0]} if parts else None
    errors_seen = [r["server_statistics"]["error"] for r in results if (r.get("server_statistics") or {}).get("error")]
    if errors_seen:
        found["server_statistics_error"] = errors_seen[0]
    return found


TEXT = {"grpc inline": "gRPC ModelInfer, tensor inline", "grpc shm": "gRPC ModelInfer, system shared memory",
        "http inline": "HTTP /v2 infer, binary tensor inline", "http shm": "HTTP /v2 infer, system shared memory"}


def rows_for(ctx: Context, asset: assets.ModelAsset, plan: Plan, found: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    name, results = asset.name, found["server"]

    def row(title: str, base: str | Stat, cand_key: str, conc: int, **kwargs: Any) -> Row:
        """``base``: a server scenario's name, or the in-process baseline's Stat."""
        details = {"concurrency": conc, "threads": ctx.threads, "repeats": plan.repeats, **summary(results[cand_key])}
        if isinstance(base, str):
            details["baseline"] = summary(results[base])
            base_text, base_stat = TEXT[base.rsplit(" ", 1)[0]], throughput(results[base])
        else:
            base_text, base_stat = f"in-process ORT (batch {conc}: perfect batching, no transport)", base
        cand = throughput(results[cand_key])
        return Row("shm", f"{name} c{conc}: {title}", base_text, base_stat, TEXT[cand_key.rsplit(" ", 1)[0]], cand,
                   cand.median / base_stat.median, details=details, **kwargs)

    for conc in plan.concurrencies:
        inproc = Stat.of(found["inproc"][f"tensor b{conc}"], "s").rate(conc, "req/s")
        inline, shm = f"grpc inline c{conc}", f"grpc shm c{conc}"
        rows.append(row("gRPC inline tensor vs in-process ORT", inproc, inline, conc))
        if shm not in results:
            continue
        target, met, verdict = None, None, ""
        if name == "resnet18" and conc == 8:
            target = "server_shm_vs_inproc"
            met, verdict = judge(throughput(results[shm]).median / inproc.median, SHM_VS_INPROC)
        rows.append(row("gRPC system shared memory vs in-process ORT", inproc, shm, conc, target=target, met=met,
                        verdict=verdict))
        rows.append(row("gRPC system shared memory vs inline tensor", inline, shm, conc))
    for conc in plan.http:
        inline, shm = f"http inline c{conc}", f"http shm c{conc}"
        if inline in results and shm in results:
            rows.append(row("HTTP system shared memory vs binary inline tensor", inline, shm, conc))
    return rows


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    rows: list[Row] = []
    for asset in models:
        plan = QUICK if ctx.quick else FULL[asset.name]
        found = measure(ctx, asset, plan)
        found_rows = rows_for(ctx, asset, plan, found)
        if not any(r.details.get("server_us") for r in found_rows):
            ctx.note(f"shm: {asset.name}: no server-side breakdown (the statistics extension did not answer)")
        rows += found_rows
    return rows
