"""The project's PyTorch ResNet: torchvision compatibility by key, the plain and norm-free variants, bad configs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models import registry, resnet


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_state_dict_loads_by_key_and_gives_identical_outputs(arch):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    # Non-trivial BN statistics, so that a mis-assigned running mean/var would show.
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ours = resnet.build(arch).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_children_are_registered_in_forward_order():
    """nn.Sequential(*children) (fastai's create_body) must rebuild the same network."""
    model = resnet.build("resnet18").eval()
    names = [name for name, _ in model.named_children()]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    body = nn.Sequential(*list(model.children())[:-2])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(body(x), model.forward_features(x))


@pytest.mark.parametrize(("arch", "depth"), [("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
def test_cifar_depths(arch, depth):
    model = resnet.build(arch, num_classes=10, in_chans=1)
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    assert len(convs) + 1 == depth  # 6n+2: stem conv, 6n convs in blocks, fc
    out = model.layer3(model.layer2(model.layer1(model.conv1(torch.randn(1, 1, 16, 16)))))
    assert out.shape == (1, 64, 4, 4)


def test_plain_variant_has_the_same_layers_and_no_shortcut():
    plain, residual = resnet.build("plain20", 10, 1), resnet.build("resnet20", 10, 1)
    assert not any("downsample" in k for k in plain.state_dict())
    residual_keys = {k for k in residual.state_dict() if "downsample" not in k}
    assert set(plain.state_dict()) == residual_keys
    # Without the identity path, a block whose branch outputs zero outputs zero.
    block = plain.layer1[0]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    with torch.no_grad():
        assert torch.count_nonzero(block(torch.rand(1, 16, 8, 8))) == 0


def test_zero_init_residual_makes_blocks_identity_at_start():
    model = resnet.build("resnet20", 10, 1, zero_init_residual=True).eval()
    block = model.layer1[1]  # identity shortcut
    x = torch.rand(1, 16, 8, 8)  # non-negative: the final ReLU keeps it
    with torch.no_grad():
        assert torch.equal(block(x), x)
    bottleneck = resnet.build("resnet50", zero_init_residual=True)
    assert torch.count_nonzero(bottleneck.layer1[0].bn3.weight) == 0


def test_norm_free_variant_has_no_batchnorm_and_biased_convs():
    model = resnet.build("resnet20", 10, 1, norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_config_rebuilds_the_same_network():
    model = resnet.build("resnet32", num_classes=7, in_chans=3, zero_init_residual=True)
    again = resnet.ResNet(**model.config)
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block": "huge", "layers": [2, 2]}, "block must be one of"),
        ({"block": "basic", "layers": [2, 2], "stem": "tiny"}, "stem must be one of"),
        ({"block": "basic", "layers": [2, 2, 2], "widths": [16, 32]}, "one width per stage"),
        ({"block": "basic", "layers": [2, 0, 2], "stem": "cifar"}, ">= 1 block per stage"),
        ({"block": "basic", "layers": [2], "widths": [8], "num_classes": 0}, "num_classes and in_chans must be >= 1"),
    ],
)
def test_bad_configurations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet.ResNet(**kwargs)


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet19'.*resnet18"):
        resnet.build("resnet19")
    with pytest.raises(ValueError, match="unknown arch"):
        registry.create("resnet19", 10)


@pytest.mark.parametrize("arch", registry.ARCHS)
def test_every_registered_arch_takes_one_channel_and_any_class_count(arch):
    model = registry.create(arch, num_classes=3, in_chans=1).eval()
    side = max(16, registry.downsampling(arch))
    with torch.no_grad():
        assert model(torch.randn(2, 1, side, side)).shape == (2, 3)


def test_numpy_reference_refuses_heads_it_does_not_implement():
    from models.scratch import ResNetNumpy

    model = resnet.build("resnet20", 10, 1, pool="max")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match="global-average-pool head only"):
        ResNetNumpy.from_state_dict(model.config, state)
