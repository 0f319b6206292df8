"""A flood of valid classify requests from one client, in a process of its own (its CPU is not the test's):

    python -m tests.support.flood grpc|http TARGET --token T [--concurrency 32] [--images 16]

``--concurrency`` requests in flight, each of ``--images`` copies of a small digit PNG (gRPC: a Classify; HTTP: an
Open Inference infer with a BYTES tensor in Triton's binary extension), each resent as soon as it is answered,
refusals included (a flood does not back off), over one connection (gRPC) or ``--concurrency`` of them (HTTP). It
prints ``flooding`` once the first answer came, and when its standard input closes, one JSON line: the answers it got
by status (gRPC code name, or HTTP status).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

from tests.support.hostile import seed_images


def infer_body(image: bytes, count: int) -> tuple[bytes, dict[str, str]]:
    """An Open Inference infer of ``count`` encoded images (a BYTES tensor, binary), and its headers."""
    from serving.contract.tensors import encode_bytes_elements

    raw = encode_bytes_elements([image] * count)
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


async def _grpc(target: str, token: str, images: int, concurrency: int, flood: Callable) -> None:
    import grpc

    from serving._generated import imageclassifier_pb2 as ic_pb2
    from serving._generated import imageclassifier_pb2_grpc as ic_grpc

    request = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=seed_images()["seed0.png"])] * images)
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ic_grpc.ImageClassifierStub(channel)

        async def send() -> str:
            try:
                await stub.Classify(request, timeout=30, metadata=metadata)
                return "OK"
            except grpc.aio.AioRpcError as e:
                return e.code().name

        await flood(send)


async def _http(target: str, token: str, images: int, concurrency: int, flood: Callable) -> None:
    import aiohttp

    body, headers = infer_body(seed_images()["seed0.png"], images)
    headers["Authorization"] = f"Bearer {token}"
    url = f"{target}/v2/models/digits/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def send() -> str:
            try:
                async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(30)) as r:
                    await r.read()
                    return str(r.status)
            except (aiohttp.ClientError, TimeoutError) as e:
                return type(e).__name__

        await flood(send)


async def main_async(args: argparse.Namespace) -> Counter[str]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    answers: Counter[str] = Counter()

    async def flood(send: Callable[[], Awaitable[str]]) -> None:
        async def worker() -> None:
            while not stop.is_set():
                answers[await send()] += 1
                if sum(answers.values()) == 1:
                    print("flooding", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    run = _grpc if args.transport == "grpc" else _http
    await run(args.target, args.token, args.images, args.concurrency, flood)
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.flood")
    parser.add_argument("transport", choices=("grpc", "http"))
    parser.add_argument("target", help="HOST:PORT (gRPC) or http://HOST:PORT")
    parser.add_argument("--token", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=16)
    answers = asyncio.run(main_async(parser.parse_args()))
    print(json.dumps(dict(answers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
