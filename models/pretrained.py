"""Start a network from another run's body: ``--pretrained PATH`` of ``python -m training fit``.

``PATH`` is a previous run's ``model.pth`` (``models.registry`` checkpoint, either head) or a torchvision-format
ResNet state_dict (``conv1.weight`` … ``fc.bias``). Only the body is taken; the head stays new, sized for the new
label set. The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never an
arbitrary pickled object.

The first convolution may see another number of input channels than it was trained on: 3 → 1 sums the colour
filters (fastai's rule in ``create_body``: a grey image then gives what the same image in RGB gave), 1 → 3 repeats
the filter divided by 3 (the same promise the other way round). Anything else is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.archs import body_children, spec, to_named_keys

__all__ = ["PretrainedError", "load_body", "read_body"]


class PretrainedError(ValueError):
    """The file cannot start this network; the message says why in one line."""


def _read(path: Path) -> Any:
    if not path.is_file():
        raise PretrainedError(f"--pretrained {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e):  # torch.save'd Python objects: weights_only refuses to rebuild them
            raise PretrainedError(f"--pretrained {path}: holds Python objects besides tensors, which are never "
                                  f"unpickled (weights_only=True)") from None
        raise PretrainedError(f"--pretrained {path}: not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise PretrainedError(f"--pretrained {path}: not a PyTorch checkpoint ({type(e).__name__})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor)
                                                       for k, v in obj.items())


def read_body(path: str | Path, arch: str) -> dict[str, Tensor]:
    """The body's tensors from ``path``, under the network's own names (``conv1.weight``, ``layer1.0.…``)."""
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and {"arch", "kwargs", "state_dict"} <= set(obj):  # a registry checkpoint
        source = str(obj["arch"])
        try:
            same = spec(source) == spec(arch)  # resnet18 and tv_resnet18 share names and shapes
        except ValueError:
            same = False
        if not same:
            raise PretrainedError(f"--pretrained {path} is a {source} checkpoint; --arch {arch} needs one of "
                                  f"the same architecture")
        state = obj["state_dict"]
        if not _is_state_dict(state):
            raise PretrainedError(f"--pretrained {path}: its state_dict holds something other than tensors")
        if obj["kwargs"].get("head", "linear") == "fastai":
            state, _ = to_named_keys(state, source)
    elif _is_state_dict(obj):
        state = obj
    else:
        raise PretrainedError(f"--pretrained {path}: neither a run's model.pth nor a state_dict of tensors")
    names = body_children(arch)
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in names}


def _adapt_first_conv(key: str, got: Tensor, want: torch.Size, path: Path) -> Tensor:
    if got.dim() == 4 and got.shape[0] == want[0] and got.shape[2:] == want[2:]:
        if got.shape[1] == 3 and want[1] == 1:
            return got.sum(1, keepdim=True)
        if got.shape[1] == 1 and want[1] == 3:
            return got.repeat(1, 3, 1, 1) / 3
    raise PretrainedError(f"--pretrained {path}: {key} is {tuple(got.shape)}, this network needs {tuple(want)}; "
                          f"is it another arch?")


def load_body(model: nn.Module, arch: str, head: str, path: str | Path) -> int:
    """Copy the body of ``path`` into ``model`` (built by ``registry.create(arch, …, head=head)``); returns the
    number of tensors loaded. Every body tensor must be there with its shape (else ``PretrainedError``)."""
    path = Path(path)
    body = read_body(path, arch)
    names = body_children(arch)
    target = model.state_dict()

    def key_in_model(key: str) -> str:
        if head != "fastai":
            return key
        child, _, leaf = key.partition(".")
        return f"0.{names.index(child)}.{leaf}"

    wanted = {k for k in target if (k.startswith("0.") if head == "fastai" else k.split(".", 1)[0] in names)
              and not k.endswith("num_batches_tracked")}
    loaded: dict[str, Tensor] = {}
    first_conv = next(iter(target))  # the first parameter is the first convolution's weight in every family
    for key, value in body.items():
        dest = key_in_model(key)
        if dest not in target:
            raise PretrainedError(f"--pretrained {path}: {key} does not exist in {arch}; is it another arch?")
        if value.shape != target[dest].shape:
            if dest != first_conv:
                raise PretrainedError(f"--pretrained {path}: {key} is {tuple(value.shape)}, {arch} needs "
                                      f"{tuple(target[dest].shape)}; is it another arch?")
            value = _adapt_first_conv(key, value, target[dest].shape, path)
        loaded[dest] = value
    missing = sorted(wanted - set(loaded), key=list(target).index)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PretrainedError(f"--pretrained {path}: no {missing[0]}{more} for {arch}; is it another arch?")
    model.load_state_dict(loaded, strict=False)
    return len(loaded)
