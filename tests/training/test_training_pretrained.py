"""``--pretrained imagenet``: torchvision's published ResNet weights by name, through torch's hub cache.

Nothing is downloaded: the tests put a state_dict they build (random weights, torchvision's keys) into a temporary
hub cache (``$TORCH_HOME/hub/checkpoints``) under the file name torchvision publishes, and the trainer reads it by
the real path; the offline test points the process at a proxy that refuses every connection, so that torch's own
download fails as it does without network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import registry
from models.pretrained import PretrainedError, is_weights_name, load_body, normalisation, published
from tests.support.images import make_image_folder
from tests.support.paths import ROOT
from training.__main__ import main

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1, as published


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A TORCH_HOME whose hub cache holds a resnet18 state_dict built here, under torchvision's file name."""
    home = tmp_path_factory.mktemp("torch-home")
    torch.manual_seed(0)
    state = registry.create("tv_resnet18", 1000, 3).state_dict()
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / RESNET18_FILE)
    return home, state


def test_names_resolve_through_torchvision_enums_into_the_hub_cache(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    r18 = published("imagenet", "resnet18")
    assert (r18.name, r18.file) == ("ResNet18_Weights.IMAGENET1K_V1", checkpoints / RESNET18_FILE)
    assert r18.url == f"https://download.pytorch.org/models/{RESNET18_FILE}"
    assert (list(r18.mean), list(r18.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    # imagenet is the enum's DEFAULT (torchvision's recommendation): for resnet50 the V2 recipe; V1 by its name.
    assert published("imagenet", "tv_resnet50").file.name == "resnet50-11ad3fa6.pth"
    assert published("IMAGENET1K_V1", "resnet50").file.name == "resnet50-0676ba61.pth"
    assert published("imagenet", "tv_resnet34").file.name == "resnet34-b627a593.pth"
    assert not checkpoints.exists()  # resolving reads and downloads nothing
    assert [is_weights_name(s) for s in ("imagenet", "ImageNet", "IMAGENET1K_V2", "imagenet1k_v1")] == [True] * 4
    assert [is_weights_name(s) for s in ("model.pth", "runs/a/model.pth", "./imagenet", "resnet18")] == [False] * 4
    assert normalisation("imagenet", "resnet18", 3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalisation("imagenet", "resnet18", 1) == ([0.449], [0.226])  # the channels' average, for grey images
    assert normalisation(tmp_path / "model.pth", "resnet18", 3) is None  # a file: the data's own statistics
    assert not is_weights_name(Path("imagenet"))  # a Path is a file, whatever its name


@pytest.mark.parametrize(("name", "arch", "message"), [
    ("imagenet", "resnet20", "--pretrained imagenet: torchvision publishes no weights for --arch resnet20; by name "
                             "only for resnet18, resnet34, resnet50, tv_resnet18, tv_resnet34, tv_resnet50"),
    ("imagenet", "xresnet18", "torchvision publishes no weights for --arch xresnet18"),
    ("IMAGENET1K_V2", "resnet18", "--pretrained IMAGENET1K_V2: ResNet18_Weights has IMAGENET1K_V1 "
                                  r"\(or imagenet: ResNet18_Weights.IMAGENET1K_V1\)"),
])
def test_a_name_the_arch_lacks_is_one_line(name: str, arch: str, message: str) -> None:
    with pytest.raises(PretrainedError, match=message) as err:
        published(name, arch)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("arch", "head"), [("resnet18", "fastai"), ("tv_resnet18", "linear")])
def test_load_body_by_name_reads_the_cached_file(arch: str, head: str, torch_home: tuple[Path, dict],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home, state = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = registry.create(arch, 4, 3, head=head)
    assert load_body(model, arch, head, "imagenet") == 120  # every body tensor; the 1000-class fc is left out
    got = model.state_dict()
    prefix = {"conv1": "0.0", "layer4": "0.7"} if head == "fastai" else {"conv1": "conv1", "layer4": "layer4"}
    assert torch.equal(got[f"{prefix['conv1']}.weight"], state["conv1.weight"])
    assert torch.equal(got[f"{prefix['layer4']}.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    # Greyscale images: the colour filters summed (fastai's rule), as for a file.
    grey = registry.create(arch, 4, 1, head=head)
    load_body(grey, arch, head, "imagenet")
    torch.testing.assert_close(grey.state_dict()[f"{prefix['conv1']}.weight"], state["conv1.weight"].sum(1, True))


def test_a_broken_cached_file_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"an interrupted copy, not a checkpoint")
    with pytest.raises(PretrainedError, match=rf"^--pretrained {cached}: not a PyTorch checkpoint"):
        load_body(registry.create("resnet18", 4, 3), "resnet18", "linear", "imagenet")


def test_fit_pretrained_imagenet_through_a_prefilled_cache(tmp_path: Path, torch_home: tuple[Path, dict],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    home, state = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    images = make_image_folder(tmp_path / "rgb", classes=3, per_class=8, size=32, mode="RGB")
    out = tmp_path / "run"
    code = main(["fit", "--data", str(images), "--arch", "resnet18", "--pretrained", "imagenet", "--epochs", "1",
                 "--lr", "1e-3", "--bs", "8", "--size", "32", "--no-plots", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert (f"pretrained: 120 body tensors from ResNet18_Weights.IMAGENET1K_V1 ({home}/hub/checkpoints/"
            f"{RESNET18_FILE}); new fastai head for 3 classes") in printed
    assert "downloading" not in printed
    # The weights' normalisation travels with the model: the server normalises with spec.json.
    spec = json.loads((out / "spec.json").read_text())
    assert (spec["mean"], spec["std"]) == (IMAGENET_MEAN, IMAGENET_STD)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["pretrained"], metrics["schedule"]) == ("imagenet", "fine_tune")
    assert [h["phase"] for h in metrics["history"]] == ["frozen", "unfrozen"]
    # fine_tune moved the body by at most a few steps at lr 5e-6; a body not taken from the file would be another
    # random draw (its weights ~0.02 apart).
    trained, _ = registry.load_checkpoint(out / "model.pth")
    got = trained.state_dict()
    torch.testing.assert_close(got["0.0.weight"], state["conv1.weight"], rtol=0, atol=1e-3)
    torch.testing.assert_close(got["0.7.1.conv2.weight"], state["layer4.1.conv2.weight"], rtol=0, atol=1e-3)


def test_fit_pretrained_imagenet_offline_is_one_line(tmp_path: Path) -> None:
    """torch's real download, in a process whose only way out is a proxy that refuses connections: the command
    fails with one line that names the file to download and where to put it, and leaves no partial file."""
    images = make_image_folder(tmp_path / "rgb", classes=2, per_class=4, size=32, mode="RGB")
    with socket.socket() as refused:  # bound, never listening: every connection to it is refused
        refused.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refused.getsockname()[1]}"
        env = {**os.environ, "TORCH_HOME": str(tmp_path / "home"), "https_proxy": proxy, "HTTPS_PROXY": proxy,
               "http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": "", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "training", "fit", "--data", str(images), "--arch", "resnet18",
                               "--pretrained", "imagenet", "--epochs", "1", "--lr", "1e-3", "--size", "32",
                               "--no-plots", "--out", str(tmp_path / "run")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    cached = tmp_path / "home" / "hub" / "checkpoints" / RESNET18_FILE
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith(f"error: --pretrained imagenet: cannot download "
                                f"https://download.pytorch.org/models/{RESNET18_FILE} (")
    assert lines[-1].endswith(f"); download it and put it at {cached}")
    assert list(cached.parent.iterdir()) == []
    assert not (tmp_path / "run" / "model.pth").exists()


def test_cli_refuses_imagenet_for_an_arch_without_published_weights(tmp_path: Path, image_folder: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--data", str(image_folder), "--arch", "resnet20", "--pretrained", "imagenet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --pretrained imagenet: torchvision publishes no weights for --arch resnet20;")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()
