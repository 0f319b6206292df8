"""The models and files the benchmarks run on, built once per run in the work folder and shared by the families.

- ``digits``: resnet20, 1×16×16, 10 classes. A full run reuses ``runs/digits`` (and ``model_repository/digits`` when
  it was exported from that run), or trains it with the project's trainer when there is none; ``--quick`` uses an
  untrained network of the same shape (a few seconds to build, the same cost per image).
- ``resnet18``: the project's ResNet-18 at 224 px, 1000 classes, random weights (speed does not depend on them),
  with a small generated RUN folder (calibration and verification images) so that it goes through the same
  ``training.export`` as a trained model, FP32 and INT8.

Each model is served from ``WORK/repo`` (the server and the batch CLI read it as a model repository). A ``--work``
folder kept from an earlier run is reused as it is (its runs and exports are not rebuilt).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core import Context
from serving.contract import layout

DIGITS_EPOCHS, DIGITS_LR = 5, 1e-2          # only when runs/digits is missing
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelAsset:
    """One exported model: its repository entry, the run it came from, and its INT8 twin if built."""

    name: str
    repository: Path
    version_dir: Path
    run: Path
    source: str
    int8_dir: Path | None = None
    int8_note: str = ""

    @property
    def onnx(self) -> Path:
        return self.version_dir / "model.onnx"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.version_dir / "model.json").read_text())

    @property
    def input_shape(self) -> tuple[int, int, int]:
        inp = self.manifest["input"]
        return int(inp["channels"]), int(inp["height"]), int(inp["width"])

    @property
    def classes(self) -> int:
        return int(self.manifest["output"]["classes"])

    def torch_model(self):  # type: ignore[no-untyped-def]
        """The run's PyTorch model (eval mode, BatchNorm not folded)."""
        from models import registry

        model, _ = registry.load_checkpoint(self.run / "model.pth")
        return model.eval()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version_dir": str(self.version_dir), "run": str(self.run), "source": self.source,
                "input": list(self.input_shape), "classes": self.classes,
                "int8": str(self.int8_dir) if self.int8_dir else self.int8_note}


# ---- generated images and runs --------------------------------------------------------------------------------------

def draw(seed: int, size: tuple[int, int], mode: str):  # type: ignore[no-untyped-def]
    """A reproducible picture (a few filled shapes on a background): decodes like a photo, costs nothing to make."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(img)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w)), int(rng.integers(y0 + 1, h))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)((x0, y0, x1, y1), fill=fill)
    return img.convert(mode)


# name → (width, height): a phone's main camera, a 4-MP camera or downscaled upload, a VGA frame
PHOTO_SIZES = {"12mp": (4032, 3024), "4mp": (2304, 1728), "0.3mp": (640, 480)}


def _octaves(rng: np.random.Generator, shape: tuple[int, int], amplitude: float, finest: int) -> np.ndarray:
    """1/f noise: random fields from 6x4 up to ``finest`` columns, each twice as fine and 0.6x as strong."""
    from PIL import Image

    h, w = shape
    acc = np.zeros(shape, np.float32)
    cw, ch = 6, 4
    while cw <= finest:
        field = rng.normal(0, amplitude, (ch, cw)).astype(np.float32)
        acc += np.asarray(Image.fromarray(field, "F").resize((w, h), Image.Resampling.BICUBIC))
        cw, ch, amplitude = cw * 2, ch * 2, amplitude * 0.6
    return acc


def photo(seed: int, size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """A reproducible photo-like RGB picture: a sky-to-ground gradient, objects of muted colours, 1/f lighting and
    texture, sensor grain. At 12 MP it encodes to about 2 MB of JPEG (quality 90), as phone photos do, so decoding
    it costs what decoding a photo costs (flat drawings or white noise compress far better or far worse)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    lw, lh = max(16, w // 4), max(12, h // 4)  # the scene is drawn at a quarter of the size, the grain at full size
    top, bottom = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    t = np.linspace(0, 1, lh, dtype=np.float32)[:, None, None]
    scene = Image.fromarray((top * (1 - t) + bottom * t).repeat(lw, 1).astype(np.uint8), "RGB")
    pen = ImageDraw.Draw(scene)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, lw)), int(rng.integers(0, lh))
        r = int(rng.integers(max(1, lw // 25), max(2, lw // 5)))
        grey = int(rng.integers(30, 230))
        fill = tuple(int(0.6 * grey + 0.4 * v) for v in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)((x0 - r, y0 - r, x0 + r, y0 + 2 * r), fill=fill)
    light = _octaves(rng, (lh, lw), 40.0, lw)[..., None]
    tint = np.stack([_octaves(rng, (lh, lw), 10.0, lw // 8) for _ in range(3)], -1)
    low = np.clip(np.asarray(scene, np.float32) + light + tint, 0, 255).astype(np.uint8)
    img = Image.fromarray(low, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    grain = rng.integers(-5, 6, (h, w, 1), dtype=np.int16) + rng.integers(-2, 3, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + grain, 0, 255).astype(np.uint8), "RGB")


def photo_file(ctx: Context, name: str, fmt: str = "JPEG", seed: int = 0) -> Path:
    """``WORK/photos/<name>-<seed>.jpg|png``, written on first use (JPEG quality 90; PNG zlib level 1)."""
    path = ctx.work / "photos" / f"{name}-{seed}.{'jpg' if fmt == 'JPEG' else 'png'}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 90} if fmt == "JPEG" else {"compress_level": 1}
        photo(seed, PHOTO_SIZES[name]).save(path, format=fmt, **options)
    return path


def encode(img, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def synthetic_run(out: Path, *, arch: str, classes: int, color_mode: str, size: int, image_size: int,
                  n_train: int, n_valid: int, seed: int = 0) -> Path:
    """A RUN folder with random weights (BatchNorm statistics from a few train-mode passes, so folding has real
    work to do) and generated JPEG/PNG images, in the layout ``training.export`` reads."""
    import torch

    from models import registry
    from serving.contract.preprocess import PreprocessSpec

    if (out / "data.json").is_file():  # kept from an earlier run (--work)
        return out
    channels = 1 if color_mode == "L" else 3
    torch.manual_seed(seed)
    model = registry.create(arch, classes, channels)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, channels, size, size) * 0.5 + 0.2)
    model.eval()
    out.mkdir(parents=True)
    registry.save_checkpoint(out / "model.pth", model, arch, classes, channels)
    mean, std = ((0.5,), (0.25,)) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    labels = tuple(str(i) for i in range(classes))
    PreprocessSpec(size=(size, size), color_mode=color_mode, mean=mean, std=std, labels=labels).save(
        out / "spec.json")
    images = out / "images"
    images.mkdir()
    fmt = "PNG" if color_mode == "L" else "JPEG"
    entries = []
    for i in range(n_train + n_valid):
        name = f"{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}"
        (images / name).write_bytes(encode(draw(seed * 10_000 + i, (image_size, image_size), color_mode), fmt))
        entries.append([f"images/{name}", i % classes])
    (out / "data.json").write_text(json.dumps({"root": str(out.resolve()), "train": entries[:n_train],
                                               "valid": entries[n_train:]}))
    (out / "metrics.json").write_text(json.dumps({"valid_accuracy": 0.0, "epochs": 0, "arch": arch,
                                                  "n_classes": classes, "note": "random weights (benchmark)",
                                                  "history": []}))
    return out


def repository(ctx: Context) -> Path:
    """Where this run's models are exported (quick runs keep theirs apart: their digits model is untrained)."""
    return ctx.work / ("repo-quick" if ctx.quick else "repo")


def _export(ctx: Context, run: Path, name: str, **kwargs: Any) -> Path:
    from training.export import export

    done = repository(ctx) / name / "1"
    if (done / "model.json").is_file():  # kept from an earlier run (--work)
        return done
    return export(run, repository(ctx), name, version=1, log=lambda msg: ctx.log(f"  export {name}: {msg}"),
                  **kwargs)


# ---- digits ---------------------------------------------------------------------------------------------------------

def _reusable_version(ctx: Context, run: Path) -> Path | None:
    """The newest model_repository/digits version exported from ``run`` by the current exporter (with its explain
    graph), if there is one."""
    folders = layout.version_dirs(ctx.root / "model_repository" / "digits")
    for _, version in sorted(folders.items(), reverse=True):
        if not (version / "model.json").is_file():
            continue
        doc = json.loads((version / "model.json").read_text())
        source = Path(str(doc.get("source", {}).get("run", "")))
        if doc.get("variant", "fp32") == "fp32" and source.resolve() == run.resolve() and doc.get("explain"):
            return version
    return None


def digits(ctx: Context) -> ModelAsset:
    if "digits" not in ctx.assets:
        ctx.assets["digits"] = _digits(ctx)
    return ctx.assets["digits"]


def _digits(ctx: Context) -> ModelAsset:
    repo = repository(ctx)
    if ctx.quick:
        run = synthetic_run(ctx.work / "runs-quick" / "digits", arch="resnet20", classes=10, color_mode="L", size=16,
                            image_size=16, n_train=8, n_valid=8)
        version = _export(ctx, run, "digits", allow_unlearned=True)
        ctx.note("--quick: digits is an untrained resnet20 1x16x16 (same shape and cost per image as the trained "
                 "one); INT8 skipped")
        return ModelAsset("digits", repo, version, run, "untrained resnet20 (quick)", None, "skipped (--quick)")

    run = ctx.root / "runs" / "digits"
    if (run / "model.pth").is_file():
        reuse = _reusable_version(ctx, run)
        if reuse is not None:
            version = repo / "digits" / reuse.name
            if not version.is_dir():
                shutil.copytree(reuse, version)
            source = f"reused runs/digits and model_repository/digits/{reuse.name}"
        else:
            version = _export(ctx, run, "digits")
            source = "reused runs/digits, exported in this run"
    else:
        from training.fit import fit
        from training.settings import FitConfig

        run = ctx.work / "runs" / "digits"
        ctx.log(f"digits: no runs/digits; training resnet20 for {DIGITS_EPOCHS} epochs (one-cycle, lr {DIGITS_LR})")
        if not (run / "model.pth").is_file():
            fit(FitConfig(data="digits", arch="resnet20", epochs=DIGITS_EPOCHS, lr=DIGITS_LR, out=run, plots=False),
                log=lambda msg: ctx.log(f"  fit: {msg}"))
        version = _export(ctx, run, "digits")
        source = f"trained in this run ({DIGITS_EPOCHS} epochs one-cycle) and exported"
    accuracy = json.loads((run / "metrics.json").read_text()).get("valid_accuracy")
    ctx.note(f"digits: {source} (validation accuracy {accuracy:.4f})" if accuracy is not None else f"digits: {source}")
    int8_dir, int8_note = None, ""
    try:
        int8_dir = _export(ctx, run, "digits_int8", quantize="int8")
    except Exception as e:  # the export refuses (e.g. accuracy drop): the rows say so instead of the whole run dying
        int8_note = f"INT8 export failed: {type(e).__name__}: {e}"
        ctx.note(f"digits: {int8_note}")
    return ModelAsset("digits", repo, version, run, source, int8_dir, int8_note)


# ---- ResNet-18 ------------------------------------------------------------------------------------------------------

def resnet18(ctx: Context) -> ModelAsset:
    if "resnet18" not in ctx.assets:
        ctx.assets["resnet18"] = _resnet18(ctx)
    return ctx.assets["resnet18"]


def _resnet18(ctx: Context) -> ModelAsset:
    run = synthetic_run(ctx.work / "runs" / "resnet18", arch="resnet18", classes=1000, color_mode="RGB", size=224,
                        image_size=256, n_train=32, n_valid=8)
    # Random weights: logits are small and the labels are arbitrary, so the export's accuracy checks mean
    # nothing here; atol 1e-3 (ResNet-18's deeper sums) and no INT8 accuracy limit, only its agreement is reported.
    version = _export(ctx, run, "resnet18", atol=1e-3, allow_unlearned=True)
    int8_dir, int8_note = None, ""
    try:
        int8_dir = _export(ctx, run, "resnet18_int8", atol=1e-3, quantize="int8", max_int8_drop=1.0,
                           allow_unlearned=True)
    except Exception as e:
        int8_note = f"INT8 export failed: {type(e).__name__}: {e}"
        ctx.note(f"resnet18: {int8_note}")
    ctx.note("resnet18: project ResNet-18, 3x224x224, 1000 classes, random weights, exported with training.export "
             "(FP32 and INT8 calibrated on 32 generated JPEGs)")
    return ModelAsset("resnet18", repository(ctx), version, run, "random weights (speed only)", int8_dir, int8_note)
