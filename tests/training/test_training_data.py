from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.images import make_image_folder
from training import data


def test_digits_written_once_as_stratified_png_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_DATA_HOME", str(tmp_path))
    ds = data.scan("digits", "L", log=lambda m: None)
    assert ds.root == tmp_path / "digits"
    assert ds.labels == [str(d) for d in range(10)]
    assert len(ds.train) + len(ds.valid) == 1797
    assert len(ds.valid) == 360
    counts = np.bincount([y for _, y in ds.valid], minlength=10)
    assert counts.min() >= 34
    assert counts.max() <= 37
    with Image.open(ds.valid[0][0]) as img:
        assert img.size == (8, 8)
        assert img.mode == "L"
    # A second call reuses the files (same split, same modification times).
    mtime = ds.valid[0][0].stat().st_mtime_ns
    again = data.scan("digits", "L", log=lambda m: None)
    assert [p for p, _ in again.valid] == [p for p, _ in ds.valid]
    assert again.valid[0][0].stat().st_mtime_ns == mtime


def test_train_valid_layout(image_folder):
    ds = data.scan(image_folder, "L")
    assert ds.labels == ["class_0", "class_1", "class_2"]
    assert len(ds.train) == 27
    assert len(ds.valid) == 9
    assert all(p.parent.parent.name == "valid" for p, _ in ds.valid)


def test_single_level_layout_is_split_reproducibly(tmp_path):
    root = make_image_folder(tmp_path / "flat", per_class=10, split=False)
    a = data.scan(root, "L", valid_pct=0.3, seed=1)
    b = data.scan(root, "L", valid_pct=0.3, seed=1)
    c = data.scan(root, "L", valid_pct=0.3, seed=2)
    assert len(a.valid) == 9
    assert len(a.train) == 21
    assert a.valid == b.valid
    assert a.valid != c.valid
    assert {y for _, y in a.valid} == {0, 1, 2}


def test_unreadable_files_are_reported_and_skipped(image_folder):
    bad = image_folder / "train" / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = image_folder / "train" / "class_2" / "truncated.png"
    truncated.write_bytes((image_folder / "train" / "class_2" / "001.png").read_bytes()[:40])
    logged: list[str] = []
    ds = data.scan(image_folder, "L", log=logged.append)
    assert {p for p, _ in ds.skipped} == {bad, truncated}
    assert all(p not in {bad, truncated} for p, _ in ds.train)
    assert any(str(bad) in line and "cannot decode" in line for line in logged)


def test_errors_are_one_line(tmp_path, image_folder):
    with pytest.raises(data.DataError, match="data folder not found"):
        data.scan(tmp_path / "missing", "L")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no class folders"):
        data.scan(tmp_path / "empty", "L")
    for f in (image_folder / "train" / "class_2").iterdir():
        f.write_bytes(b"garbage")
    for f in (image_folder / "valid" / "class_2").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(data.DataError, match="class folder\\(s\\) with no readable image: class_2"):
        data.scan(image_folder, "L", log=lambda m: None)


def test_channel_stats_match_numpy(image_folder):
    ds = data.scan(image_folder, "L")
    paths = [p for p, _ in ds.train]
    mean, std = data.channel_stats(paths, "L", (16, 16))
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in paths])
    assert mean[0] == pytest.approx(pixels.mean(), abs=1e-6)
    assert std[0] == pytest.approx(pixels.std(), abs=1e-6)


def test_color_mode_guess(tmp_path, image_folder):
    assert data.guess_color_mode(image_folder) == "L"
    rgb = make_image_folder(tmp_path / "rgb", mode="RGB")
    assert data.guess_color_mode(rgb) == "RGB"


def test_dataloaders_apply_the_spec(image_folder):
    ds = data.scan(image_folder, "L")
    spec = data.make_spec(ds, (12, 12), "L")
    dls = data.dataloaders(ds, spec, bs=4)
    x, _y = dls.valid.one_batch()
    assert tuple(x.shape) == (4, 1, 12, 12)
    assert list(dls.vocab) == ds.labels
    # Normalised with the training statistics: roughly zero mean over the whole validation set.
    assert abs(float(x.mean())) < 1.0


def test_dataset_json_paths_are_relative(image_folder):
    ds = data.scan(image_folder, "L")
    d = ds.to_json()
    assert Path(d["root"]) == image_folder.resolve()
    assert d["valid"][0][0].startswith("valid/")
