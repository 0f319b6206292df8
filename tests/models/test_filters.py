"""``python -m models filters``: hand-built kernels through our conv2d equal PyTorch's, the feature maps are the
stages' real outputs, and the figures are written for a run directory (a random model: no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import filters, registry
from models.__main__ import main
from serving.contract.preprocess import PreprocessSpec
from tests.support.images import make_image_folder


def _run_dir(root: Path, mode: str = "L") -> Path:
    """What `training fit` leaves behind, minus the training: checkpoint, spec.json, data.json."""
    channels = 1 if mode == "L" else 3
    images = make_image_folder(root / "images", classes=2, per_class=4, mode=mode)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = registry.create("resnet20", 2, channels)
    registry.save_checkpoint(run / "model.pth", model, "resnet20", 2, channels)
    PreprocessSpec((16, 16), mode, (0.3,) * channels, (0.3,) * channels, labels=("class_0", "class_1")).save(
        run / "spec.json")
    valid = sorted(p.relative_to(images) for p in (images / "valid").rglob("*.png"))
    (run / "data.json").write_text(json.dumps({"root": str(images), "valid": [[str(valid[0]), 0]], "train": []}))
    return run


def _is_picture(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert np.asarray(img.convert("L")).std() > 5, f"{path} is blank"


def test_hand_built_kernels_equal_pytorch_and_do_what_they_say() -> None:
    step = np.zeros((6, 8))
    step[:, 4:] = 1.0  # a vertical edge, dark to bright
    ours, theirs = filters.apply_kernels(step)
    assert np.abs(ours - theirs).max() <= filters.TOLERANCE
    k = {name: ours[i] for i, name in enumerate(filters.HAND_BUILT)}
    assert (k["Sobel x"][1:-1, 3:5] == 4).all()
    assert (k["Sobel x"][1:-1, :2] == 0).all()
    assert (k["Sobel y"][1:-1, 1:-1] == 0).all()  # blind to it
    assert (k["blur (Gaussian)"][1:-1, 1:3] == 0).all()
    assert (k["blur (Gaussian)"][1:-1, 5:7] == 1).all()
    assert (k["edge (Laplacian)"][1:-1, 1:3] == 0).all()
    assert k["edge (Laplacian)"][2, 4] == 3


def test_feature_maps_are_each_stages_output() -> None:
    torch.manual_seed(0)
    model = registry.create("resnet20", 3, 1).eval()
    x = np.random.default_rng(0).standard_normal((1, 16, 16)).astype(np.float32)
    maps = filters.feature_maps(model, "resnet20", x)
    assert {k: v.shape for k, v in maps.items()} == {"stem": (16, 16, 16), "layer1": (16, 16, 16),
                                                     "layer2": (32, 8, 8), "layer3": (64, 4, 4)}
    with torch.no_grad():
        np.testing.assert_allclose(maps["layer3"], model.forward_features(torch.from_numpy(x)[None])[0].numpy())
    top = filters.top_channels(maps["layer3"], 5)
    means = maps["layer3"].mean(axis=(1, 2))
    assert means[top].tolist() == sorted(means, reverse=True)[:5]


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_cli_writes_every_figure(mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path, mode)
    image = next((tmp_path / "images" / "train").rglob("*.png")) if mode == "RGB" else None
    out = tmp_path / "figures"
    assert main(["filters", str(run), "--out", str(out), *(["--image", str(image)] if image else [])]) == 0
    printed = capsys.readouterr().out.splitlines()
    names = ["first_layer_kernels.png", *(f"feature_maps_{s}.png" for s in ("stem", "layer1", "layer2", "layer3")),
             "hand_built_kernels.png"]
    assert printed[:-1] == [str(out / n) for n in names]
    assert printed[-1].startswith("hand-built kernels: models.scratch.conv2d vs torch F.conv2d (float64), max |diff")
    for name in names:
        _is_picture(out / name)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filters", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'nope' / 'model.pth'} is missing")
    assert err.count("\n") == 1
    run = _run_dir(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    assert main(["filters", str(run), "--image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read {tmp_path / 'bad.png'}")
    assert not (tmp_path / "out").exists()
