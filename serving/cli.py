"""``python -m serving serve | classify | health | models | batch``: argument parsing only, the work is in the library.

Every ``serve`` option can also come from an environment variable named ``SERVING_`` + the option in capitals
(``--max-batch`` → ``SERVING_MAX_BATCH``; ``SERVING_MODELS`` is space- or comma-separated); a flag on the command
line wins. Containers set the variables, people type the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _env(option: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    value = os.environ.get("SERVING_" + option.upper().replace("-", "_"))
    if value is None or value == "":
        return default
    try:
        return convert(value)
    except ValueError:
        raise SystemExit(f"error: SERVING_{option.upper().replace('-', '_')}={value!r} is not valid") from None


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("", "none", "off", "-1") else int(value)


def _networks(value: str) -> tuple[str, ...]:
    """``10.0.0.0/8,192.168.1.7`` → its items (checked by ServerConfig)."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _option(p: argparse.ArgumentParser, flag: str, convert: Callable[[str], Any] = str, default: Any = None,
            help: str | None = None, **kwargs: Any) -> None:
    """``--flag`` of type ``convert``; its default comes from ``SERVING_FLAG`` when that variable is set."""
    p.add_argument(flag, type=convert, default=_env(flag[2:], default, convert), help=help, **kwargs)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from serving.config import MODEL_CONTROL_MODES

    p = sub.add_parser("serve", help="run the server", description="Run the inference server (gRPC and HTTP).")
    _option(p, "--repository", Path, required=_env("repository", None) is None,
            help="model repository: NAME/VERSION/ folders")
    _option(p, "--host", str, "0.0.0.0", "address to bind (default 0.0.0.0)")
    _option(p, "--port", int, 8001, "gRPC port (default 8001; 0: any)")
    _option(p, "--metrics-port", _optional_int, 8002, "Prometheus /metrics port (default 8002; 0: any; -1: off)")
    _option(p, "--metrics-host", str, None, "address the metrics endpoint binds (default: the same as --host)")
    _option(p, "--http-port", _optional_int, 8000, "HTTP/REST port: KServe v2 and /v1 classify (default 8000; "
            "0: any; -1: off)")
    _option(p, "--max-http-connections", int, 1000, "HTTP connections open at once; more are closed (default 1000)")
    _option(p, "--max-connections-per-client", int, 100, "connections one client address may hold: HTTP "
            "connections open, gRPC connections with calls in progress (default 100; 0: no cap)")
    _option(p, "--max-inflight-mb", int, None, "request bytes in flight at once, both ports together; "
            "more is refused (429 / RESOURCE_EXHAUSTED) at once (default: a quarter of the memory, at least "
            "--max-message-mb, at most 4096)")
    _option(p, "--http-timeout-s", float, 30.0, "an HTTP client must start each request, send its body and read "
            "the answer within this long (default 30)")
    _option(p, "--auth-token-file", Path, None, "require 'authorization: Bearer TOKEN' on every call but health; "
            "the file's lines are TOKEN or TOKEN NAME, NAME the client's identity (reread on SIGHUP)")
    _option(p, "--device", str, "cpu", choices=("cpu", "cuda"))
    p.add_argument("--models", nargs="+", metavar="NAME[:VERSION]",
                   default=_env("models", [], lambda v: v.replace(",", " ").split()),
                   help="serve only these models (default: all, latest version each)")
    _option(p, "--max-batch", int, 32, "images per onnxruntime call")
    _option(p, "--max-queue-delay-ms", float, 0.0, "how long a request may wait for others to fill a batch (default 0)")
    _option(p, "--max-queue", int, 256, "requests waiting per model for a batch; a model holds at most max-queue + "
            "max-batch images at once, more are refused with RESOURCE_EXHAUSTED before any work")
    _option(p, "--client-share", float, 0.25, "fair share between clients (token names, else addresses): of the "
            "images a model holds at once, this last fraction is kept for clients within their share, limit / "
            "(clients holding images + 1), and batches take each client's requests in turn (default 0.25; 0: off, "
            "first come first served)")
    _option(p, "--trusted-proxies", _networks, (), "CIDR,...: reverse proxies whose X-Forwarded-For names the "
            "client's address, on both ports (default none: the header is never read)")
    _option(p, "--threads", int, None, "onnxruntime intra-op threads (default: the cores this process may use)")
    _option(p, "--instances", int, 1, "onnxruntime sessions per model (Triton's instance count), each computing "
            "its own batches with --threads / N threads: more throughput under concurrent load for compute-bound "
            "models, slower single requests (default 1)")
    _option(p, "--decode-workers", int, None, "image decoding threads (default: the cores this process may use)")
    _option(p, "--grace-s", float, 10.0, "seconds in-flight requests get to finish on SIGTERM/SIGINT")
    _option(p, "--max-message-mb", int, 64, "largest request/response in MiB, after decompression (default 64)")
    _option(p, "--max-images-per-request", int, 256,
            "images in one request; more are refused with INVALID_ARGUMENT (default 256)")
    p.add_argument("--allow-compression", action="store_true", default=_env("allow-compression", False, _flag),
                   help="accept gzip/deflate-compressed requests (default: refused; the size limit still holds "
                        "after decompression)")
    _option(p, "--max-concurrent-streams", int, 100, "RPCs at once on one client connection (default 100)")
    _option(p, "--max-connection-idle-s", float, 300.0, "close a connection idle this long (default 300; 0: never)")
    _option(p, "--max-connection-age-s", float, 0.0,
            "close every connection after this long, with --grace-s to finish (default 0: never)")
    _option(p, "--keepalive-s", float, 60.0,
            "ping idle clients this often and drop those that do not answer (default 60; 0: off)")
    _option(p, "--stream-write-timeout-s", float, 30.0,
            "end a stream whose client reads no response for this long (default 30)")
    _option(p, "--max-pixels", int, None, "largest image (width x height) accepted for decoding")
    _option(p, "--tls-cert", Path, None, "server certificate (PEM)")
    _option(p, "--tls-key", Path, None, "server private key (PEM)")
    _option(p, "--tls-client-ca", Path, None, "CA that client certificates must be signed by (mutual TLS)")
    _option(p, "--poll-s", float, 0.0, "look for new models and versions every SECONDS (default 0: only on SIGHUP); "
            "a version that fails its checks never replaces the one serving")
    _option(p, "--max-shm-regions", int, 64, "system shared-memory regions registered at once, all clients "
            "together (Triton's shared-memory extension; default 64; 0: off)")
    _option(p, "--model-control", str, "poll", "Triton's model control mode: poll (default: load every model, "
            "rescan on SIGHUP and every --poll-s), explicit (load the --models at start, none without it, then load "
            "and unload on request: python -m serving models), none (load at start, never change)",
            choices=MODEL_CONTROL_MODES)
    _option(p, "--log-level", str.upper, "INFO", "where the log settings start (Triton's logging extension changes "
            "them at run time)", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    _option(p, "--log-format", str, "json", choices=("json", "text"))
    _option(p, "--trace-endpoint", str, None, "export OpenTelemetry spans of inference requests over OTLP/gRPC to "
            "this collector (http://HOST:4317; https:// for TLS)")
    _option(p, "--trace-level", str.upper, "OFF", "where the trace settings start: OFF or TIMESTAMPS (Triton's trace "
            "extension changes them at run time)", choices=("OFF", "TIMESTAMPS"))
    _option(p, "--trace-rate", int, 1000, "trace one inference request in N (default 1000; 0: only those whose "
            "client sampled them in its traceparent)")
    _option(p, "--trace-count", int, -1, "stop tracing after this many traces (default -1: never)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from serving.config import ServerConfig
    from serving.contract.preprocess import DEFAULT_MAX_PIXELS
    from serving.runtime.logs import setup_logging
    from serving.server import serve

    setup_logging(args.log_level, args.log_format)
    try:
        settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig) if hasattr(args, f.name)}
        config = ServerConfig(**{**settings, "models": tuple(args.models),
                                 "max_pixels": args.max_pixels or DEFAULT_MAX_PIXELS})
        return asyncio.run(serve(config))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        from serving.errors import ServingError

        if isinstance(e, ServingError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=_env("server", "localhost:8001"), help="HOST:PORT (default localhost:8001)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    p.add_argument("--tls-ca", type=Path, help="CA certificate to verify the server with (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    p.add_argument("--tls-server-name", help="expected name in the server certificate, if not the host")
    p.add_argument("--auth-token-file", type=Path, default=_env("auth-token-file", None, Path),
                   help="file whose first line is the token for a server started with --auth-token-file "
                        "(or set SERVING_AUTH_TOKEN)")


def client_token(args: argparse.Namespace) -> str | None:
    from serving.client import read_token

    try:
        return read_token(args.auth_token_file)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _client(args: argparse.Namespace, model: str | None = None, **options: Any):  # type: ignore[no-untyped-def]
    from serving.client import Client

    return Client(args.server, model, timeout=args.timeout, token=client_token(args), tls_ca=args.tls_ca,
                  tls_cert=args.tls_cert, tls_key=args.tls_key, server_name=args.tls_server_name, **options)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    from serving.client.prepare import add_send_options

    p = sub.add_parser("classify", help="classify image files with a running server")
    _add_client_options(p)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--top-k", type=int, default=0, help="labels per image (default: 5 or the number of classes)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    add_send_options(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.set_defaults(func=_classify)


def _classify(args: argparse.Namespace) -> int:
    for path in args.images:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return EXIT_USAGE
    with _client(args, args.model, send=args.send, jpeg_quality=args.jpeg_quality) as client:
        results = client.classify(args.images, top_k=args.top_k, version=args.version)
    for path, preds in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": str(path), "predictions": [p.to_dict() for p in preds]}))
        else:
            print(f"{path}: " + ", ".join(f"{p.label} {p.probability:.4f}" for p in preds))
    return EXIT_OK


def _add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 iff the server (or --model) is SERVING (Docker HEALTHCHECK)")
    _add_client_options(p)
    p.add_argument("--model", default="", help="check one model instead of the whole server")
    p.set_defaults(func=_health, timeout=5.0)


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.model)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILED


def _add_models(sub: argparse._SubParsersAction) -> None:
    from serving.client.models import LOAD_TIMEOUT_S

    p = sub.add_parser("models", help="list, load and unload the server's models (Triton's repository extension)",
                       description="Repository control over gRPC; load and unload need a server started with "
                                   "--model-control explicit.")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every model of the server's repository: version, state, reason")
    listing.add_argument("--ready", action="store_true", help="only the models ready to serve")
    listing.add_argument("--json", action="store_true", help="one JSON object per model")
    load = actions.add_parser("load", help="load a model from the repository, or reload it (a newer version)")
    unload = actions.add_parser("unload", help="unload a model once its requests have finished")
    for action in (listing, load, unload):
        _add_client_options(action)
        action.set_defaults(func=_models, timeout=LOAD_TIMEOUT_S)
    for action in (load, unload):
        action.add_argument("name", metavar="NAME", help="the model's folder name in the repository")


def _models(args: argparse.Namespace) -> int:
    from serving.client.models import ModelControl, table

    with ModelControl(args.server, timeout=args.timeout, token=client_token(args), tls_ca=args.tls_ca,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, server_name=args.tls_server_name) as control:
        if args.action == "list":
            models = control.index(ready=args.ready)
            for line in ([json.dumps(dataclasses.asdict(m)) for m in models] if args.json else [table(models)]):
                print(line)
        elif args.action == "load":
            control.load(args.name)
            served = {m.name: m.version for m in control.index(ready=True)}
            print(f"{args.name}: loaded, version {served.get(args.name, '?')} serves")
        else:
            control.unload(args.name)
            print(f"{args.name}: unloaded")
    return EXIT_OK


def _add_batch(sub: argparse._SubParsersAction) -> None:
    from serving.batch import job as batch

    p = sub.add_parser("batch", help="batch inference over files, local or through a server")
    batch.add_arguments(p)
    p.set_defaults(func=batch.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Image classification over gRPC and HTTP.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_classify(sub)
    _add_health(sub)
    _add_models(sub)
    _add_batch(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
