"""Row ``fastai_epoch`` (family ``training``): fastai's epochs against a bare PyTorch loop doing the same work.

Both train the same network (resnet20 with the trainer's default head for it, digits at 16 px, batch 32, Adam at a
constant lr 1e-2, label-smoothed cross-entropy, 1 thread per ``--threads``) for 5 epochs of the same number of
steps (1,437 training images → 44 full batches per epoch), and evaluate the 360 validation images after every
epoch, as fastai's epoch does:

- fastai: ``training.fit`` (the project's trainer: fastai ``Learner``, in-memory uint8 batches, batch transforms,
  callbacks, metrics); its ``train_seconds`` is the fit call alone;
- bare: a ``for`` loop over pre-normalised float tensors in memory (shuffled indices, ``zero_grad``/``backward``/
  ``step``), then a ``no_grad`` pass over the validation tensors.

The two alternate (bare, fastai, bare, fastai) so that a load change on the shared machine hits both alike; the
ratio is the median fastai time over the median bare time (lower is better; the target is at most 1.5×).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.core import Context, Row, Stat
from benchmarks.targets import FASTAI_EPOCH

EPOCHS, LR, BS, ARCH, SEED = 5, 1e-2, 32, "resnet20", 0
LABEL_SMOOTHING = 0.1


def _tensors() -> dict[str, Any]:
    """The digits split as the trainer decodes it, normalised once: x/y for train and valid."""
    from training import data

    ds = data.scan("digits", "L", log=lambda _: None)
    probe = data.make_spec(ds, (16, 16), "L", mean=[0.0], std=[1.0])
    train, valid = data.Pixels.of(ds.train, probe), data.Pixels.of(ds.valid, probe)
    mean, std = data.pixel_stats(train.x)

    def norm(x):
        return (x.float() / 255.0 - mean[0]) / std[0]

    return {"train": (norm(train.x), train.y), "valid": (norm(valid.x), valid.y)}


def bare_loop(tensors: dict[str, Any], head: str) -> dict[str, float]:
    """Seconds for EPOCHS epochs of plain PyTorch over ``tensors`` (and the steps taken)."""
    import torch

    from models import registry

    torch.manual_seed(SEED)
    model = registry.create(ARCH, 10, 1, head=head)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    (x, y), (vx, vy) = tensors["train"], tensors["valid"]
    steps = 0
    start = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(y))
        for i in range(len(y) // BS):  # full batches only, as fastai's training loader
            idx = order[i * BS:(i + 1) * BS]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(vx[i:i + BS]).argmax(1) == vy[i:i + BS]).sum()) for i in range(0, len(vy), BS))
    return {"seconds": time.perf_counter() - start, "steps": steps, "accuracy": correct / len(vy)}


def fastai_fit(ctx: Context, run: int) -> dict[str, float]:
    from training.fit import fit
    from training.settings import FitConfig, default_head

    cfg = FitConfig(data="digits", arch=ARCH, epochs=EPOCHS, lr=LR, bs=BS, seed=SEED, plots=False,
                    out=ctx.work / "fastai_epoch" / str(run), schedule="constant")
    m = fit(cfg, log=lambda msg: None)
    return {"seconds": m["train_seconds"], "steps": EPOCHS * (m["n_train"] // BS), "accuracy": m["valid_accuracy"],
            "head": default_head(cfg)}


def rows(ctx: Context) -> list[Row]:
    import torch

    from training.settings import FitConfig, default_head

    torch.set_num_threads(ctx.threads)
    head = default_head(FitConfig(data="digits", arch=ARCH, epochs=EPOCHS, out=ctx.work))
    tensors = _tensors()
    bare, fast = [], []
    for run in range(2):
        ctx.log(f"fastai_epoch: bare loop {run + 1}/2")
        bare.append(bare_loop(tensors, head))
        ctx.log(f"fastai_epoch: fastai fit {run + 1}/2")
        fast.append(fastai_fit(ctx, run))
    b, f = Stat.of([r["seconds"] for r in bare], "s"), Stat.of([r["seconds"] for r in fast], "s")
    ratio = f.median / b.median  # time ratio: lower is better
    met = ratio <= FASTAI_EPOCH
    steps = {"bare": bare[0]["steps"], "fastai": fast[0]["steps"]}
    return [Row("training", f"{EPOCHS} epochs of {ARCH} ({head} head) on digits, batch {BS}, {steps['bare']} steps: "
                f"fastai vs a bare PyTorch loop ({ctx.threads} threads)",
                "bare PyTorch loop", b, "fastai (training.fit)", f, ratio,
                ratio_label="time ratio (fastai / bare; <= target: met)", target="fastai_epoch", met=met,
                verdict=f"{ratio:.2f}x {'<=' if met else '>'} {FASTAI_EPOCH:g}x",
                details={"bare": bare, "fastai": fast, "steps": steps})]
