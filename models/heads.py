"""Body + head, the way fastai's ``vision_learner`` builds a CNN learner, around the project's architectures.

- ``fastai_model``: fastai's ``cut_model`` keeps the network's children up to its pooling head (the *body*), and
  fastai's ``add_head`` puts ``create_head`` on it — ``AdaptiveConcatPool2d → Flatten → BatchNorm1d → Dropout →
  Linear → ReLU → BatchNorm1d → Dropout → Linear``, initialised with ``kaiming_normal_`` — giving
  ``nn.Sequential(body, head)``, the model ``vision_learner`` returns (same modules, same state_dict keys).
- ``splitter``: two parameter groups, body and head, so that ``freeze`` trains the head alone and ``fine_tune``'s
  ``slice(lr / 100, lr)`` gives the body the smaller learning rate (discriminative learning rates).

``models.learner.learner_arch`` registers these cuts and splitters in fastai's ``model_meta``, so that
``vision_learner`` itself works with the project's archs.

The ``linear`` head is each network's own (global average pool → ``fc``): its modules and keys are untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.archs import HEADS, family

__all__ = ["CUTS", "HEADS", "check_head", "fastai_model", "head_module", "splitter"]

# fastai's cut per family: the children after the body (pool + fc; xresnet: pool, flatten, dropout, linear).
CUTS: dict[str, int] = {"project": -2, "torchvision": -2, "xresnet": -4}


def check_head(head: str) -> None:
    """ValueError for an unknown head name."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def fastai_model(model: nn.Module, arch: str, num_classes: int) -> nn.Sequential:
    """``nn.Sequential(body, create_head(…))`` from a freshly built network (fastai's own pieces)."""
    from fastai.callback.hook import num_features_model
    from fastai.vision.learner import add_head, cut_model

    body = cut_model(model, CUTS[family(arch)])
    # num_features_model runs a dummy batch through the body: it leaves the body in eval mode; fastai's fit
    # switches it back.
    return add_head(body, num_features_model(body), num_classes)


def head_module(model: nn.Module, head: str) -> nn.Module:
    """The classifier part of a model built with ``head``."""
    if head == "fastai":
        return model[1]
    return model.fc if hasattr(model, "fc") else model[-1]  # xresnet: its last child is the Linear


def splitter(head: str) -> Callable[[nn.Module], list[list[nn.Parameter]]]:
    """fastai splitter: [body parameters, head parameters]."""
    check_head(head)

    def split(model: nn.Module) -> list[list[nn.Parameter]]:
        top = head_module(model, head)
        ids = {id(p) for p in top.parameters()}
        return [[p for p in model.parameters() if id(p) not in ids], list(top.parameters())]

    return split
