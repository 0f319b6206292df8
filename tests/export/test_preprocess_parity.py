"""The serving preprocessing gives the tensor fastai trained on, and the probabilities ``learn.predict`` gives.

Same image files (PNG and JPEG, RGB and greyscale, smaller and larger than the target, other aspect ratios),
three ways: ``serving.contract.preprocess.preprocess``; a stock fastai DataBlock built from the spec here
(``ImageBlock(PILImage|PILImageBW)``, ``Resize(method='squish')``, ``Normalize.from_stats``); and the trainer's own
``training.data.dataloaders``. The tolerance is 1e-6 and stays there: a mismatch is a bug to explain, not noise.
"""

from __future__ import annotations

from pathlib import Path

import fastai.vision.all as fastai_vision
import numpy as np
import pytest
import torch
from PIL import Image

from serving.contract.preprocess import PreprocessSpec, preprocess
from tests.support.runs import random_model
from training import data

SIZE = (12, 20)  # (height, width): not square, so a swapped axis shows
# (file name, PIL mode, (width, height)): down- and up-scaling, both aspect ratios, both formats and modes.
IMAGES = [
    ("big_rgb.png", "RGB", (53, 31)),
    ("small_rgb.jpg", "RGB", (9, 7)),
    ("tall_grey.png", "L", (8, 40)),
    ("wide_grey.jpg", "L", (64, 10)),
    ("exact_rgb.png", "RGB", (20, 12)),
]
SPECS = {
    "RGB": dict(color_mode="RGB", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "L": dict(color_mode="L", mean=(0.4,), std=(0.3,)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(7)
    out = []
    for name, mode, (w, h) in IMAGES:
        shape = (h, w) if mode == "L" else (h, w, 3)
        # A gradient plus noise: resampling filters disagree most on high-frequency content, so include some.
        grad = np.linspace(0, 200, w)[None, :] * np.ones((h, 1))
        pixels = grad.reshape(h, w, *([1] * (len(shape) - 2))) + rng.integers(0, 56, shape)
        path = root / name
        Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path, quality=90)
        out.append(path)
    return out


def _spec(mode: str) -> PreprocessSpec:
    return PreprocessSpec(size=SIZE, labels=("a", "b", "c"), **SPECS[mode])


def _stock_dataloaders(spec: PreprocessSpec, files: list[Path]):
    """fastai's own pipeline from the spec, with fastai's own image classes (no project code)."""
    fv = fastai_vision
    cls = fv.PILImageBW if spec.color_mode == "L" else fv.PILImage
    block = fv.DataBlock(
        blocks=(fv.ImageBlock(cls=cls), fv.CategoryBlock(vocab=list(spec.labels))),
        get_y=lambda p: spec.labels[hash(p.name) % len(spec.labels)],
        splitter=fv.IndexSplitter([]),
        item_tfms=fv.Resize(spec.size, method="squish"),
        batch_tfms=fv.Normalize.from_stats(list(spec.mean), list(spec.std)),
    )
    return block.dataloaders(files, bs=len(files), num_workers=0, device=torch.device("cpu"))


def _serving(spec: PreprocessSpec, files: list[Path]) -> np.ndarray:
    return np.stack([preprocess(f, spec) for f in files])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_stock_fastai_pipeline_gives_the_same_tensor(files: list[Path], mode: str) -> None:
    spec = _spec(mode)
    dls = _stock_dataloaders(spec, files)
    (x,) = dls.test_dl(files, bs=len(files)).one_batch()
    expected = _serving(spec, files)
    assert tuple(x.shape) == (len(files), *spec.input_shape)
    assert np.abs(x.cpu().numpy() - expected).max() <= 1e-6


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_trainer_dataloaders_give_the_same_tensor(files: list[Path], mode: str) -> None:
    spec = _spec(mode)
    ds = data.Dataset(root=files[0].parent, labels=list(spec.labels), train=[(f, 0) for f in files[:2]],
                      valid=[(f, i % 3) for i, f in enumerate(files)])
    dls = data.dataloaders(ds, spec, bs=len(files), device=torch.device("cpu"))
    x, y = dls.valid.one_batch()  # the validation loader keeps the order
    assert np.abs(x.cpu().numpy() - _serving(spec, files)).max() <= 1e-6
    assert y.tolist() == [i % 3 for i in range(len(files))]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_learn_predict_gives_the_same_probabilities(files: list[Path], mode: str) -> None:
    fv = fastai_vision
    spec = _spec(mode)
    model = random_model("resnet20", len(spec.labels), spec.channels, 12)
    learn = fv.Learner(_stock_dataloaders(spec, files), model, loss_func=fv.CrossEntropyLossFlat())
    x = torch.from_numpy(_serving(spec, files))
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x), dim=1).numpy()
    for i, f in enumerate(files):
        with learn.no_bar(), learn.no_logging():
            label, index, p = learn.predict(f)
        assert np.abs(p.numpy() - probs[i]).max() <= 1e-6
        assert label == spec.labels[int(probs[i].argmax())]
        assert int(index) == int(probs[i].argmax())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_trainer_decodes_large_jpegs_as_the_server_does(tmp_path: Path, mode: str) -> None:
    """JPEGs at least twice the target size are decoded at a reduced libjpeg scale by the server; the trainer must
    use the very same decode (stock fastai decodes at full size, so it is left out here)."""
    from serving.contract.preprocess import load_image

    spec = _spec(mode)
    rng = np.random.default_rng(3)
    files = []
    for i, (w, h) in enumerate([(203, 131), (90, 400), (320, 48)]):
        shape = (h, w) if mode == "L" else (h, w, 3)
        grad = np.linspace(0, 200, w)[None, :] * np.ones((h, 1))
        pixels = grad.reshape(h, w, *([1] * (len(shape) - 2))) + rng.integers(0, 56, shape)
        files.append(tmp_path / f"{i}.jpg")
        Image.fromarray(pixels.astype(np.uint8), mode=mode).save(files[-1], quality=90)
    assert load_image(files[0], mode, min_size=spec.size).size != (203, 131)  # the reduced decode applies
    ds = data.Dataset(root=tmp_path, labels=list(spec.labels), train=[(f, 0) for f in files[:2]],
                      valid=[(f, i % 3) for i, f in enumerate(files)])
    x, _ = data.dataloaders(ds, spec, bs=len(files), device=torch.device("cpu")).valid.one_batch()
    assert np.abs(x.cpu().numpy() - _serving(spec, files)).max() <= 1e-6
