"""Helpers for the serving tests (images, training runs, repositories, in-thread servers); fixtures in conftest.

The repository is written by ``training.export.export`` (the project's exporter) when it can be imported; without
it (an old checkout, a trimmed install) ``minimal_export`` writes the same files by the shortest path.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from serving.config import ServerConfig
from serving.contract.preprocess import PreprocessSpec, preprocess
from serving.grpc.server import InferenceServer, create_server

DIGITS_LABELS = tuple(f"digit_{i}" for i in range(10))
RGB_LABELS = ("red", "green", "blue", "gray")


# ---- images --------------------------------------------------------------------------------------------------------

def draw_image(seed: int, size: tuple[int, int], mode: str) -> Image.Image:
    """A reproducible picture with a few shapes, so that different seeds give different classes."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        x1, y1 = int(rng.integers(x0 + 2, w)), int(rng.integers(y0 + 2, h))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_run(root: Path, *, arch: str, labels: tuple[str, ...], color_mode: str, size: int, seed: int) -> Path:
    """A valid RUN folder in about a second: random weights, BN statistics from a few train-mode passes."""
    import torch

    from models import registry

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    channels = 1 if color_mode == "L" else 3
    model = registry.create(arch, len(labels), channels)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, channels, size, size) * 0.5 + 0.2)
    model.eval()
    root.mkdir(parents=True)
    registry.save_checkpoint(root / "model.pth", model, arch, len(labels), channels)
    mean, std = ((0.5,), (0.25,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    spec = PreprocessSpec(size=(size, size), color_mode=color_mode, mean=mean, std=std, labels=labels)
    spec.save(root / "spec.json")
    images = root / "images"
    images.mkdir()
    entries = []
    for i in range(8):
        name = f"{i}.png"
        draw_image(seed * 100 + i, (size + 5, size + 3), color_mode).save(images / name)
        entries.append([f"images/{name}", i % len(labels)])
    (root / "data.json").write_text(json.dumps({"root": str(root), "train": entries[:4], "valid": entries[4:]}))
    (root / "metrics.json").write_text(json.dumps({"valid_accuracy": 0.5, "valid_loss": 1.0, "epochs": 0,
                                                   "train_seconds": 0.0, "lr_max": 0.0, "arch": arch,
                                                   "n_classes": len(labels), "history": []}))
    return root


def minimal_export(run: Path, repository: Path, name: str, version: int = 1) -> Path:
    """The repository format by the shortest path (used only when training.export is unavailable)."""
    import hashlib

    import torch

    from models import registry

    model, header = registry.load_checkpoint(run / "model.pth")
    spec = PreprocessSpec.load(run / "spec.json")
    data = json.loads((run / "data.json").read_text())
    inputs = np.stack([preprocess(Path(data["root"]) / p, spec) for p, _ in data["valid"]])
    out = repository / name / str(version)
    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(inputs[:2]),), str(out / "model.onnx"), dynamo=False,
                          opset_version=18, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    np.savez(out / "golden.npz", inputs=inputs, logits=logits)
    c, h, w = spec.input_shape
    doc = {"name": name, "version": version, "arch": header["arch"], "labels": list(spec.labels),
           "input": {"name": "input", "layout": "NCHW", "dtype": "float32", "channels": c, "height": h, "width": w},
           "output": {"name": "logits", "dtype": "float32", "classes": len(spec.labels)},
           "preprocess": spec.to_dict(), "onnx_sha256": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
           "opset": 18, "variant": "fp32", "golden_atol": 1e-4, "source": {"run": str(run), "metrics": {}},
           "verification": {"passed": True, "max_abs_diff": 0.0, "top1_agreement": 1.0}, "created": ""}
    (out / "model.json").write_text(json.dumps(doc, indent=2))
    return out


def export_model(run: Path, repository: Path, name: str) -> Path:
    try:
        from training.export import export
    except ImportError:
        return minimal_export(run, repository, name)
    return export(run, repository, name, log=lambda *_: None)


EXPORTER = "training.export.export"
try:
    import training.export  # noqa: F401
except ImportError:
    EXPORTER = "tests/serving/conftest.py:minimal_export"


def copy_version(repository: Path, src: tuple[str, int], dst: tuple[str, int]) -> Path:
    """Copy a version folder under another name/version (model.json updated; the ONNX sha256 stays valid)."""
    target = repository / dst[0] / str(dst[1])
    shutil.copytree(repository / src[0] / str(src[1]), target)
    doc = json.loads((target / "model.json").read_text())
    doc["name"], doc["version"] = dst
    (target / "model.json").write_text(json.dumps(doc, indent=2))
    return target


def tamper_golden(version_dir: Path, delta: float = 0.5) -> None:
    with np.load(version_dir / "golden.npz", allow_pickle=False) as npz:
        inputs, logits = npz["inputs"], npz["logits"]
    logits = logits.copy()
    logits[0, 0] += delta
    np.savez(version_dir / "golden.npz", inputs=inputs, logits=logits)


def tamper_onnx(version_dir: Path) -> None:
    data = bytearray((version_dir / "model.onnx").read_bytes())
    data[-100] ^= 0xFF  # inside the weights: still a loadable file, a different model
    (version_dir / "model.onnx").write_bytes(bytes(data))


@dataclass(frozen=True)
class Repo:
    path: Path
    runs: dict[str, Path]


def write_images(root: Path) -> dict[str, Path]:
    """PNG and JPEG files of several sizes and modes (resized and converted by the server)."""
    files = {}
    for i, (fmt, mode, size) in enumerate([("PNG", "L", (28, 28)), ("PNG", "RGB", (40, 36)),
                                           ("JPEG", "RGB", (50, 50)), ("JPEG", "L", (31, 29)),
                                           ("PNG", "RGBA", (33, 30)), ("JPEG", "RGB", (64, 48))]):
        path = root / f"img{i}.{fmt.lower().replace('jpeg', 'jpg')}"
        path.write_bytes(encode(draw_image(100 + i, size, mode), fmt, **({"quality": 90} if fmt == "JPEG" else {})))
        files[path.name] = path
    return files


def build_repository(root: Path) -> Repo:
    """digits (L 28x28, versions 1 and 2), rgb (RGB 32x32), tampered (bad golden), corrupt (ONNX changed)."""
    runs = {
        "digits": make_run(root / "runs" / "digits", arch="resnet20", labels=DIGITS_LABELS, color_mode="L",
                           size=28, seed=1),
        "rgb": make_run(root / "runs" / "rgb", arch="resnet20", labels=RGB_LABELS, color_mode="RGB", size=32,
                        seed=2),
    }
    repository = root / "repository"
    export_model(runs["digits"], repository, "digits")
    export_model(runs["rgb"], repository, "rgb")
    copy_version(repository, ("digits", 1), ("digits", 2))
    tamper_golden(copy_version(repository, ("digits", 1), ("tampered", 1)))
    tamper_onnx(copy_version(repository, ("digits", 1), ("corrupt", 1)))
    return Repo(repository, runs)


def torch_probabilities(repo: Repo):  # type: ignore[no-untyped-def]
    """name → function(image) → PyTorch probabilities (float64), from the run's checkpoint and spec."""
    import torch

    from models import registry

    models = {name: (registry.load_checkpoint(run / "model.pth")[0], PreprocessSpec.load(run / "spec.json"))
              for name, run in repo.runs.items()}

    def probs(name: str, image: Path | bytes) -> np.ndarray:
        model, spec = models[name]
        with torch.no_grad():
            logits = model(torch.from_numpy(preprocess(image, spec))[None])
        return torch.softmax(logits.double(), dim=1)[0].numpy()

    return probs


# ---- servers -------------------------------------------------------------------------------------------------------

class ServerThread:
    """A real server on its own event loop in a background thread; tests talk to it over loopback."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self.thread.start()
        self.server: InferenceServer = self.call(self._create())
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"

    async def _create(self) -> InferenceServer:
        return create_server(self.config)[0]

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, load: bool = True) -> ServerThread:
        self.call(self.server.start(load_models=load))
        if load:
            self.call(self.server.wait_until_loaded(60))
        return self

    def load(self) -> bool:
        """Load the models of a server started with ``load=False``; returns whether it is SERVING."""

        async def load_and_wait() -> bool:
            self.server.load()
            return await self.server.wait_until_loaded(60)

        return self.call(load_and_wait())

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def close(self, grace: float = 1.0) -> None:
        try:
            self.call(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def base_config(repository: Path, **kwargs: Any) -> ServerConfig:
    config = ServerConfig(repository=repository, host="127.0.0.1", port=0, metrics_port=0, threads=1,
                          decode_workers=2, max_batch=8, grace_s=2.0)
    return replace(config, **kwargs)


def scrape(server: ServerThread) -> dict[tuple[str, tuple], float]:
    """The /metrics page over HTTP, as {(sample name, sorted labels): value}."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
