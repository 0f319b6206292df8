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
``learner`` (model and Learner), ``schedule`` (lr_find within its budget, its fallback, and the schedules),
``callbacks`` (with BatchNorm's statistics recomputed after each epoch of a short training), ``distributed``, and
``rundir`` (the files written, from a ``TrainedRun`` record). ``find_learning_rate`` runs the same steps up to the
learning rate, without the training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from fastai.learner import Learner
from fastai.torch_core import set_seed

from training import distributed, schedule
from training.callbacks import EpochRecorder, PreciseBatchNorm, batchnorms, needs_precise_batchnorm, progress
from training.data import plain_train_loader
from training.inputs import Inputs, load_inputs
from training.learner import build_learner
from training.rundir import TrainedRun, write_run
from training.settings import FitConfig, default_head, validate

__all__ = ["find_learning_rate", "fit"]


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

    inputs, head, learn = prepare(cfg, device, say)
    lr = choose_lr(cfg, learn, say)
    recorder = EpochRecorder(fine_tuning=cfg.fine_tune)
    precise = precise_batchnorm(cfg, learn, say)
    cbs = [recorder, *([precise] if precise else []), *callbacks, *progress(learn, log, main)]
    with distributed.data_parallel(learn, device):
        train_seconds = schedule.train(cfg, learn, lr.lr, cbs, say)

    metrics: dict[str, Any] = {}
    if main:
        run = TrainedRun(cfg=cfg, dataset=inputs.dataset, spec=inputs.spec, head=head, aug=inputs.aug, lr=lr,
                         train_seconds=train_seconds, history=recorder.rows, losses=recorder.losses,
                         hps=recorder.hps, bs=learn.dls.train.bs, world_size=distributed.world_size(), device=device,
                         started=started, batchnorm_seconds=precise.seconds if precise else None)
        metrics = write_run(run, learn, log)
    distributed.finish()
    return metrics


def find_learning_rate(cfg: FitConfig, log: Callable[[str], None] = print) -> schedule.LrChoice:
    """The rate ``fit(cfg)`` would train with, by the same steps (data, learner, seed, lr_find), without training."""
    validate(cfg)
    _, _, learn = prepare(cfg, choose_device(cfg), log)
    return choose_lr(cfg, learn, log)


def prepare(cfg: FitConfig, device: torch.device, say: Callable[[str], None]) -> tuple[Inputs, str, Learner]:
    """Seed everything, decode the data and build the Learner: what precedes the learning rate."""
    set_seed(cfg.seed, reproducible=True)
    inputs = load_inputs(cfg, device, say)
    head = cfg.head or default_head(cfg)
    return inputs, head, build_learner(cfg, inputs, head, device, say)


def _silent(_msg: str) -> None:
    """The log of ranks other than 0."""


def choose_device(cfg: FitConfig) -> torch.device:
    """``cfg.device``, else CUDA when available, else the CPU."""
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def choose_lr(cfg: FitConfig, learn: Learner, say: Callable[[str], None]) -> schedule.LrChoice:
    """lr_max as given, or from lr_find on rank 0 — fastai's default when its curve cannot be trusted — then shared
    with every rank."""
    if cfg.lr is not None:
        say(f"lr_max = {cfg.lr:.3g} (given)")
        return schedule.LrChoice(cfg.lr, "given", "given with --lr")
    choice = None
    if distributed.is_main():
        found = schedule.find_lr(learn, schedule.training_batches(cfg, len(learn.dls.train)))
        choice = schedule.read_curve(found, schedule.fallback_lr(cfg))
    lr = distributed.broadcast_float(choice.lr if choice is not None else 0.0)
    if choice is None:  # the other ranks: the rate, without the record
        return schedule.LrChoice(lr, "lr_find", "rank 0's lr_find")
    if choice.source == "fallback":
        say(f"WARNING: {choice.reason}")
    say(f"lr_max = {lr:.3g} ({choice.reason if choice.source == 'lr_find' else 'fallback'})")
    return choice


def precise_batchnorm(cfg: FitConfig, learn: Learner, say: Callable[[str], None]) -> PreciseBatchNorm | None:
    """The callback that recomputes BatchNorm's statistics after each epoch: as ``cfg.recompute_batchnorm`` says, or
    when the training is too short for the running ones (``callbacks.needs_precise_batchnorm``)."""
    batches = schedule.training_batches(cfg, len(learn.dls.train))
    wanted = needs_precise_batchnorm(batches) if cfg.recompute_batchnorm is None else cfg.recompute_batchnorm
    if not wanted or not batchnorms(learn.model):
        return None
    say("BatchNorm statistics recomputed over the training images after each epoch"
        + (f" ({batches} mini-batches in all: too few for the running averages)" if cfg.recompute_batchnorm is None
           else ""))
    return PreciseBatchNorm(plain_train_loader(learn.dls))
