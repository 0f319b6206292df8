"""`python -m training experiment …`: a real run through the command line (same numbers as the library run, run
directories kept on request), and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from models import registry
from tests.support.experiments import tiny_argv
from training.__main__ import main
from training.experiments import EXPERIMENTS, rewrite_report


def test_cli_run_matches_the_library_run_and_keeps_runs(tiny_images, tiny_run, tmp_path, capsys):
    _, library = tiny_run("batchnorm")
    out = tmp_path / "bn"
    argv = tiny_argv("batchnorm", tiny_images, out)
    threads = torch.get_num_threads()
    assert main([*argv, "--keep-runs"]) == 0
    assert torch.get_num_threads() == threads  # the runs' one thread is not left behind
    stdout = capsys.readouterr().out
    assert "[batchnorm 1/6] BN: resnet20" in stdout
    assert "    epoch 1/1 train_loss=" in stdout
    assert f"[batchnorm] report: {out / 'report.md'}" in stdout

    doc = json.loads((out / "results.json").read_text())
    assert doc["command"] == "python -m training " + " ".join([*argv, "--keep-runs"])
    # Same seeds, same settings: the same measurements, run for run (determinism).
    assert len(doc["runs"]) == len(library["runs"]) == 6
    for a, b in zip(doc["runs"], library["runs"], strict=True):
        assert a["spec"] == b["spec"]
        for key in ("valid_accuracy", "valid_loss", "history", "batch_losses"):
            if key == "history":
                assert [{k: v for k, v in h.items() if k != "seconds"} for h in a[key]] == \
                       [{k: v for k, v in h.items() if k != "seconds"} for h in b[key]]
            else:
                assert a[key] == b[key], key

    # --keep-runs: each run directory is a complete `fit` run; the no-BN checkpoint rebuilds without BatchNorm.
    run_dir = out / "runs" / "main-no_BN-lr0.001-seed0"
    model, header = registry.load_checkpoint(run_dir / "model.pth")
    assert header == {"arch": "resnet20", "kwargs": {"num_classes": 3, "in_chans": 1, "norm": False}}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["model_kwargs"] == {"norm": False}
    assert metrics["valid_loss"] == pytest.approx(doc["runs"][1]["valid_loss"])
    bn_model, _ = registry.load_checkpoint(out / "runs" / "main-BN-lr0.001-seed0" / "model.pth")
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules())


def test_cli_choices_are_the_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    usage = capsys.readouterr().out
    assert "{" + ",".join(EXPERIMENTS) + "}" in usage


def test_rewrite_report_reproduces_the_report(tiny_run, tmp_path):
    """The report is a function of results.json alone: redone without training, it comes out the same."""
    src, doc = tiny_run("pooling")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    (copy / "report.md").unlink()
    redone = rewrite_report(copy)
    assert (copy / "report.md").read_text() == (src / "report.md").read_text()
    assert redone["tables"] == doc["tables"]
    assert redone["comparisons"] == doc["comparisons"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["skip", "--depths", "20,21"], "--depths must be taken from 20, 32, 56, got 20, 21"),
        (["skip", "--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["batchnorm", "--lrs", "0.1,0"], "--lrs must be a non-empty list of positive numbers, got [0.1, 0.0]"),
        (["batchnorm", "--target", "1.5"], "--target must be in (0, 1], got 1.5"),
        (["one-cycle", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["one-cycle", "--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["pooling", "--arch", "xresnet18"], "--arch must be one of the project's ResNets"),
        (["pooling", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["pooling", "--size", "2"], "--size 2 is too small for resnet20, which downsamples by 4"),
        (["one-cycle", "--data", "/nonexistent/folder"], "data folder not found: /nonexistent/folder"),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["experiment", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dropout"], "invalid choice: 'dropout'"),
        (["batchnorm", "--lrs", "a,b"], "expected comma-separated numbers, got 'a,b'"),
        (["skip", "--depths", "20.5"], "expected comma-separated integers, got '20.5'"),
    ],
)
def test_cli_usage_errors(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["experiment", *args, "--out", str(tmp_path / "report")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
