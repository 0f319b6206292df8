"""Batch inference: ``python -m serving batch INPUT… (--repository DIR [--engine local|ray] | --server HOST:PORT)
--model NAME --output F.csv|F.jsonl|F.parquet`` — one row per image file, written as it completes, resumable after a
crash.

The pieces, one idea each: ``inputs`` (INPUT arguments → ordered unique paths), ``runners`` (paths → rows, locally
through the shared Predictor or through the gRPC server), ``decode`` (files → tensors in worker processes),
``ray_engine`` (the local runner in Ray Data actors), ``rows`` (a row, and the escaping of odd names), ``output``
and ``parquet`` (rows ↔ CSV/JSONL/Parquet, torn tails, resume), ``progress`` (progress bar or lines, summary) and
``backends`` (what every engine hands this module, the errors, the checked model load). :func:`run_job` ties them
together; :func:`add_arguments` and :func:`run` are the command line (serving/cli.py mounts them as ``batch``).

Exit codes: 0 every input has a prediction; 3 the job finished but some rows are errors; 2 usage error (bad
arguments, no inputs, unusable output, unknown model), reported before any work; 1 the job could not finish (model
rejected by its load checks, server unreachable or failing, output not writable mid-way): rows written so far are
kept and ``--resume`` continues; 130 interrupted (Ctrl-C), likewise resumable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from serving.batch.backends import Backend, JobFailed, UsageError, load_checked
from serving.batch.inputs import IMAGE_SUFFIXES, InputError, expand_inputs
from serving.batch.output import Existing, OutputError, OutputFile, check_output, open_output, read_existing
from serving.batch.progress import Progress, Summary
from serving.batch.rows import Row

if TYPE_CHECKING:
    from serving.batch.parquet import ParquetOutput

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROW_ERRORS = 0, 1, 2, 3  # the first three as in serving.cli

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_ROW_ERRORS", "EXIT_USAGE", "add_arguments", "plan", "run", "run_job"]


# ---- library -------------------------------------------------------------------------------------------------------

def plan(paths: list[str], existing: Existing | None, output: str) -> tuple[list[str], Summary]:
    """The paths still to do, and a summary already holding what ``existing`` rows say about the others."""
    summary = Summary(output=output, total=len(paths))
    if existing is None:
        return paths, summary
    wanted = set(paths)
    done = {row.path: row for row in existing.rows if row.path in wanted}
    summary.done_before = len(done)
    summary.dropped_bytes = existing.torn_bytes
    _count(summary, done.values())
    return [p for p in paths if p not in done], summary


def _count(summary: Summary, rows: Iterable[Row]) -> None:
    for row in rows:
        if row.ok:
            summary.labels[row.label] += 1  # type: ignore[index]
        else:
            summary.errors += 1


def run_job(batches: Iterator[list[Row]], out: OutputFile | ParquetOutput, summary: Summary,
            progress: Progress) -> Summary:
    """Write each batch of rows as it comes, keeping ``summary`` and ``progress`` up to date."""
    started = time.perf_counter()
    errors_before = summary.errors
    try:
        for rows in batches:
            out.write(rows)
            summary.processed += len(rows)
            _count(summary, rows)
            progress.update(summary.processed, summary.errors - errors_before)
    finally:
        summary.seconds = time.perf_counter() - started
        progress.close()
    return summary


# ---- command line --------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from serving.client.prepare import add_send_options

    p.description = (
        "Classify image files into a CSV, JSON Lines or Parquet output: one row per file (path, label, probability, "
        "top_k, error), written as it completes. Locally with --repository (no server needed; --engine ray spreads "
        "the work over a Ray cluster), or through a running server with --server."
    )
    p.epilog = (
        "INPUT: a file (always classified); a folder (walked for " + "/".join(sorted(IMAGE_SUFFIXES)) +
        " files, any case, skipping names that start with '.'); a glob pattern (quote it; '**' spans folders); "
        "a .csv or .parquet file: a list of paths (its 'path' column); "
        "or '-' for one path per line on stdin. Order: arguments as given, each folder's files sorted by path. "
        "Exit codes: 0 all classified, 3 finished with error rows, 2 usage error, 1 job failed (rows so far are "
        "kept: rerun with --resume), 130 interrupted."
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, glob patterns, or - (paths on stdin)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, metavar="DIR", help="run locally on the model repository DIR")
    where.add_argument("--server", metavar="HOST:PORT", help="send the images to a running server")
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=0, metavar="V", help="model version (default: the latest)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="F.csv|F.jsonl|F.parquet",
                   help="the output file (Parquet: a folder of parts); its suffix picks the format")
    p.add_argument("--format", choices=("csv", "jsonl", "parquet"),
                   help="the output format, whatever the output's suffix")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="labels per row (default: 5 or the number of classes)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="images per onnxruntime run / per request (32)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: decoding processes (default: the usable cores; 0: decode between onnxruntime "
                        "runs); ray: actors at most (default: the cluster's CPUs / --threads); remote: requests in "
                        "flight (default 4)")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="walk folders (and '**' in patterns) into subfolders (default; --no-recursive: top only)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an existing output: skip the paths it already has (a torn last row is redone)")
    again.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output (the summary is still printed)")
    p.add_argument("--progress-interval", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal (10)")
    local = p.add_argument_group("local mode")
    local.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this machine's cores (default); ray: a pool of Ray Data actors, each with its own "
                            "onnxruntime session")
    local.add_argument("--ray-address", metavar="ADDRESS",
                       help="the Ray cluster to join (host:port, ray://host:10001 or auto; default: RAY_ADDRESS, "
                            "else a new local one)")
    local.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    local.add_argument("--threads", type=int, default=None, metavar="N",
                       help="onnxruntime intra-op threads (default: the usable cores; ray: the CPUs each actor "
                            "reserves, default 1)")
    remote = p.add_argument_group("remote mode")
    remote.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds per request (60)")
    remote.add_argument("--retries", type=int, default=5, metavar="N",
                        help="retries of a request the server could not take (UNAVAILABLE, RESOURCE_EXHAUSTED, "
                             "DEADLINE_EXCEEDED), 0.2 s apart and doubling, before the job stops (5)")
    add_send_options(remote)
    remote.add_argument("--tls-ca", type=Path, help="CA certificate to verify the server with (enables TLS)")
    remote.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    remote.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    remote.add_argument("--tls-server-name", help="expected name in the server certificate, if not the host")
    remote.add_argument("--auth-token-file", type=Path,
                        help="file whose first line is the server's token (or set SERVING_AUTH_TOKEN)")


def _check_numbers(args: argparse.Namespace) -> None:
    if args.server and args.engine == "ray":
        raise UsageError("--engine ray runs the model in Ray actors: use it with --repository, not --server")
    if args.ray_address and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    workers = 4 if args.workers is None else args.workers  # any default passes
    pool = args.server or args.engine == "ray"  # a pool of actors or of requests cannot be empty
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--workers", workers, 1 if pool else 0),
                             ("--top-k", args.top_k, 0), ("--version", args.version, 0),
                             ("--threads", args.threads or 1, 1), ("--retries", args.retries, 0),
                             ("--progress-interval", args.progress_interval, 0)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")


def local_backend(args: argparse.Namespace, todo: list[str]) -> Backend:
    """The model loaded with every check, and the decoders."""
    from concurrent.futures.process import BrokenProcessPool

    from serving.batch.decode import start_decoders
    from serving.batch.runners import classify_local
    from serving.runtime.predictor import available_cores

    workers = available_cores() if args.workers is None else args.workers
    # Worker processes boot while the model loads; a job of a couple of batches is not worth starting them.
    pool = start_decoders(workers) if workers and len(todo) > 2 * args.batch_size else None
    close = (lambda: pool.shutdown(wait=True, cancel_futures=True)) if pool else (lambda: None)
    try:
        loaded = load_checked(args)
    except BaseException:
        close()
        raise
    predictor = loaded.predictor
    k = predictor.resolve_top_k(args.top_k)

    def batches(todo: list[str]) -> Iterator[list[Row]]:
        try:
            yield from classify_local(predictor, todo, top_k=k, batch_size=args.batch_size, pool=pool,
                                      prefetch=2 * workers)
        except BrokenProcessPool as e:  # a decoder killed from outside, or by the kernel for want of memory
            raise JobFailed(f"a decoding process died: {e}") from None

    return Backend(f"{predictor.name} version {predictor.version} from {loaded.path} ({predictor.device})",
                   batches, close)


def remote_backend(args: argparse.Namespace, todo: list[str]) -> Backend:
    """A channel to the server, after checking that it serves the model."""
    import grpc

    from serving.batch.runners import RemoteClassifier, RemoteError, classify_remote
    from serving.client import Client, read_token

    try:
        token = read_token(args.auth_token_file)
    except ValueError as e:
        raise UsageError(str(e)) from None
    client = Client(args.server, args.model, timeout=args.timeout, send=args.send, jpeg_quality=args.jpeg_quality,
                    token=token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                    server_name=args.tls_server_name)
    try:
        try:
            info = client.get_model(args.model, args.version)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UsageError(details) from None
            raise JobFailed(f"server {args.server}: {code.name}: {details}") from None
        if info.state != info.SERVING:
            raise JobFailed(f"model {args.model!r} is not serving on {args.server}: {info.reason or 'loading'}")
        if args.top_k > len(info.labels):
            raise UsageError(f"top_k must be between 1 and {len(info.labels)} (the number of classes), "
                             f"got {args.top_k}")
    except Exception:
        client.close()
        raise
    remote = RemoteClassifier(client, args.model, version=args.version, top_k=args.top_k, retries=args.retries)
    in_flight = 4 if args.workers is None else args.workers

    def batches(todo: list[str]) -> Iterator[list[Row]]:
        try:
            yield from classify_remote(remote, todo, batch_size=args.batch_size, in_flight=in_flight)
        except RemoteError as e:
            raise JobFailed(str(e)) from None

    return Backend(f"{info.name} version {info.version} on {args.server}", batches, client.close)


def _run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    _check_numbers(args)
    # Everything that can be refused is refused before the model loads and before the output is touched.
    check_output(args.output, resume=args.resume, overwrite=args.overwrite, fmt=args.format)
    paths = expand_inputs(args.inputs, recursive=args.recursive, stdin=stdin)
    existing = read_existing(args.output, args.format) if args.resume else None
    todo, summary = plan(paths, existing, str(args.output))

    if args.server:
        backend = remote_backend(args, todo)
    elif args.engine == "ray":
        from serving.batch.ray_engine import ray_backend

        backend = ray_backend(args, todo)
    else:
        backend = local_backend(args, todo)
    try:
        if not args.quiet:
            print(f"batch: {backend.described}: {len(todo)} files to classify"
                  + (f", {summary.done_before} already in {args.output}" if summary.done_before else ""),
                  file=stderr)
        progress = Progress(len(todo), stderr, interval_s=args.progress_interval, enabled=not args.quiet)
        try:
            with open_output(args.output, existing=existing, overwrite=args.overwrite, fmt=args.format) as out:
                run_job(backend.batches(todo), out, summary, progress)
        except KeyboardInterrupt:
            print(f"batch: interrupted after {summary.processed} files; rerun with --resume to continue",
                  file=stderr)
            raise
        except OSError as e:  # the output (disk full, file system gone): the rows written so far stay
            raise JobFailed(f"writing {args.output}: {e.strerror or e}; rerun with --resume once fixed") from None
        except JobFailed as e:
            raise JobFailed(f"{e}; the rows so far are in {args.output}: rerun with --resume") from None
    finally:
        backend.close()
    print(summary.format(), file=stdout)
    return EXIT_ROW_ERRORS if summary.errors else EXIT_OK


def run(args: argparse.Namespace, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    """The ``batch`` subcommand: run the job and map its failures to the exit codes above."""
    stderr = stderr or sys.stderr
    try:
        return _run(args, stdin or sys.stdin, stdout or sys.stdout, stderr)
    except (UsageError, InputError, OutputError) as e:
        print(f"error: {e}", file=stderr)
        return EXIT_USAGE
    except JobFailed as e:
        print(f"error: {e}", file=stderr)
        return EXIT_FAILED
