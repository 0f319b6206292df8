"""Run one validation set through several implementations of the same network and compare their logits.

The images go through ``serving.contract.preprocess.preprocess`` with the run's spec: exactly what the server will
feed the model. Each implementation is a *runner*: a function from a float32 NCHW batch to float32 logits. The
reference is the original, unfolded PyTorch model in eval mode; the others (onnxruntime, the NumPy reference, the
INT8 model) are compared with it on every sample at one batch size, and on a few samples at batch 1 as well, which
is where a wrongly exported batch dimension would show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from serving.contract.preprocess import PreprocessSpec, preprocess
from serving.errors import InvalidInput

Runner = Callable[[np.ndarray], np.ndarray]

BATCH_SIZE = 32      # "all samples" are compared at this batch size …
SINGLE_SAMPLES = 4   # … and this many of them again one at a time


@dataclass(frozen=True)
class Dataset:
    """Image files (paths relative to ``root``) with their label indices, as listed in ``RUN/data.json``."""

    root: Path
    items: tuple[tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` items drawn without replacement (all of them if there are fewer)."""
        if n >= len(self.items):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.items), n, replace=False))
        return Dataset(self.root, tuple(self.items[i] for i in idx))

    def _load(self, path: str, spec: PreprocessSpec) -> np.ndarray:
        try:
            return preprocess(self.root / path, spec)
        except InvalidInput as e:
            raise InvalidInput(f"{self.root / path}: {e}") from None

    def batches(self, spec: PreprocessSpec, batch_size: int = BATCH_SIZE) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs N×C×H×W float32, labels N int64), read and preprocessed lazily so memory stays flat."""
        for start in range(0, len(self.items), batch_size):
            chunk = self.items[start:start + batch_size]
            x = np.stack([self._load(path, spec) for path, _ in chunk])
            yield x, np.asarray([y for _, y in chunk], dtype=np.int64)


def torch_runner(model: nn.Module) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()

    return run


def ort_session(path: Path | str, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                threads: int = 0, optimized_path: Path | None = None) -> ort.InferenceSession:
    """A CPU session; ``optimized_path`` also saves the graph after onnxruntime's rewrites."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(session: ort.InferenceSession) -> Runner:
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run


@dataclass
class Comparison:
    """One implementation against the reference over the same samples."""

    candidate: str
    reference: str
    status: str = "passed"          # "passed" | "failed: …" | "skipped: …"
    samples: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outputs:
    """Logits of every runner over the same samples (batched), plus batch-1 logits of the first few."""

    labels: np.ndarray
    logits: dict[str, np.ndarray]
    single: dict[str, np.ndarray]
    seconds: dict[str, float]


def collect(dataset: Dataset, spec: PreprocessSpec, runners: dict[str, Runner], batch_size: int = BATCH_SIZE,
            single: int = SINGLE_SAMPLES, keep_inputs: int = 0,
            limits: dict[str, int] | None = None) -> tuple[Outputs, np.ndarray]:
    """Run every runner over ``dataset``; also returns the first ``keep_inputs`` preprocessed inputs.

    ``limits`` caps a slow runner to the batches that start before that many samples (the first ones, in order).
    """
    limits = limits or {}
    if len(dataset) == 0:
        raise ValueError("the validation set is empty")
    logits: dict[str, list[np.ndarray]] = {k: [] for k in runners}
    singles: dict[str, list[np.ndarray]] = {k: [] for k in runners}
    seconds = dict.fromkeys(runners, 0.0)
    labels, kept = [], []
    for x, y in dataset.batches(spec, batch_size):
        labels.append(y)
        if sum(len(k) for k in kept) < keep_inputs:
            kept.append(x[:keep_inputs - sum(len(k) for k in kept)])
        first_batch = len(labels) == 1
        start = sum(len(b) for b in labels[:-1])
        for name, run in runners.items():
            if start >= limits.get(name, start + 1):
                continue
            t = time.perf_counter()
            logits[name].append(np.asarray(run(x), dtype=np.float32))
            if first_batch:
                singles[name] += [np.asarray(run(x[i:i + 1]), dtype=np.float32) for i in range(min(single, len(x)))]
            seconds[name] += time.perf_counter() - t
    inputs = np.concatenate(kept) if kept else np.zeros((0, *spec.input_shape), np.float32)
    return Outputs(np.concatenate(labels), {k: np.concatenate(v) for k, v in logits.items()},
                   {k: np.concatenate(v) for k, v in singles.items()}, seconds), inputs


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def compare(out: Outputs, candidate: str, reference: str, batch_size: int = BATCH_SIZE) -> Comparison:
    """max |candidate − reference| over batched and batch-1 logits, top-1 agreement and both accuracies.

    A runner limited to the first samples is compared with the reference on those samples only.
    """
    a = out.logits[candidate]
    b, labels = out.logits[reference][:len(a)], out.labels[:len(a)]
    diff = float(np.abs(a - b).max())
    sizes = [batch_size]
    if len(out.single[candidate]):
        diff = max(diff, float(np.abs(out.single[candidate] - out.single[reference]).max()))
        sizes = [1, batch_size]
    return Comparison(
        candidate=candidate, reference=reference, samples=len(a), batch_sizes=sizes, max_abs_diff=diff,
        top1_agreement=float((a.argmax(1) == b.argmax(1)).mean()),
        accuracy=accuracy(a, labels), reference_accuracy=accuracy(b, labels),
    )


def judge(c: Comparison, atol: float) -> Comparison:
    """Mark ``c`` failed when the logits differ by more than ``atol`` or any top-1 class differs."""
    if c.status.startswith("skipped"):
        return c
    problems = []
    if c.max_abs_diff is not None and not c.max_abs_diff <= atol:  # `not <=` so that NaN fails too
        problems.append(f"max_abs_diff {c.max_abs_diff:.3g} > atol {atol:.3g}")
    if c.top1_agreement is not None and c.top1_agreement < 1.0:
        disagree = round((1.0 - c.top1_agreement) * c.samples)
        problems.append(f"top-1 differs on {disagree}/{c.samples} samples (agreement {c.top1_agreement:.4f})")
    c.status = "failed: " + "; ".join(problems) if problems else "passed"
    return c


def skipped(candidate: str, reference: str, reason: str) -> Comparison:
    return Comparison(candidate=candidate, reference=reference, status=f"skipped: {reason}")


def failures(comparisons: Sequence[Comparison]) -> list[str]:
    """One line per failed comparison, naming it and saying by how much."""
    return [f"{c.candidate} vs {c.reference}: {c.status.removeprefix('failed: ')}"
            for c in comparisons if c.status.startswith("failed")]
