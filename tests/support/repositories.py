"""Model repositories for the tests: RUN folders exported into ``NAME/VERSION/`` folders, versions copied the way an
exporter publishes them, and every kind of damage a version folder can suffer.

The repository is written by ``training.export.export``, the project's exporter. :func:`write_version` writes a
version by the shortest path instead (no folding, no explain graph), through the same
:class:`~serving.contract.manifest.ModelManifest` the server reads: for a hand-built model (:func:`patch_detector`)
and for the server tests of that path (:func:`minimal_export`). Its verification summary is measured, never assumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.contract.manifest import FILE, ModelManifest
from serving.contract.preprocess import PreprocessSpec, preprocess

GOLDEN_SAMPLES = 8
GOLDEN_ATOL = 1e-4


@dataclass(frozen=True)
class Repo:
    """A repository folder and the RUN folders its models were exported from (the PyTorch references)."""

    path: Path
    runs: dict[str, Path]


def write_version(repository: Path, name: str, version: int, model: Any, spec: PreprocessSpec, inputs: np.ndarray,
                  arch: str, source: dict[str, Any]) -> Path:
    """``repository/name/version`` for any PyTorch ``model``: ONNX export, golden logits from PyTorch, model.json."""
    import torch

    out = repository / name / str(version)
    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(inputs[:2]),), str(out / "model.onnx"), dynamo=False,
                          opset_version=18, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    np.savez(out / "golden.npz", inputs=inputs, logits=logits)
    ModelManifest(name=name, version=version, labels=spec.labels, spec=spec, input_shape=spec.input_shape,
                  num_classes=len(spec.labels), onnx_sha256=sha256(out / "model.onnx"), golden_atol=GOLDEN_ATOL,
                  arch=arch, opset=18, source=source,
                  verification=verify_onnx(out / "model.onnx", inputs, logits)).save(out / FILE)
    return out


def verify_onnx(path: Path, inputs: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    """onnxruntime's logits for ``inputs`` against PyTorch's: the manifest's verification summary, as measured.
    A version that does not reproduce its model is an error of the helper, not a file to hand to the server."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    max_abs_diff = float(np.abs(got - logits).max())
    if not max_abs_diff <= GOLDEN_ATOL:
        raise AssertionError(f"{path}: onnxruntime vs PyTorch max |Δ| {max_abs_diff:.3g} > {GOLDEN_ATOL}")
    return {"passed": True, "max_abs_diff": max_abs_diff,
            "top1_agreement": float((got.argmax(1) == logits.argmax(1)).mean())}


def minimal_export(run: Path, repository: Path, name: str, version: int = 1) -> Path:
    """``repository/name/version`` by the shortest path (no folding, no verification, no explain graph)."""
    import json

    from models import registry

    model, header = registry.load_checkpoint(run / "model.pth")
    spec = PreprocessSpec.load(run / "spec.json")
    data = json.loads((run / "data.json").read_text())
    inputs = np.stack([preprocess(Path(data["root"]) / p, spec) for p, _ in data["valid"][:GOLDEN_SAMPLES]])
    return write_version(repository, name, version, model, spec, inputs, header["arch"],
                         {"run": str(run), "metrics": {}})


def patch_detector(repository: Path, name: str = "patch", size: int = 28) -> Path:
    """A model whose evidence is known: "bright" when any 5×5 patch of the grey image is bright, else "dark".

    A 5×5 box filter, then the maximum over positions, then a linear layer: only the brightest patch decides the
    answer, so blanking it (and nothing else) removes the evidence for "bright". Not a ResNet: no explain graph."""
    import torch
    from torch import nn

    box = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    decide = nn.Linear(1, 2)
    with torch.no_grad():
        box.weight.fill_(1 / 25)
        decide.weight.copy_(torch.tensor([[-8.0], [8.0]]))
        decide.bias.copy_(torch.tensor([4.0, -4.0]))
    model = nn.Sequential(box, nn.AdaptiveMaxPool2d(1), nn.Flatten(), decide).eval()
    spec = PreprocessSpec(size=(size, size), color_mode="L", mean=(0.0,), std=(1.0,), labels=("dark", "bright"))
    rng = np.random.default_rng(0)
    inputs = rng.random((4, 1, size, size), dtype=np.float32) * 0.2
    return write_version(repository, name, 1, model, spec, inputs, "patch-detector", {"run": "hand-built"})


def export_model(run: Path, repository: Path, name: str) -> Path:
    """The next version of ``name`` from ``run``, by the project's exporter."""
    from training.export import export  # torch and onnx: only where a model is exported

    return export(run, repository, name, log=lambda *_: None, allow_unlearned=True)  # random weights


def build_repository(root: Path) -> Repo:
    """``root/repository``: digits (L 28×28, 10 classes) and rgb (RGB 32×32, 4 classes), version 1 each."""
    from tests.support.runs import DIGITS_LABELS, RGB_LABELS, make_run  # torch: only where a run is made

    runs = {
        "digits": make_run(root / "runs" / "digits", "resnet20", DIGITS_LABELS, in_chans=1, size=28, seed=1,
                           n_train=4, n_valid=8),
        "rgb": make_run(root / "runs" / "rgb", "resnet20", RGB_LABELS, in_chans=3, size=32, seed=2,
                        n_train=4, n_valid=8),
    }
    repository = root / "repository"
    for name, run in runs.items():
        export_model(run, repository, name)
    return Repo(repository, runs)


# ---- versions and their damage -------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_manifest(version_dir: Path, **changes: Any) -> ModelManifest:
    """Change fields of a version's model.json through the server's own reader and writer."""
    manifest = dataclasses.replace(ModelManifest.load(version_dir / FILE), **changes)
    manifest.save(version_dir / FILE)
    return manifest


def add_version(repository: Path, source: Path, name: str, version: int,
                damage: Callable[[Path], None] | None = None) -> Path:
    """Copy the version folder ``source`` to ``repository/name/version`` the way an exporter publishes: written
    aside (and damaged there, if asked), then renamed into place, so a polling server never sees half a folder."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(source, staging)
    edit_manifest(staging, name=name, version=version)  # the ONNX sha256 stays valid
    if damage is not None:
        damage(staging)
    target = repository / name / str(version)
    staging.rename(target)
    return target


def tamper_golden(version_dir: Path, delta: float = 0.5) -> None:
    """Shift one golden logit: the model still loads, its golden self-check fails by ``delta``."""
    with np.load(version_dir / "golden.npz", allow_pickle=False) as npz:
        inputs, logits = npz["inputs"], npz["logits"].copy()
    logits[0, 0] += delta
    np.savez(version_dir / "golden.npz", inputs=inputs, logits=logits)


def tamper_onnx(version_dir: Path) -> None:
    """Flip a byte inside the weights: still a loadable file, a different model (and a different sha256)."""
    data = bytearray((version_dir / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (version_dir / "model.onnx").write_bytes(bytes(data))


def truncate_onnx(version_dir: Path, rehash: bool = False) -> None:
    """Cut model.onnx in half; with ``rehash`` model.json gets the new sha256, so onnxruntime itself must refuse."""
    onnx = version_dir / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    if rehash:
        edit_manifest(version_dir, onnx_sha256=sha256(onnx))


def wrong_sha(version_dir: Path) -> None:
    """model.json names another file: the sha256 check refuses the version before loading it."""
    edit_manifest(version_dir, onnx_sha256="0" * 64)
