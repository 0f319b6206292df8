"""The project's archs as fastai architectures: ``vision_learner(dls, learner_arch("resnet20"), …)`` works.

fastai looks an architecture up in its ``model_meta`` (where to cut the body, how to split parameter groups);
``learner_arch`` registers a callable per arch there with the cut and splitter of ``models.heads``. This glue needs
both ``models.registry`` (to build the network) and ``models.heads`` (cut and splitter), which is why it lives apart
from them: ``registry`` builds heads through ``heads``, and nothing here is imported back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from models import registry
from models.archs import family
from models.heads import CUTS, splitter
from models.pretrained import load_body

__all__ = ["learner_arch"]


@functools.cache
def learner_arch(arch: str, weights: str | Path | None = None) -> Callable[..., nn.Module]:
    """``arch`` as fastai expects an architecture: ``make(pretrained=False)`` → a 3-channel network with a
    1000-class head (which ``create_body`` cuts off), registered in fastai's ``model_meta``.

    ``pretrained=True`` needs ``weights``, what ``models.pretrained.load_body`` reads: a previous run's ``model.pth``,
    a torchvision-format state_dict, or a weights name (``"imagenet"``: torch's hub cache, downloaded when missing).
    """
    from fastai.vision.learner import model_meta  # fastai takes seconds to import: only when a learner is built

    family(arch)  # ValueError naming every arch for an unknown one

    def make(pretrained: bool = False, **_: Any) -> nn.Module:
        model = registry.create(arch, num_classes=1000, in_chans=3)
        if pretrained:
            if weights is None:
                raise ValueError(f"{arch} ships no pretrained weights (nothing is downloaded): use "
                                 f"pretrained=False, or learner_arch({arch!r}, weights=PATH or 'imagenet')")
            load_body(model, arch, "linear", weights)
        return model

    make.__name__ = make.__qualname__ = arch
    model_meta[make] = {"cut": CUTS[family(arch)], "split": splitter("fastai")}
    return make
