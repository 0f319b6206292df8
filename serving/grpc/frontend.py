"""The gRPC front end: the classifier API and the Open Inference Protocol, health and reflection on one port.

``GrpcFrontEnd`` binds its port when built (0: any free one) and has the HTTP front end's shape: ``start()``,
``stop(grace)``. Health (``grpc.health.v1``) follows the registry: every model NOT_SERVING until it passed its golden
self-check, the server SERVING while the registry is ready; ``drain()`` turns everything NOT_SERVING at shutdown.

The classifier and inference services count each request message against the in-flight budget
(``serving.grpc.handlers``) and cap the connections with calls in progress per client address
(``serving.grpc.peers``); health and reflection are counted by neither, so that probes always get through.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from serving._generated import grpc_service_pb2, imageclassifier_pb2
from serving._generated._pool import POOL
from serving.config import ServerConfig
from serving.grpc import gone
from serving.grpc.auth import TokenInterceptor
from serving.grpc.clients import identifier
from serving.grpc.handlers import add_service
from serving.grpc.peers import PeerCalls
from serving.grpc.servicers import ImageClassifierServicer, InferenceServicer
from serving.runtime.auth import Tokens
from serving.runtime.budget import InflightBudget
from serving.runtime.dataplane import DataPlane
from serving.runtime.peers import Peers
from serving.runtime.registry import ModelState, ServedModel
from serving.runtime.requests import Recorder

SERVICE_NAMES = (
    imageclassifier_pb2.DESCRIPTOR.services_by_name["ImageClassifier"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _reflection_pool() -> None:
    """Our stubs live in a private descriptor pool; reflection serves from it, so health and reflection go in too."""
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        try:
            POOL.FindFileByName(file.name)
        except KeyError:
            POOL.AddSerializedFile(file.serialized_pb)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    assert config.tls_key is not None  # ServerConfig checks they come together
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class GrpcFrontEnd:
    def __init__(self, plane: DataPlane, config: ServerConfig, recorder: Recorder,
                 tokens: Tokens | None = None, *, budget: InflightBudget) -> None:
        self.plane = plane
        gone.install()  # a client that leaves under its answer is an info line, not grpc's ERROR with a traceback
        self.peers = PeerCalls(config.max_connections_per_client) if config.max_connections_per_client else None
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(options=config.grpc_options(),
                                      interceptors=[TokenInterceptor(tokens)] if tokens else None)
        identify = identifier(tokens is not None, Peers(config.trusted_proxies))
        add_service(self.server, imageclassifier_pb2.DESCRIPTOR.services_by_name["ImageClassifier"],
                    ImageClassifierServicer(plane, recorder, identify, self.peers), budget)
        add_service(self.server, grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                    InferenceServicer(plane, recorder, identify, self.peers), budget)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        _reflection_pool()
        reflection.enable_server_reflection((*SERVICE_NAMES, "grpc.health.v1.Health", reflection.SERVICE_NAME),
                                            self.server, pool=POOL)
        address = f"{config.host}:{config.port}"
        credentials = _credentials(config)
        try:
            self.port = (self.server.add_secure_port(address, credentials) if credentials
                         else self.server.add_insecure_port(address))
        except RuntimeError:  # grpc's way of saying bind() failed
            raise OSError(f"cannot bind the gRPC port {address} (in use, or not permitted)") from None
        plane.registry.on_state_change(self._publish)

    async def _publish(self, model: ServedModel | None) -> None:
        registry = self.plane.registry
        if model is not None:
            serving = model.state is ModelState.SERVING and not registry.shutting_down
            await self.health.set(model.name, _SERVING if serving else _NOT_SERVING)
        overall = _SERVING if registry.ready else _NOT_SERVING
        for service in ("", *SERVICE_NAMES):
            await self.health.set(service, overall)

    async def start(self) -> int:
        """Open the port with every service and model NOT_SERVING (health follows the registry from then on)."""
        for service in ("", *SERVICE_NAMES, *self.plane.registry.models):
            await self.health.set(service, _NOT_SERVING)
        await self.server.start()
        return self.port

    async def drain(self) -> None:
        """Health turns NOT_SERVING for everything, so that balancers stop sending before the port closes."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish for up to ``grace`` seconds, then cancel the rest."""
        await self.server.stop(grace)
