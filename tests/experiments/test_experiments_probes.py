"""What the experiments measure inside a run (training/experiments/probes.py, bn_why.py): each number is the quantity
its name says, recomputed here, and measuring does not change the training."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from models import resnet
from tests.experiments.test_experiments_report import cell, runs
from training.experiments import bn_why
from training.experiments.probes import Tracer, landscape
from training.experiments.runner import RunSpec, Settings, train_one


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    loss = nn.functional.cross_entropy(model(x), y)
    return float(loss.detach()), list(torch.autograd.grad(loss, list(model.parameters())))


def test_landscape_is_the_loss_along_the_gradient_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).train()
    x, y = _batch()
    before = copy.deepcopy(model.state_dict())
    probe = landscape(model, x, y, etas=(0.01, 0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and running stats back
    loss0, g = _loss_and_grad(copy.deepcopy(model), x, y)
    assert probe["loss"] == pytest.approx(loss0, rel=1e-3)
    assert probe["grad_norm"] == pytest.approx(math.sqrt(sum(float((t**2).sum()) for t in g)), rel=1e-3)
    for eta, loss, change in zip(probe["etas"], probe["losses"], probe["grad_change"], strict=True):
        stepped = copy.deepcopy(model)
        with torch.no_grad():
            for p, gi in zip(stepped.parameters(), g, strict=True):
                p -= eta * gi
        loss_eta, g_eta = _loss_and_grad(stepped, x, y)
        assert loss == pytest.approx(loss_eta, rel=1e-3)
        assert change == pytest.approx(math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(g_eta, g,
                                                                                                  strict=True))),
                                       rel=1e-3)
    assert probe["losses"][0] < probe["loss"]  # a small step down the gradient lowers the loss


def test_tracer_records_the_training_forward_only() -> None:
    torch.manual_seed(0)
    model = resnet.build("resnet20", num_classes=3, in_chans=1).train()
    x, y = _batch()
    tracer = Tracer(model, iterations=1)
    tracer.start(0)
    out = model(x)
    tracer.after_forward()
    nn.functional.cross_entropy(out, y).backward()
    tracer.after_backward()
    with torch.no_grad():
        model(x)  # an evaluation-like forward: not active, not recorded
    tracer.start(1)  # past the traced iterations
    model(x)
    tracer.after_forward()
    tracer.close()
    t = tracer.to_json()
    assert len(t["act_std"]) == len(t["grad_norm"]) == 1
    assert t["layers"] == ["stem", *(f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3))]
    assert t["weights"][0] == "conv1"
    assert t["weights"][-1] == "fc"
    assert not any("downsample" in w for w in t["weights"])
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
    assert t["act_std"][0][0] == pytest.approx(float(stem.std()), rel=1e-3)
    assert t["act_mean"][0][0] == pytest.approx(float(stem.mean()), rel=1e-3)
    assert t["grad_norm"][0][-1] == pytest.approx(float(model.fc.weight.grad.norm()), rel=1e-3)


def test_landscape_and_trace_metrics() -> None:
    probe = {"loss": 2.0, "grad_norm": 4.0, "etas": [0.1, 1.0], "losses": [1.5, None], "grad_change": [0.8, 12.0]}
    assert bn_why.landscape_metrics(probe) == {"loss_range": 0.5, "grad_change": 12.0, "beta": 3.0,
                                               "lowering_eta": 0.1, "grad_norm": 4.0}


def test_probes_do_not_change_the_training_nor_count_as_training_time(tiny_images, tmp_path) -> None:
    """Same seed with and without the trace, the landscape probes and the evaluations: the same losses, batch for
    batch; and the probes' time is left out of the epochs' seconds."""
    settings = Settings(out=tmp_path, data=str(tiny_images), bs=8, size=8)
    plain = RunSpec("BN", "resnet20", 0, 0.01, 1)
    probed = RunSpec("BN", "resnet20", 0, 0.01, 1, trace=2, landscape_every=1, evals_per_epoch=4)
    a = train_one(plain, settings, tmp_path / "a", lambda _m: None)
    b = train_one(probed, settings, tmp_path / "b", lambda _m: None)
    assert a.batch_losses == b.batch_losses
    assert a.valid_loss == b.valid_loss
    assert [p["iteration"] for p in b.landscape] == list(range(b.iters_per_epoch))
    assert len(b.trace["act_std"]) == 2
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert b.history[0]["seconds"] < metrics["history"][0]["seconds"]
    assert b.train_seconds < metrics["train_seconds"]
    assert b.evals[-1]["seconds"] <= b.history[0]["seconds"]


def test_batchnorm_report_explains_from_its_numbers(tiny_run) -> None:
    out, doc = tiny_run("batchnorm")
    report = (out / "report.md").read_text()
    inside = doc["tables"][2]
    assert inside["headers"] == ["measured in the main runs", "BN", "no BN"]
    stem = next(r for r in inside["rows"] if r[0] == "activation std after the stem, iteration 0")
    assert stem[1:] == [cell([r["trace"]["act_std"][0][0] for r in runs(doc, v)], 3) for v in ("BN", "no BN")]
    (section,) = doc["sections"]
    assert section["heading"] == "Why: what BatchNorm changes inside the network"
    assert "## Why: what BatchNorm changes inside the network" in report
    for paragraph in section["paragraphs"]:
        assert paragraph in report
    assert section["paragraphs"][-1].startswith("**What this supports.**")

