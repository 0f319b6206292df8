"""The transfer experiment, tiny: a source run on half of the classes, the other half as the target task, and runs
from scratch against fine_tune with the same epoch budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.images import make_image_folder
from training.experiments import ExperimentError, Settings, run_experiment


def test_transfer_fine_tunes_from_the_source_run_with_the_same_budget(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    images = make_image_folder(tmp_path / "images", classes=4, per_class=8)  # 6 train / 2 valid per class
    out = tmp_path / "report"
    doc = run_experiment("transfer", Settings(out=out, data=str(images), seeds=2, epochs=2, bs=4, size=8),
                         log=lambda _m: None)
    runs = {(r["spec"]["variant"], r["spec"]["seed"]): r for r in doc["runs"]}
    assert sorted(runs) == [("fine_tune", 0), ("fine_tune", 1), ("scratch", 0), ("scratch", 1)]
    source = next((tmp_path / "data" / "transfer").glob("*-run-*")) / "model.pth"
    for seed in (0, 1):
        tuned, scratch = runs["fine_tune", seed], runs["scratch", seed]
        assert tuned["spec"]["pretrained"] == str(source)
        assert scratch["spec"]["pretrained"] is None
        # The same budget: fine_tune's frozen epoch is one of the two.
        assert [h.get("phase") for h in tuned["history"]] == ["frozen", "unfrozen"]
        assert len(scratch["history"]) == 2
        assert tuned["n_train"] == scratch["n_train"] == 12  # classes 2 and 3: every training image (< 20)
        assert tuned["n_classes"] == 2
    target = next((tmp_path / "data" / "transfer").glob("*-target-2-k20"))
    assert sorted(p.name for p in target.glob("valid/*")) == ["class_2", "class_3"]
    source_folder = next((tmp_path / "data" / "transfer").glob("*-source-2"))
    assert sorted(p.name for p in source_folder.glob("train/*")) == ["class_0", "class_1"]
    report = (out / "report.md").read_text()
    assert "fine_tune(epochs=1, base_lr=0.01, freeze_epochs=1)" in report
    assert all(f"- {finding}" in report for finding in doc["findings"])
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["summary"]["paired_wins"] in (0, 1, 2)


def test_transfer_needs_four_classes(tiny_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(ExperimentError, match="transfer needs at least 4 classes"):
        run_experiment("transfer", Settings(out=tmp_path / "r", data=str(tiny_images), seeds=1, epochs=2),
                       log=lambda _m: None)
