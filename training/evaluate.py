"""The trained model on the validation split: accuracy, plain cross-entropy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Evaluation:
    """Validation results; ``confusion[true, predicted]`` counts images."""

    valid_accuracy: float
    valid_loss: float
    confusion: np.ndarray


@torch.no_grad()
def predict(model: nn.Module, dl: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets over a fastai DataLoader on this process alone (Learner.get_preds would all_gather
    across ranks, and only rank 0 gets here)."""
    outs, ys = [], []
    for xb, yb in dl:
        # Plain tensors: fastai's typed tensors (TensorImage, TensorCategory) refuse F.cross_entropy.
        outs.append(model(torch.Tensor(xb).as_subclass(torch.Tensor)).float().cpu().as_subclass(torch.Tensor))
        ys.append(yb.cpu().as_subclass(torch.Tensor))
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, dl: Iterable, n_classes: int) -> Evaluation:
    """Accuracy, plain (unsmoothed) cross-entropy and confusion matrix of ``model`` over ``dl``."""
    logits, targets = predict(model, dl)
    predicted = logits.argmax(1).numpy()
    valid_loss = float(torch.nn.functional.cross_entropy(logits, targets))
    labels = targets.numpy()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return Evaluation(valid_accuracy=float((predicted == labels).mean()), valid_loss=valid_loss, confusion=confusion)
