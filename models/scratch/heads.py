"""The two classifier heads in NumPy, on the body's channels-last features (N, h, w, C).

- ``LinearHead``: global average pool → ``fc`` (the network's own head).
- ``FastaiHead``: fastai's ``create_head`` with its defaults, as ``vision_learner`` puts it on a body:

      AdaptiveConcatPool2d   [max over h, w ; mean over h, w]  → (N, 2C)   (max first, as fastai concatenates)
      Flatten
      BatchNorm1d(2C) → Dropout → Linear(2C, 512, no bias) → ReLU
      BatchNorm1d(512) → Dropout → Linear(512, classes, no bias)

  Dropout is the identity in eval mode. A state_dict holds no trace of the pooling, the dropouts or the ReLUs, so
  the layout is create_head's: its positions 0 and 1 are the pool and flatten, and every Linear but the last is
  followed by a ReLU (``LinBnDrop`` blocks with ``lin_first=False``); BatchNorm1d and Linear are read by key.
  ``fold_bn`` folds each BatchNorm1d into the Linear after it (``models.scratch.fold.fold_bn_linear``).

fastai ``vision/learner.py`` (``create_head``), ``layers.py`` (``AdaptiveConcatPool2d``, ``LinBnDrop``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.scratch.activations import relu
from models.scratch.fold import fold_bn_linear
from models.scratch.layers import Linear
from models.scratch.norm import BatchNorm
from models.scratch.pooling import global_avg_pool2d, global_max_pool2d
from models.scratch.state import StateReader

__all__ = ["FastaiHead", "Head", "LinearHead", "read_head"]


@dataclass
class LinearHead:
    fc: Linear

    @property
    def num_classes(self) -> int:
        return int(self.fc.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.fc.weight.shape[1])

    def __call__(self, features_nhwc: np.ndarray) -> np.ndarray:
        return self.fc(global_avg_pool2d(features_nhwc, keepdims=False, channels_last=True))


class _ReLU:
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return relu(x)


def concat_pool(features_nhwc: np.ndarray) -> np.ndarray:
    """fastai's AdaptiveConcatPool2d to 1×1, flattened: (N, h, w, C) → (N, 2C), max then mean."""
    return np.concatenate([global_max_pool2d(features_nhwc, keepdims=False, channels_last=True),
                           global_avg_pool2d(features_nhwc, keepdims=False, channels_last=True)], axis=1)


class FastaiHead:
    """fastai's create_head (eval mode): concat pool, then BatchNorm1d / Linear / ReLU layers."""

    def __init__(self, layers: list[BatchNorm | Linear | _ReLU]) -> None:
        self.layers = layers
        linears = [layer for layer in layers if isinstance(layer, Linear)]
        self.in_features = int(linears[0].weight.shape[1]) // 2
        self.num_classes = int(linears[-1].weight.shape[0])

    @classmethod
    def from_state(cls, state: StateReader, prefix: str, channels: int, fold_bn: bool = False) -> FastaiHead:
        """Read ``{prefix}<i>.…`` (create_head's positions) for a body giving ``channels`` features."""
        keys = [k for k in state.keys() if k.startswith(prefix)]  # noqa: SIM118 (a StateReader, not a dict)
        positions = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in keys})
        if not positions or positions[0] < 2:
            raise ValueError(f"no fastai head under {prefix!r}: expected BatchNorm1d/Linear from position 2 on")
        layers: list[BatchNorm | Linear | _ReLU] = []
        features = 2 * channels  # concat pooling doubles the body's channels
        for i in positions:
            at = f"{prefix}{i}."
            if at + "running_mean" in state:
                bn = BatchNorm(state.optional(at + "weight"), state.optional(at + "bias"),
                               state.array(at + "running_mean"), state.array(at + "running_var"))
                state.mark_used(at)
                if bn.running_mean.shape != (features,):
                    raise ValueError(f"{at}running_mean has {bn.running_mean.shape[0]} features, expected {features}")
                layers.append(bn)
                continue
            fc = Linear.from_state(state, at)
            if fc.weight.shape[1] != features:
                raise ValueError(f"{at}weight takes {fc.weight.shape[1]} features, the layer before gives {features}")
            features = int(fc.weight.shape[0])
            layers += [fc, _ReLU()]
        if not isinstance(layers[-1], _ReLU):
            raise ValueError(f"the fastai head under {prefix!r} must end with a Linear")
        layers.pop()  # no activation after the last Linear
        return cls(_fold(layers) if fold_bn else layers)

    def __call__(self, features_nhwc: np.ndarray) -> np.ndarray:
        x = concat_pool(features_nhwc)
        for layer in self.layers:
            x = layer(x)
        return x


def _fold(layers: list[BatchNorm | Linear | _ReLU]) -> list[BatchNorm | Linear | _ReLU]:
    """Each BatchNorm1d directly before a Linear folded into it."""
    out: list[BatchNorm | Linear | _ReLU] = []
    for layer in layers:
        if isinstance(layer, Linear) and out and isinstance(out[-1], BatchNorm):
            bn = out.pop()
            w, b = fold_bn_linear(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, layer.weight,
                                  layer.bias)
            layer = Linear(w, b)
        out.append(layer)
    return out


Head = LinearHead | FastaiHead


def read_head(state: StateReader, config: dict, channels: int, fc_prefix: str, fold_bn: bool = False) -> Head:
    """The head ``config["head"]`` names (default linear: ``{fc_prefix}weight``; fastai: ``head.<i>.…``) for a
    body giving ``channels`` features; checks the class count against ``config``."""
    if config.get("head", "linear") == "fastai":
        head: Head = FastaiHead.from_state(state, "head.", channels, fold_bn)
    else:
        head = LinearHead(Linear.from_state(state, fc_prefix))
        if head.in_features != channels:
            raise ValueError(f"{fc_prefix}weight takes {head.in_features} features, the last stage gives {channels}")
    expected = config.get("num_classes", config.get("n_out", head.num_classes))
    if expected != head.num_classes:
        raise ValueError(f"config says num_classes={expected}, the head gives {head.num_classes}")
    return head
