"""The data a fit trains on: the folder scanned, every image decoded once, the spec, and fastai's DataLoaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from fastai.data.core import DataLoaders

from models import registry
from models.pretrained import normalisation
from serving.contract.preprocess import PreprocessSpec
from training import data
from training.settings import DEFAULT_BS, FitConfig, FitError, default_aug, default_bs, default_size


@dataclass(frozen=True)
class Inputs:
    """The scanned dataset, its preprocessing spec, the loaders over its decoded images, and whether the training
    batches are augmented."""

    dataset: data.Dataset
    spec: PreprocessSpec
    dls: DataLoaders
    aug: bool


def load_inputs(cfg: FitConfig, device: torch.device, say: Callable[[str], None]) -> Inputs:
    """Scan ``cfg.data``, decode it at the spec's size, and build the loaders on ``device``."""
    color_mode = cfg.color_mode or data.guess_color_mode(cfg.data)
    try:
        ds = data.scan(cfg.data, color_mode, cfg.valid_pct, cfg.seed, log=say)
    except data.DataError as e:
        raise FitError(str(e)) from None
    size = _size(cfg)
    # Decode every image once, at the spec's size; the statistics and every epoch read these tensors.
    channels = 1 if color_mode == "L" else 3
    probe = data.make_spec(ds, (size, size), color_mode, mean=[0.0] * channels, std=[1.0] * channels)
    pixels = data.Pixels.of(ds.train, probe), data.Pixels.of(ds.valid, probe)
    # Published weights come with the statistics they were trained with (fastai normalises with them too);
    # otherwise the training images' own.
    stats = normalisation(cfg.pretrained, cfg.arch, channels) if cfg.pretrained is not None else None
    spec = data.make_spec(ds, (size, size), color_mode, *(stats or data.pixel_stats(pixels[0].x)))
    say(f"data: {ds.root} — {len(ds.labels)} classes, {len(ds.train)} train / {len(ds.valid)} valid images"
        + (f", {len(ds.skipped)} unreadable skipped" if ds.skipped else ""))
    say(f"spec: {size}x{size} {color_mode}, mean={list(spec.mean)}, std={list(spec.std)}")

    aug = default_aug(cfg, color_mode) if cfg.aug is None else cfg.aug
    tfms = data.augmentations(spec, flip=color_mode == "RGB") if aug else None
    bs = cfg.bs or default_bs(len(ds.train))
    if cfg.bs is None and bs != DEFAULT_BS:
        say(f"bs: {bs} (not 32: {len(ds.train)} training images make at least 8 mini-batches an epoch)")
    dls = data.dataloaders(ds, spec, bs=bs, seed=cfg.seed, device=device, aug=tfms, pixels=pixels)
    return Inputs(ds, spec, dls, aug)


def _size(cfg: FitConfig) -> int:
    """The input side: ``cfg.size`` or the default, at least the arch's downsampling."""
    size = cfg.size or default_size(cfg)
    minimum = registry.downsampling(cfg.arch)
    if size < minimum:
        raise FitError(f"size {size} is too small for {cfg.arch}, which downsamples by {minimum}")
    return size
