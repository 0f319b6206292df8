"""Every server setting in one dataclass; the ``serve`` CLI fills it from flags or ``SERVING_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.contract.preprocess import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str = "0.0.0.0"
    port: int = 8001                         # Triton's gRPC port; 0 picks a free one (tests)
    metrics_port: int | None = 8002          # Triton's metrics port; None: no metrics endpoint, 0: any free port
    device: str = "cpu"
    models: tuple[str, ...] = ()             # NAME or NAME:VERSION; empty: every model, latest version
    max_batch: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256                     # per model: waiting for a batch; admitted at once: + max_batch
    threads: int | None = None               # onnxruntime intra-op threads; None: the cores this process may use
    decode_workers: int | None = None        # image-decoding threads; None: the cores this process may use
    grace_s: float = 10.0
    max_message_mb: int = 128                # a 4K RGB float32 tensor is 99.5 MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None        # set: clients must present a certificate signed by it (mTLS)
    poll_s: float = 0.0                      # look for new models/versions every poll_s seconds; 0: only on SIGHUP

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("--max-batch and --max-queue must be >= 1")
        if self.max_queue_delay_ms < 0 or self.grace_s < 0 or self.poll_s < 0:
            raise ValueError("--max-queue-delay-ms, --grace-s and --poll-s must be >= 0")
        if self.max_message_mb < 1:
            raise ValueError("--max-message-mb must be >= 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def max_admitted(self) -> int:
        """Requests one model handles at once (decoding, queued, computing); more are refused before any work."""
        return self.max_queue + self.max_batch
