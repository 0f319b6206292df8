"""Each experiment on a tiny setting: the report, the plots and results.json exist, and the report's numbers are
the measured ones (recomputed here from every run's raw measurements)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import registry
from training.experiments import one_cycle
from training.schedule import step_schedule

NAMES = ("batchnorm", "skip", "one-cycle", "pooling")


def cell(values: list, digits: int = 4) -> str:
    """How a table cell must print these runs: mean ± sample std, the mean alone for one run, '—' for none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return "—"
    mean = statistics.fmean(xs)
    return f"{mean:.{digits}f}" if len(xs) == 1 else f"{mean:.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def rows(report: str) -> list[list[str]]:
    """Every markdown table body row of the report, as cells."""
    out = []
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            out.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return out


def row(report: str, *lead: str) -> list[str]:
    found = [r for r in rows(report) if tuple(r[: len(lead)]) == lead]
    assert len(found) == 1, f"expected one row starting {lead}, found {found}"
    return found[0]


def runs(doc: dict, variant: str, group: str = "main") -> list[dict]:
    selected = [r for r in doc["runs"] if r["spec"]["variant"] == variant and r["spec"]["group"] == group]
    assert selected, f"no {group} runs of {variant}"
    return selected


def values(doc: dict, variant: str, key: str, group: str = "main") -> list:
    return [r[key] for r in runs(doc, variant, group)]


@pytest.mark.parametrize("name", NAMES)
def test_report_plots_and_results_exist(name, tiny_run):
    out, doc = tiny_run(name)
    report = (out / "report.md").read_text()
    assert report.startswith(f"# {doc['title']}\n")
    assert f"**Command:** `{doc['command']}`" in report
    assert "logical CPUs" in report
    assert doc["plots"], "no plots listed"
    for plot in doc["plots"]:
        path = out / plot
        assert f"]({plot})" in report, f"{plot} not linked from the report"
        assert path.stat().st_size <= 100_000, f"{plot} is {path.stat().st_size} bytes"
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size[0] >= 300
            assert np.asarray(img.convert("L")).std() > 5, f"{plot} is blank"


@pytest.mark.parametrize("name", NAMES)
def test_tables_and_verdicts_are_in_the_report(name, tiny_run):
    out, doc = tiny_run(name)
    report = (out / "report.md").read_text()
    for table in doc["tables"]:
        assert f"**{table['caption']}**" in report
        assert "| " + " | ".join(table["headers"]) + " |" in report
        for r in table["rows"]:
            assert "| " + " | ".join(r) + " |" in report
    assert doc["comparisons"], "no comparisons"
    for c in doc["comparisons"]:
        assert c["text"] in report
        assert c["verdict"] in ("shows", "does not show", "cannot tell")
    for finding in doc["findings"]:
        assert f"- {finding}" in report


@pytest.mark.parametrize("name", NAMES)
def test_each_run_is_a_full_measured_run(name, tiny_run):
    _, doc = tiny_run(name)
    for r in doc["runs"]:
        spec = r["spec"]
        if r["diverged"]:
            assert r["valid_loss"] is None or r["valid_loss"] > 0
            continue
        assert len(r["history"]) == spec["epochs"]
        assert len(r["batch_losses"]) == len(r["batch_lrs"]) == spec["epochs"] * r["iters_per_epoch"]
        # fit's final evaluation and fastai's last recorded epoch see the same weights and the same images.
        assert r["valid_accuracy"] == pytest.approx(r["history"][-1]["accuracy"], abs=1e-6)
        assert r["valid_loss"] == pytest.approx(r["history"][-1]["valid_loss"], rel=1e-4)
        assert r["n_valid"] == 6
        assert r["n_train"] == 18


def test_batchnorm_numbers(tiny_run):
    out, doc = tiny_run("batchnorm")
    report = (out / "report.md").read_text()
    for variant in ("BN", "no BN"):
        r = row(report, variant)
        assert r[1] == cell(values(doc, variant, "valid_accuracy"))
        assert r[2] == cell(values(doc, variant, "valid_loss"))
        reached = sum(any(h["accuracy"] >= 0.95 for h in x["history"]) for x in runs(doc, variant))
        assert r[5] == f"{reached}/1"
    for lr in ("0.01", "1"):
        r = row(report, lr)
        for i, variant in enumerate(("BN", "no BN"), 1):
            sweep = [x for x in runs(doc, variant, "sweep") if f"{x['spec']['lr']:g}" == lr]
            assert r[i].startswith(cell([x["valid_accuracy"] for x in sweep]) + " (")
    # The BN variant really has no BatchNorm: its runs were built with norm=False.
    assert {tuple(x["spec"]["model_kwargs"].items()) for x in runs(doc, "no BN")} == {(("norm", False),)}


def test_skip_numbers(tiny_run):
    out, doc = tiny_run("skip")
    report = (out / "report.md").read_text()
    for family, arch in (("plain", "plain20"), ("residual", "resnet20")):
        r = row(report, "20", f"{family} ({arch})")
        assert r[2] == cell(values(doc, arch, "train_loss"))
        assert r[3] == cell(values(doc, arch, "train_accuracy"))
        assert r[4] == cell(values(doc, arch, "valid_accuracy"))
        assert r[5] == cell(values(doc, arch, "valid_loss"))
        assert all(0 <= a <= 1 for a in values(doc, arch, "train_accuracy"))
    # One depth: the degradation question cannot be asked, and the report says so.
    assert any("only one depth" in f for f in doc["findings"])


def test_one_cycle_numbers_and_schedules(tiny_run):
    out, doc = tiny_run("one-cycle")
    report = (out / "report.md").read_text()
    for variant, (schedule, _) in one_cycle.VARIANTS.items():
        r = row(report, variant, schedule)
        assert r[3] == cell(values(doc, variant, "valid_accuracy"))
        assert " ± " in r[3]
        assert r[4] == cell(values(doc, variant, "valid_loss"))
        assert r[5] == cell(values(doc, variant, "train_loss"))
    # The learning rates each batch really trained with (fit's schedule option, end to end).
    lr = runs(doc, "constant")[0]["spec"]["lr"]
    constant = runs(doc, "constant")[0]["batch_lrs"]
    assert constant == pytest.approx([lr] * len(constant), rel=1e-4)
    step = runs(doc, "step")[0]["batch_lrs"]
    # fastai's ParamScheduler sets batch i of n at position i / n.
    assert step == pytest.approx([step_schedule(lr)(i / len(step)) for i in range(len(step))], rel=1e-4)
    assert step[0] == pytest.approx(lr, rel=1e-4)
    assert step[-1] == pytest.approx(lr / 10, rel=1e-4)  # 3 batches: the last starts at 2/3, before the 2nd drop
    one_cycle_lrs = runs(doc, "one-cycle")[0]["batch_lrs"]
    from fastai.callback.schedule import combined_cos

    # fit_one_cycle's defaults: warm-up over 25 % from lr / 25, cosine annealing to lr / 1e5.
    expected = combined_cos(0.25, lr / 25, lr, lr / 1e5)
    assert one_cycle_lrs == pytest.approx([expected(i / len(one_cycle_lrs)) for i in range(len(one_cycle_lrs))],
                                          rel=1e-4)
    assert one_cycle_lrs[0] == pytest.approx(lr / 25, rel=1e-4)
    # Momentum really separated from the lr schedule: same lr curve, β1 cycled or held, as each variant says.
    cycled = combined_cos(0.25, 0.95, 0.85, 0.95)
    n = len(one_cycle_lrs)
    for variant, (schedule, momentum) in one_cycle.VARIANTS.items():
        moms = runs(doc, variant)[0]["batch_moms"]
        if momentum == "cycled" or (momentum is None and schedule == "one-cycle"):
            assert moms == pytest.approx([cycled(i / n) for i in range(n)], rel=1e-4), variant
        else:
            assert moms == pytest.approx([0.9] * n), variant
    assert runs(doc, "one-cycle lr, mom 0.9")[0]["batch_lrs"] == one_cycle_lrs
    # Two seeds: every comparison has a spread to compare with.
    assert {c["verdict"] for c in doc["comparisons"]} <= {"shows", "does not show", "cannot tell"}


def test_one_cycle_time_to_accuracy(tiny_run):
    """Evaluations every few iterations: the time table's cells are the first evaluation at the target."""
    out, doc = tiny_run("one-cycle")
    report = (out / "report.md").read_text()
    target = doc["settings"]["target"]
    for variant in one_cycle.VARIANTS:
        rs = runs(doc, variant)
        for r in rs:
            # Fewer batches than the 4 evaluations asked per epoch: one after every batch.
            assert [e["iteration"] for e in r["evals"]] == list(range(1, r["iters_per_epoch"] + 1))
            assert r["evals"][-1]["accuracy"] == pytest.approx(r["valid_accuracy"], abs=1e-6)
            assert all(a["seconds"] <= b["seconds"] for a, b in zip(r["evals"], r["evals"][1:], strict=False))
        hits = [next((e for e in r["evals"] if e["accuracy"] >= target), None) for r in rs]
        time_row = [x for x in rows(report) if x[0] == variant][1]
        assert time_row[2] == cell([h and h["iteration"] for h in hits], 1)
        assert time_row[3] == cell([h and h["seconds"] for h in hits], 1)
        # "for good": the first evaluation from which none falls below the target again.
        stays = [next((e["iteration"] for i, e in enumerate(r["evals"])
                       if all(x["accuracy"] >= target for x in r["evals"][i:])), None) for r in rs]
        assert time_row[4] == cell(stays, 1)
    assert any(f.startswith("Time to 95%, one-cycle vs step: ") for f in doc["findings"])
    assert any(f.startswith("Momentum, with the one-cycle lr (one-cycle vs one-cycle lr, mom 0.9): ")
               for f in doc["findings"])
    (section,) = doc["sections"]
    assert section["heading"] == "In plain words"
    assert section["paragraphs"][1].startswith("Against the step schedule one-cycle ")


def test_pooling_numbers(tiny_run):
    out, doc = tiny_run("pooling")
    report = (out / "report.md").read_text()
    # 8 px input, CIFAR stem: the last feature map is 2×2, so "flatten" feeds 64·2·2 features to the classifier.
    expected_fc = {"global avg": 64 * 3 + 3, "global max": 64 * 3 + 3, "flatten 2×2": 64 * 4 * 3 + 3}
    for head, n_fc in expected_fc.items():
        r = row(report, head)
        kwargs = runs(doc, head)[0]["spec"]["model_kwargs"]
        fc = registry.create("resnet20", num_classes=3, in_chans=1, **kwargs).fc
        assert sum(p.numel() for p in fc.parameters()) == n_fc
        assert r[1] == f"{n_fc:,}"
        assert r[2] == cell(values(doc, head, "valid_accuracy"))
        assert r[3] == cell(values(doc, head, "valid_loss"))
        assert r[4] == cell(values(doc, head, "shifted_accuracy"))
        drops = [a - s for a, s in zip(values(doc, head, "valid_accuracy"), values(doc, head, "shifted_accuracy"),
                                       strict=True)]
        assert r[5] == cell(drops)
    # One seed: no verdict can be drawn, and the report says why instead of guessing.
    assert {c["verdict"] for c in doc["comparisons"]} == {"cannot tell"}
    assert "one seed gives no spread" in report


def test_report_folder_holds_only_the_report(tiny_run):
    out, doc = tiny_run("skip")
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(["report.md", "results.json", *doc["plots"]])


DOCS = Path(__file__).resolve().parents[2] / "docs" / "experiments"


@pytest.mark.parametrize("name", NAMES)
def test_committed_example_reports_hold_their_measured_numbers(name):
    """docs/experiments/NAME (made by the default command): every table row is in report.md, and each variant's
    validation accuracy cell is the mean ± std of its stored runs."""
    folder = DOCS / name
    if not (folder / "results.json").is_file():
        pytest.skip(f"no committed example report in {folder}")
    doc = json.loads((folder / "results.json").read_text())
    report = (folder / "report.md").read_text()
    assert doc["command"] == f"python -m training experiment {name} --out docs/experiments/{name}"
    for plot in doc["plots"]:
        assert (folder / plot).stat().st_size <= 100_000
    main = doc["tables"][0]
    column = main["headers"].index("valid accuracy")
    for r in main["rows"]:
        assert "| " + " | ".join(r) + " |" in report
        variant = r[1].split("(")[1].rstrip(")") if name == "skip" else r[0]
        assert r[column] == cell(values(doc, variant, "valid_accuracy"))
