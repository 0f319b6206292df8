"""``python -m serving serve | classify | health | batch``: argument parsing only, the work is in the library.

Every ``serve`` option can also come from an environment variable named ``SERVING_`` + the option in capitals
(``--max-batch`` → ``SERVING_MAX_BATCH``; ``SERVING_MODELS`` is space- or comma-separated); a flag on the command
line wins. Containers set the variables, people type the flags.
"""

from __future__ import annotations

import argparse
import asyncio
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


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC server", description="Run the gRPC inference server.")
    p.add_argument("--repository", type=Path, default=_env("repository", None, Path),
                   required=_env("repository", None) is None, help="model repository: NAME/VERSION/ folders")
    p.add_argument("--host", default=_env("host", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=_env("port", 8001, int), help="gRPC port (default 8001; 0: any)")
    p.add_argument("--metrics-port", type=_optional_int, default=_env("metrics-port", 8002, _optional_int),
                   help="Prometheus /metrics port (default 8002; 0: any; -1: off)")
    p.add_argument("--metrics-host", default=_env("metrics-host", None),
                   help="address the metrics endpoint binds (default: the same as --host)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=_env("device", "cpu"))
    p.add_argument("--models", nargs="+", metavar="NAME[:VERSION]",
                   default=_env("models", [], lambda v: v.replace(",", " ").split()),
                   help="serve only these models (default: all, latest version each)")
    p.add_argument("--max-batch", type=int, default=_env("max-batch", 32, int), help="images per onnxruntime call")
    p.add_argument("--max-queue-delay-ms", type=float, default=_env("max-queue-delay-ms", 0.0, float),
                   help="how long a request may wait for others to fill a batch (default 0)")
    p.add_argument("--max-queue", type=int, default=_env("max-queue", 256, int),
                   help="requests waiting per model for a batch; a model holds at most max-queue + max-batch "
                        "images at once, more are refused with RESOURCE_EXHAUSTED before any work")
    p.add_argument("--threads", type=int, default=_env("threads", None, int),
                   help="onnxruntime intra-op threads (default: the cores this process may use)")
    p.add_argument("--decode-workers", type=int, default=_env("decode-workers", None, int),
                   help="image decoding threads (default: the cores this process may use)")
    p.add_argument("--grace-s", type=float, default=_env("grace-s", 10.0, float),
                   help="seconds in-flight requests get to finish on SIGTERM/SIGINT")
    p.add_argument("--max-message-mb", type=int, default=_env("max-message-mb", 64, int),
                   help="largest request/response in MiB, after decompression (default 64)")
    p.add_argument("--max-images-per-request", type=int, default=_env("max-images-per-request", 256, int),
                   help="images in one request; more are refused with INVALID_ARGUMENT (default 256)")
    p.add_argument("--allow-compression", action="store_true", default=_env("allow-compression", False, _flag),
                   help="accept gzip/deflate-compressed requests (default: refused; the size limit still holds "
                        "after decompression)")
    p.add_argument("--max-concurrent-streams", type=int, default=_env("max-concurrent-streams", 100, int),
                   help="RPCs at once on one client connection (default 100)")
    p.add_argument("--max-connection-idle-s", type=float, default=_env("max-connection-idle-s", 300.0, float),
                   help="close a connection idle this long (default 300; 0: never)")
    p.add_argument("--max-connection-age-s", type=float, default=_env("max-connection-age-s", 0.0, float),
                   help="close every connection after this long, with --grace-s to finish (default 0: never)")
    p.add_argument("--keepalive-s", type=float, default=_env("keepalive-s", 60.0, float),
                   help="ping idle clients this often and drop those that do not answer (default 60; 0: off)")
    p.add_argument("--stream-write-timeout-s", type=float, default=_env("stream-write-timeout-s", 30.0, float),
                   help="end a stream whose client reads no response for this long (default 30)")
    p.add_argument("--max-pixels", type=int, default=_env("max-pixels", None, int),
                   help="largest image (width x height) accepted for decoding")
    p.add_argument("--tls-cert", type=Path, default=_env("tls-cert", None, Path), help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, default=_env("tls-key", None, Path), help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, default=_env("tls-client-ca", None, Path),
                   help="CA that client certificates must be signed by (mutual TLS)")
    p.add_argument("--poll-s", type=float, default=_env("poll-s", 0.0, float),
                   help="look for new models and versions every SECONDS (default 0: only on SIGHUP); a version "
                        "that fails its checks never replaces the one serving")
    p.add_argument("--log-level", default=_env("log-level", "INFO"))
    p.add_argument("--log-format", choices=("json", "text"), default=_env("log-format", "json"))
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from serving.config import ServerConfig
    from serving.contract.preprocess import DEFAULT_MAX_PIXELS
    from serving.grpc.server import serve
    from serving.runtime.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        config = ServerConfig(
            repository=args.repository, host=args.host, port=args.port, metrics_port=args.metrics_port,
            device=args.device, models=tuple(args.models), max_batch=args.max_batch,
            max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue, threads=args.threads,
            decode_workers=args.decode_workers, grace_s=args.grace_s, max_message_mb=args.max_message_mb,
            max_images_per_request=args.max_images_per_request, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            allow_compression=args.allow_compression, max_concurrent_streams=args.max_concurrent_streams,
            max_connection_idle_s=args.max_connection_idle_s, max_connection_age_s=args.max_connection_age_s,
            keepalive_s=args.keepalive_s, stream_write_timeout_s=args.stream_write_timeout_s,
            metrics_host=args.metrics_host, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, poll_s=args.poll_s,
        )
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


def _client(args: argparse.Namespace, model: str | None = None):  # type: ignore[no-untyped-def]
    from serving.grpc.client import Client

    return Client(args.server, model, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, server_name=args.tls_server_name)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify image files with a running server")
    _add_client_options(p)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--top-k", type=int, default=0, help="labels per image (default: 5 or the number of classes)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.set_defaults(func=_classify)


def _classify(args: argparse.Namespace) -> int:
    for path in args.images:
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return EXIT_USAGE
    with _client(args, args.model) as client:
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


def _add_batch(sub: argparse._SubParsersAction) -> None:
    from serving.batch import job as batch

    p = sub.add_parser("batch", help="batch inference over files, local or through a server")
    batch.add_arguments(p)
    p.set_defaults(func=batch.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Image classification over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_classify(sub)
    _add_health(sub)
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
