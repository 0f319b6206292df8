"""RUN folders built in about a second, the way ``python -m training fit`` leaves them, but from random weights:
model.pth, spec.json, data.json listing generated PNG files, metrics.json (no training, no downloads)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models import registry
from serving.contract.preprocess import PreprocessSpec, preprocess
from tests.support.images import write_blobs

DIGITS_LABELS = tuple(f"digit_{i}" for i in range(10))
RGB_LABELS = ("red", "green", "blue", "gray")


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


def random_model(arch: str, classes: int, in_chans: int, size: int, seed: int = 0, head: str = "linear") -> nn.Module:
    """``registry.create`` with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_batchnorm(registry.create(arch, classes, in_chans, head=head), in_chans, size, seed)


def body_and_head(classes: int = 5) -> nn.Module:
    """A fastai ``vision_learner``-style model: a torchvision ResNet body + ``create_head`` (BN1d → Linear)."""
    from fastai.vision.learner import create_head

    tv = registry.create("tv_resnet18", classes, 3)
    body = nn.Sequential(*list(tv.children())[:-2])
    return nn.Sequential(body, create_head(512, classes))


def write_run(out: Path, model: nn.Module, arch: str, labels: tuple[str, ...], in_chans: int, size: int,
              n_train: int = 24, n_valid: int = 40, seed: int = 0, head: str = "linear") -> Path:
    """A complete RUN folder for ``model`` (in eval mode with its BatchNorm statistics)."""
    out.mkdir(parents=True, exist_ok=True)
    classes = len(labels)
    registry.save_checkpoint(out / "model.pth", model, arch, classes, in_chans, head=head)
    mode = "L" if in_chans == 1 else "RGB"
    spec = PreprocessSpec(size=(size, size), color_mode=mode, mean=(0.45,) * in_chans, std=(0.25,) * in_chans,
                          labels=labels)
    spec.save(out / "spec.json")
    root = out / "images"
    rng = np.random.default_rng(seed)
    data = {
        "root": str(root.resolve()),
        "train": [[p, int(rng.integers(classes))] for p in write_blobs(root, n_train, mode, seed + 1, "train")],
        "valid": [[p, int(rng.integers(classes))] for p in write_blobs(root, n_valid, mode, seed + 2, "valid")],
    }
    (out / "data.json").write_text(json.dumps(data))
    (out / "metrics.json").write_text(json.dumps({
        "valid_accuracy": 0.5, "valid_loss": 1.0, "epochs": 1, "train_seconds": 0.0, "lr_max": 1e-3, "arch": arch,
        "n_classes": classes, "history": [{"epoch": 0, "valid_accuracy": 0.5}],
    }))
    return out


def make_run(out: Path, arch: str, labels: int | tuple[str, ...] = 10, in_chans: int = 1, size: int = 16,
             seed: int = 0, n_train: int = 24, n_valid: int = 40, head: str = "linear") -> Path:
    """A RUN folder from random weights; ``labels`` is a tuple of names or a class count (class_0, class_1 …)."""
    names = tuple(f"class_{k}" for k in range(labels)) if isinstance(labels, int) else tuple(labels)
    model = random_model(arch, len(names), in_chans, size, seed, head)
    return write_run(out, model, arch, names, in_chans, size, n_train, n_valid, seed, head)


def torch_probabilities(runs: dict[str, Path]) -> Callable[[str, Path | bytes], np.ndarray]:
    """name → function(image) → PyTorch probabilities (float64), from the run's checkpoint and spec."""
    models = {name: (registry.load_checkpoint(run / "model.pth")[0], PreprocessSpec.load(run / "spec.json"))
              for name, run in runs.items()}

    def probs(name: str, image: Path | bytes) -> np.ndarray:
        model, spec = models[name]
        with torch.no_grad():
            logits = model(torch.from_numpy(preprocess(image, spec))[None])
        return torch.softmax(logits.double(), dim=1)[0].numpy()

    return probs
