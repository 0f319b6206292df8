"""Every server setting in one dataclass; the ``serve`` CLI fills it from flags or ``SERVING_*`` variables."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from serving.contract.preprocess import DEFAULT_MAX_PIXELS

# Triton's --model-control-mode names: poll (load everything, rescan on SIGHUP and every --poll-s), explicit (load
# --models at start, then load and unload on request), none (load everything at start, never change).
MODEL_CONTROL_MODES = ("poll", "explicit", "none")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True)
class ServerConfig:
    repository: Path
    host: str = "0.0.0.0"
    port: int = 8001                         # Triton's gRPC port; 0 picks a free one (tests)
    metrics_port: int | None = 8002          # Triton's metrics port; None: no metrics endpoint, 0: any free port
    http_port: int | None = 8000             # Triton's HTTP port; None: no HTTP front end, 0: any free port
    device: str = "cpu"
    models: tuple[str, ...] = ()             # NAME or NAME:VERSION; empty: every model, latest version
    max_batch: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256                     # per model: requests waiting for a batch; images held: + max_batch
    client_share: float = 0.25               # of a model's images held, the last quarter is kept for clients within
                                             # their fair share (serving.runtime.fairshare); 0: first come, first served
    trusted_proxies: tuple[str, ...] = ()    # CIDR networks whose X-Forwarded-For is believed; empty: never read
    threads: int | None = None               # onnxruntime intra-op threads; None: the cores this process may use
    instances: int = 1                       # onnxruntime sessions per model, each with threads // instances
    decode_workers: int | None = None        # image-decoding threads; None: the cores this process may use
    grace_s: float = 10.0
    max_message_mb: int = 64                 # a request of 20 phone JPEGs, or 100 RGB 224-px float32 images
    max_images_per_request: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_compression: bool = False          # compressed requests cost ~1000× their size to inflate: off by default
    max_concurrent_streams: int = 100        # per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    max_connection_idle_s: float = 300.0     # a connection with no RPC for this long is closed (GOAWAY); 0: never
    max_connection_age_s: float = 0.0        # every connection is closed after this long (+ grace_s); 0: never
    keepalive_s: float = 60.0                # ping an idle client this often; no answer in 20 s drops it
    stream_write_timeout_s: float = 30.0     # a stream whose client reads no response for this long is ended
    metrics_host: str | None = None          # None: the same address as host
    max_http_connections: int = 1000         # HTTP connections open at once; more are closed as they arrive
    max_connections_per_client: int = 100    # per client address: HTTP connections open, gRPC connections with
                                             # calls in progress; 0: no cap
    max_inflight_mb: int | None = None       # request bytes held at once, both transports; None: from the memory
                                             # (serving.runtime.budget.default_limit_bytes)
    http_timeout_s: float = 30.0             # an HTTP client must start a request, send its body, and read the
                                             # answer within this long each
    auth_token_file: Path | None = None      # set: every call but health needs 'authorization: Bearer <token>'
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None        # set: clients must present a certificate signed by it (mTLS)
    poll_s: float = 0.0                      # look for new models/versions every poll_s seconds; 0: only on SIGHUP
    max_shm_regions: int = 64                # system shared-memory regions registered at once; 0: extension off
    model_control: str = "poll"              # one of MODEL_CONTROL_MODES
    trace_endpoint: str | None = None        # OTLP/gRPC collector (http://host:4317) that spans are exported to
    trace_level: str = "OFF"                 # OFF or TIMESTAMPS: where the trace settings start (Triton's names)
    trace_rate: int = 1000                   # one request in trace_rate is traced (0: only those a client sampled)
    trace_count: int = -1                    # traces to take, then stop (-1: no limit)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("--max-batch and --max-queue must be >= 1")
        if self.instances < 1:
            raise ValueError("--instances must be >= 1")
        if self.max_queue_delay_ms < 0 or self.grace_s < 0 or self.poll_s < 0:
            raise ValueError("--max-queue-delay-ms, --grace-s and --poll-s must be >= 0")
        if self.max_message_mb < 1 or self.max_images_per_request < 1 or self.max_concurrent_streams < 1:
            raise ValueError("--max-message-mb, --max-images-per-request and --max-concurrent-streams must be >= 1")
        if min(self.max_connection_idle_s, self.max_connection_age_s, self.keepalive_s) < 0:
            raise ValueError("--max-connection-idle-s, --max-connection-age-s and --keepalive-s must be >= 0")
        if not self.stream_write_timeout_s > 0 or not self.http_timeout_s > 0:
            raise ValueError("--stream-write-timeout-s and --http-timeout-s must be > 0")
        if self.max_http_connections < 1:
            raise ValueError("--max-http-connections must be >= 1")
        if self.max_connections_per_client < 0:
            raise ValueError("--max-connections-per-client must be >= 0 (0: no cap)")
        if self.max_inflight_mb is not None and self.max_inflight_mb < self.max_message_mb:
            raise ValueError(f"--max-inflight-mb {self.max_inflight_mb} is less than --max-message-mb "
                             f"{self.max_message_mb}: a request of the largest size could never be admitted")
        if not 0 <= self.client_share <= 1:
            raise ValueError(f"--client-share must be between 0 (off) and 1, got {self.client_share}")
        for spec in self.trusted_proxies:
            try:
                ipaddress.ip_network(spec)
            except ValueError as e:
                raise ValueError(f"--trusted-proxies: {spec!r} is not an address or CIDR network ({e})") from None
        if self.max_shm_regions < 0:
            raise ValueError("--max-shm-regions must be >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"--model-control must be one of {', '.join(MODEL_CONTROL_MODES)}, got "
                             f"{self.model_control!r}")
        if self.poll_s and self.model_control != "poll":
            raise ValueError(f"--poll-s rescans the repository, which --model-control {self.model_control} never "
                             "does: use --model-control poll, or leave --poll-s at 0")
        if self.trace_level not in ("OFF", "TIMESTAMPS"):
            raise ValueError(f"--trace-level {self.trace_level!r}: choose OFF or TIMESTAMPS")
        if self.trace_rate < 0 or self.trace_count < -1:
            raise ValueError("--trace-rate must be >= 0 and --trace-count >= -1 (-1: no limit)")
        if self.trace_endpoint is not None and not self.trace_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"--trace-endpoint {self.trace_endpoint!r}: give the OTLP/gRPC collector's URL, "
                             "http://HOST:4317 (https:// for TLS)")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def max_admitted(self) -> int:
        """Images one model handles at once (decoding, queued, computing); more are refused before any work."""
        return self.max_queue + self.max_batch

    def grpc_options(self) -> list[tuple[str, int]]:
        """gRPC core settings that bound what one client can make the server hold (memory, streams, connections)."""
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),  # checked after decompression too
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share the traffic
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # BDP probing grows a connection's receive window to whatever the client can push: with it, clients
            # that send and never read made the server buffer gigabytes. Without it the window stays at 64 KiB.
            ("grpc.http2.bdp_probe", 0),
            # Bit 0 is "identity": only uncompressed requests; a compressed one is refused (UNIMPLEMENTED).
            ("grpc.compression_enabled_algorithms_bitset", 0b111 if self.allow_compression else 0b001),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_s) or 2**31 - 1),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        if self.max_connection_idle_s:
            options.append(("grpc.max_connection_idle_ms", _ms(self.max_connection_idle_s)))
        if self.max_connection_age_s:
            options += [("grpc.max_connection_age_ms", _ms(self.max_connection_age_s)),
                        ("grpc.max_connection_age_grace_ms", _ms(max(self.grace_s, 1.0)))]
        return options
