"""The ceiling: a bare ``grpc.aio`` server that answers each request with canned response bytes.

``python -m benchmarks.echo METHOD=RESPONSE_FILE …`` prints its port on stdout, then serves until SIGTERM/SIGINT.
It registers the very method paths the real server has (e.g. ``/inference.GRPCInferenceService/ModelInfer``), with
the same message-size options, and answers with a response of the real size, so the same client and payload
measure what gRPC itself costs per request with no model, no protobuf parsing and no Python of ours.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

MAX_MESSAGE = 128 * 1024 * 1024


async def serve(responses: dict[str, bytes]) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, response in responses.items():
        service, _, method = path.strip("/").rpartition("/")

        async def answer(request: bytes, context: grpc.aio.ServicerContext, response: bytes = response) -> bytes:
            return response

        by_service.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(s, m) for s, m in by_service.items()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any("=" not in a for a in args):
        print("usage: python -m benchmarks.echo /SERVICE/METHOD=RESPONSE_FILE ...", file=sys.stderr)
        return 2
    responses = {path: Path(file).read_bytes() for path, file in (a.split("=", 1) for a in args)}
    asyncio.run(serve(responses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
