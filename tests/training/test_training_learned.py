"""The rule that says whether a model learned anything (training.learned), on numbers worked out by hand."""

from __future__ import annotations

import pytest

from training.learned import MARGIN_POINTS, judge


def test_a_small_validation_set_needs_two_standard_errors() -> None:
    # 80 images, 42 of the majority class: p = 0.525, SE = sqrt(0.525 * 0.475 / 80) = 0.05583, 2 SE = 11.17 points
    verdict = judge(0.525, [42, 38])
    assert (verdict.majority_rate, verdict.majority_class, verdict.samples) == (0.525, 0, 80)
    assert verdict.standard_error == pytest.approx(0.055832, abs=1e-6)
    assert verdict.threshold == pytest.approx(0.525 + 2 * 0.055832, abs=1e-6)
    assert not verdict.learned
    assert not judge(0.63, [42, 38]).learned
    assert judge(0.64, [42, 38]).learned


def test_a_large_validation_set_needs_the_margin() -> None:
    # 10,000 images over 10 classes: 2 SE = 0.6 points, so the 5-point margin is the bar
    counts = [1000] * 10
    assert judge(0.1, counts).threshold == pytest.approx(0.1 + MARGIN_POINTS / 100)
    assert not judge(0.149, counts).learned
    assert judge(0.15, counts).learned


def test_a_validation_set_of_one_class_cannot_show_learning() -> None:
    verdict = judge(1.0, [0, 25, 0])
    assert (verdict.majority_rate, verdict.majority_class) == (1.0, 1)
    assert not verdict.learned
    assert "holds one class only" in verdict.why_not()


def test_the_record_says_everything_the_verdict_used() -> None:
    record = judge(0.9, [30, 10]).to_dict()
    assert record["learned"] is True
    assert record["majority_rate"] == 0.75
    assert set(record) == {"learned", "accuracy", "majority_rate", "majority_class", "samples", "standard_error",
                           "threshold", "margin_points"}
