"""The transfer experiment, tiny: a source run on the generated images, their rotated few-image copy, and runs
from scratch against fine_tune with the same epoch budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.experiments import Settings, run_experiment


def test_transfer_fine_tunes_from_the_source_run_with_the_same_budget(tiny_images: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    out = tmp_path / "report"
    doc = run_experiment("transfer", Settings(out=out, data=str(tiny_images), seeds=2, epochs=2, bs=8, size=8),
                         log=lambda _m: None)
    runs = {(r["spec"]["variant"], r["spec"]["seed"]): r for r in doc["runs"]}
    assert sorted(runs) == [("fine_tune", 0), ("fine_tune", 1), ("scratch", 0), ("scratch", 1)]
    source = next((tmp_path / "data" / "transfer").glob("*-source-*")) / "model.pth"
    for seed in (0, 1):
        tuned, scratch = runs["fine_tune", seed], runs["scratch", seed]
        assert tuned["spec"]["pretrained"] == str(source)
        assert scratch["spec"]["pretrained"] is None
        # The same budget: fine_tune's frozen epoch is one of the two.
        assert [h.get("phase") for h in tuned["history"]] == ["frozen", "unfrozen"]
        assert len(scratch["history"]) == 2
        assert tuned["n_train"] == scratch["n_train"] == 18  # every image of the tiny set, rotated
    rotated = next((tmp_path / "data" / "transfer").glob("*-rot90-k20"))
    assert len(list(rotated.glob("valid/*/*.png"))) == 6
    report = (out / "report.md").read_text()
    assert "fine_tune(epochs=1, base_lr=0.003, freeze_epochs=1)" in report
    assert all(f"- {finding}" in report for finding in doc["findings"])
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["summary"]["paired_wins"] in (0, 1, 2)
