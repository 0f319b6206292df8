"""fastai's CNN learner around the project's archs: vision_learner, --pretrained with fine_tune (then export),
augmentation as training-only batch transforms, and the one-line errors of --pretrained. Runs are tiny."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models import registry
from models.learner import learner_arch
from models.pretrained import PretrainedError, load_body
from tests.support.images import make_image_folder
from training import data
from training.__main__ import main
from training.fit import fit
from training.settings import FitConfig


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A greyscale 3-class run (resnet20, fastai head, 1 epoch) whose body the other tests start from."""
    root = tmp_path_factory.mktemp("source")
    images = make_image_folder(root / "images", classes=3, per_class=12)
    out = root / "run"
    fit(FitConfig(data=str(images), arch="resnet20", epochs=1, out=out, lr=1e-2, bs=8, size=8, seed=0, plots=False,
                  head="fastai"), log=_quiet)
    return out


def _dls(folder: Path, mode: str, size: int, aug: list | None = None):
    ds = data.scan(folder, mode, log=_quiet)
    spec = data.make_spec(ds, (size, size), mode)
    return ds, spec, data.dataloaders(ds, spec, bs=4, device=torch.device("cpu"), aug=aug)


def test_vision_learner_builds_and_trains_our_arch(tmp_path: Path, source_run: Path) -> None:
    from fastai.metrics import accuracy
    from fastai.vision.learner import vision_learner

    _, _, dls = _dls(make_image_folder(tmp_path / "images", per_class=8), "L", 8)
    learn = vision_learner(dls, learner_arch("resnet20"), pretrained=False, n_in=1, metrics=accuracy,
                           path=tmp_path)
    ours = registry.create("resnet20", 3, 1, head="fastai").state_dict()
    theirs = learn.model.state_dict()
    assert list(theirs) == list(ours)
    assert all(theirs[k].shape == ours[k].shape for k in ours)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert len(learn.opt.param_lists) == 2  # our splitter, from model_meta: body, head
    assert len(learn.recorder.values) == 1

    # pretrained=True: the body comes from a run's checkpoint (a 1-channel body through fastai's 3 → 1 rule) and
    # vision_learner freezes it.
    arch = learner_arch("resnet20", weights=str(source_run / "model.pth"))
    learn = vision_learner(dls, arch, n_in=1, path=tmp_path)
    source = torch.load(source_run / "model.pth", weights_only=True)["state_dict"]
    got = learn.model.state_dict()
    torch.testing.assert_close(got["0.0.weight"], source["0.0.weight"], rtol=0, atol=1e-6)
    assert torch.equal(got["0.6.2.conv2.weight"], source["0.6.2.conv2.weight"])
    assert learn.opt.frozen_idx == 1
    with pytest.raises(ValueError, match="resnet20 ships no pretrained weights"):
        vision_learner(dls, learner_arch("resnet20"), n_in=1)


def test_pretrained_fine_tunes_on_another_folder_and_exports(tmp_path: Path, source_run: Path) -> None:
    from training.export import export

    images = make_image_folder(tmp_path / "rgb", classes=4, per_class=8, mode="RGB")
    out = tmp_path / "tuned"
    m = fit(FitConfig(data=str(images), arch="resnet20", epochs=1, out=out, lr=1e-2, bs=8, size=8, seed=0,
                      plots=False, pretrained=source_run / "model.pth", freeze_epochs=1), log=_quiet)
    assert m["schedule"] == "fine_tune"
    assert m["head"] == "linear"  # the default for a CIFAR-stem net; the source's fastai head is not taken
    assert m["aug"] is True  # an RGB folder
    assert [h.get("phase") for h in m["history"]] == ["frozen", "unfrozen"]
    assert m["n_classes"] == 4
    version = export(out, tmp_path / "repo", "tuned", log=_quiet, allow_unlearned=True)  # one epoch: any accuracy
    doc = json.loads((version / "verification.json").read_text())
    assert doc["passed"]
    assert doc["batchnorm_nodes"] == 0
    assert doc["comparisons"]["pytorch_vs_numpy"]["status"] == "passed"


def test_load_body_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = registry.create("tv_resnet18", 1000, 3)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    model = registry.create("resnet18", 5, 3, head="fastai")
    assert load_body(model, "resnet18", "fastai", path) == 120  # every body tensor (the fc is left out)
    got = model.state_dict()
    assert torch.equal(got["0.4.0.conv1.weight"], tv.state_dict()["layer1.0.conv1.weight"])
    assert torch.equal(got["0.7.1.bn2.running_var"], tv.state_dict()["layer4.1.bn2.running_var"])


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"not a checkpoint at all", "not a PyTorch checkpoint"),
    ("pickle", "not a PyTorch checkpoint"),
    ({"model": Path("an object")}, r"holds Python objects besides tensors, which are never unpickled"),
    ({"weights": [1, 2]}, "neither a run's model.pth nor a state_dict of tensors"),
    ("resnet32", "is a resnet32 checkpoint; --arch resnet20 needs one of the same architecture"),
    ("tv_resnet18", r"conv1.weight is \(64, 3, 7, 7\), this network needs \(16, 1, 3, 3\)"),
])
def test_pretrained_errors_are_one_line(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps(Path("an object, not tensors")))
    elif isinstance(content, dict):
        torch.save(content, path)
    elif content == "resnet32":
        registry.save_checkpoint(path, registry.create("resnet32", 3, 1), "resnet32", 3, 1)
    elif content == "tv_resnet18":
        torch.save(registry.create("tv_resnet18", 10, 3).state_dict(), path)
    with pytest.raises(PretrainedError, match=message) as err:
        load_body(registry.create("resnet20", 3, 1), "resnet20", "linear", path)
    assert "\n" not in str(err.value)


def test_cli_pretrained_error(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--data", str(image_folder), "--epochs", "1", "--pretrained", str(tmp_path / "nope.pth"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: --pretrained {tmp_path / 'nope.pth'}: no such file\n"


def test_augmentation_is_training_only(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "rgb", classes=2, per_class=8, size=16, mode="RGB")
    _, spec, plain = _dls(folder, "RGB", 16)
    aug = data.augmentations(spec)
    _, spec2, augmented = _dls(folder, "RGB", 16, aug=aug)
    assert spec2 == spec  # augmentation never reaches the spec the server uses
    torch.manual_seed(0)
    xa, _ = augmented.valid.one_batch()
    xp, _ = plain.valid.one_batch()
    assert torch.equal(xa, xp)
    torch.manual_seed(0)
    xa, ya = augmented.train.new(shuffle=False).one_batch()
    xp, yp = plain.train.new(shuffle=False).one_batch()
    assert torch.equal(ya, yp)
    assert xa.shape == xp.shape
    assert not torch.equal(xa, xp)


def test_in_memory_batches_are_the_decoded_files(image_folder: Path) -> None:
    from serving.contract.preprocess import preprocess

    ds, spec, dls = _dls(image_folder, "L", 12)
    x, y = dls.valid.one_batch()
    expected = np.stack([preprocess(p, spec) for p, _ in ds.valid[:4]])
    assert np.abs(x.numpy() - expected).max() == 0.0
    assert y.tolist() == [label for _, label in ds.valid[:4]]
    assert len(dls.train) == len(ds.train) // 4  # the training loader drops the last partial batch
