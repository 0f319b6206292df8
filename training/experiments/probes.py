"""What the BatchNorm and one-cycle experiments measure inside a training run, beyond the loss and lr per batch.

- ``Tracer``: over the first iterations, the mean and std of the stem's and every residual block's output (in the
  real training forward) and the gradient norm of every convolution on the main path and of the classifier;
- ``landscape``: the loss and its gradient along the gradient direction, L(w − η·g) and ∇L(w − η·g) for η in
  ``ETAS``, from the current weights on the current batch (Santurkar et al. 2018, "How Does Batch Normalization
  Help Optimization?", §3.1: loss "variation", gradient "predictiveness" and effective β-smoothness);
- ``momentum_callback``: Adam's β1 held at a value or cycled as one-cycle does, whatever the lr schedule, so that
  the one-cycle experiment can separate the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ETAS", "FASTAI_LR_MULT", "ONE_CYCLE_MOMS", "Tracer", "landscape", "momentum_callback"]

# Step sizes along −g: from well below any lr the experiments use to far beyond the largest that trains.
ETAS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# fit_one_cycle's momentum (Adam's β1): 0.95 → 0.85 at 25 % of training → 0.95, cosine, as its lr warms up and anneals.
ONE_CYCLE_MOMS = (0.95, 0.85, 0.95)
ONE_CYCLE_PCT_START = 0.25
# fine_tune's default: once unfrozen, the body trains at 1/100 of the head's learning rate.
FASTAI_LR_MULT = 100.0


def _sig(x: float) -> float:
    """4 significant digits: results.json keeps the curves, not the noise."""
    return float(f"{x:.4g}")


def traced_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem's output module, then every residual block, in depth order (the project's ResNet)."""
    blocks = [(f"{stage}.{i}", block) for stage in model.stages for i, block in enumerate(getattr(model, stage))]
    return [("stem", model.maxpool), *blocks]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight of every convolution on the main path and of the classifier, in depth order."""
    return [(name.removesuffix(".weight"), p) for name, p in model.named_parameters()
            if name.endswith(".weight") and p.dim() in (2, 4) and "downsample" not in name]


class Tracer:
    """Records activation statistics and gradient norms while ``active``; the Probe turns it on for the real
    forward of each of the first ``iterations`` training batches (not for evaluations or landscape probes)."""

    def __init__(self, model: nn.Module, iterations: int) -> None:
        self.iterations, self.active = iterations, False
        self.layers = traced_layers(model)
        self.weights = weight_layers(model)
        self.act_mean: list[list[float]] = []
        self.act_std: list[list[float]] = []
        self.grad_norm: list[list[float]] = []
        self.weight_norm = [_sig(float(p.detach().norm())) for _, p in self.weights]
        self._row: list[tuple[float, float]] = []
        self._hooks = [m.register_forward_hook(self._record) for _, m in self.layers]

    def _record(self, _m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        if self.active:
            y = out.detach().float()
            self._row.append((_sig(float(y.mean())), _sig(float(y.std()))))

    def start(self, iteration: int) -> None:
        self.active, self._row = iteration < self.iterations, []

    def after_forward(self) -> None:
        if self.active and len(self._row) == len(self.layers):
            self.act_mean.append([m for m, _ in self._row])
            self.act_std.append([s for _, s in self._row])
        self.active = False

    def after_backward(self) -> None:
        if len(self.grad_norm) < len(self.act_mean):
            self.grad_norm.append([_sig(float(p.grad.norm())) if p.grad is not None else math.nan
                                   for _, p in self.weights])

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def to_json(self) -> dict[str, Any]:
        return {"layers": [n for n, _ in self.layers], "weights": [n for n, _ in self.weights],
                "act_mean": self.act_mean, "act_std": self.act_std, "grad_norm": self.grad_norm,
                "weight_norm": self.weight_norm}


def _flat_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              etas: tuple[float, ...] = ETAS) -> dict[str, Any]:
    """L(w − η·g) and ‖∇L(w − η·g) − g‖ for each η, g = ∇L(w) on batch (x, y), in train mode (batch statistics, as
    the training step sees them). The weights and BatchNorm's running statistics are put back afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loss_and_grad() -> tuple[float, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(model(x).float(), y)
            return float(loss.detach()), torch.autograd.grad(loss, params)

    try:
        loss0, g = loss_and_grad()
        w0 = [p.detach().clone() for p in params]
        losses, changes = [], []
        for eta in etas:
            with torch.no_grad():
                for p, w, gi in zip(params, w0, g, strict=True):
                    p.copy_(w - eta * gi)
            loss, grads = loss_and_grad()
            losses.append(_sig(loss))
            changes.append(_sig(_flat_norm([a - b for a, b in zip(grads, g, strict=True)])))
    finally:
        model.load_state_dict(saved)
    return {"loss": _sig(loss0), "grad_norm": _sig(_flat_norm(list(g))), "etas": list(etas), "losses": losses,
            "grad_change": changes}


def momentum_callback(momentum: float | str):
    """A fastai callback that sets Adam's β1 before every training batch: ``"cycled"`` follows one-cycle's curve
    over the whole run, a number holds it. Runs after fastai's ParamScheduler (order 60), which it overrides."""
    from fastai.callback.core import Callback
    from fastai.callback.schedule import combined_cos

    schedule: Callable[[float], float] = (combined_cos(ONE_CYCLE_PCT_START, *ONE_CYCLE_MOMS) if momentum == "cycled"
                                          else (lambda _pos: float(momentum)))

    class Momentum(Callback):
        order, run_valid = 61, False

        def before_batch(self):
            self.opt.set_hyper("mom", float(schedule(self.pct_train)))

    return Momentum()


