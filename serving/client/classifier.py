"""A small Python client for the server's own API (imageclassifier.v1), no onnxruntime needed.

    from serving.client import Client
    with Client("localhost:8001", model="digits") as client:
        for top in client.classify(["three.png", open("seven.jpg", "rb").read()], top_k=3):
            print(top[0].label, top[0].probability)

Images are resized here before they are sent (``send``, ``serving.client.prepare``): the client reads the model's
preprocessing spec once (GetModel), runs the server's own decode and resize on each image, and sends a PNG
(``"png"``, the default: exactly the server's answer for the original file), a float32 tensor (``"tensor"``: exact
too), or a JPEG (``"jpeg"``, ``jpeg_quality``: the smallest, not exact); ``"original"`` sends the file's bytes
unchanged. A 12-megapixel photo for a 224 px model travels as an 80 kB PNG instead of 2 MB and costs the server a
224 px decode. An image the client cannot decode (or that is over its pixel limit) is sent as it is: the server's
answer, usually INVALID_ARGUMENT, is the one the caller gets either way.

With a server that wants a token (``--auth-token-file``), pass ``token=``: it goes with every call as
``authorization: Bearer <token>``. Errors surface as ``grpc.RpcError`` (``.code()``, ``.details()``); the server's
request id is in the details of INTERNAL errors and in the trailing metadata ``x-request-id``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.client.prepare import SEND, encode_for, spec_of, tensor_image
from serving.contract.prediction import Prediction
from serving.contract.preprocess import PreprocessSpec
from serving.errors import InvalidInput

ImageInput = str | Path | bytes | bytearray | memoryview | np.ndarray
MAX_MESSAGE_BYTES = 128 * 1024 * 1024


def channel(target: str, *, tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
            tls_key: str | Path | None = None, server_name: str | None = None) -> grpc.Channel:
    """A blocking channel; TLS when ``tls_ca`` is given, mutual TLS when ``tls_cert``/``tls_key`` are too."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if tls_ca is None and tls_cert is None:
        return grpc.insecure_channel(target, options=options)
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
    return grpc.secure_channel(target, credentials, options=options)


def _read(image: ImageInput) -> np.ndarray | bytes:
    if isinstance(image, np.ndarray | bytes):
        return image
    if isinstance(image, bytearray | memoryview):
        return bytes(image)
    return Path(image).read_bytes()


@dataclass(frozen=True)
class _Target:
    """What the server said about a model: the version it serves and that version's spec."""

    version: int
    spec: PreprocessSpec | None


def read_token(path: str | Path | None) -> str | None:
    """The bearer token: the first line of ``path``, else ``$SERVING_AUTH_TOKEN``, else None. Never a command-line
    value: a token there would show in every process listing. ``ValueError`` for an unreadable or empty file."""
    if path is None:
        return os.environ.get("SERVING_AUTH_TOKEN") or None
    try:
        words = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not words:
        raise ValueError(f"the token file {path} holds no token")
    return words[0]


def predictions(response: ic_pb2.ClassifyResponse) -> list[list[Prediction]]:
    return [[Prediction(p.label, p.index, p.probability) for p in result.predictions] for result in response.results]


class Client:
    def __init__(self, target: str, model: str | None = None, *, timeout: float | None = 30.0, send: str = "png",
                 jpeg_quality: int = 90, token: str | None = None, **tls: str | Path | None) -> None:
        if send not in SEND:
            raise ValueError(f"send must be one of {', '.join(SEND)}, got {send!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}")
        self.model = model
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.send, self.jpeg_quality = send, jpeg_quality
        self._channel = channel(target, **tls)  # type: ignore[arg-type]
        self._stub = ic_grpc.ImageClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._targets: dict[tuple[str, int], _Target] = {}
        self._lock = threading.Lock()

    def classify(self, images: Sequence[ImageInput] | ImageInput, top_k: int = 0, model: str | None = None,
                 version: int = 0) -> list[list[Prediction]]:
        """Top-k predictions per image (file paths, encoded bytes or preprocessed (C, H, W) arrays), in order."""
        if isinstance(images, str | Path | bytes | bytearray | memoryview | np.ndarray):
            images = [images]
        model = model or self.model
        if not model:
            raise ValueError("which model? pass model= to Client() or classify()")
        originals = [_read(img) for img in images]
        target = self._target(model, version) if self.send != "original" else None
        try:
            response = self._classify(model, version, top_k, originals, target)
        except grpc.RpcError as e:
            # A new version with another input refuses what was resized for the old one: resize again, once.
            fresh = self._reread(model, version, target) if e.code() == grpc.StatusCode.INVALID_ARGUMENT else None
            if fresh is None:
                raise
            response = self._classify(model, version, top_k, originals, fresh)
        else:
            if target is not None and response.version != target.version:
                fresh = self._reread(model, version, target)
                if fresh is not None:
                    response = self._classify(model, version, top_k, originals, fresh)
        return predictions(response)

    def _classify(self, model: str, version: int, top_k: int, images: list[np.ndarray | bytes],
                  target: _Target | None) -> ic_pb2.ClassifyResponse:
        request = ic_pb2.ClassifyRequest(model=model, version=version, top_k=top_k,
                                         images=[self._message(img, target) for img in images])
        return self._stub.Classify(request, timeout=self.timeout, metadata=self.metadata)

    def _message(self, image: np.ndarray | bytes, target: _Target | None) -> ic_pb2.Image:
        if isinstance(image, np.ndarray):
            return tensor_image(image)
        if target is not None and target.spec is not None:
            try:
                return encode_for(target.spec, image, self.send, self.jpeg_quality)
            except InvalidInput:
                pass  # the server decides, and says why in its own words
        return ic_pb2.Image(encoded=image)

    def _reread(self, model: str, version: int, used: _Target | None) -> _Target | None:
        """The model's spec read again after ``used`` (a resize) may have gone stale: the new one if it changed."""
        if used is None:
            return None
        with self._lock:
            self._targets.pop((model, version), None)
        fresh = self._target(model, version)
        return fresh if fresh.spec != used.spec else None

    def _target(self, model: str, version: int) -> _Target:
        key = (model, version)
        with self._lock:
            if key not in self._targets:
                info = self.get_model(model, version)
                try:
                    spec = spec_of(info)
                except ValueError:  # a spec this client cannot reproduce (a newer server's resize mode…)
                    spec = None
                self._targets[key] = _Target(info.version, spec)
            return self._targets[key]

    def list_models(self) -> list[ic_pb2.ModelInfo]:
        return list(self._stub.ListModels(ic_pb2.ListModelsRequest(), timeout=self.timeout,
                                          metadata=self.metadata).models)

    def get_model(self, name: str | None = None, version: int = 0) -> ic_pb2.ModelInfo:
        return self._stub.GetModel(ic_pb2.GetModelRequest(name=name or self.model or "", version=version),
                                   timeout=self.timeout, metadata=self.metadata)

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN for the server (``""``) or one model."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
