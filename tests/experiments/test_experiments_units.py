"""The pieces under the experiments, without training: statistics and verdicts, the step schedule, the image
shift, and the ResNet head options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models import resnet
from training.experiments.runner import shift_images, trains_threshold
from training.experiments.stats import compare, fmt, mean_std
from training.schedule import step_schedule


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([]) == (None, None)
    assert mean_std([None, float("nan"), 2.0, 4.0]) == pytest.approx((3.0, math.sqrt(2.0)))


def test_fmt():
    assert fmt(0.98612, 0.00421) == "0.9861 ± 0.0042"
    assert fmt(0.98612, None) == "0.9861"
    assert fmt(None, None) == "—"
    assert fmt(2.5, 0.25, digits=1) == "2.5 ± 0.2"


def test_compare_shows_a_difference_beyond_the_spread():
    c = compare("accuracy", "A", [4.0, 5.0, 6.0], "B", [1.0, 2.0, 3.0])
    # Welch: SE = sqrt(1/3 + 1/3), df = 4, t(0.975, 4) = 2.7764.
    assert c.diff == pytest.approx(3.0)
    assert c.half_width == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-5)
    assert c.verdict == "shows"
    assert c.text == ("accuracy: the difference shows — A 5.0000 vs B 2.0000, difference +3.0000 ± 2.2670 "
                      "(95 % CI, 3 vs 3 seeds).")


def test_compare_says_when_no_difference_shows():
    c = compare("loss", "A", [1.0, 2.0, 3.0], "B", [1.5, 2.5, 3.5])
    assert c.verdict == "does not show"
    assert c.text.startswith("loss: no difference shows on this data — A 2.0000 vs B 2.5000, difference -0.5000 ± ")
    assert c.text.endswith("; the interval includes 0.")


def test_compare_with_one_seed_cannot_tell():
    c = compare("accuracy", "A", [0.9], "B", [0.5])
    assert c.verdict == "cannot tell"
    assert c.half_width is None
    assert "one seed gives no spread to compare with (rerun with --seeds 3 or more)" in c.text


def test_compare_with_missing_values_cannot_tell():
    c = compare("epochs to 95%", "A", [2, 3, None], "B", [4, 4, 4])
    assert c.verdict == "cannot tell"
    assert "no value for 1 of 3 run(s) of A and 0 of 3 of B" in c.text


def test_compare_identical_seeds():
    assert compare("m", "A", [1.0, 1.0], "B", [1.0, 1.0]).verdict == "does not show"
    exact = compare("m", "A", [2.0, 2.0], "B", [1.0, 1.0])
    assert exact.verdict == "shows"
    assert exact.half_width == 0.0


def test_step_schedule():
    lr_at = step_schedule(0.1)
    assert [lr_at(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert step_schedule(1.0, milestones=(0.3,), gamma=0.5)(0.3) == 0.5


def test_trains_threshold_is_halfway_from_chance():
    assert trains_threshold(10) == pytest.approx(0.55)
    assert trains_threshold(2) == pytest.approx(0.75)


def test_shift_images_moves_content_and_repeats_the_edge():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = shift_images(x, 1, 0)
    assert torch.equal(down[0, 0, 1:], x[0, 0, :3])
    assert torch.equal(down[0, 0, 0], x[0, 0, 0])          # the top row repeated into the gap
    left = shift_images(x, 0, -2)
    assert torch.equal(left[0, 0, :, :2], x[0, 0, :, 2:])
    assert torch.equal(left[0, 0, :, 3], x[0, 0, :, 3])
    assert torch.equal(shift_images(x, 0, 0), x)


def test_head_default_is_unchanged():
    model = resnet.build("resnet20", num_classes=10, in_chans=1)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert model.avgpool.output_size == (1, 1)
    assert model.fc.in_features == 64
    assert model.config["pool"] == "avg"
    assert model.config["pool_size"] == 1


@pytest.mark.parametrize(("pool", "pool_size", "module", "features"), [
    ("max", 1, nn.AdaptiveMaxPool2d, 64),
    ("avg", 4, nn.AdaptiveAvgPool2d, 64 * 16),
    ("max", 2, nn.AdaptiveMaxPool2d, 64 * 4),
])
def test_head_variants(pool, pool_size, module, features):
    model = resnet.build("resnet20", num_classes=10, in_chans=1, pool=pool, pool_size=pool_size).eval()
    assert isinstance(model.avgpool, module)
    assert model.fc.in_features == features
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        features_map = model.forward_features(x)
        assert features_map.shape == (2, 64, 4, 4)
        logits = model(x)
    assert logits.shape == (2, 10)
    if pool_size == 4:
        # The pooling to the map's own size is an identity: the head is "flatten → fc".
        expected = model.fc(torch.flatten(features_map, 1))
        assert torch.allclose(logits, expected, atol=1e-6)
    # config rebuilds the same network
    twin = resnet.ResNet(**model.config)
    twin.load_state_dict(model.state_dict())


def test_head_refuses_bad_options():
    with pytest.raises(ValueError, match=r"pool must be one of \('avg', 'max'\), got 'median'"):
        resnet.build("resnet20", num_classes=10, pool="median")
    with pytest.raises(ValueError, match="pool_size must be >= 1, got 0"):
        resnet.build("resnet20", num_classes=10, pool_size=0)
