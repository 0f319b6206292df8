"""Start a network from another run's body, or from ImageNet weights by name: ``--pretrained PATH|NAME`` of
``python -m training fit``.

``PATH`` is a previous run's ``model.pth`` (``models.registry`` checkpoint, either head) or a torchvision-format
ResNet state_dict (``conv1.weight`` … ``fc.bias``). Only the body is taken; the head stays new, sized for the new
label set. The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never an
arbitrary pickled object.

``NAME`` is ``imagenet`` (torchvision's recommended ImageNet weights for the arch, its weight enum's ``DEFAULT``) or
one of the enum's members (``IMAGENET1K_V1``, ``IMAGENET1K_V2``), for the archs whose state_dict keys are
torchvision's ResNet's: ``resnet18/34/50`` and ``tv_resnet18/34/50``. The name resolves through torchvision's weight
enum (``ResNet18_Weights.IMAGENET1K_V1``: its ``url``, and the normalisation of its ``transforms``) to a file in
torch's hub cache (``$TORCH_HOME/hub/checkpoints/<the url's file name>``, where ``torch.hub.load_state_dict_from_url``
keeps it too); a missing file is downloaded there by torch (``torch.hub.download_url_to_file``: progress bar, SHA-256
prefix checked, written under a temporary name and renamed), then read like any ``PATH``. Without network the error
is one line naming the file to download and where to put it. The images are then normalised with the statistics
the weights were trained with (fastai does the same for a pretrained ``vision_learner``): ``normalisation``.

The first convolution may see another number of input channels than it was trained on: 3 → 1 sums the colour
filters (fastai's rule in ``create_body``: a grey image then gives what the same image in RGB gave), 1 → 3 repeats
the filter divided by 3 (the same promise the other way round). Anything else is refused.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.archs import body_children, spec, to_named_keys

__all__ = ["IMAGENET", "PretrainedError", "PublishedWeights", "is_weights_name", "load_body", "normalisation",
           "published", "read_body", "weights_file"]

IMAGENET = "imagenet"  # --pretrained imagenet: the weight enum's DEFAULT (torchvision's recommended weights)

# The archs that can take torchvision's published ResNet weights, and the torchvision builder whose weight enum has
# them: torchvision's own, and the project's ResNets, whose module names are torchvision's (the body loads by key).
TORCHVISION_BUILDERS: dict[str, str] = {
    **{name: name for name in ("resnet18", "resnet34", "resnet50")},
    **{f"tv_{name}": name for name in ("resnet18", "resnet34", "resnet50")},
}


class PretrainedError(ValueError):
    """The file cannot start this network; the message says why in one line."""


@dataclass(frozen=True)
class PublishedWeights:
    """Weights torchvision publishes for an arch: which enum member, where they are downloaded from, where torch's
    hub cache keeps them, and the normalisation they were trained with (its ``transforms``)."""

    name: str                  # "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    file: Path                 # $TORCH_HOME/hub/checkpoints/<the url's file name>
    mean: tuple[float, ...]    # RGB
    std: tuple[float, ...]


def is_weights_name(source: str | Path) -> bool:
    """Whether ``--pretrained source`` names published weights (``imagenet``, ``IMAGENET1K_V1`` …) rather than a
    file. A name is a string without a folder or a suffix: a file called like one is still reached as
    ``./imagenet`` (or as a ``Path``, which is always a file)."""
    if isinstance(source, Path):
        return False
    text = str(source)
    if any(c in text for c in (os.sep, "/", ".")):  # model.pth, runs/x/model.pth: files, and no torchvision import
        return False
    if text.lower() == IMAGENET:
        return True
    return any(text.upper() in _members(_enum(builder)) for builder in set(TORCHVISION_BUILDERS.values()))


def _enum(builder: str) -> Any:
    from torchvision.models import get_model_weights  # torchvision takes seconds to import: only for a name

    return get_model_weights(builder)


def _members(enum: Any) -> dict[str, Any]:
    """The enum's weights by name (``DEFAULT`` is an alias of one of them, reached as ``imagenet``)."""
    return {member.name: member for member in enum}


def published(source: str | Path, arch: str) -> PublishedWeights:
    """What ``--pretrained NAME`` stands for with ``--arch arch`` (``PretrainedError`` for an arch without published
    weights, or a member its enum lacks). Reads no file and downloads nothing."""
    text = str(source)
    builder = TORCHVISION_BUILDERS.get(arch)
    if builder is None:
        raise PretrainedError(f"--pretrained {text}: torchvision publishes no weights for --arch {arch}; by name "
                              f"only for {', '.join(TORCHVISION_BUILDERS)} (or give a file)")
    enum = _enum(builder)
    member = enum.DEFAULT if text.lower() == IMAGENET else _members(enum).get(text.upper())
    if member is None:
        raise PretrainedError(f"--pretrained {text}: {enum.__name__} has {', '.join(_members(enum))} "
                              f"(or {IMAGENET}: {enum.DEFAULT!r})")
    stats = member.transforms()  # torchvision's ImageClassification preset: the mean/std the weights expect
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name
    return PublishedWeights(name=repr(member), url=member.url, file=file, mean=tuple(stats.mean),
                            std=tuple(stats.std))


def normalisation(source: str | Path, arch: str, channels: int) -> tuple[list[float], list[float]] | None:
    """The mean and std that images must be normalised with for ``--pretrained source``: the published weights' own
    (None for a file: a run's body was trained on the data's own statistics). For greyscale images (first
    convolution summed 3 → 1) the average of the three channels': the summed filter sees ``(x, x, x)`` as the RGB
    filters did only up to the small differences between the channels' statistics."""
    if not is_weights_name(source):
        return None
    weights = published(source, arch)
    if channels == 3:
        return list(weights.mean), list(weights.std)
    return [round(sum(weights.mean) / 3, 6)], [round(sum(weights.std) / 3, 6)]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def weights_file(source: str | Path, arch: str, log: Callable[[str], None] = _stderr) -> Path:
    """The file that ``--pretrained source`` stands for: ``source`` itself, or for a name the file in torch's hub
    cache, downloaded there first (by torch, with its progress bar) when it is missing."""
    if not is_weights_name(source):
        return Path(source)
    weights = published(source, arch)
    if weights.file.is_file():
        return weights.file
    log(f"--pretrained {source}: downloading {weights.name} from {weights.url} to {weights.file}")
    # The file name carries a prefix of the file's SHA-256 (torchvision's check_hash=True checks it the same way).
    digest = torch.hub.HASH_REGEX.search(weights.file.name)
    try:
        weights.file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(weights.file), digest.group(1) if digest else None,
                                       progress=True)
    except (OSError, RuntimeError) as e:  # URLError, HTTPError, timeouts, a read-only cache; RuntimeError: bad hash
        reason = " ".join(str(getattr(e, "reason", None) or e).split()) or type(e).__name__
        raise PretrainedError(f"--pretrained {source}: cannot download {weights.url} ({reason}); download it and "
                              f"put it at {weights.file}") from None
    return weights.file


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
    # Bytes that are not a checkpoint reach the legacy unpickler, whose errors depend on the bytes: "a…" (pickle's
    # APPEND opcode) fails with IndexError, an unknown opcode with KeyError.
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, zipfile.BadZipFile) as e:
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


def load_body(model: nn.Module, arch: str, head: str, source: str | Path,
              log: Callable[[str], None] = _stderr) -> int:
    """Copy the body of ``source`` (a file, or a weights name: ``weights_file``) into ``model`` (built by
    ``registry.create(arch, …, head=head)``); returns the number of tensors loaded. Every body tensor must be there
    with its shape (else ``PretrainedError``)."""
    path = weights_file(source, arch, log)
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
