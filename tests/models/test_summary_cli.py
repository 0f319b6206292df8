"""``python -m models summary``: shapes from models/shapes.py equal the shapes PyTorch's forward produces."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torch import nn

from models import registry
from models.__main__ import main
from models.summary import Summary, format_summary, summarize, summarize_model

ROOT = Path(__file__).resolve().parents[2]


def _hooked_shapes(model: nn.Module, chw: tuple[int, int, int]) -> tuple[dict[str, list[tuple[int, ...]]], tuple]:
    """Output shape (batch dim dropped) of every call of every leaf module, in call order."""
    seen: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    handles = []
    for name, m in model.named_modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(
                lambda _m, _i, out, name=name: seen[name].append(tuple(out.shape[1:]))))
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *chw))
    finally:
        for h in handles:
            h.remove()
    return seen, tuple(out.shape[1:])


def _summary_shapes(s: Summary) -> dict[str, list[tuple[int, ...]]]:
    rows: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for r in s.rows:
        if r.module:
            rows[r.name].append(r.output)
    return rows


@pytest.mark.parametrize("arch", registry.ARCHS)
def test_summary_shapes_equal_forward_hook_shapes(arch: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = registry.create(arch, 7, 3).eval()
    for chw in [(3, 32, 32), (3, 17, 23), (3, 1, 1)]:
        s = summarize_model(model, chw, arch)
        hooked, out = _hooked_shapes(model, chw)
        assert _summary_shapes(s) == dict(hooked), chw
        assert s.output == out == (7,)
    assert s.params == sum(p.numel() for p in model.parameters())


def test_summary_other_channels_and_classes() -> None:
    s = summarize("tv_resnet18", (1, 28, 28), num_classes=10)
    model = registry.create("tv_resnet18", 10, 1).eval()
    hooked, out = _hooked_shapes(model, (1, 28, 28))
    assert _summary_shapes(s) == dict(hooked)
    assert s.output == out == (10,)


def test_resnet18_totals_and_receptive_field() -> None:
    s = summarize("resnet18", (3, 224, 224))
    assert s.params == 11_689_512  # torchvision's published count
    assert s.macs == 1_814_073_344  # the "1.8 GFLOPs" of He et al. 2015, Table 1, counted as MACs
    last_block = [r for r in s.rows if r.name == "layer4.1.relu"][-1]
    assert last_block.rf == (435, 435)
    assert last_block.jump == (32, 32)
    conv1 = s.rows[0]
    assert (conv1.kernel, conv1.stride, conv1.padding, conv1.output) == ((7, 7), (2, 2), ((3, 3), (3, 3)),
                                                                         (64, 112, 112))


def test_resnet20_matches_the_cifar_paper() -> None:
    s = summarize("resnet20", (3, 32, 32), num_classes=10)
    assert round(s.params / 1e6, 2) == 0.27  # He et al. 2015, Table 6
    assert s.rows[-1].output == (10,)
    stages = [r.output for r in s.rows if r.name.endswith(".0.conv1")]
    assert stages == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_format_summary_has_every_column_and_totals() -> None:
    text = format_summary(summarize("resnet20", (1, 16, 16), num_classes=10))
    header = text.splitlines()[0].split()
    assert header == ["layer", "type", "kernel", "stride", "padding", "dilation", "output", "RF", "jump", "params",
                      "MACs"]
    assert "layer1.0.conv1" in text
    assert "layer3.0.downsample.0" in text
    assert text.splitlines()[-1].startswith("resnet20: input 1x16x16 -> output 10; ")


def test_cli_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "plain20", "--input", "1,16,16", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "plain20: input 1x16x16 -> output 10" in out
    assert ".add" not in out  # plain nets have no residual sums


@pytest.mark.parametrize(("argv", "message"), [
    (["summary", "resnet99", "--input", "3,32,32"], "error: unknown arch 'resnet99'; choose one of resnet18"),
    (["summary", "resnet18", "--input", "3,0,32"], "error: input must be C,H,W with every size >= 1, got 3,0,32"),
    (["summary", "resnet18", "--input", "3,32"], "error: --input must be C,H,W (three integers), got '3,32'"),
    (["summary", "resnet18", "--input", "a,b,c"], "error: --input must be C,H,W (three integers)"),
    (["summary", "resnet18", "--input", "3,32,32", "--classes", "0"], "error: --classes must be >= 1, got 0"),
])
def test_cli_errors_are_one_line_and_non_zero(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message)
    assert captured.err.count("\n") == 1


def test_python_dash_m_models_exit_code() -> None:
    bad = subprocess.run([sys.executable, "-m", "models", "summary", "nope", "--input", "1,8,8"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith("error: unknown arch 'nope'")
    assert bad.stderr.count("\n") == 1
