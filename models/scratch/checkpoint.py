"""From a registry checkpoint (``{"arch", "kwargs", "state_dict"}``) to the matching NumPy network.

The caller needs no torch: ``models.registry.load_checkpoint`` returns the header, ``torch.load`` the raw dict,
and either goes in here with the state_dict (tensors or arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.archs import ARCHS, family, spec, to_named_keys
from models.scratch.network import Network
from models.scratch.resnet import ResNetNumpy
from models.scratch.xresnet import XResNetNumpy

__all__ = ["SUPPORTED_ARCHS", "arch_config", "from_checkpoint"]

# The NumPy reference runs every registered architecture.
SUPPORTED_ARCHS: tuple[str, ...] = ARCHS


def arch_config(arch: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's kwargs merged with what its arch fixes (``models.archs``): the ``config`` of
    ``from_state_dict``."""
    if arch not in SUPPORTED_ARCHS:
        raise NotImplementedError(f"the NumPy reference does not run {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    return {**(kwargs or {}), **spec(arch).config(), "arch": arch}


def from_checkpoint(header_or_arch: Mapping[str, Any] | str, kwargs: Mapping[str, Any] | None = None,
                    state_dict: Mapping[str, Any] | None = None, *, dtype: type = np.float32,
                    fold_bn: bool = False) -> Network:
    """The NumPy network for a checkpoint.

    ``header_or_arch`` is the registry header ``{"arch", "kwargs"}`` (a whole checkpoint dict, state_dict
    included, works too) or an arch name with ``kwargs`` beside it. Raises NotImplementedError naming the
    supported archs for anything else.
    """
    if isinstance(header_or_arch, str):
        arch, kw = header_or_arch, dict(kwargs or {})
    else:
        arch, kw = header_or_arch["arch"], dict(header_or_arch.get("kwargs", {}) if kwargs is None else kwargs)
        if state_dict is None:
            state_dict = header_or_arch.get("state_dict")
    if state_dict is None:
        raise ValueError("from_checkpoint needs a state_dict (argument, or the checkpoint's 'state_dict')")
    config = arch_config(arch, kw)
    if config.get("head", "linear") == "fastai":
        # nn.Sequential(body, head): the body back under the network's own names, the head under "head.".
        n_stem = len(config.get("stem_szs", (32, 32, 64)))
        body, head = to_named_keys(dict(state_dict), arch, n_stem)
        state_dict = {**body, **{f"head.{k}": v for k, v in head.items()}}
    cls = XResNetNumpy if family(arch) == "xresnet" else ResNetNumpy
    return cls.from_state_dict(config, state_dict, dtype=dtype, fold_bn=fold_bn)
