"""A small Python client for the server's own API (imageclassifier.v1), no onnxruntime needed.

    from serving.grpc.client import Client
    with Client("localhost:8001", model="digits") as client:
        for top in client.classify(["three.png", open("seven.jpg", "rb").read()], top_k=3):
            print(top[0].label, top[0].probability)

With a server that wants a token (``--auth-token-file``), pass ``token=``: it goes with every call as
``authorization: Bearer <token>``. Errors surface as ``grpc.RpcError`` (``.code()``, ``.details()``); the server's
request id is in the details of INTERNAL errors and in the trailing metadata ``x-request-id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.runtime.prediction import Prediction

ImageInput = str | Path | bytes | np.ndarray
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


def _image(image: ImageInput) -> ic_pb2.Image:
    if isinstance(image, np.ndarray):
        x = np.ascontiguousarray(image, dtype="<f4")
        return ic_pb2.Image(tensor=ic_pb2.Tensor(shape=list(x.shape), data=x.tobytes()))
    if isinstance(image, bytes | bytearray | memoryview):
        return ic_pb2.Image(encoded=bytes(image))
    return ic_pb2.Image(encoded=Path(image).read_bytes())


def predictions(response: ic_pb2.ClassifyResponse) -> list[list[Prediction]]:
    return [[Prediction(p.label, p.index, p.probability) for p in result.predictions] for result in response.results]


class Client:
    def __init__(self, target: str, model: str | None = None, *, timeout: float | None = 30.0,
                 token: str | None = None, **tls: str | Path | None) -> None:
        self.model = model
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = channel(target, **tls)  # type: ignore[arg-type]
        self._stub = ic_grpc.ImageClassifierStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def classify(self, images: Sequence[ImageInput] | ImageInput, top_k: int = 0, model: str | None = None,
                 version: int = 0) -> list[list[Prediction]]:
        """Top-k predictions per image (file paths, encoded bytes or preprocessed (C, H, W) arrays), in order."""
        if isinstance(images, str | Path | bytes | np.ndarray):
            images = [images]
        model = model or self.model
        if not model:
            raise ValueError("which model? pass model= to Client() or classify()")
        request = ic_pb2.ClassifyRequest(model=model, version=version, top_k=top_k,
                                         images=[_image(img) for img in images])
        return predictions(self._stub.Classify(request, timeout=self.timeout, metadata=self.metadata))

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
