"""What convolutions do, in pictures: a run's learned kernels and feature maps, and hand-built kernels.

``python -m models filters RUN [--image PATH] --out DIR`` writes
- ``first_layer_kernels.png``: the first convolution's learned kernels as a grid (colour for an RGB input, else the
  mean over input channels on a blue–red scale centred at 0, each kernel scaled to its own largest |weight|);
- ``feature_maps_<stage>.png``: for one image, the output of the stem and of each stage — the ``TOP`` channels
  with the largest mean activation, each on its own scale;
- ``hand_built_kernels.png``: edge (Laplacian), blur (Gaussian), sharpen, Sobel x and Sobel y applied to a sample
  image with our own ``models.scratch.conv2d`` (im2col), and the same kernels through ``torch.nn.functional.conv2d``;
  ``render`` refuses to write it when the two differ by more than ``TOLERANCE`` anywhere.

The image for the feature maps goes through the run's own preprocessing (``spec.json``, the serving code's
``preprocess``); by default it is the run's first validation image. The hand-built kernels see the same file in
grey (longer side at most ``PHOTO_SIDE`` px), or by default scikit-learn's bundled sample photo.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import archs, registry
from models.scratch import conv2d

__all__ = ["HAND_BUILT", "TOLERANCE", "TOP", "FiltersError", "Rendered", "apply_kernels", "render", "stages"]

TOP = 8
TOLERANCE = 1e-6
PHOTO_SIDE = 200
DPI = 80

# 3×3 kernels, as cross-correlation weights (what conv2d computes; no flip).
HAND_BUILT: dict[str, np.ndarray] = {
    "edge (Laplacian)": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64),
    "blur (Gaussian)": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64),
    "Sobel x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64),
    "Sobel y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64),
}


class FiltersError(Exception):
    """The run or the image cannot be used; the message is one line."""


@dataclass
class Rendered:
    files: list[Path] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # hand-built kernel → max |ours − PyTorch|

    def lines(self) -> list[str]:
        worst = max(self.max_abs_diff.values(), default=0.0)
        return [*map(str, self.files),
                f"hand-built kernels: models.scratch.conv2d vs torch F.conv2d (float64), max |difference| {worst:.1e}"]


# ------------------------------------------------------------------------------------------------ computing


def apply_kernels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every hand-built kernel on a (H, W) image, zero-padded to keep the size: (ours, PyTorch's), (K, H, W) each."""
    x = image[None, None].astype(np.float64)
    w = np.stack(list(HAND_BUILT.values()))[:, None]
    ours = conv2d(x, w, padding=1)[0]
    theirs = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)[0].numpy()
    return ours, theirs


def stages(model: nn.Module, arch: str) -> list[tuple[str, nn.Module]]:
    """The module whose output is the stem's, then one per stage."""
    if hasattr(model, "layer1"):  # the project's ResNets and torchvision's
        names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
        return [("stem", model.maxpool), *((n, getattr(model, n)) for n in names)]
    # fastai's XResNet: three ConvLayers and a max-pool, then one Sequential per stage.
    children = list(model.children())
    return [("stem", children[3]), *((f"layer{i + 1}", children[4 + i]) for i in range(len(archs.spec(arch).layers)))]


@torch.no_grad()
def feature_maps(model: nn.Module, arch: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Stage name → its (C, H, W) output for one (C, H, W) input."""
    seen: dict[str, np.ndarray] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out[0].clone().numpy()))
               for name, m in stages(model, arch)]
    try:
        model.eval()(torch.from_numpy(x)[None])
    finally:
        for h in handles:
            h.remove()
    return seen


def top_channels(maps: np.ndarray, k: int = TOP) -> list[int]:
    """The k channels with the largest mean activation, largest first."""
    return [int(c) for c in np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:k]]


# ------------------------------------------------------------------------------------------------ reading


def _read_run(run: Path) -> tuple[nn.Module, str, object, Path | None]:
    """(model, arch, preprocessing spec, first validation image) of a run directory."""
    from serving.contract.preprocess import PreprocessSpec

    for name in ("model.pth", "spec.json"):
        if not (run / name).is_file():
            raise FiltersError(f"{run / name} is missing: RUN must be a directory written by `python -m training fit`")
    model, header = registry.load_checkpoint(run / "model.pth")
    spec = PreprocessSpec.load(run / "spec.json")
    first = None
    if (run / "data.json").is_file():
        data = json.loads((run / "data.json").read_text())
        if data.get("valid"):
            first = Path(data["root"]) / data["valid"][0][0]
    return model, header["arch"], spec, first


def _photo(image: Path | None) -> np.ndarray:
    """The image for the hand-built kernels: grey, in [0, 1], longer side at most PHOTO_SIDE."""
    from PIL import Image

    if image is None:
        from sklearn.datasets import load_sample_image

        img = Image.fromarray(load_sample_image("china.jpg"))
    else:
        try:
            img = Image.open(image)
            img.load()
        except OSError as exc:
            raise FiltersError(f"cannot read {image}: {exc}") from None
    img = img.convert("L")
    scale = PHOTO_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


# ------------------------------------------------------------------------------------------------ drawing


def _figure(rows: int, cols: int, width: float, height: float):
    """A grid of axes without ticks or frames; ``width`` and ``height`` per cell, in inches. A bare Figure, not
    pyplot's: no global state, nothing to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    return path


def _kernel_image(w: np.ndarray) -> tuple[np.ndarray, dict]:
    """One (C, k, k) kernel as something imshow can draw, and how."""
    if w.shape[0] == 3:  # RGB: each kernel stretched to [0, 1]
        span = float(w.max() - w.min()) or 1.0
        return ((w - w.min()) / span).transpose(1, 2, 0), {}
    mean = w.mean(axis=0)
    bound = float(np.abs(mean).max()) or 1.0
    return mean, {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}


def draw_kernels(weight: np.ndarray, path: Path, title: str) -> Path:
    """A grid of the (O, C, k, k) kernels."""
    cols = min(8, len(weight))
    fig, axes = _figure(math.ceil(len(weight) / cols), cols, 0.9, 0.9)
    for i, (ax, w) in enumerate(zip(axes.flat, weight, strict=False)):
        img, style = _kernel_image(w)
        ax.imshow(img, interpolation="nearest", **style)
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def draw_feature_maps(image: np.ndarray, maps: np.ndarray, path: Path, title: str) -> Path:
    """The input, then the top channels of one stage's (C, H, W) output."""
    chosen = top_channels(maps)
    fig, axes = _figure(1, len(chosen) + 1, 1.2, 1.2)
    axes[0, 0].imshow(image.mean(axis=0), cmap="gray", interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=7)
    for ax, c in zip(axes.flat[1:], chosen, strict=False):
        ax.imshow(maps[c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}: {maps[c].mean():.2f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def draw_hand_built(photo: np.ndarray, ours: np.ndarray, theirs: np.ndarray, path: Path) -> Path:
    """Columns: the image, then each kernel; rows: the kernel's weights, our conv2d, PyTorch's conv2d. Both outputs
    of a kernel share one grey scale, its 1st to 99th percentile."""
    names = list(HAND_BUILT)
    aspect = photo.shape[0] / photo.shape[1]
    fig, axes = _figure(3, len(names) + 1, 1.8, 1.8 * max(aspect, 0.6))
    axes[1, 0].imshow(photo, cmap="gray")
    axes[1, 0].set_title("image", fontsize=8)
    for j, name in enumerate(names, 1):
        k = HAND_BUILT[name]
        bound = float(np.abs(k).max())
        axes[0, j].imshow(k, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for (y, x), v in np.ndenumerate(k):
            axes[0, j].text(x, y, str(Fraction(v).limit_denominator(64)), ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 * bound else "black")
        axes[0, j].set_title(name, fontsize=8)
        lo, hi = np.percentile(ours[j - 1], (1, 99))
        diff = float(np.abs(ours[j - 1] - theirs[j - 1]).max())
        for row, (label, out) in enumerate((("models.scratch.conv2d", ours), (f"F.conv2d, max |Δ| {diff:.0e}", theirs)),
                                           1):
            axes[row, j].imshow(out[j - 1], cmap="gray", vmin=lo, vmax=hi)
            axes[row, j].set_title(label, fontsize=7)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ the command


def render(run: Path, out: Path, image: Path | None = None) -> Rendered:
    """Write every figure of the module docstring into ``out``; returns the files and the kernels' differences."""
    from serving.contract.preprocess import preprocess
    from serving.errors import InvalidInput

    run, out = Path(run), Path(out)
    model, arch, spec, first = _read_run(run)
    source = image or first
    if source is None:
        raise FiltersError(f"{run} lists no validation image: pass --image PATH")
    try:
        x = preprocess(source, spec)  # type: ignore[arg-type]
    except (InvalidInput, OSError) as exc:
        raise FiltersError(f"cannot read {source}: {exc}") from None
    photo = _photo(image)
    ours, theirs = apply_kernels(photo)
    result = Rendered(max_abs_diff={name: float(np.abs(ours[i] - theirs[i]).max())
                                    for i, name in enumerate(HAND_BUILT)})
    if max(result.max_abs_diff.values()) > TOLERANCE:
        raise FiltersError(f"our conv2d and PyTorch's differ by more than {TOLERANCE}: {result.max_abs_diff}")

    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    weight = first_conv.weight.detach().numpy()
    result.files.append(draw_kernels(weight, out / "first_layer_kernels.png",
                                     f"{arch}: the {len(weight)} learned kernels of the first convolution "
                                     f"({weight.shape[2]}×{weight.shape[3]}, {weight.shape[1]} input channel(s))"))
    for name, maps in feature_maps(model, arch, x).items():
        title = f"{arch}, after {name}: the {min(TOP, len(maps))} of {len(maps)} channels with the largest mean " \
                f"activation ({maps.shape[1]}×{maps.shape[2]})"
        result.files.append(draw_feature_maps(x, maps, out / f"feature_maps_{name}.png", title))
    result.files.append(draw_hand_built(photo, ours, theirs, out / "hand_built_kernels.png"))
    return result
