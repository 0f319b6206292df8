"""Settings, the runs an experiment asks for, and how each one is trained and measured.

Every run is a real ``training.fit.fit`` run (the same code path as ``python -m training fit``), with a fixed
learning rate and a seed; a ``Probe`` callback records what the run directory does not keep: the raw loss, learning
rate and momentum of every training batch; on request the per-layer trace, the loss landscape along the gradient
(``probes``) and the validation accuracy several times per epoch against the training time; and, after training,
measurements on the training set (in eval mode) and on shifted validation images. Runs are interleaved across
variants seed by seed, so that a change in machine load during an experiment affects every variant alike.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models import resnet
from training.experiments.probes import FASTAI_LR_MULT

CIFAR_DEPTHS = (20, 32, 56)
DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


class ExperimentError(Exception):
    """Bad settings or a run that could not start; the message is one line for the terminal."""


@dataclass
class Settings:
    """What the command line sets; None means "the experiment's default" (each experiment's DEFAULTS, filled in
    by ``with_defaults`` before anything runs, so results.json records the values used)."""

    out: Path
    data: str = "digits"
    seeds: int | None = None
    epochs: int | None = None
    lr: float | None = None
    bs: int = 64
    size: int | None = None
    arch: str = "resnet20"
    target: float | None = None        # validation accuracy for "time to target"
    depths: tuple[int, ...] = CIFAR_DEPTHS
    lrs: tuple[float, ...] = DEFAULT_LRS
    sweep_epochs: int = 2
    # One thread: these networks are too small to gain from a second one, and on a shared 2-core machine a second
    # thread made each step wait for a descheduled partner (a resnet20 epoch on digits took 25 s instead of 2.5 s).
    threads: int = 1
    keep_runs: bool = False
    verbose: bool = False
    command: str = ""                  # the command line, quoted in the report

    def with_defaults(self, defaults: dict[str, Any]) -> Settings:
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def validate(self) -> None:
        if self.seeds is not None and self.seeds < 1:
            raise ExperimentError(f"--seeds must be >= 1, got {self.seeds}")
        for name in ("epochs", "sweep_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ExperimentError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.threads < 1:
            raise ExperimentError(f"--threads must be >= 1, got {self.threads}")
        if self.lr is not None and not self.lr > 0:
            raise ExperimentError(f"--lr must be > 0, got {self.lr}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ExperimentError(f"--lrs must be a non-empty list of positive numbers, got {list(self.lrs)}")
        if self.target is not None and not 0 < self.target <= 1:
            raise ExperimentError(f"--target must be in (0, 1], got {self.target}")
        bad = [d for d in self.depths if d not in CIFAR_DEPTHS]
        if not self.depths or bad:
            raise ExperimentError(f"--depths must be taken from {', '.join(map(str, CIFAR_DEPTHS))}, got "
                                  f"{', '.join(map(str, self.depths)) or 'nothing'}")
        if self.arch not in resnet.ARCHS:
            raise ExperimentError(f"--arch must be one of the project's ResNets ({', '.join(resnet.ARCHS)}), "
                                  f"got {self.arch!r}")
        if self.out.exists() and not self.out.is_dir():
            raise ExperimentError(f"--out {self.out} exists and is not a folder")


@dataclass
class RunSpec:
    """One training run: a variant of the experiment, at one learning rate, with one seed."""

    variant: str
    arch: str
    seed: int
    lr: float
    epochs: int
    schedule: str = "one-cycle"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    group: str = "main"                # "main", or "sweep" for the learning-rate sweep
    measure_train: bool = False        # loss/accuracy on the whole training set after training (eval mode)
    shift: int = 0                     # > 0: accuracy on validation images shifted by this many pixels
    momentum: float | str | None = None  # Adam's β1: None the schedule's own, a number held, "cycled" one-cycle's
    trace: int = 0                     # > 0: activation statistics and gradient norms over this many first iterations
    landscape_every: int = 0           # > 0: the loss along the gradient direction every this many iterations
    evals_per_epoch: int = 0           # > 0: validation accuracy this many times per epoch, with the training time
    data: str | None = None            # this run's data (default: the settings' data)
    pretrained: str | None = None      # a model.pth to fine_tune from (transfer)
    freeze_epochs: int = 1             # with pretrained: fine_tune's epochs with the body frozen
    lr_mult: float = FASTAI_LR_MULT    # with pretrained: fine_tune's body lr = head lr / lr_mult
    bs: int | None = None              # this run's batch size (default: the settings' --bs)

    @property
    def run_id(self) -> str:
        return f"{self.group}-{self.variant}-lr{self.lr:g}-seed{self.seed}".replace(" ", "_")


@dataclass
class RunResult:
    spec: RunSpec
    valid_accuracy: float
    valid_loss: float
    train_seconds: float
    n_classes: int
    n_train: int
    n_valid: int
    size: int
    history: list[dict[str, float]]
    batch_losses: list[float]
    batch_lrs: list[float]
    iters_per_epoch: int
    diverged: bool
    train_loss: float | None = None    # measure_train
    train_accuracy: float | None = None
    shifted_accuracy: float | None = None
    batch_moms: list[float] = field(default_factory=list)
    trace: dict[str, Any] | None = None            # spec.trace: probes.Tracer.to_json()
    landscape: list[dict[str, Any]] | None = None  # spec.landscape_every: {"iteration", **probes.landscape()}
    evals: list[dict[str, float]] | None = None    # spec.evals_per_epoch: {"iteration", "seconds", "accuracy", …}
    majority_rate: float | None = None             # the largest class's share of the validation images

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["spec"]["run_id"] = self.spec.run_id
        return json_safe(out)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        """Inverse of to_json (null stays None where a value was not finite)."""
        spec = RunSpec(**{k: v for k, v in d["spec"].items() if k != "run_id"})
        return cls(**{**d, "spec": spec})


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------ measurements


def shift_images(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a NCHW batch by (dy, dx) pixels, repeating the edge pixels into the uncovered border."""
    py, px = abs(dy), abs(dx)
    padded = torch.nn.functional.pad(x, (px, px, py, py), mode="replicate")
    h, w = x.shape[-2:]
    top, left = py - dy, px - dx
    return padded[..., top:top + h, left:left + w]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dl, shift: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a DataLoader in eval mode; shift > 0 averages the four shifts by
    ``shift`` pixels (up, down, left, right)."""
    offsets = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)] if shift else [(0, 0)]
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for xb, yb in dl:
            x, y = _plain(xb), _plain(yb)
            for dy, dx in offsets:
                logits = model(shift_images(x, dy, dx) if shift else x).float()
                loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
    finally:
        model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """fastai's typed tensors (TensorImage, TensorCategory) as plain tensors, which F.cross_entropy accepts."""
    return t.as_subclass(torch.Tensor)


def _probe(spec: RunSpec, log: Callable[[str], None]):
    """A fastai callback that records per-batch loss/lr/momentum, the optional trace, landscape and evaluations,
    stops a diverged run, and measures after training."""
    from fastai.callback.core import Callback, CancelFitException

    from training.experiments.probes import Tracer, landscape

    class Probe(Callback):
        order = 65  # after the Recorder (50) has logged the epoch, and after any lr/momentum scheduler

        def before_fit(self):
            self.iters_per_epoch = len(self.dls.train)
            self.losses: list[float] = []
            self.lrs: list[float] = []
            self.momenta: list[float] = []
            self.diverged = False
            self.measured: dict[str, Any] = {}
            self.tracer = Tracer(self.model, spec.trace) if spec.trace else None
            self.landscapes: list[dict[str, Any]] = []
            self.evals: list[dict[str, float]] = []
            self.train_seconds = 0.0  # training batches only: no evaluation, no probe
            self.overhead: list[float] = []  # per epoch: seconds spent in landscape probes and evaluations

        def before_epoch(self):
            self.overhead.append(0.0)

        def _timed(self, fn, *args):
            """fn(*args), its time booked as overhead (taken out of the run's seconds)."""
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.overhead[-1] += time.perf_counter() - t0

        def before_batch(self):
            if not self.training:
                return
            n = len(self.losses)
            if spec.landscape_every and n % spec.landscape_every == 0:
                probe = self._timed(landscape, self.model, _plain(self.xb[0]), _plain(self.yb[0]))
                self.landscapes.append({"iteration": n, **probe})
            if self.tracer:
                self.tracer.start(n)
            self._t0 = time.perf_counter()

        def after_pred(self):
            if self.tracer:
                self.tracer.after_forward()

        def after_backward(self):
            if self.tracer:
                self.tracer.after_backward()

        def after_batch(self):
            if not self.training:
                return
            self.train_seconds += time.perf_counter() - self._t0
            loss = float(self.learn.loss.detach())
            self.losses.append(loss)
            hypers = self.opt.hypers[-1]
            self.lrs.append(float(hypers["lr"]))
            self.momenta.append(float(hypers.get("mom", math.nan)))
            if not math.isfinite(loss):
                # The weights are now NaN/inf: further batches would only burn CPU time.
                self.diverged = True
                log(f"    diverged at iteration {len(self.losses)} (loss {loss})")
                raise CancelFitException()
            n = len(self.losses)
            every = max(1, self.iters_per_epoch // spec.evals_per_epoch) if spec.evals_per_epoch else 0
            if every and (n % every == 0 or n % self.iters_per_epoch == 0):  # and at each epoch's end
                valid_loss, accuracy = self._timed(evaluate, self.model, self.dls.valid)
                self.evals.append({"iteration": n, "seconds": round(self.train_seconds, 3),
                                   "accuracy": accuracy, "valid_loss": valid_loss})

        def after_epoch(self):
            rec = self.learn.recorder
            names = [n for n in rec.metric_names[1:] if n != "time"]
            values = " ".join(f"{n}={float(v):.4f}" for n, v in zip(names, rec.values[-1], strict=False))
            log(f"    epoch {self.epoch + 1}/{self.n_epoch} {values}")

        def after_fit(self):
            if self.tracer:
                self.tracer.close()
                self.measured["trace"] = self.tracer.to_json()
            if spec.landscape_every:
                self.measured["landscape"] = self.landscapes
            if spec.evals_per_epoch:
                self.measured["evals"] = self.evals
            if self.diverged:
                return
            if spec.measure_train:
                train_dl = self.dls.train.new(shuffle=False, drop_last=False)
                self.measured["train_loss"], self.measured["train_accuracy"] = evaluate(self.model, train_dl)
            if spec.shift:
                _, self.measured["shifted_accuracy"] = evaluate(self.model, self.dls.valid, shift=spec.shift)

    return Probe()


# ------------------------------------------------------------------------------------------------ running


def train_one(spec: RunSpec, settings: Settings, run_dir: Path, log: Callable[[str], None]) -> RunResult:
    """One ``fit`` run with a probe; returns what the experiment analyses."""
    from training.fit import fit
    from training.settings import FitConfig, FitError

    probe = _probe(spec, log)
    callbacks = [probe]
    if spec.momentum is not None:
        from training.experiments.probes import momentum_callback

        callbacks.append(momentum_callback(spec.momentum))
    cfg = FitConfig(data=spec.data or settings.data, arch=spec.arch, epochs=spec.epochs, out=run_dir, lr=spec.lr,
                    bs=spec.bs or settings.bs, size=settings.size, seed=spec.seed, plots=False,
                    model_kwargs=dict(spec.model_kwargs), schedule=spec.schedule,
                    # Plain cross-entropy: the losses compared are the textbook ones, and label smoothing (a
                    # regulariser, with a loss floor above 0) does not confound the effect under test.
                    label_smoothing=0.0, head="linear",
                    pretrained=Path(spec.pretrained) if spec.pretrained else None,
                    freeze_epochs=spec.freeze_epochs if spec.pretrained else 0, lr_mult=spec.lr_mult,
                    # The reports were measured with BatchNorm's running statistics; the trainer now recomputes
                    # them on short trainings (docs/training.md), which would change what a re-run compares.
                    recompute_batchnorm=False)
    quiet = log if settings.verbose else (lambda _m: None)
    try:
        metrics = fit(cfg, log=quiet, callbacks=callbacks)
    except FitError as e:
        raise ExperimentError(str(e)) from None
    # Per-batch curves only feed the plots: 5 significant digits keep results.json small.
    losses, lrs, moms = ([float(f"{x:.5g}") for x in xs] for xs in (probe.losses, probe.lrs, probe.momenta))
    # The probes' own time is no training: the epochs' seconds and the total leave it out.
    extra = [*probe.overhead, *[0.0] * len(metrics["history"])]
    history = [{**h, "seconds": round(h["seconds"] - extra[i], 3)} if "seconds" in h else h
               for i, h in enumerate(metrics["history"])]
    return RunResult(
        spec=spec, valid_accuracy=metrics["valid_accuracy"], valid_loss=metrics["valid_loss"],
        train_seconds=round(metrics["train_seconds"] - sum(probe.overhead), 3), n_classes=metrics["n_classes"],
        n_train=metrics["n_train"], n_valid=metrics["n_valid"], size=metrics["size"][0],
        history=history, batch_losses=losses, batch_lrs=lrs, batch_moms=moms,
        iters_per_epoch=probe.iters_per_epoch, majority_rate=metrics.get("majority_rate"),
        diverged=probe.diverged, **probe.measured,
    )


def run_all(name: str, specs: list[RunSpec], settings: Settings, log: Callable[[str], None]) -> list[RunResult]:
    """Train every run in order, with one progress line per run and per epoch."""
    results: list[RunResult] = []
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory(prefix=f"experiment-{name}-") as tmp:
            runs_root = settings.out / "runs" if settings.keep_runs else Path(tmp)
            for i, spec in enumerate(specs, 1):
                extra = f" {spec.model_kwargs}" if spec.model_kwargs else ""
                log(f"[{name} {i}/{len(specs)}] {spec.variant}: {spec.arch}{extra} schedule={spec.schedule} "
                    f"lr={spec.lr:g} epochs={spec.epochs} seed={spec.seed}")
                result = train_one(spec, settings, runs_root / spec.run_id, log)
                results.append(result)
                log(f"    → valid_accuracy={result.valid_accuracy:.4f} valid_loss={result.valid_loss:.4f} "
                    f"({result.train_seconds:.1f} s; {time.perf_counter() - t0:.0f} s elapsed)")
    finally:
        torch.set_num_threads(threads)
    return results


# ------------------------------------------------------------------------------------------------ analysis helpers


def by_variant(results: list[RunResult], group: str = "main") -> dict[str, list[RunResult]]:
    """Runs of one group keyed by variant, in the order the experiment listed them."""
    out: dict[str, list[RunResult]] = {}
    for r in results:
        if r.spec.group == group:
            out.setdefault(r.spec.variant, []).append(r)
    return out


def epochs_to_target(result: RunResult, target: float) -> int | None:
    """The first epoch whose validation accuracy reaches ``target`` (None: never)."""
    for row in result.history:
        if row.get("accuracy", 0.0) >= target:
            return int(row["epoch"])
    return None


def seconds_to_target(result: RunResult, target: float) -> float | None:
    """Training time (epochs with their validation pass) until the accuracy first reaches ``target``."""
    epoch = epochs_to_target(result, target)
    if epoch is None:
        return None
    return sum(row.get("seconds", 0.0) for row in result.history[:epoch])


def _first_hit(result: RunResult, target: float) -> dict[str, float] | None:
    return next((e for e in result.evals or [] if e["accuracy"] >= target), None)


def iterations_to_target(result: RunResult, target: float) -> int | None:
    """The first in-epoch evaluation (``evals``) whose validation accuracy reaches ``target``, in iterations."""
    hit = _first_hit(result, target)
    return None if hit is None else int(hit["iteration"])


def train_seconds_to_target(result: RunResult, target: float) -> float | None:
    """Training time (batches only: no validation, no probes) until an in-epoch evaluation first reaches ``target``."""
    hit = _first_hit(result, target)
    return None if hit is None else float(hit["seconds"])


def iterations_to_stay(result: RunResult, target: float) -> int | None:
    """The first in-epoch evaluation from which every later one, to the end of training, is at or above ``target``:
    reaching the target for good, where a noisy run may touch it early and fall back."""
    evals = result.evals or []
    for i, e in enumerate(evals):
        if all(x["accuracy"] >= target for x in evals[i:]):
            return int(e["iteration"])
    return None


def trains_threshold(n_classes: int) -> float:
    """A run "trains" when its validation accuracy is at least halfway from chance (1/classes) to 100 %."""
    chance = 1.0 / n_classes
    return chance + (1.0 - chance) / 2


def data_line(settings: Settings, r: RunResult) -> str:
    name = "scikit-learn's digits (1,797 real 8×8 scans, upsampled)" if settings.data == "digits" else settings.data
    return (f"Data: {name} at {r.size}×{r.size} px — {r.n_classes} classes, {r.n_train} training / "
            f"{r.n_valid} validation images.")


def seed_list(n: int) -> str:
    return "seed 0" if n == 1 else f"seeds 0–{n - 1}"


def training_line(settings: Settings, epochs: int, lr: float) -> str:
    """How every run of an experiment was trained, as the reports state it."""
    return (f"{epochs} epochs, fastai one-cycle with peak lr {lr:g}, batch {settings.bs}, Adam, weight decay 0.01, "
            f"{seed_list(settings.seeds)}.")
