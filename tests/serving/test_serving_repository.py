"""Repository discovery and the load-time checks: sha256, signature, golden self-check, no unpickling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.contract import layout
from serving.contract.manifest import ModelManifest
from serving.errors import ModelNotFound, ModelRejected
from serving.runtime import loader
from tests.support.repositories import Repo, add_version, minimal_export, tamper_golden, tamper_onnx


@pytest.fixture
def scratch(repository: Repo, tmp_path: Path) -> Path:
    """A private copy of digits/1 to damage."""
    target = tmp_path / "repo"
    shutil.copytree(repository.path / "digits" / "1", target / "digits" / "1")
    return target


def test_discover_and_select(serving_repo: Repo) -> None:
    repo = serving_repo
    found = layout.discover(repo.path)
    assert found == {"corrupt": [1], "digits": [1, 2], "rgb": [1], "tampered": [1]}
    assert layout.select(repo.path)["digits"] == (2, [1, 2])  # the latest unless pinned
    assert layout.select(repo.path, ["digits:1", "rgb"]) == {"digits": (1, [1, 2]), "rgb": (1, [1])}
    with pytest.raises(ModelNotFound, match=r"model 'nope' is not in .* \(found: corrupt, digits, rgb, tampered\)"):
        layout.select(repo.path, ["nope"])
    with pytest.raises(ModelNotFound, match=r"model 'digits' has no version 7 .* \(found: \[1, 2\]\)"):
        layout.select(repo.path, ["digits:7"])
    with pytest.raises(ValueError, match="NAME or NAME:VERSION"):
        layout.select(repo.path, ["digits:x"])


def test_folders_that_are_not_versions_are_ignored(scratch: Path) -> None:
    (scratch / "digits" / ".staging-3-abc").mkdir()  # an export in progress
    (scratch / "digits" / "4").mkdir()                # no model.json yet
    (scratch / "notes").mkdir()
    assert layout.discover(scratch) == {"digits": [1]}


def test_a_good_model_loads_and_passes_its_golden_check(repository: Repo) -> None:
    loaded = loader.load(repository.path, "digits", 1, threads=1)
    assert loaded.predictor.name == "digits"
    assert loaded.predictor.version == 1
    assert loaded.golden.samples > 0
    assert loaded.golden.max_abs_diff <= loaded.golden.atol
    assert loaded.verification["passed"] is True


def test_tampered_golden_is_refused(scratch: Path) -> None:
    tamper_golden(scratch / "digits" / "1", delta=0.01)
    with pytest.raises(ModelRejected, match=r"golden self-check failed: max \|logit - reference\| = 0.01 > "):
        loader.load(scratch, "digits", threads=1)


def test_changed_onnx_is_refused_before_loading(scratch: Path) -> None:
    tamper_onnx(scratch / "digits" / "1")
    with pytest.raises(ModelRejected, match=r"model\.onnx sha256 is [0-9a-f]{64}, model\.json says [0-9a-f]{64}"):
        loader.load(scratch, "digits", threads=1)


def test_pickled_golden_is_never_unpickled(scratch: Path) -> None:
    version = scratch / "digits" / "1"
    np.savez(version / "golden.npz", inputs=np.array([{"evil": 1}], dtype=object), logits=np.zeros((1, 10)))
    with pytest.raises(ModelRejected, match=r"cannot read golden\.npz: .*allow_pickle=False"):
        loader.load(scratch, "digits", threads=1)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("onnx_sha256"), "model.json: missing field 'onnx_sha256'"),
    (lambda d: d["labels"].pop(), "model.json: 9 labels for 10 classes"),
    (lambda d: d["input"].update(height=32), r"model.json: preprocess gives \(1, 28, 28\), input is \(1, 32, 28\)"),
    (lambda d: d.update(golden_atol=0), "golden_atol must be > 0"),
    (lambda d: d["input"].update(name="pixels"), "model.onnx has inputs \\['input'\\].*model.json says 'pixels'"),
])
def test_inconsistent_model_json_is_refused(scratch: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = scratch / "digits" / "1" / "model.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelRejected, match=message):
        loader.load(scratch, "digits", threads=1)


def test_missing_golden_is_refused(scratch: Path) -> None:
    (scratch / "digits" / "1" / "golden.npz").unlink()
    with pytest.raises(ModelRejected, match=r"cannot read golden\.npz"):
        loader.load(scratch, "digits", threads=1)


def test_copy_helper_keeps_the_checks_valid(repository: Repo, tmp_path: Path) -> None:
    add_version(tmp_path, repository.path / "rgb" / "1", "rgb", 5)
    assert loader.load(tmp_path, "rgb", threads=1).predictor.version == 5
    assert not list((tmp_path / "rgb").glob(".staging-*"))  # written aside, then renamed into place


def test_fallback_exporter_writes_a_loadable_version(repository: Repo, tmp_path: Path) -> None:
    """The helpers' minimal exporter (the shortest path: no folding, no explain graph) stays in the repository
    format."""
    minimal_export(repository.runs["digits"], tmp_path, "mini")
    loaded = loader.load(tmp_path, "mini", threads=1)
    assert loaded.golden.max_abs_diff <= loaded.golden.atol
    assert ModelManifest.load(tmp_path / "mini" / "1" / "model.json").name == "mini"
