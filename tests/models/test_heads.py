"""Body + head: fastai's create_head on the project's archs, its splitter, its keys, and its NumPy twin."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from models import archs, heads, registry, scratch
from models.scratch.heads import FastaiHead, LinearHead, concat_pool

MakeModel = Callable[..., nn.Module]


def test_fastai_head_is_create_head_on_the_cut_body() -> None:
    from fastai.layers import AdaptiveConcatPool2d

    model = registry.create("resnet20", 7, 1, head="fastai")
    body, head = model
    assert [type(m).__name__ for m in body] == ["Conv2d", "BatchNorm2d", "ReLU", "Identity", "Sequential",
                                                "Sequential", "Sequential"]
    assert isinstance(head[0], AdaptiveConcatPool2d)
    assert [type(m).__name__ for m in head[1:]] == ["Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU",
                                                    "BatchNorm1d", "Dropout", "Linear"]
    assert (head[4].in_features, head[4].out_features, head[8].out_features) == (128, 512, 7)  # 2 × 64 features
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_linear_head_keeps_the_network_and_its_keys() -> None:
    model = registry.create("resnet20", 7, 1, head="linear")
    assert list(model.state_dict())[-2:] == ["fc.weight", "fc.bias"]
    assert list(model.state_dict()) == list(registry.create("resnet20", 7, 1).state_dict())


@pytest.mark.parametrize("head", heads.HEADS)
def test_splitter_makes_body_and_head_groups(head: str) -> None:
    model = registry.create("resnet18", 5, 3, head=head)
    body, top = heads.splitter(head)(model)
    assert len(body) + len(top) == len(list(model.parameters()))
    assert {id(p) for p in top} == {id(p) for p in heads.head_module(model, head).parameters()}
    assert len(top) == (6 if head == "fastai" else 2)  # 2 × (BN weight, bias, Linear weight) | fc weight, bias


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="head must be one of linear, fastai, got 'mlp'"):
        registry.create("resnet20", 3, 1, head="mlp")


def test_named_keys_round_trip() -> None:
    model = registry.create("resnet20", 4, 1, head="fastai")
    body, head = archs.to_named_keys(model.state_dict(), "resnet20")
    plain = registry.create("resnet20", 4, 1).state_dict()
    assert set(body) == {k for k in plain if not k.startswith("fc.")}
    assert all(body[k].shape == plain[k].shape for k in body)
    assert sorted(head) == sorted(k.removeprefix("1.") for k in model.state_dict() if k.startswith("1."))
    with pytest.raises(ValueError, match="not in a fastai body"):
        archs.to_named_keys({"fc.weight": torch.zeros(1)}, "resnet20")


@pytest.mark.parametrize(("arch", "in_chans", "size"), [
    ("resnet20", 1, 16), ("resnet18", 3, 32), ("resnet50", 3, 32), ("xresnet18", 3, 32), ("tv_resnet34", 3, 32),
])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_numpy_fastai_head_network_matches_torch(arch: str, in_chans: int, size: int, fold_bn: bool,
                                                 make_model: MakeModel) -> None:
    model = make_model(arch, 6, in_chans, size, head="fastai")
    ckpt = {"arch": arch, "kwargs": {"num_classes": 6, "in_chans": in_chans, "head": "fastai"},
            "state_dict": model.state_dict()}
    x = np.random.default_rng(0).standard_normal((5, in_chans, size, size)).astype(np.float32)
    net = scratch.from_checkpoint(ckpt, fold_bn=fold_bn)
    assert isinstance(net.head, FastaiHead)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = net.forward(x)
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    # Folding removes both BatchNorm1d: only Linear layers and the ReLU between them are left.
    kinds = [type(layer).__name__ for layer in net.head.layers]
    assert kinds == (["Linear", "_ReLU", "Linear"] if fold_bn else
                     ["BatchNorm", "Linear", "_ReLU", "BatchNorm", "Linear"])


def test_concat_pool_is_max_then_mean() -> None:
    from fastai.layers import AdaptiveConcatPool2d

    x = np.random.default_rng(1).standard_normal((3, 4, 5, 6)).astype(np.float32)  # NCHW
    with torch.no_grad():
        expected = AdaptiveConcatPool2d()(torch.from_numpy(x)).flatten(1).numpy()
    np.testing.assert_allclose(concat_pool(x.transpose(0, 2, 3, 1)), expected, rtol=0, atol=1e-6)


def test_linear_head_checkpoint_still_gives_a_linear_head(make_model: MakeModel) -> None:
    model = make_model("resnet20", 3, 1, 16)
    net = scratch.from_checkpoint({"arch": "resnet20", "kwargs": {"num_classes": 3, "in_chans": 1},
                                   "state_dict": model.state_dict()})
    assert isinstance(net.head, LinearHead)


def test_numpy_fastai_head_refuses_a_wrong_head(make_model: MakeModel) -> None:
    model = make_model("resnet20", 3, 1, 16, head="fastai")
    state = dict(model.state_dict())
    state["1.4.weight"] = state["1.4.weight"][:, :100]  # takes 100 features, the BatchNorm1d gives 128
    with pytest.raises(ValueError, match=r"head\.4\.weight takes 100 features"):
        scratch.from_checkpoint({"arch": "resnet20", "kwargs": {"num_classes": 3, "in_chans": 1, "head": "fastai"},
                                 "state_dict": state})


@pytest.mark.parametrize(("arch", "chw"), [("resnet18", (3, 64, 64)), ("resnet20", (1, 16, 16))])
def test_summary_with_the_fastai_head_counts_the_trained_model(arch: str, chw: tuple[int, int, int]) -> None:
    from models.summary import summarize

    table = summarize(arch, chw, 10, "fastai")
    model = registry.create(arch, 10, chw[0], head="fastai")
    assert table.params == sum(p.numel() for p in model.parameters())
    assert table.output == (10,)
