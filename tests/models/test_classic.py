"""models/classic.py: every classic spec, layer by layer, equals the PyTorch network it describes — torchvision's
where torchvision has it (weights=None, built on the meta device: no memory, no download), else one built here —
in names, output shapes, parameters and MACs (counted from forward hooks)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from models import classic, summary
from models.__main__ import main
from models.spec import Summary

DOCS = Path(__file__).resolve().parents[2] / "docs" / "behind-the-scenes" / "classic-architectures.md"
Layer = tuple[str, str, tuple[int, ...], int, int]  # name, type, output shape, parameters, MACs


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        return out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    return m.in_features * m.out_features if isinstance(m, nn.Linear) else 0


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, and fastai's AdaptiveConcatPool2d as one layer (not its two poolings)."""
    whole = [n + "." for n, m in model.named_modules() if type(m).__name__ == "AdaptiveConcatPool2d"]
    return [(n, m) for n, m in model.named_modules()
            if (not list(m.children()) or n + "." in whole) and not any(n.startswith(w) for w in whole)]


def hooked(model: nn.Module, chw: tuple[int, int, int]) -> list[Layer]:
    """Every call of every leaf module, in call order, measured by forward hooks on a meta-device forward."""
    calls: list[Layer] = []
    handles = [m.register_forward_hook(lambda m, _i, out, name=name: calls.append(
        (name, type(m).__name__, tuple(out.shape[1:]), sum(p.numel() for p in m.parameters()), _macs(m, out))))
        for name, m in _leaves(model)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *chw, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return calls


def rows(s: Summary) -> list[Layer]:
    return [(r.name, r.type, r.output, r.params, r.macs) for r in s.rows if r.module]


def _torchvision(name: str) -> nn.Module:
    builder = getattr(torchvision.models, name)
    extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):
        return builder(weights=None, **extra)


TORCHVISION = [n for n, a in classic.CLASSICS.items() if a.torchvision]


@pytest.mark.parametrize("name", TORCHVISION)
def test_specs_equal_torchvision_layer_by_layer(name: str) -> None:
    model = _torchvision(classic.CLASSICS[name].torchvision)
    for chw in [(3, 224, 224), (3, 97, 131)]:
        s = classic.summarize(name, chw)
        assert rows(s) == hooked(model, chw), chw
    assert s.params == sum(p.numel() for p in model.parameters())


class _Net(nn.Module):
    """features → flatten → classifier, as torchvision's AlexNet without its adaptive pooling."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features, self.classifier = features, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class _Inception(nn.Module):
    """The paper's Inception (3a): 1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max-pool → 1×1, with biases, no BN."""

    def __init__(self) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, k, padding=k // 2), relu=nn.ReLU()))

        self.branch1 = conv(192, 64, 1)
        self.branch2 = nn.Sequential(conv(192, 96, 1), conv(96, 128, 3))
        self.branch3 = nn.Sequential(conv(192, 16, 1), conv(16, 32, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(192, 32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in (self.branch1, self.branch2, self.branch3, self.branch4)], 1)


def _built_here(name: str) -> nn.Module:
    """The networks torchvision does not have, written in PyTorch from the papers."""
    with torch.device("meta"):
        if name == "lenet5":
            return nn.Sequential(OrderedDict(
                c1=nn.Conv2d(1, 6, 5), tanh1=nn.Tanh(), s2=nn.AvgPool2d(2), c3=nn.Conv2d(6, 16, 5), tanh3=nn.Tanh(),
                s4=nn.AvgPool2d(2), c5=nn.Conv2d(16, 120, 5), tanh5=nn.Tanh(), flatten=nn.Flatten(),
                f6=nn.Linear(120, 84), tanh6=nn.Tanh(), output=nn.Linear(84, 10)))
        if name == "alexnet2012":
            features = nn.Sequential(
                nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2), nn.MaxPool2d(3, 2),
                nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2))
            return _Net(features, nn.Sequential(nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
                                                nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)))
        if name == "inception3a":
            return nn.Sequential(OrderedDict(inception3a=_Inception()))
        return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(3 * 224 * 224, 4096), relu1=nn.ReLU(),
                                         fc2=nn.Linear(4096, 4096), relu2=nn.ReLU(), fc3=nn.Linear(4096, 1000)))


@pytest.mark.parametrize("name", [n for n in classic.CLASSICS if n not in TORCHVISION])
def test_specs_equal_the_papers_networks_built_here(name: str) -> None:
    chw = classic.CLASSICS[name].input
    assert rows(classic.summarize(name)) == hooked(_built_here(name), chw)


def test_the_papers_numbers() -> None:
    """Counts the papers print (or that are commonly quoted for them), recomputed from the specs."""
    assert classic.summarize("inception3a").macs == 128_049_152  # Szegedy et al. 2015, Table 1: "128M" ops
    assert classic.summarize("alexnet2012").params == 60_965_224  # Krizhevsky et al. 2012: "60 million"
    assert classic.summarize("lenet5").params == 61_706
    assert [classic.summarize(n).depth for n in ("lenet5", "alexnet", "vgg16", "vgg19", "googlenet", "resnet152")] \
        == [5, 8, 16, 19, 22, 152]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_classic_resnets_equal_the_project_summary(name: str) -> None:
    """The same numbers through both doors: the spec, and the project's PyTorch ResNet walked module by module."""
    chw = (3, 64, 80)
    assert classic.summarize(name, chw, 10).rows == summary.summarize(name, chw, 10).rows
    assert classic.summarize(name, chw, 10, "fastai").rows == summary.summarize(name, chw, 10, "fastai").rows


def test_fastai_and_linear_heads_on_a_body() -> None:
    from fastai.vision.learner import create_head

    features = _torchvision("vgg16").features
    with torch.device("meta"):
        fastai_vgg = nn.Sequential(OrderedDict(features=features, head=create_head(512, 10)))
        linear_vgg = nn.Sequential(OrderedDict(features=features, avgpool=nn.AdaptiveAvgPool2d(1),
                                               flatten=nn.Flatten(), fc=nn.Linear(512, 10)))
    assert rows(classic.summarize("vgg16", None, 10, "fastai")) == hooked(fastai_vgg, (3, 224, 224))
    linear = classic.summarize("vgg16", None, 10, "linear")
    assert linear.params == sum(p.numel() for p in linear_vgg.parameters()) == 14_714_688 + 5_130
    # The spec's flatten is functional (torch.flatten in forward), the one built here a module.
    assert rows(linear) == [c for c in hooked(linear_vgg, (3, 224, 224)) if c[1] != "Flatten"]


def test_why_a_cnn_in_numbers() -> None:
    """The MLP on ResNet's input has 10× ResNet-152's parameters; a dense conv1 would need 10⁷× conv1's weights."""
    lines = {x.name: x for x in classic.comparison()}
    assert lines["mlp"].params > 10 * lines["resnet152"].params
    assert lines["resnet152"].params < lines["vgg16"].params < lines["vgg19"].params
    conv1 = summary.summarize("resnet18", (3, 224, 224)).rows[0]
    assert lines["resnet18"].dense_first == 3 * 224 * 224 * 64 * 112 * 112 > 10**7 * conv1.params


def test_docs_table_is_the_computed_one() -> None:
    assert classic.comparison_markdown(classic.comparison()) in DOCS.read_text()


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "vgg16", "--input", "3,224,224"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "vgg16: input 3x224x224 -> output 1000; 138,357,544 parameters; 15,470,264,320 MACs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert main(["summary", "resnet20", "--input", "1,16,16", "--classes", "10", "--head", "fastai"]) == 0
    table = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["head.0", "AdaptiveConcatPool2d"] in table
    assert ["head.8", "Linear"] in table
    assert main(["summary", "lenet5", "--input", "1,32,32"]) == 0
    assert "-> output 10; 61,706 parameters" in capsys.readouterr().out
    assert main(["classic"]) == 0
    assert capsys.readouterr().out.strip() == classic.comparison_markdown(classic.comparison())


@pytest.mark.parametrize(("argv", "message"), [
    (["summary", "inception3a", "--input", "192,28,28", "--head", "linear"],
     "error: inception3a has no classifier: there is no head to swap"),
    (["summary", "mlp", "--input", "3,32,32", "--head", "fastai"],
     "error: mlp has no convolutional body: there is no head to swap"),
    (["summary", "lenet9", "--input", "1,32,32"], "error: unknown arch 'lenet9'; choose one of resnet18"),
    (["summary", "vgg16", "--input", "3,16,16"], "error: input 3x16x16 does not fit vgg16: "),
    (["classic", "--input", "3,1,1"], "error: input 3x1x1 does not fit lenet5: "),
])
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
