"""Repository control over gRPC: Triton's repository extension (RepositoryIndex, RepositoryModelLoad,
RepositoryModelUnload) for ``python -m serving models`` and for scripts.

    from serving.client.models import ModelControl
    with ModelControl("localhost:8001") as control:
        control.load("digits")              # the newest version that passes the load-time checks
        for row in control.index():
            print(row.name, row.version, row.state, row.reason)

Loading and unloading need a server started with ``--model-control explicit``; the index works in every mode.
Errors surface as ``grpc.RpcError`` (``.code()``, ``.details()``), as with :class:`serving.client.Client`.
"""

from __future__ import annotations

from pathlib import Path

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving.client.classifier import channel
from serving.contract.api import RepositoryModel

LOAD_TIMEOUT_S = 120.0  # a load runs the golden self-check of every instance before it answers


class ModelControl:
    def __init__(self, target: str, *, timeout: float | None = LOAD_TIMEOUT_S, token: str | None = None,
                 **tls: str | Path | None) -> None:
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = channel(target, **tls)  # type: ignore[arg-type]
        self._stub = kserve_grpc.GRPCInferenceServiceStub(self._channel)

    def index(self, ready: bool = False) -> list[RepositoryModel]:
        """Every model of the server's repository (and every model it holds), by name; ``ready``: READY ones."""
        response = self._stub.RepositoryIndex(kserve_pb2.RepositoryIndexRequest(ready=ready), timeout=self.timeout,
                                              metadata=self.metadata)
        return [RepositoryModel(m.name, m.version, m.state, m.reason) for m in response.models]

    def load(self, name: str) -> None:
        """Load ``name`` from the server's repository, or reload it (a newer version, if one passes its checks)."""
        self._stub.RepositoryModelLoad(kserve_pb2.RepositoryModelLoadRequest(model_name=name), timeout=self.timeout,
                                       metadata=self.metadata)

    def unload(self, name: str) -> None:
        """Unload ``name`` once the requests holding it have finished."""
        self._stub.RepositoryModelUnload(kserve_pb2.RepositoryModelUnloadRequest(model_name=name),
                                         timeout=self.timeout, metadata=self.metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def table(models: list[RepositoryModel]) -> str:
    """The index as aligned columns: NAME, VERSION ("-" when none), STATE, REASON."""
    rows = [("NAME", "VERSION", "STATE", "REASON")]
    rows += [(m.name, m.version or "-", m.state, m.reason) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
                     for row in rows)
