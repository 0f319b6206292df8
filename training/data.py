"""Image folders → a checked list of samples → decoded uint8 tensors → fastai DataLoaders, driven by one
PreprocessSpec.

Accepted layouts:
- ``PATH/train/<label>/*`` and ``PATH/valid/<label>/*`` (``val/`` also accepted): the split is given;
- ``PATH/<label>/*``: one level of class folders, split by ``valid_pct`` with a seed (stratified, reproducible);
- ``digits``: scikit-learn's handwritten digits (1,797 real 8×8 scans, shipped inside scikit-learn), written once
  as PNG files in the first layout, so the bundled default takes exactly the same file-based path as user data.

Every image is decoded once while the dataset is scanned (the same decode the server uses,
``serving.contract.preprocess.load_image``); files that fail are reported with path and reason and left out, so a bad
file can never stop training halfway through an epoch. The readable files are then decoded once more at the spec's
size into one uint8 tensor per split (``Pixels``), from which the mean/std are computed and every batch is taken by
indexing; conversion to float, normalisation and augmentation are fastai batch transforms on whole batches.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.contract.preprocess import COLOR_MODES, PreprocessSpec, load_image, model_image
from serving.errors import InvalidInput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DIGITS_VERSION = 1
# Cap on the images read to estimate mean/std: enough for 3 decimals, bounded for large folders.
STATS_SAMPLE = 5000


class DataError(Exception):
    """The data folder cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    """A checked list of (path, label index) pairs for each split, and the labels."""

    root: Path
    labels: list[str]
    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        """The run's data.json: paths relative to root, so export and benchmarks can re-read the same files."""
        def rel(items: list[tuple[Path, int]]) -> list[list]:
            return [[str(p.relative_to(self.root)), y] for p, y in items]

        return {"root": str(self.root.resolve()), "labels": self.labels, "train": rel(self.train),
                "valid": rel(self.valid), "skipped": [[str(p), why] for p, why in self.skipped]}


def default_data_home() -> Path:
    return Path(os.environ.get("RESNET_DATA_HOME", "data"))


def write_digits(dest: Path, valid_pct: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's digits as ``dest/{train,valid}/<digit>/<index>.png`` (fixed stratified split), once."""
    marker = dest / ".complete"
    if marker.exists() and marker.read_text().strip() == str(DIGITS_VERSION):
        return dest
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 8×8 pixels with 17 grey levels (0–16) → 8-bit PNG.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(pixels))
    train_idx, valid_idx = train_test_split(index, test_size=valid_pct, random_state=seed, stratify=digits.target)
    tmp = dest.with_name(dest.name + ".tmp")
    for split, idx in (("train", train_idx), ("valid", valid_idx)):
        for i in idx:
            folder = tmp / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")
    (tmp / ".complete").write_text(f"{DIGITS_VERSION}\n")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _class_folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check(items: list[tuple[Path, int]], mode: str, workers: int) -> tuple[list[tuple[Path, int]], list]:
    """Decode each file once; return the readable ones and (path, reason) for the rest."""
    def ok(item: tuple[Path, int]) -> str | None:
        try:
            load_image(item[0], mode)
        except InvalidInput as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(ok, items))
    good = [it for it, why in zip(items, reasons, strict=True) if why is None]
    bad = [(it[0], why) for it, why in zip(items, reasons, strict=True) if why is not None]
    return good, bad


def scan(data: str | Path, color_mode: str = "RGB", valid_pct: float = 0.2, seed: int = 42,
         log: Callable[[str], None] = print) -> Dataset:
    """Find the images under ``data`` ('digits' or a folder), check that each decodes, and split them."""
    if str(data) == "digits":
        root = write_digits(default_data_home() / "digits")
    else:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
    split_dirs = {name: root / name for name in ("train", "valid", "val") if (root / name).is_dir()}
    if "train" in split_dirs and ("valid" in split_dirs or "val" in split_dirs):
        train_root, valid_root = split_dirs["train"], split_dirs.get("valid", split_dirs.get("val"))
        labels = sorted({p.name for p in _class_folders(train_root)} | {p.name for p in _class_folders(valid_root)})
        index = {lab: i for i, lab in enumerate(labels)}
        train = [(f, index[d.name]) for d in _class_folders(train_root) for f in _files(d)]
        valid = [(f, index[d.name]) for d in _class_folders(valid_root) for f in _files(d)]
        per_class = {lab: [] for lab in labels}
        for f, y in train + valid:
            per_class[labels[y]].append(f)
    else:
        if not 0 < valid_pct < 1:
            raise DataError(f"--valid-pct must be between 0 and 1, got {valid_pct}")
        labels = [p.name for p in _class_folders(root)]
        per_class = {lab: _files(root / lab) for lab in labels}
        rng = random.Random(seed)
        train, valid = [], []
        for y, lab in enumerate(labels):
            files = list(per_class[lab])
            rng.shuffle(files)
            n_valid = max(1, round(len(files) * valid_pct)) if len(files) > 1 else 0
            valid += [(f, y) for f in files[:n_valid]]
            train += [(f, y) for f in files[n_valid:]]
    if not labels:
        raise DataError(f"no class folders in {root} (expected {root}/<label>/*.png or {root}/train/<label>/…)")
    if len(labels) < 2:
        raise DataError(f"need at least 2 classes, found 1 ({labels[0]}) in {root}")

    workers = min(8, os.cpu_count() or 1)
    train, bad_train = _check(train, color_mode, workers)
    valid, bad_valid = _check(valid, color_mode, workers)
    skipped = bad_train + bad_valid
    for path, why in skipped:
        log(f"skipping unreadable image {path}: {why}")
    counts = {lab: 0 for lab in labels}
    for _, y in train + valid:
        counts[labels[y]] += 1
    empty = [lab for lab, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"class folder(s) with no readable image: {', '.join(empty)} (under {root})")
    if not train or not valid:
        raise DataError(f"need images in both splits, found {len(train)} training and {len(valid)} validation")
    return Dataset(root=root, labels=labels, train=train, valid=valid, skipped=skipped)


def channel_stats(paths: list[Path], color_mode: str, size: tuple[int, int], seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of pixel/255 after the spec's resize, over (a sample of) the training images."""
    if len(paths) > STATS_SAMPLE:
        paths = random.Random(seed).sample(paths, STATS_SAMPLE)
    channels = COLOR_MODES[color_mode]
    probe = PreprocessSpec(size=size, color_mode=color_mode, mean=(0.0,) * channels, std=(1.0,) * channels)
    total = np.zeros(probe.channels)
    total_sq = np.zeros(probe.channels)
    n = 0
    for p in paths:
        x = np.asarray(model_image(p, probe), dtype=np.float64) / 255.0
        x = x.reshape(-1, probe.channels)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        n += x.shape[0]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in np.maximum(std, 1e-3)]


def guess_color_mode(data: str | Path) -> str:
    """'L' when the first few images are all greyscale, else 'RGB'."""
    if str(data) == "digits":
        return "L"
    from PIL import Image

    root = Path(data)
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES][:20]
    modes = set()
    for f in files:
        try:
            with Image.open(f) as im:
                modes.add(im.mode)
        except OSError:
            continue
    return "L" if modes and modes <= {"L", "1", "I;16", "I;16B", "I;16L", "I", "LA"} else "RGB"


def make_spec(ds: Dataset, size: tuple[int, int], color_mode: str, mean: list | None = None,
              std: list | None = None) -> PreprocessSpec:
    if mean is None or std is None:
        mean, std = channel_stats([p for p, _ in ds.train], color_mode, size)
    return PreprocessSpec(size=size, color_mode=color_mode, mean=tuple(mean), std=tuple(std), labels=tuple(ds.labels))


# ---------------------------------------------------------------------------------------------------- in memory


def decode(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """One file → uint8 pixels at the spec's size (H×W or H×W×C): the serving side's own decode and resize
    (``serving.contract.preprocess.model_image``: a large JPEG decoded at the smallest scale that covers the size,
    then resized), so training and serving see the same pixels."""
    return np.asarray(model_image(path, spec))


def decode_all(paths: list[Path], spec: PreprocessSpec, workers: int | None = None):
    """Every file decoded once, as one uint8 tensor N×C×H×W (Pillow releases the GIL: threads decode in parallel)."""
    import torch

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pixels = list(pool.map(lambda p: decode(p, spec), paths))
    if not pixels:
        return torch.zeros((0, *spec.input_shape), dtype=torch.uint8)
    x = np.stack(pixels)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def pixel_stats(x) -> tuple[list, list]:
    """Per-channel mean and std of pixel/255 over a uint8 N×C×H×W tensor (what ``channel_stats`` computes)."""
    import torch

    v = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64) / 255.0
    mean, std = v.mean(1), v.std(1, unbiased=False).clamp(min=1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


@dataclass
class Pixels:
    """Decoded images of one split, kept in memory: uint8 N×C×H×W and their label indices."""

    x: Any
    y: Any

    @classmethod
    def of(cls, items: list[tuple[Path, int]], spec: PreprocessSpec) -> Pixels:
        import torch

        return cls(decode_all([p for p, _ in items], spec), torch.tensor([y for _, y in items], dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- fastai side


def augmentations(spec: PreprocessSpec, flip: bool = True) -> list:
    """fastai's ``aug_transforms`` (flip, rotation, zoom, lighting, warp) for the spec's size: batch transforms
    that run on the training batches only (``split_idx`` 0); the spec the server uses is unchanged."""
    from fastai.vision.augment import aug_transforms

    return aug_transforms(do_flip=flip, size=spec.size, pad_mode="zeros" if spec.color_mode == "L" else "reflection")


def dataloaders(ds: Dataset, spec: PreprocessSpec, bs: int = 64, seed: int = 42, device=None, num_workers: int = 0,
                aug: list | None = None, pixels: tuple[Pixels, Pixels] | None = None):
    """fastai DataLoaders over the decoded images, with the spec's normalisation (and ``aug``) as batch transforms.

    Every image is decoded once (or given as ``pixels``: train, valid); an epoch only indexes uint8 tensors and
    transforms whole batches. ``num_workers`` is accepted for compatibility: there is no per-item work to spread.
    """
    from fastai.data.core import DataLoaders
    from fastai.vision.all import IntToFloatTensor, Normalize

    train, valid = pixels or (Pixels.of(ds.train, spec), Pixels.of(ds.valid, spec))
    norm = [IntToFloatTensor(), Normalize.from_stats(list(spec.mean), list(spec.std))]
    dl_cls = _batch_dl()
    labels = list(spec.labels)
    # The training loader shuffles and drops the last partial batch, as fastai's DataBlock does.
    train_dl = dl_cls(_Split(train, labels, 0), bs=bs, shuffle=True, drop_last=True, device=device,
                      after_batch=[*norm, *(aug or [])], num_workers=0)
    valid_dl = dl_cls(_Split(valid, labels, 1), bs=bs, shuffle=False, drop_last=False, device=device,
                      after_batch=norm, num_workers=0)
    import random as _random

    train_dl.rng = _random.Random(seed)
    return DataLoaders(train_dl, valid_dl, device=device)


def plain_train_loader(dls):
    """The training images as the validation loader serves images: in order, un-augmented, the last partial batch
    kept (what BatchNorm's statistics are recomputed over)."""
    return dls.valid.new(dataset=dls.train.dataset, shuffle=False, drop_last=False)


class _Split:
    """A split as fastai's loaders see it: indexable (image, category) pairs, plus what Learner asks of a dataset."""

    n_inp = 1

    def __init__(self, pixels: Pixels, vocab: list[str], split_idx: int) -> None:
        from fastai.data.transforms import CategoryMap
        from fastai.losses import CrossEntropyLossFlat

        self.pixels, self.split_idx = pixels, split_idx
        self.vocab = CategoryMap(vocab, sort=False)
        self.c = len(vocab)
        self.loss_func = CrossEntropyLossFlat()  # what a Learner without loss_func uses (fastai's Categorize's)

    def __len__(self) -> int:
        return len(self.pixels.y)

    def __getitem__(self, i: int) -> tuple:
        from fastai.torch_core import TensorCategory, TensorImage

        return TensorImage(self.pixels.x[i]), TensorCategory(self.pixels.y[i])


@functools.cache
def _batch_dl() -> type:
    """fastai's TfmdDL whose batches are built by indexing the in-memory tensors with a whole batch of indices
    (instead of fetching, transforming and collating one item at a time)."""
    from fastai.data.core import TfmdDL
    from fastai.torch_core import TensorCategory, TensorImage

    def create_batches(self, samps):
        import torch

        idxs = list(samps)
        x, y = self.dataset.pixels.x, self.dataset.pixels.y
        for start in range(0, len(idxs), self.bs):
            chunk = idxs[start:start + self.bs]
            if self.drop_last and len(chunk) < self.bs:
                break
            index = torch.as_tensor(chunk, dtype=torch.long)
            yield TensorImage(x[index]), TensorCategory(y[index])

    return type("InMemoryDL", (TfmdDL,), {"create_batches": create_batches, "__module__": __name__})


def save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
