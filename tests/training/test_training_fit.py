"""Real (tiny) training runs: the run directory, its files and fields, errors, determinism, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import registry
from serving.contract.preprocess import PreprocessSpec
from tests.support.paths import ROOT
from training.__main__ import main
from training.fit import fit
from training.settings import FitConfig


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict]:
    """One real run with lr_find, shared by the checks below (3 classes, 16 px, resnet20, 4 epochs)."""
    from tests.support.images import make_image_folder

    root = tmp_path_factory.mktemp("fit")
    images = make_image_folder(root / "images", classes=3, per_class=24)
    out = root / "run"
    metrics = fit(FitConfig(data=str(images), arch="resnet20", epochs=4, out=out, bs=8, size=16, seed=0),
                  log=lambda m: None)
    return out, metrics


def test_run_directory_has_every_file(trained_run):
    out, _ = trained_run
    for name in ("model.pth", "spec.json", "metrics.json", "data.json"):
        assert (out / name).is_file(), name
    for plot in ("lr_find", "schedule", "loss", "confusion"):
        path = out / "plots" / f"{plot}.png"
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size[0] >= 300
            assert img.size[1] >= 200
            # A real drawing, not a blank canvas.
            assert np.asarray(img.convert("L")).std() > 5


def test_metrics_fields(trained_run):
    out, returned = trained_run
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(returned))
    for key in ("valid_accuracy", "valid_loss", "epochs", "train_seconds", "lr_max", "arch", "n_classes", "history"):
        assert key in m, key
    assert 0.0 <= m["valid_accuracy"] <= 1.0
    assert m["epochs"] == 4
    assert len(m["history"]) == 4
    assert m["arch"] == "resnet20"
    assert m["n_classes"] == 3
    assert m["lr_source"] == "lr_find"
    assert m["lr_max"] > 0
    assert m["train_seconds"] > 0
    assert {"epoch", "train_loss", "valid_loss", "accuracy"} <= set(m["history"][0])
    # The patterns are easy: four epochs learn them (with lr_find, 5 of 5 seeds reached 100 %).
    assert m["valid_accuracy"] >= 0.9
    assert np.asarray(m["confusion"]).sum() == 18
    # 18 validation images, 6 of each class: majority rate 1/3, and the model is well above it
    assert m["majority_rate"] == pytest.approx(1 / 3)
    assert m["learned"]["learned"] is True
    assert m["learned"]["threshold"] == pytest.approx(1 / 3 + 2 * (1 / 3 * 2 / 3 / 18) ** 0.5, abs=1e-6)


def test_checkpoint_and_spec_rebuild_the_model(trained_run):
    out, metrics = trained_run
    model, header = registry.load_checkpoint(out / "model.pth")
    assert header == {"arch": "resnet20", "kwargs": {"num_classes": 3, "in_chans": 1}}
    spec = PreprocessSpec.load(out / "spec.json")
    assert spec.size == (16, 16)
    assert spec.color_mode == "L"
    assert spec.labels == ("class_0", "class_1", "class_2")
    data = json.loads((out / "data.json").read_text())
    from serving.contract.preprocess import preprocess

    x = np.stack([preprocess(Path(data["root"]) / p, spec) for p, _ in data["valid"]])
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    accuracy = float((predicted == np.array([y for _, y in data["valid"]])).mean())
    assert accuracy == pytest.approx(metrics["valid_accuracy"])


def test_same_seed_same_weights(tmp_path, image_folder):
    def run(out: Path) -> dict:
        fit(FitConfig(data=str(image_folder), arch="resnet20", epochs=1, out=out, lr=1e-2, bs=8, size=8, seed=3,
                      plots=False), log=lambda m: None)
        return torch.load(out / "model.pth", weights_only=True)["state_dict"]

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet999"], "unknown arch 'resnet999'"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--arch", "resnet18", "--size", "16"], "--size 16 is too small for resnet18"),
        (["--data", "/nonexistent/folder"], "data folder not found"),
    ],
)
def test_cli_errors_are_one_line(args, message, image_folder, tmp_path, capsys):
    argv = ["fit", "--data", str(image_folder), "--epochs", "1", "--out", str(tmp_path / "run")]
    code = main(argv + args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cli_error_for_class_without_readable_image(image_folder, tmp_path, capsys):
    for f in (image_folder / "train" / "class_0").iterdir():
        f.write_bytes(b"not an image")
    for f in (image_folder / "valid" / "class_0").iterdir():
        f.write_bytes(b"not an image")
    code = main(["fit", "--data", str(image_folder), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "class folder(s) with no readable image: class_0" in err


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, image_folder):
    """DDP through fastai's DistributedTrainer, gloo backend, 2 processes; rank 0 alone writes the run."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "training",
           "fit", "--data", str(image_folder), "--arch", "resnet20", "--epochs", "2", "--lr", "1e-2", "--bs", "4",
           "--size", "8", "--no-plots", "--out", str(out)]
    # Own process group: on a timeout the workers die with the launcher instead of lingering.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert len(m["history"]) == 2
    # Validation ran over the whole split (gathered from both ranks), not half of it.
    assert np.asarray(m["confusion"]).sum() == 9
    model, _ = registry.load_checkpoint(out / "model.pth")
    assert not any("module." in k for k in model.state_dict())


def test_numpy_reference_reproduces_the_trained_model(trained_run):
    """The from-scratch forward, given only the checkpoint, matches PyTorch on the run's validation images."""
    from models.scratch import from_checkpoint
    from serving.contract.preprocess import preprocess

    out, _ = trained_run
    ckpt = torch.load(out / "model.pth", weights_only=True)
    model, _ = registry.load_checkpoint(out / "model.pth")
    spec = PreprocessSpec.load(out / "spec.json")
    data = json.loads((out / "data.json").read_text())
    x = np.stack([preprocess(Path(data["root"]) / p, spec) for p, _ in data["valid"]])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = from_checkpoint(ckpt).forward(x)
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_a_model_that_learned_nothing_is_called_out(tmp_path: Path) -> None:
    """A learning rate at which nothing moves: the run says so, and metrics.json records the verdict."""
    from tests.support.images import make_image_folder

    images = make_image_folder(tmp_path / "images", classes=2, per_class=16)
    lines: list[str] = []
    m = fit(FitConfig(data=str(images), arch="resnet20", epochs=1, out=tmp_path / "run", lr=1e-9, bs=8, size=16,
                      seed=0, plots=False), log=lines.append)
    assert m["learned"]["learned"] is False
    warning = [line for line in lines if line.startswith("WARNING: the model has not learned: validation accuracy")]
    assert len(warning) == 1
    assert warning[0].endswith("export refuses it unless --allow-unlearned")
