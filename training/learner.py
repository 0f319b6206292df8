"""The fastai ``Learner`` a fit trains: the network with its head (and a pretrained body), the loss, and the
body/head splitter (``models.heads``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from fastai.learner import Learner
from fastai.losses import BaseLoss, CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from torch import nn

from models import heads, registry
from models.pretrained import PretrainedError, is_weights_name, load_body, published
from training.inputs import Inputs
from training.settings import FitConfig, FitError


def build_learner(cfg: FitConfig, inputs: Inputs, head: str, device: torch.device,
                  say: Callable[[str], None]) -> Learner:
    """The Learner over ``inputs``: mixed precision on CUDA; frozen body when fine-tuning."""
    model = build_model(cfg, len(inputs.dataset.labels), inputs.spec.channels, head, say)
    # path: lr_find checkpoints the model under path/models/tmpXXXX/; keep that out of the working directory
    # (which may be read-only, or this repository, whose models/ is a package).
    learn = Learner(inputs.dls, model, loss_func=loss(cfg.label_smoothing), metrics=accuracy,
                    splitter=heads.splitter(head), wd=cfg.wd if cfg.wd is not None else 0.01,
                    path=Path(tempfile.gettempdir()))
    if device.type == "cuda":
        learn.to_fp16()
    if cfg.fine_tune:
        learn.freeze()  # lr_find then tunes the head alone, as fine_tune's first phase trains it
    return learn


def build_model(cfg: FitConfig, n_classes: int, channels: int, head: str, say: Callable[[str], None]) -> nn.Module:
    """The network with its head; with ``cfg.pretrained``, its body loaded from that file (or, for a name such as
    ``imagenet``, from torch's hub cache: ``models.pretrained``)."""
    try:
        model = registry.create(cfg.arch, num_classes=n_classes, in_chans=channels, head=head, **cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise FitError(f"cannot build {cfg.arch} with {cfg.model_kwargs}: {e}") from None
    if cfg.pretrained is not None:
        try:
            n = load_body(model, cfg.arch, head, cfg.pretrained, log=say)
            source = cfg.pretrained
            if is_weights_name(source):
                weights = published(source, cfg.arch)
                source = f"{weights.name} ({weights.file})"
        except PretrainedError as e:
            raise FitError(str(e)) from None
        say(f"pretrained: {n} body tensors from {source}; new {head} head for {n_classes} classes")
    return model


def loss(label_smoothing: float) -> BaseLoss:
    """Label-smoothed cross-entropy, or plain cross-entropy when ``label_smoothing`` is 0."""
    return LabelSmoothingCrossEntropyFlat(eps=label_smoothing) if label_smoothing > 0 else CrossEntropyLossFlat()
