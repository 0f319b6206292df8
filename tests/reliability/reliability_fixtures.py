"""Helpers for the reliability tests: a server subprocess whose memory we can read, hostile images, RSS statistics.

Every server here is a real ``python -m serving serve`` process on 127.0.0.1 and a free port, so that a crash is a
dead process (not a test thread), and its resident memory is the kernel's figure (``/proc/PID/status`` VmRSS).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from tests.serving.serving_fixtures import draw_image, encode

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
LogEntry = dict[str, Any]


# ---- a server process ----------------------------------------------------------------------------------------------

class ServerProcess:
    """``python -m serving serve`` (or ``launcher``) in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, repository: Path, *args: str, port: int = 0, launcher: list[str] | None = None,
                 env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        command = [*(launcher or [sys.executable, "-m", "serving"]), "serve", "--repository", str(repository),
                   "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--threads", "1",
                   "--decode-workers", "1", "--log-format", "json", *args]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self.log: list[LogEntry] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_log(lambda e: "port" in e and "metrics_port" in e, 60)
        self.port = int(listening["port"])
        self.metrics_port = int(listening["metrics_port"])
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                    ("grpc.max_send_message_length", 64 << 20)])
        self.classifier = ic_grpc.ImageClassifierStub(self.channel)
        self.inference = kserve_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if wait_ready:
            self.wait_log(lambda e: str(e.get("msg", "")).startswith("models loaded"), 60)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line.rstrip("\n"), "level": "raw"}
            with self._lock:
                self.log.append(entry)

    def entries(self, predicate: Callable[[LogEntry], bool] = lambda e: True) -> list[LogEntry]:
        with self._lock:
            log = list(self.log)
        return [e for e in log if predicate(e)]  # outside the lock: a predicate may look at the log itself

    def wait_log(self, predicate: Callable[[LogEntry], bool], timeout: float) -> LogEntry:
        """The first log entry matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.entries(predicate)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                self._reader.join(2)
                found = self.entries(predicate)
                if found:
                    return found[0]
                break
            time.sleep(0.02)
        raise AssertionError(f"no matching log entry; exit code {self.proc.poll()}; last: {self.entries()[-5:]}")

    def status(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, service: str = "", timeout: float = 30) -> float:
        """Seconds until ``service`` reports SERVING."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status(service) == SERVING:
                    return time.perf_counter() - started
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"{service or 'server'} never became SERVING")

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(10)
        self._reader.join(5)
        return code


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; seconds it took. ``AssertionError`` after ``timeout``."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.perf_counter() - started


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB, from the kernel (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_kb_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per minute."""
    t = np.array([s[0] for s in samples], dtype=np.float64)
    kb = np.array([s[1] for s in samples], dtype=np.float64)
    return float(np.polyfit(t / 60.0, kb, 1)[0])


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds in a thread, until stopped."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - self._t0, rss_kb(self.pid)))
            except (OSError, RuntimeError):
                return  # the process is gone
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max(kb for _, kb in self.samples)


# ---- repositories --------------------------------------------------------------------------------------------------

def add_version(repository: Path, src: Path, name: str, version: int,
                damage: Callable[[Path], None] | None = None) -> Path:
    """Copy a version folder to ``name/version`` the way an exporter should: write aside, then rename into place."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(src, staging)
    doc = json.loads((staging / "model.json").read_text())
    doc["name"], doc["version"] = name, version
    (staging / "model.json").write_text(json.dumps(doc, indent=2))
    if damage is not None:
        damage(staging)
    target = repository / name / str(version)
    staging.rename(target)
    return target


def truncate_onnx(version_dir: Path, rehash: bool = False) -> None:
    """Cut model.onnx in half; with ``rehash`` model.json gets the new sha256, so onnxruntime itself must refuse."""
    import hashlib

    onnx = version_dir / "model.onnx"
    data = onnx.read_bytes()[: onnx.stat().st_size // 2]
    onnx.write_bytes(data)
    if rehash:
        doc = json.loads((version_dir / "model.json").read_text())
        doc["onnx_sha256"] = hashlib.sha256(data).hexdigest()
        (version_dir / "model.json").write_text(json.dumps(doc, indent=2))


def wrong_sha(version_dir: Path) -> None:
    doc = json.loads((version_dir / "model.json").read_text())
    doc["onnx_sha256"] = "0" * 64
    (version_dir / "model.json").write_text(json.dumps(doc, indent=2))


# ---- requests ------------------------------------------------------------------------------------------------------

def classify_request(payload: bytes, model: str = "digits", top_k: int = 3) -> ic_pb2.ClassifyRequest:
    return ic_pb2.ClassifyRequest(model=model, top_k=top_k, images=[ic_pb2.Image(encoded=payload)])


def call(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    """(code, details, response) of one blocking RPC, errors included."""
    try:
        return grpc.StatusCode.OK, "", fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None  # type: ignore[attr-defined]


# ---- hostile and unusual images ------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG header claiming w×h pixels, with almost no data: 74 bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _png_chunk(b"IEND", b""))


def gif_bomb(w: int, h: int) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0)
    return head + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00\x3b"


def tiff_bomb(w: int, h: int) -> bytes:
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (278, 4, 1, h), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd


def webp_bomb(w: int, h: int) -> bytes:
    """A real lossless WebP whose VP8L header is patched to claim w×h (14-bit fields)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 200)), "WEBP", lossless=True))
    i = data.index(b"VP8L") + 8
    bits = int.from_bytes(data[i + 1:i + 5], "little")
    data[i + 1:i + 5] = ((bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


def jpeg_bomb(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 200)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def bmp_bomb(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def bombs() -> dict[str, bytes]:
    """Tiny files claiming enormous dimensions, one per format the server decodes."""
    return {"bomb.png": png_bomb(100_000, 100_000), "bomb.gif": gif_bomb(65_535, 65_535),
            "bomb.tiff": tiff_bomb(100_000, 100_000), "bomb.webp": webp_bomb(16_384, 16_384),
            "bomb.jpg": jpeg_bomb(65_000, 65_000), "bomb.bmp": bmp_bomb(100_000, 100_000),
            "mid-bomb.png": png_bomb(3_000, 3_000), "mid-bomb.webp": webp_bomb(3_000, 3_000)}


def _frames(n: int, size: tuple[int, int], mode: str) -> list[Image.Image]:
    return [draw_image(500 + i, size, mode) for i in range(n)]


def unusual_images() -> dict[str, bytes]:
    """Valid files the server must decode: animated, multi-page, 16-bit, CMYK, palette, 1-bit, EXIF-rotated …"""
    out: dict[str, bytes] = {}
    first, *rest = _frames(3, (30, 26), "RGB")
    out["animated.gif"] = encode(first.convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in rest],
                                 duration=50, loop=0)
    out["animated.png"] = encode(first, "PNG", save_all=True, append_images=rest, duration=50)
    out["animated.webp"] = encode(first, "WEBP", save_all=True, append_images=rest, duration=50)
    out["multipage.tiff"] = encode(first, "TIFF", save_all=True, append_images=rest)
    gray16 = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83).astype(np.uint16)
    out["gray16.png"] = encode(Image.fromarray(gray16), "PNG")
    out["gray16.tiff"] = encode(Image.fromarray(gray16), "TIFF")
    out["int32.tiff"] = encode(Image.fromarray(gray16.astype(np.int32)), "TIFF")
    out["float.tiff"] = encode(Image.fromarray(gray16.astype(np.float32) / 65535), "TIFF")
    base = draw_image(7, (40, 30), "RGB")
    out["cmyk.jpg"] = encode(base.convert("CMYK"), "JPEG", quality=90)
    out["cmyk.tiff"] = encode(base.convert("CMYK"), "TIFF")
    out["palette.png"] = encode(base.convert("P"), "PNG")
    palette = base.convert("P")
    out["palette-transparent.png"] = encode(palette, "PNG", transparency=0)
    out["palette.gif"] = encode(palette, "GIF")
    out["1bit.png"] = encode(base.convert("1"), "PNG")
    out["la.png"] = encode(base.convert("LA"), "PNG")
    out["rgba.webp"] = encode(base.convert("RGBA"), "WEBP")
    out["progressive.jpg"] = encode(base, "JPEG", progressive=True, quality=80)
    out["bmp.bmp"] = encode(base, "BMP")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90°
    out["exif-rotated.jpg"] = encode(base, "JPEG", exif=exif.tobytes())
    out["1x1.png"] = encode(Image.new("L", (1, 1), 255), "PNG")
    out["wide.png"] = encode(Image.new("RGB", (1999, 2), (1, 2, 3)), "PNG")
    # Formats Pillow knows but the server must not even parse (the decoder allowlist).
    out["not-allowed.ppm"] = encode(base, "PPM")
    out["not-allowed.ico"] = encode(base, "ICO")
    out["not-allowed.pcx"] = encode(base, "PCX")
    out["eps-header.eps"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    return out


def seed_images() -> dict[str, bytes]:
    """Ordinary PNG/JPEG files: the starting points of the mutation run."""
    out = {}
    for i, (fmt, mode, size) in enumerate([("PNG", "L", (28, 28)), ("PNG", "RGB", (40, 36)), ("JPEG", "RGB", (50, 50)),
                                           ("JPEG", "L", (31, 29)), ("PNG", "RGBA", (33, 30)), ("GIF", "P", (24, 24)),
                                           ("WEBP", "RGB", (30, 30)), ("TIFF", "RGB", (20, 22))]):
        out[f"seed{i}.{fmt.lower()}"] = encode(draw_image(200 + i, size, "RGB").convert(mode), fmt)
    return out


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random damage to a file: truncation, bit flips (often in the header), overwritten or moved bytes."""
    kind = rng.choice(["truncate", "flip", "flip-header", "overwrite", "insert", "delete", "splice-zero"])
    b = bytearray(data)
    n = len(b)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(0, n))])
    if kind in ("flip", "flip-header"):
        span = min(n, 64) if kind == "flip-header" else n
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, span))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b)
    i = int(rng.integers(0, n))
    length = int(rng.integers(1, 33))
    if kind == "overwrite":
        b[i:i + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == "insert":
        b[i:i] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == "delete":
        del b[i:i + length]
    else:
        b[i:i + length] = b"\0" * length
    return kind, bytes(b)


def bounded(count: int, seconds: float) -> Iterator[int]:
    """0, 1, 2 … until ``count`` items or ``seconds`` have passed, whichever comes first."""
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            return
        yield i


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
