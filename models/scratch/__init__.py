"""The network "behind the scenes": every layer of the project's ResNets in plain Python/NumPy.

One concept per file — ``conv`` (naive and im2col convolution), ``norm`` (batch norm), ``pooling``,
``activations``, ``linear``, ``fold`` (BatchNorm folding), ``blocks`` (residual blocks), ``resnet`` /
``xresnet`` (whole networks from a state_dict), ``checkpoint`` (from a registry checkpoint). The architecture
table is ``models.archs``, the one the PyTorch models are built from. NumPy is the only numeric dependency;
torch is never imported here (``bench`` imports it inside its function only).
"""

from models.scratch.activations import log_softmax, relu, softmax
from models.scratch.checkpoint import SUPPORTED_ARCHS, from_checkpoint
from models.scratch.conv import conv2d, conv2d_naive
from models.scratch.fold import fold_bn_linear, fold_conv_bn, fold_linear_bn
from models.scratch.linear import flatten, linear
from models.scratch.network import Network
from models.scratch.norm import BatchNorm, batch_norm1d, batch_norm2d, bn_scale_shift
from models.scratch.pooling import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    global_avg_pool2d,
    global_max_pool2d,
    max_pool2d,
)
from models.scratch.resnet import ResNetNumpy
from models.scratch.xresnet import XResNetNumpy

__all__ = [
    "SUPPORTED_ARCHS",
    "BatchNorm",
    "Network",
    "ResNetNumpy",
    "XResNetNumpy",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "batch_norm1d",
    "batch_norm2d",
    "bn_scale_shift",
    "conv2d",
    "conv2d_naive",
    "flatten",
    "fold_bn_linear",
    "fold_conv_bn",
    "fold_linear_bn",
    "from_checkpoint",
    "global_avg_pool2d",
    "global_max_pool2d",
    "linear",
    "log_softmax",
    "max_pool2d",
    "relu",
    "softmax",
]
