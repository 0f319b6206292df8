"""Blocks and whole networks: the NumPy forward from a state_dict reproduces PyTorch's eval-mode logits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import registry, resnet, scratch
from models.scratch.blocks import BasicBlock, Bottleneck
from models.scratch.layout import to_nchw, to_nhwc
from models.scratch.state import StateReader

MakeModel = Callable[..., nn.Module]


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _close(got: np.ndarray, expected: np.ndarray) -> float:
    """max|diff| / max(1, max|logit|): 1e-4 absolute for ordinary logits; deep un-normalised residual stacks
    (resnet56 at random init) reach logits near 100, where float32 itself only holds ~1e-5 absolute."""
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


# ---- blocks -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("block", "inplanes", "planes", "stride"), [
    (resnet.BasicBlock, 8, 8, 1),  # identity shortcut
    (resnet.BasicBlock, 8, 16, 2),  # projection shortcut
    (resnet.Bottleneck, 16, 4, 1),  # identity (16 = 4 × expansion)
    (resnet.Bottleneck, 8, 4, 2),  # projection
])
@pytest.mark.parametrize("skip", [True, False])
def test_blocks_match_torch(block: type[nn.Module], inplanes: int, planes: int, stride: int, skip: bool) -> None:
    torch.manual_seed(0)
    out = planes * block.expansion
    downsample = None
    if skip and (stride != 1 or inplanes != out):
        downsample = nn.Sequential(resnet.conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    tb = block(inplanes, planes, stride, downsample, skip=skip)
    tb.train()
    with torch.no_grad():
        for _ in range(3):
            tb(torch.randn(4, inplanes, 6, 6) * 2 + 1)
    tb.eval()
    cls = BasicBlock if block is resnet.BasicBlock else Bottleneck
    nb = cls.from_state(StateReader(tb.state_dict()), "", stride=stride, in_channels=inplanes, skip=skip)
    x = np.random.default_rng(1).standard_normal((2, inplanes, 7, 7)).astype(np.float32)
    assert (nb.shortcut is not None) == (downsample is not None)
    assert np.abs(to_nchw(nb(to_nhwc(x))) - _logits(tb, x)).max() <= 1e-5


def test_block_without_needed_projection_is_refused() -> None:
    tb = resnet.BasicBlock(8, 16, 2, None, skip=False)
    with pytest.raises(ValueError, match=r"no downsample\.0\.weight"):
        BasicBlock.from_state(StateReader(tb.state_dict()), "", stride=2, in_channels=8, skip=True)


# ---- whole networks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", registry.ARCHS)
def test_every_arch_matches_torch(arch: str, make_model: MakeModel) -> None:
    model = make_model(arch, num_classes=5, in_chans=3, size=32)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = _logits(model, x)
    header = {"arch": arch, "kwargs": {"num_classes": 5, "in_chans": 3}}
    net = scratch.from_checkpoint(header, state_dict=model.state_dict())
    assert _close(net.forward(x), expected) <= 1e-4
    folded = scratch.from_checkpoint(arch, {"num_classes": 5, "in_chans": 3}, model.state_dict(), fold_bn=True)
    assert _close(folded.forward(x), expected) <= 1e-4


@pytest.mark.parametrize("arch", ["resnet56", "resnet50", "plain20", "xresnet18"])
def test_float64_agrees_to_1e9(arch: str, make_model: MakeModel) -> None:
    model = make_model(arch, num_classes=4, in_chans=3, size=32).double()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    net = scratch.from_checkpoint(arch, {"num_classes": 4}, model.state_dict(), dtype=np.float64)
    assert np.abs(net.forward(x) - _logits(model, x)).max() <= 1e-9


@pytest.mark.parametrize(("arch", "in_chans", "size"), [
    ("resnet20", 1, 16), ("plain32", 1, 12), ("tv_resnet18", 1, 24), ("xresnet34", 1, 17), ("resnet34", 2, 33),
])
def test_other_channels_and_odd_sizes(arch: str, in_chans: int, size: int, make_model: MakeModel) -> None:
    model = make_model(arch, num_classes=10, in_chans=in_chans, size=size)
    x = np.random.default_rng(2).standard_normal((3, in_chans, size, size)).astype(np.float32)
    net = scratch.from_checkpoint(arch, {"num_classes": 10, "in_chans": in_chans}, model.state_dict())
    assert _close(net.forward(x), _logits(model, x)) <= 1e-4


def test_torchvision_grouped_bottleneck_reads_groups_from_the_weights(make_model: MakeModel) -> None:
    model = make_model("tv_resnet50", num_classes=3, size=32, groups=4, width_per_group=16)
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    net = scratch.from_checkpoint("tv_resnet50", {"num_classes": 3, "groups": 4, "width_per_group": 16},
                                  model.state_dict())
    assert _close(net.forward(x), _logits(model, x)) <= 1e-4


@pytest.mark.parametrize("arch", ["resnet20", "plain20", "resnet18", "resnet50"])
def test_norm_false_variants_from_model_config(arch: str, make_model: MakeModel) -> None:
    model = make_model(arch, num_classes=3, size=32, norm=False)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    # The documented entry point: ResNet.config is exactly what from_state_dict takes.
    net = scratch.ResNetNumpy.from_state_dict(model.config, model.state_dict())
    assert _close(net.forward(x), _logits(model, x)) <= 1e-4
    assert not any(k.startswith("bn") for k in model.state_dict())


def test_registry_checkpoint_round_trip(tmp_path: Path, make_model: MakeModel) -> None:
    model = make_model("resnet20", num_classes=4, in_chans=1, size=16)
    registry.save_checkpoint(tmp_path / "model.pth", model, "resnet20", 4, 1)
    x = np.random.default_rng(4).standard_normal((5, 1, 16, 16)).astype(np.float32)
    ckpt = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=True)
    from_file = scratch.from_checkpoint(ckpt)  # the whole checkpoint dict, state_dict included
    loaded, header = registry.load_checkpoint(tmp_path / "model.pth")
    from_header = scratch.from_checkpoint(header, state_dict={k: v.numpy() for k, v in loaded.state_dict().items()})
    expected = _logits(model, x)
    assert _close(from_file.forward(x), expected) <= 1e-4
    assert np.array_equal(from_file.forward(x), from_header.forward(x))


def test_chunked_forward_equals_whole_batch(make_model: MakeModel) -> None:
    model = make_model("resnet20", num_classes=3, in_chans=1, size=16)
    net = scratch.from_checkpoint("resnet20", {"num_classes": 3, "in_chans": 1}, model.state_dict())
    x = np.random.default_rng(5).standard_normal((7, 1, 16, 16)).astype(np.float32)
    whole = net.forward(x, batch_size=7)
    np.testing.assert_allclose(net.forward(x, batch_size=3), whole, rtol=0, atol=1e-6)
    assert net.batch_size_for(16, 16, max_bytes=1) == 1
    np.testing.assert_allclose(net.forward(x, max_bytes=1), whole, rtol=0, atol=1e-6)
    assert net.batch_size_for(64, 64) < net.batch_size_for(16, 16)


# ---- refusals ---------------------------------------------------------------------------------------------------

def test_wrong_state_dicts_are_refused(make_model: MakeModel) -> None:
    sd18 = make_model("resnet18", num_classes=3).state_dict()
    with pytest.raises(ValueError, match=r"no 'layer1\.2\.conv1\.weight'"):
        scratch.from_checkpoint("resnet34", {}, sd18)
    with pytest.raises(ValueError, match=r"unexpected keys.*downsample"):
        scratch.from_checkpoint("plain18", {}, sd18)
    with pytest.raises(ValueError, match="num_classes=7"):
        scratch.from_checkpoint("resnet18", {"num_classes": 7}, sd18)
    with pytest.raises(ValueError, match="in_chans=1"):
        scratch.from_checkpoint("resnet18", {"in_chans": 1}, sd18)
    with pytest.raises(ValueError, match="cifar stem"):
        scratch.from_checkpoint("resnet20", {}, sd18)
    sd_plain = make_model("plain20", num_classes=3).state_dict()
    with pytest.raises(ValueError, match=r"no layer2\.0\.downsample\.0\.weight"):
        scratch.from_checkpoint("resnet20", {}, sd_plain)
    net = scratch.from_checkpoint("resnet18", {}, sd18)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net.forward(np.zeros((1, 1, 32, 32), np.float32))


def test_unsupported_archs_and_options_say_what_is_supported(make_model: MakeModel) -> None:
    with pytest.raises(NotImplementedError, match=r"supported: resnet18.*xresnet18.*tv_resnet50"):
        scratch.from_checkpoint("xresnet101", {}, {})
    sd = make_model("xresnet18", num_classes=2).state_dict()
    with pytest.raises(NotImplementedError, match="'sa'"):
        scratch.from_checkpoint("xresnet18", {"sa": True}, sd)
    with pytest.raises(NotImplementedError, match="dilated"):
        scratch.from_checkpoint("tv_resnet50", {"replace_stride_with_dilation": [False, True, True]}, sd)
