"""``python -m benchmarks [--quick] [--only NAME …] [--threads N] [--results DIR] [--work DIR]``.

Prints the table, writes ``RESULTS/<date>-<host>.json`` and ``RESULTS/latest.md`` (``--quick``: ``…-quick.json`` and
``latest-quick.md``, so a quick check never replaces the full table). Exit code 0 when every family ran (targets
met or not: a benchmark reports, it does not judge the build), 1 when a family failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

# family name → module (names that would shadow a package — numpy, training, http — get another module name)
MODULES = {"runtime": "runtime", "folding": "folding", "server": "server", "instances": "instances",
           "http": "http_vs_grpc", "explain": "explain_cost", "photos": "photos", "batch": "batch_cli",
           "ray": "batch_ray", "numpy": "numpy_ref", "training": "train_time", "startup": "startup",
           "shm": "shared_memory", "perf_analyzer": "perf_analyzer",
           "loop": "loop_stall"}
FAMILIES = tuple(MODULES)
# Exports, minutes of training, a Ray cluster's start-up and ResNet-18's largest requests have no place in a 45-second
# check.
QUICK_SKIPS = ("folding", "training", "ray", "loop")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results"
UNDER_LOAD = 1.0  # 1-minute load average at start above which the run is marked as measured under load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny repeats, digits only, a subset of rows (~45 s)")
    p.add_argument("--only", nargs="+", choices=FAMILIES, metavar="NAME",
                   help=f"run only these families: {', '.join(FAMILIES)}")
    p.add_argument("--threads", type=int, default=2, help="threads for PyTorch, NumPy and onnxruntime (default 2)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where the JSON and markdown go")
    p.add_argument("--work", type=Path, help="keep generated models and logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = str(args.threads)
    # Before torch/NumPy/onnxruntime load: their thread pools size themselves from these at import.
    os.environ.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    from benchmarks import report
    from benchmarks.core import Context

    families = [f for f in (args.only or FAMILIES) if not (args.quick and not args.only and f in QUICK_SKIPS)]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    start_time = dt.datetime.now(dt.UTC)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    ctx = Context(work=work.resolve(), quick=args.quick, threads=args.threads, root=ROOT, log=log)
    machine = report.machine_info()
    rows, outcome, described = [], {}, {}
    try:
        for name in families:
            t0 = time.perf_counter()
            log(f"== {name}")
            try:
                module = importlib.import_module(f"benchmarks.{MODULES[name]}")
                found = module.run(ctx)
                rows += found
                outcome[name] = {"seconds": round(time.perf_counter() - t0, 1), "rows": len(found), "error": None}
            except Exception as e:  # one broken family must not lose the others' results
                traceback.print_exc()
                outcome[name] = {"seconds": round(time.perf_counter() - t0, 1), "rows": 0,
                                 "error": f"{type(e).__name__}: {e}"}
        described = {k: v.describe() for k, v in ctx.assets.items() if hasattr(v, "describe")}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "") + \
        (f" --threads {args.threads}" if args.threads != 2 else "")
    meta = {
        "command": command, "quick": args.quick, "threads": args.threads, "families": outcome,
        "started": start_time.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1), "machine": machine,
        "under_load": machine["load_average_at_start"][0] > UNDER_LOAD,
        "assets": described,
        "notes": ctx.notes,
    }
    doc = report.document(meta, rows)
    stem = f"{start_time:%Y%m%d-%H%M%S}-{machine['host']}" + ("-quick" if args.quick else "")
    report.write_json(args.results / f"{stem}.json", doc)
    (args.results / ("latest-quick.md" if args.quick else "latest.md")).write_text(report.markdown(doc, rows))
    print(report.text_table(doc, rows))
    log(f"wrote {args.results / f'{stem}.json'}")
    return 1 if any(o["error"] for o in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
