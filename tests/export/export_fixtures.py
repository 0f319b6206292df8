"""Run directories built by hand in about a second: a random network with non-trivial BatchNorm statistics,
a spec, and generated PNG files listed in data.json (no training, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models import registry
from serving.contract.preprocess import PreprocessSpec


def randomize_batchnorm(model: nn.Module, in_chans: int, size: int, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial γ, β and running statistics (a fresh network has 1, 0, 0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
        model.train()
        for _ in range(2):
            model(1.5 * torch.randn(8, in_chans, size, size, generator=gen) + 0.3)
    return model.eval()


def write_images(root: Path, n: int, mode: str, seed: int, prefix: str) -> list[str]:
    """``n`` PNG files of assorted sizes (so that preprocessing resizes up and down)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = int(rng.integers(6, 48)), int(rng.integers(6, 48))
        shape = (h, w) if mode == "L" else (h, w, 3)
        # Smooth blobs plus noise: closer to real images than pure noise, and varied in brightness.
        base = rng.integers(0, 256) * np.ones(shape)
        pixels = np.clip(base * 0.5 + rng.normal(64, 60, shape), 0, 255).astype(np.uint8)
        name = f"{prefix}/{i:03d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode=mode).save(root / name)
        names.append(name)
    return names


def write_run(out: Path, model: nn.Module, arch: str, classes: int, in_chans: int, size: int,
              n_valid: int = 40, n_train: int = 24, seed: int = 0) -> Path:
    """A complete RUN directory for ``model`` (already in eval mode with its BatchNorm statistics)."""
    out.mkdir(parents=True, exist_ok=True)
    registry.save_checkpoint(out / "model.pth", model, arch, classes, in_chans)
    mode = "L" if in_chans == 1 else "RGB"
    spec = PreprocessSpec(size=(size, size), color_mode=mode, mean=(0.45,) * in_chans, std=(0.25,) * in_chans,
                          labels=tuple(f"class_{k}" for k in range(classes)))
    spec.save(out / "spec.json")
    root = out / "images"
    rng = np.random.default_rng(seed)
    data = {
        "root": str(root.resolve()),
        "train": [[p, int(rng.integers(classes))] for p in write_images(root, n_train, mode, seed + 1, "train")],
        "valid": [[p, int(rng.integers(classes))] for p in write_images(root, n_valid, mode, seed + 2, "valid")],
    }
    (out / "data.json").write_text(json.dumps(data))
    (out / "metrics.json").write_text(json.dumps({
        "valid_accuracy": 0.5, "valid_loss": 1.0, "epochs": 1, "train_seconds": 0.0, "lr_max": 1e-3, "arch": arch,
        "n_classes": classes, "history": [{"epoch": 0, "valid_accuracy": 0.5}],
    }))
    return out
