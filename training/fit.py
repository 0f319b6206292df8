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
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import heads, registry
from models.archs import HEADS
from training import data as data_mod
from training import plots


class FitError(Exception):
    """Bad arguments or unusable data; the message is one line for the terminal."""


@dataclass
class FitConfig:
    data: str
    arch: str
    epochs: int
    out: Path
    lr: float | None = None
    bs: int = 32
    size: int | None = None
    seed: int = 42
    valid_pct: float = 0.2
    wd: float | None = None
    color_mode: str | None = None
    device: str | None = None       # None: cuda when available, else cpu
    plots: bool = True
    # Extra constructor arguments for the architecture (e.g. norm=False); stored in the checkpoint.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Cross-entropy against targets smoothed by ε (Szegedy et al. 2016). On digits it lifted 5-epoch accuracy
    # from 98.1–98.9 % to 98.6–99.7 % over the same seeds, and made it far less sensitive to lr_find's pick.
    label_smoothing: float = 0.1
    schedule: str = "one-cycle"     # one of SCHEDULES
    head: str | None = None         # "fastai" | "linear"; None: default_head()
    pretrained: Path | None = None  # a run's model.pth or a torchvision-format state_dict: fine_tune from its body
    freeze_epochs: int = 1          # fine_tune's epochs with the body frozen (only with pretrained)
    aug: bool | None = None         # fastai's aug_transforms on training batches; None: default_aug()
    started: float | None = None    # time.perf_counter() when the command started, for command_seconds


# Learning-rate schedules over the same epoch budget, all peaking at lr_max:
# - one-cycle: fastai's fit_one_cycle (warm-up then cosine annealing; momentum 0.95 → 0.85 → 0.95);
# - constant:  lr_max throughout (Adam's default momentum 0.9);
# - step:      lr_max, ÷10 after 50 % and again after 75 % of the iterations (He et al. 2015's CIFAR schedule).
SCHEDULES = ("one-cycle", "constant", "step")
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1


def step_schedule(lr_max: float, milestones: Sequence[float] = STEP_MILESTONES,
                  gamma: float = STEP_GAMMA) -> Callable[[float], float]:
    """lr as a function of the training position in [0, 1] (fastai's ParamScheduler convention): lr_max,
    multiplied by ``gamma`` at each milestone passed."""
    def lr_at(pos: float) -> float:
        return lr_max * gamma ** sum(pos >= m for m in milestones)

    return lr_at


def default_size(cfg: FitConfig) -> int:
    """Digits: 16 px (their 8×8 scans doubled); CIFAR-style nets: 32; ImageNet-style nets: 224."""
    if cfg.data == "digits":
        return 16
    return 32 if registry.downsampling(cfg.arch) <= 4 else 224


def default_head(cfg: FitConfig) -> str:
    """fastai's head for the ImageNet-stem nets (what ``vision_learner`` users expect); the linear head for the
    CIFAR-stem ones, where fastai's head trained worse on digits in 5 epochs (97.2 % with lr_find against 100 %
    for the linear head; 98.9 % at lr 2e-2; docs/training.md)."""
    return "fastai" if registry.downsampling(cfg.arch) > 4 else "linear"


def default_aug(cfg: FitConfig, color_mode: str) -> bool:
    """On for colour photo folders (they overfit without it); off for greyscale data such as digits, where it
    did not help in 5 epochs (docs/training.md)."""
    return color_mode == "RGB"


def lr_find_iterations(steps_per_epoch: int, total_steps: int) -> int:
    """lr_find's mini-batches: at most two epochs' worth and half the training it tunes, at least 16 (a curve
    needs some points), at most fastai's default 100."""
    return max(16, min(100, 2 * steps_per_epoch, total_steps // 2))


def validate(cfg: FitConfig) -> None:
    """Refuse bad numbers and unknown archs before any data is read."""
    if cfg.arch not in registry.ARCHS:
        raise FitError(f"unknown arch {cfg.arch!r}; choose one of: {', '.join(registry.ARCHS)}")
    if cfg.epochs <= 0:
        raise FitError(f"--epochs must be > 0, got {cfg.epochs}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise FitError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.bs <= 0:
        raise FitError(f"--bs must be > 0, got {cfg.bs}")
    minimum = registry.downsampling(cfg.arch)
    if cfg.size is not None and cfg.size < minimum:
        raise FitError(f"--size {cfg.size} is too small for {cfg.arch}, which downsamples by {minimum}: "
                       f"use --size >= {minimum}")
    if cfg.color_mode not in (None, "L", "RGB"):
        raise FitError(f"--color-mode must be L or RGB, got {cfg.color_mode}")
    if not 0 <= cfg.label_smoothing < 1:
        raise FitError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.schedule not in SCHEDULES:
        raise FitError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.head is not None and cfg.head not in HEADS:
        raise FitError(f"--head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
    if cfg.freeze_epochs < 0:
        raise FitError(f"--freeze-epochs must be >= 0, got {cfg.freeze_epochs}")
    if cfg.pretrained is not None and not Path(cfg.pretrained).is_file():
        raise FitError(f"--pretrained {cfg.pretrained}: no such file")
    if cfg.pretrained is not None and cfg.schedule != "one-cycle":
        raise FitError("--pretrained trains with fine_tune, a one-cycle schedule; schedule must be one-cycle")


# ------------------------------------------------------------------------------------------------ distributed


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _init_distributed(device: torch.device) -> None:
    if world_size() > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _distributed_trainer(sync_bn: bool):
    """fastai's DistributedTrainer, with a DistributedDL that can broadcast on CPU (gloo) as well as on CUDA."""
    from fastai.distributed import DistributedDL, DistributedTrainer

    class GlooSafeDL(DistributedDL):
        def _broadcast(self, t, rank):
            # fastai moves the index tensor to CUDA because nccl needs it; gloo needs it on the CPU.
            on_cuda = torch.distributed.get_backend() == "nccl"
            t = torch.LongTensor(t).cuda() if on_cuda else torch.LongTensor(t)
            torch.distributed.broadcast(t, rank)
            return t.cpu().tolist()

    class Trainer(DistributedTrainer):
        def _wrap_dl(self, dl):
            return dl if isinstance(dl, DistributedDL) else GlooSafeDL(dl, device=self.learn.model.device)

    return Trainer(sync_bn=sync_bn, cpu=not torch.cuda.is_available())


def _broadcast_float(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.broadcast(t, 0)
    return float(t.item())


# ------------------------------------------------------------------------------------------------ training


def _epoch_recorder(fine_tune: bool):
    """Per-epoch values and seconds, per-batch losses and hyper-parameters, kept across several fits (fine_tune
    fits twice, and fastai's Recorder starts afresh at each fit)."""
    from fastai.callback.core import Callback

    class EpochRecorder(Callback):
        order = 60  # after the Recorder (50) has the epoch's values

        def __init__(self):
            self.rows: list[dict[str, float]] = []
            self.losses: list[float] = []
            self.hps: dict[str, list[float]] = {}
            self.phase = "fit"

        def before_fit(self):
            if fine_tune:  # fine_tune's first fit runs frozen (the optimizer trains the head group only)
                self.phase = "frozen" if getattr(self.learn.opt, "frozen_idx", 0) else "unfrozen"

        def before_epoch(self):
            self._t0 = time.perf_counter()

        def after_epoch(self):
            rec = self.learn.recorder
            names = [n for n in rec.metric_names[1:] if n != "time"]
            row = {"epoch": len(self.rows) + 1,
                   **{n: float(v) for n, v in zip(names, rec.values[-1], strict=False)},
                   "seconds": round(time.perf_counter() - self._t0, 3)}
            if self.phase != "fit":
                row["phase"] = self.phase
            self.rows.append(row)

        def after_fit(self):
            rec = self.learn.recorder
            self.losses += [float(x) for x in rec.losses]
            for k, v in getattr(rec, "hps", {}).items():
                self.hps.setdefault(k, []).extend(float(x) for x in v)

    return EpochRecorder()


def _plain_progress(log: Callable[[str], None]):
    """One line per epoch, for logs and CI (fastai's bar redraws itself and floods a non-terminal)."""
    from fastai.callback.core import Callback

    class PlainProgress(Callback):
        order = 65  # after the Recorder has filled in the epoch's values

        def after_epoch(self):
            rec = self.learn.recorder
            names = [n for n in rec.metric_names[1:] if n != "time"]
            values = " ".join(f"{n}={float(v):.4f}" for n, v in zip(names, rec.values[-1], strict=False))
            log(f"epoch {self.epoch + 1}/{self.n_epoch} {values}")

    return PlainProgress()


def _loss(label_smoothing: float):
    from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

    return LabelSmoothingCrossEntropyFlat(eps=label_smoothing) if label_smoothing > 0 else CrossEntropyLossFlat()


def _train(learn, schedule: str, epochs: int, lr: float, cbs: list) -> None:
    if schedule == "one-cycle":
        learn.fit_one_cycle(epochs, lr, cbs=cbs)
    elif schedule == "constant":
        learn.fit(epochs, lr, cbs=cbs)
    else:
        from fastai.callback.schedule import ParamScheduler

        learn.fit(epochs, lr, cbs=[*cbs, ParamScheduler({"lr": step_schedule(lr)})])


def fit(cfg: FitConfig, log: Callable[[str], None] = print, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train, then (rank 0) write the run directory; returns the metrics dict.

    ``callbacks``: extra fastai callbacks for the training loop (the experiments record per-batch losses).
    """
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from fastai.vision.learner import Learner

    validate(cfg)
    t_start = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _init_distributed(device)
    is_main = rank() == 0
    say = log if is_main else (lambda _msg: None)
    set_seed(cfg.seed, reproducible=True)

    color_mode = cfg.color_mode or data_mod.guess_color_mode(cfg.data)
    try:
        ds = data_mod.scan(cfg.data, color_mode, cfg.valid_pct, cfg.seed, log=say)
    except data_mod.DataError as e:
        raise FitError(str(e)) from None
    size = cfg.size or default_size(cfg)
    minimum = registry.downsampling(cfg.arch)
    if size < minimum:
        raise FitError(f"size {size} is too small for {cfg.arch}, which downsamples by {minimum}")
    # Decode every image once, at the spec's size; the statistics and every epoch read these tensors.
    channels = 1 if color_mode == "L" else 3
    probe = data_mod.make_spec(ds, (size, size), color_mode, mean=[0.0] * channels, std=[1.0] * channels)
    pixels = data_mod.Pixels.of(ds.train, probe), data_mod.Pixels.of(ds.valid, probe)
    spec = data_mod.make_spec(ds, (size, size), color_mode, *data_mod.pixel_stats(pixels[0].x))
    say(f"data: {ds.root} — {len(ds.labels)} classes, {len(ds.train)} train / {len(ds.valid)} valid images"
        + (f", {len(ds.skipped)} unreadable skipped" if ds.skipped else ""))
    say(f"spec: {size}x{size} {color_mode}, mean={list(spec.mean)}, std={list(spec.std)}")

    head = cfg.head or default_head(cfg)
    aug = default_aug(cfg, color_mode) if cfg.aug is None else cfg.aug
    tfms = data_mod.augmentations(spec, flip=color_mode == "RGB") if aug else None
    dls = data_mod.dataloaders(ds, spec, bs=cfg.bs, seed=cfg.seed, device=device, aug=tfms, pixels=pixels)
    model = _build(cfg, len(ds.labels), spec.channels, head, say)
    # path: lr_find checkpoints the model under path/models/tmpXXXX/; keep that out of the working directory
    # (which may be read-only, or this repository, whose models/ is a package).
    learn = Learner(dls, model, loss_func=_loss(cfg.label_smoothing), metrics=accuracy, splitter=heads.splitter(head),
                    wd=cfg.wd if cfg.wd is not None else 0.01, path=Path(tempfile.gettempdir()))
    if device.type == "cuda":
        learn.to_fp16()
    fine_tune = cfg.pretrained is not None
    if fine_tune:
        learn.freeze()  # lr_find then tunes the head alone, as fine_tune's first phase trains it

    lr_find_result = None
    lr = cfg.lr
    if lr is None:
        steps = len(dls.train)
        num_it = lr_find_iterations(steps, steps * (cfg.epochs + (cfg.freeze_epochs if fine_tune else 0)))
        if is_main:
            lr, lr_find_result = _find_lr(learn, num_it)
        lr = _broadcast_float(lr if lr is not None else 0.0)
        say(f"lr_find ({num_it} mini-batches) chose lr_max = {lr:.3g} (steepest descent, at least 1/100 of the "
            f"loss minimum's lr)")
    else:
        say(f"lr_max = {lr:.3g} (given)")

    recorder = _epoch_recorder(fine_tune)
    cbs: list = [recorder, *callbacks]
    if not sys.stdout.isatty():
        from fastai.callback.progress import ProgressCallback

        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None  # the Recorder would print raw value lists
        if is_main:
            cbs.append(_plain_progress(log))
    trainer = None
    if world_size() > 1:
        trainer = _distributed_trainer(sync_bn=device.type == "cuda")  # SyncBatchNorm is CUDA-only
        learn.add_cb(trainer)
        if not is_main:
            from fastai.callback.progress import ProgressCallback

            learn.remove_cb(ProgressCallback)
    t0 = time.perf_counter()
    if fine_tune:
        say(f"fine_tune: {cfg.freeze_epochs} epoch(s) with the body frozen, then {cfg.epochs} with discriminative "
            f"learning rates (body lr/100 … head lr)")
        learn.fine_tune(cfg.epochs, lr, freeze_epochs=cfg.freeze_epochs, cbs=cbs)
    else:
        _train(learn, cfg.schedule, cfg.epochs, lr, cbs)
    train_seconds = time.perf_counter() - t0
    if trainer is not None:
        learn.remove_cb(trainer)

    metrics = None
    if is_main:
        run = {"head": head, "aug": aug, "lr": lr, "lr_find": lr_find_result, "train_seconds": train_seconds,
               "recorder": recorder, "t_start": t_start, "device": device}
        metrics = _write_run(cfg, learn, ds, spec, run, log)
    if world_size() > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return metrics or {}


def _build(cfg: FitConfig, n_classes: int, channels: int, head: str, say: Callable[[str], None]) -> torch.nn.Module:
    """The network with its head; with ``cfg.pretrained``, its body loaded from that file."""
    from models.pretrained import PretrainedError, load_body

    try:
        model = registry.create(cfg.arch, num_classes=n_classes, in_chans=channels, head=head, **cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise FitError(f"cannot build {cfg.arch} with {cfg.model_kwargs}: {e}") from None
    if cfg.pretrained is not None:
        try:
            n = load_body(model, cfg.arch, head, cfg.pretrained)
        except PretrainedError as e:
            raise FitError(str(e)) from None
        say(f"pretrained: {n} body tensors from {cfg.pretrained}; new {head} head for {n_classes} classes")
    return model


def _find_lr(learn, num_it: int) -> tuple[float, dict[str, Any]]:
    from fastai.callback.schedule import minimum, steep, valley

    t0 = time.perf_counter()
    with learn.no_bar():
        suggestion = learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=(steep, valley, minimum))
    # "steep" (steepest descent of the loss) rather than fastai's default "valley": on runs from scratch
    # valley moved 10× between seeds here and under-trained one-cycle (97–98 % vs 99 % on digits).
    # On a few dozen images the loss curve is noise and "steep" can land at 1e-6 (no training at all), so
    # it is floored at a tenth of fastai's "minimum" (itself a tenth of the loss minimum's lr).
    lr = max(float(suggestion.steep), float(suggestion.minimum) / 10)
    return lr, {"lrs": [float(x) for x in learn.recorder.lrs], "losses": [float(x) for x in learn.recorder.losses],
                "suggestion": lr, "valley": float(suggestion.valley), "iterations": num_it,
                "seconds": time.perf_counter() - t0}


@torch.no_grad()
def _predict(model: torch.nn.Module, dl) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets over a fastai DataLoader on this process alone (Learner.get_preds would all_gather
    across ranks, and only rank 0 gets here)."""
    outs, ys = [], []
    for xb, yb in dl:
        # Plain tensors: fastai's typed tensors (TensorImage, TensorCategory) refuse F.cross_entropy.
        outs.append(model(torch.Tensor(xb).as_subclass(torch.Tensor)).float().cpu().as_subclass(torch.Tensor))
        ys.append(yb.cpu().as_subclass(torch.Tensor))
    return torch.cat(outs), torch.cat(ys)


def _write_run(cfg: FitConfig, learn, ds, spec, run: dict[str, Any], log) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    head, lr, lr_find_result, recorder = run["head"], run["lr"], run["lr_find"], run["recorder"]
    model = learn.model.module if hasattr(learn.model, "module") else learn.model
    model = model.float().eval()
    registry.save_checkpoint(out / "model.pth", model, cfg.arch, len(ds.labels), spec.channels, head=head,
                             **cfg.model_kwargs)
    spec.save(out / "spec.json")
    data_mod.save_json(out / "data.json", ds.to_json())

    history = recorder.rows
    logits, targets = _predict(model, learn.dls.valid)
    predicted = logits.argmax(1).numpy()
    valid_loss = float(torch.nn.functional.cross_entropy(logits, targets))
    targets = targets.numpy()
    valid_accuracy = float((predicted == targets).mean())
    n = len(ds.labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (targets, predicted), 1)

    metrics: dict[str, Any] = {
        "valid_accuracy": valid_accuracy,
        "valid_loss": valid_loss,
        "epochs": cfg.epochs,
        "train_seconds": round(run["train_seconds"], 3),
        "lr_max": lr,
        "lr_source": "lr_find" if lr_find_result else "given",
        "schedule": "fine_tune" if cfg.pretrained is not None else cfg.schedule,
        "label_smoothing": cfg.label_smoothing,
        "arch": cfg.arch,
        "head": head,
        "aug": run["aug"],
        "pretrained": str(cfg.pretrained) if cfg.pretrained is not None else None,
        "n_classes": n,
        "n_train": len(ds.train),
        "n_valid": len(ds.valid),
        "n_skipped": len(ds.skipped),
        "bs": cfg.bs,
        "size": list(spec.size),
        "seed": cfg.seed,
        "world_size": world_size(),
        "device": str(run["device"]),
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "confusion": confusion.tolist(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "host": platform.node(),
    }
    if cfg.pretrained is not None:
        metrics["freeze_epochs"] = cfg.freeze_epochs
    if lr_find_result:
        metrics["lr_find_seconds"] = round(lr_find_result["seconds"], 3)
        metrics["lr_find_iterations"] = lr_find_result["iterations"]
        metrics["lr_find_valley"] = lr_find_result["valley"]

    if cfg.plots:
        pdir = out / "plots"
        hps = recorder.hps
        if lr_find_result:
            plots.lr_find(lr_find_result["lrs"], lr_find_result["losses"], lr, pdir / "lr_find.png")
        if "lr" in hps and cfg.schedule == "one-cycle":  # the plot's titles describe the one-cycle policy
            plots.schedule(hps["lr"], hps.get("mom", [0.0] * len(hps["lr"])), pdir / "schedule.png")
        plots.losses(recorder.losses, [h["valid_loss"] for h in history], len(learn.dls.train), pdir / "loss.png")
        plots.confusion(confusion, ds.labels, pdir / "confusion.png")
    # The fit call (decoding, lr_find, training, evaluation, plots) and, from the CLI, the whole command with the
    # imports of torch and fastai.
    now = time.perf_counter()
    metrics["total_seconds"] = round(now - run["t_start"], 3)
    if cfg.started is not None:
        metrics["command_seconds"] = round(now - cfg.started, 3)
    data_mod.save_json(out / "metrics.json", metrics)
    took = f", command {metrics['command_seconds']:.1f} s" if cfg.started is not None else ""
    log(f"valid_accuracy={valid_accuracy:.4f} valid_loss={valid_loss:.4f} (plain cross-entropy) "
        f"train_seconds={run['train_seconds']:.1f}{took} → {out}")
    return metrics
