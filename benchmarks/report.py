"""The results of a run: machine information, the JSON document, the terminal table and the markdown table."""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.core import Row
from benchmarks.targets import TARGETS

SCHEMA = "resnet-serving-bench/1"
PACKAGES = ("torch", "onnxruntime", "grpcio", "numpy", "onnx", "fastai", "pillow", "protobuf")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The vector instructions onnxruntime's kernels choose between: INT8 speed-ups in particular depend on VNNI.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features() -> list[str]:
    """Which of ``CPU_FEATURES`` this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_features": cpu_features(), "cpu_count": os.cpu_count(), "usable_cores": usable,
            "python": platform.python_version(), "versions": versions, "load_average_at_start": list(os.getloadavg())}


def targets_summary(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each of the project's targets once: met if every row judging it met it, unmeasured if no row judged it."""
    found = []
    for key, text in TARGETS.items():
        judged = [r for r in rows if r.target == key and r.met is not None]
        met = all(r.met for r in judged) if judged else None
        found.append({"key": key, "text": text, "met": met,
                      "rows": [{"name": r.name, "met": r.met, "verdict": f"{r.name.split(':')[0]}: {r.verdict}"}
                               for r in judged]})
    return found


def document(meta: dict[str, Any], rows: Sequence[Row]) -> dict[str, Any]:
    return {"schema": SCHEMA, **meta, "rows": [r.to_dict() for r in rows], "targets": targets_summary(rows)}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    return str(value)


def _mark(row: Row) -> str:
    if row.target is None:
        return ""
    return {True: "met", False: "NOT met", None: "not measured"}[row.met] + (f" ({row.verdict})" if row.verdict else "")


def _cells(row: Row) -> list[str]:
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    return [row.name, f"{row.baseline}: {row.baseline_stat.text()}" if row.baseline_stat else row.baseline,
            f"{row.candidate}: {row.candidate_stat.text()}" if row.candidate_stat else row.candidate,
            ratio, _mark(row)]


def breakdown_text(us: dict[str, float]) -> str:
    """A server-side breakdown per request (Triton's statistics extension, in µs) on one line."""
    parts = " + ".join(f"{label} {us[key]:.0f}" for key, label in (
        ("queue", "queue"), ("compute_input", "input"), ("compute_infer", "infer"), ("compute_output", "output"),
        ("overhead", "other")) if key in us)
    batch = f", mean batch {us['mean_batch']:.1f}" if us.get("mean_batch") else ""
    return f"{us['request']:.0f} us/request = {parts}{batch}"


def text_table(doc: dict[str, Any], rows: Sequence[Row]) -> str:
    lines = [_header(doc), ""]
    family = None
    for row in rows:
        if row.family != family:
            family = row.family
            lines.append(f"== {family} ==")
        name, baseline, candidate, ratio, mark = _cells(row)
        lines.append(f"{ratio:>8}  {name}")
        lines.append(f"          baseline  {baseline}")
        lines.append(f"          candidate {candidate}" + (f"   [{mark}]" if mark else ""))
        if "p50_ms" in row.details:
            d = row.details
            cpu = d.get("server_cpu_us_per_request")
            lines.append(f"          latency p50/p90/p99 {d['p50_ms']:.2f}/{d['p90_ms']:.2f}/{d['p99_ms']:.2f} ms"
                         + (f", server CPU {cpu:.0f} us/request" if cpu else "")
                         + (f", echo {d['echo_req_s']:.0f} req/s" if "echo_req_s" in d else ""))
        for who, found in (("baseline", row.details.get("baseline")), ("candidate", row.details)):
            if isinstance(found, dict) and found.get("server_us"):
                lines.append(f"          {who} server side {breakdown_text(found['server_us'])}")
    lines += ["", "Targets (benchmarks/targets.py):"]
    for t in doc["targets"]:
        state = {True: "met", False: "NOT MET", None: "not measured yet"}[t["met"]]
        lines.append(f"  [{state:>16}] {t['text']}")
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    for name, fam in doc.get("families", {}).items():
        if fam.get("error"):
            lines.append(f"FAILED family {name}: {fam['error']}")
    return "\n".join(lines)


def _header(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    features = f" ({', '.join(m['cpu_features']) or 'no AVX2'})" if "cpu_features" in m else ""
    return (f"benchmarks ({'quick' if doc['quick'] else 'full'}) on {m['host']}: {m['cpu_model']}{features}, "
            f"{m['usable_cores']} usable cores, {doc['threads']} threads pinned, load average at start "
            f"{m['load_average_at_start'][0]:.2f}; python {m['python']}, torch {m['versions']['torch']}, onnxruntime "
            f"{m['versions']['onnxruntime']}, grpcio {m['versions']['grpcio']}, numpy {m['versions']['numpy']}; "
            f"{doc['seconds']:.0f} s")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(doc: dict[str, Any], rows: Sequence[Row]) -> str:
    lines = ["<!-- written by python -m benchmarks; do not edit by hand -->",
             f"Measured with `{doc['command']}` on {doc['finished'][:10]}. {_md(_header(doc))}.", ""]
    if doc.get("under_load"):
        lines += ["**Measured on a machine shared with other jobs: absolute numbers are noisy; the ratios are "
                  "taken within one run.**", ""]
    lines += ["| benchmark | baseline | candidate | ratio | target |", "|---|---|---|---:|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_md(c) for c in _cells(row)) + " |")
    lines += ["", "| target (benchmarks/targets.py) | status |", "|---|---|"]
    for t in doc["targets"]:
        state = {True: "met", False: "**not met**", None: "not measured yet"}[t["met"]]
        verdicts = "; ".join(r["verdict"] for r in t["rows"] if r["verdict"])
        lines.append(f"| {_md(t['text'])} | {state}{f' ({_md(verdicts)})' if verdicts else ''} |")
    sides = [(row.name, who, found["server_us"]) for row in rows
             for who, found in (("baseline", row.details.get("baseline")), ("candidate", row.details))
             if isinstance(found, dict) and found.get("server_us")]
    if sides:
        lines += ["", "Server side (Triton's statistics extension, per request):", ""]
        lines += [f"- {_md(name)}, {who}: {breakdown_text(us)}" for name, who, us in sides]
    if doc.get("notes"):
        lines += ["", *[f"- {_md(n)}" for n in doc["notes"]]]
    return "\n".join(lines) + "\n"
