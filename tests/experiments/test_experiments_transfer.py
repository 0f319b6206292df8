"""The transfer experiment, tiny: two target tasks (new classes; inverted images labelled odd/even), each with its
source run, and runs from scratch against fine_tune's recipes with the same epoch budget. Also the odd/even task
built from the real digits, and the lr_mult callback against fastai's own fine_tune(lr_mult=…)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.images import make_image_folder
from training.experiments import ExperimentError, Settings, rewrite_report, run_experiment, transfer


def test_transfer_fine_tunes_each_recipe_from_its_source_run_with_the_same_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    images = make_image_folder(tmp_path / "images", classes=4, per_class=8)  # 6 train / 2 valid per class
    out = tmp_path / "report"
    doc = run_experiment("transfer", Settings(out=out, data=str(images), seeds=2, epochs=4, bs=4, size=8),
                         log=lambda _m: None)
    runs = {(r["spec"]["group"], r["spec"]["variant"], r["spec"]["seed"]): r for r in doc["runs"]}
    variants = ["scratch", "fine_tune", "lr_mult 10", "lr_mult 1", "frozen 3"]
    assert sorted(runs) == sorted((t, v, s) for t in ("new-classes", "odd-even") for v in variants for s in (0, 1))
    home = tmp_path / "data" / "transfer"
    sources = {"new-classes": next(home.glob("*-source-2-run-*")) / "model.pth",
               "odd-even": next(home.glob("*-oddeven-source-run-*")) / "model.pth"}
    recipes = {"fine_tune": (1, 100.0), "lr_mult 10": (1, 10.0), "lr_mult 1": (1, 1.0), "frozen 3": (3, 100.0)}
    for (task, variant, _), run in runs.items():
        spec = run["spec"]
        phases = [h.get("phase") for h in run["history"]]
        if variant == "scratch":
            assert spec["pretrained"] is None
            assert phases == [None] * 4
        else:
            frozen, lr_mult = recipes[variant]
            assert spec["pretrained"] == str(sources[task])
            assert (spec["freeze_epochs"], spec["lr_mult"]) == (frozen, lr_mult)
            assert phases == ["frozen"] * frozen + ["unfrozen"] * (4 - frozen)  # the same budget: 4 epochs
        assert run["n_classes"] == 2
        # new-classes: classes 2 and 3, every training image (< 20); odd-even: half of the 32 images, 3 for validation.
        assert (run["n_train"], run["n_valid"]) == ((12, 4) if task == "new-classes" else (13, 3))

    target = next(home.glob("*-target-2-k20"))
    assert sorted(p.name for p in target.glob("valid/*")) == ["class_2", "class_3"]
    assert sorted(p.name for p in next(home.glob("*-source-2")).glob("train/*")) == ["class_0", "class_1"]
    assert sorted(p.name for p in next(home.glob("*-oddeven-target-16")).glob("*/*")) == ["even", "even", "odd", "odd"]
    assert len(list(next(home.glob("*-oddeven-source")).glob("*/*/*.png"))) == 16  # the other half

    report = (out / "report.md").read_text()
    assert "fine_tune(epochs=4 − F, base_lr=0.01, freeze_epochs=F, lr_mult=M)" in report
    assert "lr_mult 10 (1, 10); lr_mult 1 (1, 1); frozen 3 (3, 100)" in report
    assert all(f"- {finding}" in report for finding in doc["findings"])
    assert len(doc["comparisons"]) == 2 * (4 + 3)  # per task: each recipe vs scratch, the others vs the default
    for task in ("new-classes", "odd-even"):
        assert (out / f"curves-{task}.png").stat().st_size > 0
        summary = json.loads((out / "results.json").read_text())["summary"]["tasks"][task]
        assert set(summary["paired_wins"]) == set(recipes)
        assert 0.5 <= summary["majority_rate"] <= 1
    # The report is a function of results.json alone, the target folders gone.
    shutil.rmtree(home)
    (out / "report.md").rename(out / "before.md")
    assert rewrite_report(out)["comparisons"] == doc["comparisons"]
    assert (out / "report.md").read_text() == (out / "before.md").read_text()


def test_odd_even_task_of_the_digits_is_issue_29s_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    source, target = transfer.odd_even_folders("digits")
    train = sorted(target.glob("train/*/*.png"))
    valid = sorted(target.glob("valid/*/*.png"))
    assert (len(train), len(valid)) == (320, 80)
    assert {p.parent.name for p in train + valid} == {"even", "odd"}
    digits = {p.name: p for p in (tmp_path / "data" / "digits").glob("*/*/*.png")}
    assert len(digits) == 1797
    # Each target image is a digit scan inverted, under the parity of its digit; none of them is in the source.
    for path in train[::40] + valid[::20]:
        original = digits[path.name.split("-", 1)[1]]  # 00017-1234.png ← 1234.png
        assert path.parent.name == ("odd" if int(original.parent.name) % 2 else "even")
        assert np.array_equal(np.asarray(Image.open(path)), 255 - np.asarray(Image.open(original)))
    in_source = sorted(source.glob("*/*/*.png"))
    assert len(in_source) == 1797 - 400
    assert not {p.name for p in in_source} & {p.name.split("-", 1)[1] for p in train + valid}
    assert sorted(p.name for p in source.glob("train/*")) == [str(d) for d in range(10)]
    assert transfer.odd_even_folders("digits") == (source, target)  # written once, then reused


def test_transfer_needs_four_classes(tiny_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(ExperimentError, match="transfer needs at least 4 classes"):
        run_experiment("transfer", Settings(out=tmp_path / "r", data=str(tiny_images), seeds=1, epochs=4),
                       log=lambda _m: None)


def test_transfer_needs_more_epochs_than_the_most_frozen_recipe(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"transfer needs --epochs >= 4 \(up to 3 frozen epochs"):
        run_experiment("transfer", Settings(out=tmp_path / "r", epochs=3), log=lambda _m: None)
