"""Every architecture the trainer accepts, built from plain values, and checkpoints that store those values.

The names, families and geometry come from ``models.archs`` (re-exported here: ``ARCHS``, ``family``,
``downsampling``); this module builds them:
- the project's own ResNets (``models.resnet``): resnet18/34/50, resnet20/32/56 and the ``plain`` twins;
- fastai's xresnet18/34/50 (bag-of-tricks ResNet);
- torchvision's resnet18/34/50 as ``tv_resnet18`` … (random init: nothing is ever downloaded).

Every arch comes with either head (``models.heads``): ``linear`` (the network's own global-average-pool → ``fc``)
or ``fastai`` (fastai's body + ``create_head``, as ``vision_learner`` builds it).

A checkpoint is ``{"arch", "kwargs", "state_dict"}`` saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import heads, resnet
from models.archs import ARCHS, TORCHVISION_SPECS, XRESNET_SPECS, downsampling, family

__all__ = ["ARCHS", "TORCHVISION", "XRESNETS", "create", "downsampling", "family", "load_checkpoint",
           "save_checkpoint"]

XRESNETS: tuple[str, ...] = tuple(XRESNET_SPECS)
TORCHVISION: tuple[str, ...] = tuple(TORCHVISION_SPECS)


def create(arch: str, num_classes: int, in_chans: int = 3, head: str = "linear", **kwargs: Any) -> nn.Module:
    """Build ``arch`` with random weights and the ``head`` classifier."""
    heads.check_head(head)
    model = _network(arch, num_classes, in_chans, **kwargs)
    return heads.fastai_model(model, arch, num_classes) if head == "fastai" else model


def _network(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    fam = family(arch)
    if fam == "project":
        return resnet.build(arch, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if fam == "xresnet":
        from fastai.vision.models import xresnet

        return getattr(xresnet, arch)(n_out=num_classes, c_in=in_chans, **kwargs)
    import torchvision

    model = getattr(torchvision.models, arch.removeprefix("tv_"))(weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def save_checkpoint(path: str | Path, model: nn.Module, arch: str, num_classes: int, in_chans: int,
                    **kwargs: Any) -> None:
    """Weights together with the constructor arguments that rebuild the network (``head`` among them when it is
    not the default ``linear``, so that linear-head checkpoints keep their format)."""
    if kwargs.get("head") == "linear":
        kwargs.pop("head")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"arch": arch, "kwargs": dict(num_classes=num_classes, in_chans=in_chans, **kwargs),
                "state_dict": state}, path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved by ``save_checkpoint``; returns it in eval mode with its checkpoint header."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = create(ckpt["arch"], **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {"arch": ckpt["arch"], "kwargs": ckpt["kwargs"]}
