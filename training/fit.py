"""Train a model with fastai's one-cycle policy (or a constant / step schedule) and write a run directory.

``RUN/`` receives:
- ``model.pth``     weights with the constructor arguments (models.registry checkpoint, safe to load);
- ``spec.json``     the preprocessing spec (size, colour mode, mean/std, labels) that travels with the model;
- ``metrics.json``  valid_accuracy, valid_loss, epochs, train_seconds, lr_max, arch, n_classes, history, …;
- ``data.json``     the exact train/valid file lists, so export verifies on the same validation images;
- ``plots/``        lr_find.png, schedule.png, loss.png, confusion.png.

The model is fastai's CNN learner: the network's body with fastai's ``create_head`` (``head="fastai"``) or with its
own global-average-pool → linear head (``head="linear"``), in a ``Learner`` whose splitter makes body and head two
parameter groups (``models.heads``). ``pretrained`` starts the body from another run's weights and trains with
``fine_tune`` (frozen body first, then everything with discriminative learning rates). Images are decoded once and
kept in memory as uint8 tensors; normalisation and augmentation run on whole batches (``training.data``).

Distributed: under ``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel through
fastai's ``DistributedTrainer`` (gloo on CPU, nccl on CUDA); only rank 0 writes the run directory.

The steps live beside this module: ``settings`` (FitConfig, defaults, checks), ``inputs`` (data and loaders),
``learner`` (model and Learner), ``schedule`` (lr_find and the schedules), ``callbacks``, ``distributed``, and
``rundir`` (the files written, from a ``TrainedRun`` record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from fastai.learner import Learner
from fastai.torch_core import set_seed

from training import distributed, schedule
from training.callbacks import EpochRecorder, progress
from training.inputs import load_inputs
from training.learner import build_learner
from training.rundir import TrainedRun, write_run
from training.settings import FitConfig, default_head, validate

__all__ = ["fit"]


def fit(cfg: FitConfig, log: Callable[[str], None] = print, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train, then (rank 0) write the run directory; returns the metrics dict (empty on the other ranks).

    ``callbacks``: extra fastai callbacks for the training loop (the experiments record per-batch losses).
    """
    validate(cfg)
    started = time.perf_counter()
    device = choose_device(cfg)
    distributed.init(device)
    main = distributed.is_main()
    say = log if main else _silent
    set_seed(cfg.seed, reproducible=True)

    inputs = load_inputs(cfg, device, say)
    head = cfg.head or default_head(cfg)
    learn = build_learner(cfg, inputs, head, device, say)
    lr, found = choose_lr(cfg, learn, say)
    recorder = EpochRecorder(fine_tuning=cfg.fine_tune)
    cbs = [recorder, *callbacks, *progress(learn, log, main)]
    with distributed.data_parallel(learn, device):
        train_seconds = schedule.train(cfg, learn, lr, cbs, say)

    metrics: dict[str, Any] = {}
    if main:
        run = TrainedRun(cfg=cfg, dataset=inputs.dataset, spec=inputs.spec, head=head, aug=inputs.aug, lr=lr,
                         lr_find=found, train_seconds=train_seconds, history=recorder.rows, losses=recorder.losses,
                         hps=recorder.hps, world_size=distributed.world_size(), device=device, started=started)
        metrics = write_run(run, learn, log)
    distributed.finish()
    return metrics


def _silent(_msg: str) -> None:
    """The log of ranks other than 0."""


def choose_device(cfg: FitConfig) -> torch.device:
    """``cfg.device``, else CUDA when available, else the CPU."""
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def choose_lr(cfg: FitConfig, learn: Learner, say: Callable[[str], None]) -> tuple[float, schedule.LrFind | None]:
    """lr_max as given, or from lr_find on rank 0 (then shared with every rank); with the lr_find record."""
    if cfg.lr is not None:
        say(f"lr_max = {cfg.lr:.3g} (given)")
        return cfg.lr, None
    steps = len(learn.dls.train)
    num_it = schedule.lr_find_iterations(steps, steps * (cfg.epochs + (cfg.freeze_epochs if cfg.fine_tune else 0)))
    found = schedule.find_lr(learn, num_it) if distributed.is_main() else None
    lr = distributed.broadcast_float(found.suggestion if found is not None else 0.0)
    say(f"lr_find ({num_it} mini-batches) chose lr_max = {lr:.3g} (steepest descent, at least 1/100 of the "
        f"loss minimum's lr)")
    return lr, found
