"""The run directory a fit leaves: ``model.pth``, ``spec.json``, ``data.json``, ``metrics.json`` and ``plots/``.

``write_run`` takes a :class:`TrainedRun`, the typed record of what the fit did, and the learner holding the trained
model; it evaluates the model on the validation split, writes every file and logs the closing line.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastai.learner import Learner
from torch import nn

from models import registry
from serving.contract.preprocess import PreprocessSpec
from training import data, plots
from training.evaluate import Evaluation, evaluate
from training.learned import Learned, judge
from training.schedule import LrChoice
from training.settings import FitConfig


@dataclass(frozen=True)
class TrainedRun:
    """What a fit did, as metrics.json and the plots record it."""

    cfg: FitConfig
    dataset: data.Dataset
    spec: PreprocessSpec
    head: str
    aug: bool
    lr: LrChoice                      # lr_max, where it came from and why (with lr_find's record when it ran)
    train_seconds: float
    history: list[dict[str, float]]   # one row per epoch (EpochRecorder)
    losses: list[float]               # training loss per mini-batch, over every fit
    hps: dict[str, list[float]]       # hyper-parameters per mini-batch (lr, mom, …)
    bs: int                           # the batch size trained with (cfg.bs, or settings.default_bs)
    world_size: int
    device: torch.device
    started: float                    # time.perf_counter() when fit() started, for total_seconds
    batchnorm_seconds: float | None = None  # recomputing BatchNorm's statistics after each epoch; None: not done


def write_run(run: TrainedRun, learn: Learner, log: Callable[[str], None]) -> dict[str, Any]:
    """Write ``run.cfg.out`` for the model in ``learn``; returns the metrics written to metrics.json."""
    out = Path(run.cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _trained_model(learn)
    save_model(run, model, out)
    evaluation = evaluate(model, learn.dls.valid, len(run.dataset.labels))
    metrics = metrics_of(run, evaluation)
    if run.cfg.plots:
        draw_plots(run, evaluation, len(learn.dls.train), out / "plots")
    # The fit call (decoding, lr_find, training, evaluation, plots) and, from the CLI, the whole command with the
    # imports of torch and fastai.
    now = time.perf_counter()
    metrics["total_seconds"] = round(now - run.started, 3)
    if run.cfg.started is not None:
        metrics["command_seconds"] = round(now - run.cfg.started, 3)
    data.save_json(out / "metrics.json", metrics)
    took = f", command {metrics['command_seconds']:.1f} s" if run.cfg.started is not None else ""
    log(f"valid_accuracy={evaluation.valid_accuracy:.4f} valid_loss={evaluation.valid_loss:.4f} (plain "
        f"cross-entropy) train_seconds={run.train_seconds:.1f}{took} → {out}")
    verdict = learned_of(evaluation)
    if not verdict.learned:
        log(f"WARNING: the model has not learned: {verdict.why_not()}; export refuses it unless --allow-unlearned")
    return metrics


def learned_of(evaluation: Evaluation) -> Learned:
    """Whether the evaluated model learned anything (training.learned)."""
    return judge(evaluation.valid_accuracy, evaluation.confusion.sum(axis=1).tolist())


def _trained_model(learn: Learner) -> nn.Module:
    """The network itself (not a DistributedDataParallel wrapper), in float32 and eval mode."""
    model = learn.model.module if hasattr(learn.model, "module") else learn.model
    return model.float().eval()


def save_model(run: TrainedRun, model: nn.Module, out: Path) -> None:
    """model.pth (weights and constructor arguments), spec.json and data.json."""
    cfg = run.cfg
    registry.save_checkpoint(out / "model.pth", model, cfg.arch, len(run.dataset.labels), run.spec.channels,
                             head=run.head, **cfg.model_kwargs)
    run.spec.save(out / "spec.json")
    data.save_json(out / "data.json", run.dataset.to_json())


def metrics_of(run: TrainedRun, evaluation: Evaluation) -> dict[str, Any]:
    """metrics.json's fields (without the timings of the whole call, which come last)."""
    cfg, ds = run.cfg, run.dataset
    metrics: dict[str, Any] = {
        "valid_accuracy": evaluation.valid_accuracy,
        "valid_loss": evaluation.valid_loss,
        "epochs": cfg.epochs,
        "train_seconds": round(run.train_seconds, 3),
        "lr_max": run.lr.lr,
        "lr_source": run.lr.source,
        "lr_reason": run.lr.reason,
        "schedule": "fine_tune" if cfg.fine_tune else cfg.schedule,
        "label_smoothing": cfg.label_smoothing,
        "arch": cfg.arch,
        "head": run.head,
        "aug": run.aug,
        "pretrained": str(cfg.pretrained) if cfg.pretrained is not None else None,
        "n_classes": len(ds.labels),
        "n_train": len(ds.train),
        "n_valid": len(ds.valid),
        "n_skipped": len(ds.skipped),
        "bs": run.bs,
        "size": list(run.spec.size),
        "seed": cfg.seed,
        "world_size": run.world_size,
        "device": str(run.device),
        "torch_threads": torch.get_num_threads(),
        "history": run.history,
        "confusion": evaluation.confusion.tolist(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "host": platform.node(),
        "majority_rate": learned_of(evaluation).majority_rate,
        "learned": learned_of(evaluation).to_dict(),
    }
    if cfg.fine_tune:
        metrics["freeze_epochs"] = cfg.freeze_epochs
        metrics["lr_mult"] = cfg.lr_mult
    found = run.lr.found
    if found is not None:
        metrics["lr_find_seconds"] = round(found.seconds, 3)
        metrics["lr_find_budget_seconds"] = round(found.budget_seconds, 3)
        metrics["lr_find_step_seconds"] = round(found.step_seconds, 4)
        metrics["lr_find_iterations"] = found.iterations
        metrics["lr_find_sweep"] = found.sweep
        metrics["lr_find_stop"] = found.stop
        metrics["lr_find_suggestion"] = found.suggestion
        metrics["lr_find_valley"] = found.valley
    metrics["batchnorm_stats"] = "recomputed" if run.batchnorm_seconds is not None else "running"
    if run.batchnorm_seconds is not None:
        metrics["batchnorm_seconds"] = round(run.batchnorm_seconds, 3)
    return metrics


def draw_plots(run: TrainedRun, evaluation: Evaluation, steps_per_epoch: int, folder: Path) -> None:
    """lr_find.png (when lr_find ran), schedule.png (one-cycle), loss.png and confusion.png."""
    if run.lr.found is not None:
        found = run.lr.found
        plots.lr_find(found.lrs, found.losses, run.lr.lr, folder / "lr_find.png", source=run.lr.source,
                      suggestion=found.suggestion, reason=run.lr.reason)
    if "lr" in run.hps and run.cfg.schedule == "one-cycle":  # the plot's titles describe the one-cycle policy
        plots.schedule(run.hps["lr"], run.hps.get("mom", [0.0] * len(run.hps["lr"])), folder / "schedule.png")
    plots.losses(run.losses, [h["valid_loss"] for h in run.history], steps_per_epoch, folder / "loss.png")
    plots.confusion(evaluation.confusion, run.dataset.labels, folder / "confusion.png")
