"""The architectures the NumPy reference runs, as plain data (no torch import).

These tables mirror ``models.resnet._SPECS`` and ``models.registry.ARCHS``; tests/models/test_scratch_network.py
fails if they drift apart.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RESNET_SPECS", "SUPPORTED_ARCHS", "TORCHVISION_SPECS", "XRESNET_SPECS", "arch_config"]

# name -> the constructor arguments of models.resnet.ResNet that the arch fixes.
RESNET_SPECS: dict[str, dict[str, Any]] = {}
for _skip, _prefix in ((True, "resnet"), (False, "plain")):
    RESNET_SPECS.update({
        f"{_prefix}18": dict(block="basic", layers=[2, 2, 2, 2], stem="imagenet", skip=_skip),
        f"{_prefix}34": dict(block="basic", layers=[3, 4, 6, 3], stem="imagenet", skip=_skip),
        f"{_prefix}50": dict(block="bottleneck", layers=[3, 4, 6, 3], stem="imagenet", skip=_skip),
        f"{_prefix}20": dict(block="basic", layers=[3, 3, 3], stem="cifar", skip=_skip),
        f"{_prefix}32": dict(block="basic", layers=[5, 5, 5], stem="cifar", skip=_skip),
        f"{_prefix}56": dict(block="basic", layers=[9, 9, 9], stem="cifar", skip=_skip),
    })

# torchvision's resnet18/34/50 have the project's module names (and so its state_dict keys).
TORCHVISION_SPECS: dict[str, dict[str, Any]] = {
    f"tv_{name}": dict(RESNET_SPECS[name], norm=True) for name in ("resnet18", "resnet34", "resnet50")
}

# fastai's xresnet (Bag of Tricks, He et al. 2019): expansion and blocks per stage.
XRESNET_SPECS: dict[str, dict[str, Any]] = {
    "xresnet18": dict(expansion=1, layers=[2, 2, 2, 2]),
    "xresnet34": dict(expansion=1, layers=[3, 4, 6, 3]),
    "xresnet50": dict(expansion=4, layers=[3, 4, 6, 3]),
}

SUPPORTED_ARCHS: tuple[str, ...] = (*RESNET_SPECS, *XRESNET_SPECS, *TORCHVISION_SPECS)


def arch_config(arch: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's kwargs merged with what its arch fixes (the ``config`` of ``from_state_dict``)."""
    kwargs = dict(kwargs or {})
    for table in (RESNET_SPECS, TORCHVISION_SPECS, XRESNET_SPECS):
        if arch in table:
            return {**kwargs, **table[arch], "arch": arch}
    raise NotImplementedError(f"the NumPy reference does not run {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
