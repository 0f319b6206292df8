"""Triton's statistics extension: what each model version did since the server started, counted where it happens.

Two kinds of records, each a few integer additions under an uncontended lock:

- **per request** — the data plane opens a :class:`RequestTiming` once it has chosen the model version (admission)
  and closes it with the answer: a success adds one to ``success`` with its nanoseconds from admission to answer,
  and its time in each phase to ``queue``, ``compute_input``, ``compute_infer`` and ``compute_output`` (one count
  each); a failure, cancellation included, adds one to ``fail`` with its nanoseconds. Requests refused before a
  version was chosen (unknown model or version, a model not serving, more images than one request may carry) count
  nowhere: no version is theirs.
- **per execution** — the batcher, once a batch computed (and the data plane, for an explain graph's own run): one
  more ``execution_count``, its rows added to ``inference_count``, its phases to ``batch_stats`` of its size, and
  ``last_inference`` (milliseconds since the epoch).

The phases, as Triton means them (``perf_analyzer`` shows them as the server-side breakdown):

- ``queue`` — time in the batcher's queue, from submission until a batch takes the request;
- ``compute_input`` — preparing the input: for the request, from admission until its tensor is queued (parsing,
  decoding and preprocessing images, tensor checks), plus the stacking of each batch it joins;
- ``compute_infer`` — the onnxruntime call, timed in the compute thread, of each batch the request joins;
- ``compute_output`` — turning outputs into the answer: slicing each batch's logits, then the request's own work
  after its last batch (top-k, heatmaps).

As in Triton, a request gets the whole duration of each batch it joins (the batch's compute is what it waited for),
and ``batch_stats`` count the batch itself once. A request of more images than ``--max-batch`` joins several batches:
one count, the sum of their times. ``inference_count`` counts rows when a batch computed (Triton counts them when
the request succeeds: the same figure unless a request fails after its batch ran, or an explanation computes more
images than it was sent).

The Prometheus histograms that measure the same things are observed by the same calls with the same numbers, so
the two agree by construction: ``serving_batch_size`` (count = ``execution_count``, sum = ``inference_count``),
``serving_compute_duration_seconds`` (count = ``execution_count``, sum = batch ``compute_infer`` ns / 1e9) and
``serving_queue_duration_seconds`` (count = ``queue.count``, sum = ``queue.ns`` / 1e9); they are per model, these
per version.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from types import TracebackType

from serving.contract.api import BatchStatistics, ModelStatistics, StatisticDuration
from serving.runtime.metrics import Metrics

__all__ = ["RequestTiming", "Statistics", "VersionStatistics"]


@dataclass(slots=True)
class _Counts:
    """The raw counters (the live ones under a lock, or a copy to read)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # size → [count, input ns, infer ns, output ns]

    def copy(self) -> _Counts:
        return replace(self, batches={size: list(b) for size, b in self.batches.items()})

    def add(self, other: _Counts) -> None:
        for name in ("success", "success_ns", "fail", "fail_ns", "queue_ns", "input_ns", "infer_ns", "output_ns",
                     "inference_count", "execution_count"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, b in other.batches.items():
            mine = self.batches.setdefault(size, [0, 0, 0, 0])
            for i, value in enumerate(b):
                mine[i] += value

    def result(self, name: str, version: int) -> ModelStatistics:
        d = StatisticDuration
        return ModelStatistics(
            name=name, version=version, last_inference=self.last_inference_ms,
            inference_count=self.inference_count, execution_count=self.execution_count,
            success=d(self.success, self.success_ns), fail=d(self.fail, self.fail_ns),
            queue=d(self.success, self.queue_ns), compute_input=d(self.success, self.input_ns),
            compute_infer=d(self.success, self.infer_ns), compute_output=d(self.success, self.output_ns),
            batch_stats=[BatchStatistics(size, d(n, i), d(n, c), d(n, o))
                         for size, (n, i, c, o) in sorted(self.batches.items())])


class VersionStatistics:
    """The counters of one model version (its batcher holds them). Each record takes a lock, so any thread may
    record and a reader sees whole records; the server records only on its event loop (the compute thread times the
    model call and hands the nanoseconds back with the logits), so the lock is never contended."""

    def __init__(self, name: str, metrics: Metrics | None = None) -> None:
        self.name = name
        self.tracked = False  # listed in a Statistics store (by the data plane, on first use)
        self._lock = threading.Lock()
        self._counts = _Counts()
        # Prometheus children looked up once (a label lookup costs a lock and a dict per call); None: no metrics
        self._histograms = None if metrics is None else (
            metrics.queue_seconds.labels(name), metrics.compute_seconds.labels(name), metrics.batch_size.labels(name))

    def request(self) -> RequestTiming:
        """A request admitted now: ``with counters.request() as timing: …`` records it when the block ends."""
        return RequestTiming(self)

    def succeeded(self, ns: int, timing: RequestTiming) -> None:
        with self._lock:
            c = self._counts
            c.success += 1
            c.success_ns += ns
            c.queue_ns += timing.queue_ns
            c.input_ns += timing.input_ns
            c.infer_ns += timing.infer_ns
            c.output_ns += timing.output_ns
        if self._histograms is not None:
            self._histograms[0].observe(timing.queue_ns / 1e9)

    def failed(self, ns: int) -> None:
        with self._lock:
            self._counts.fail += 1
            self._counts.fail_ns += ns

    def executed(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution (a batch of ``rows`` images) that computed, and its phases."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            c = self._counts
            c.execution_count += 1
            c.inference_count += rows
            if now_ms > c.last_inference_ms:
                c.last_inference_ms = now_ms
            b = c.batches.get(rows)
            if b is None:
                b = c.batches[rows] = [0, 0, 0, 0]
            b[0] += 1
            b[1] += input_ns
            b[2] += infer_ns
            b[3] += output_ns
        if self._histograms is not None:
            _, compute, batch_size = self._histograms
            compute.observe(infer_ns / 1e9)
            batch_size.observe(rows)

    def counts(self) -> _Counts:
        with self._lock:
            return self._counts.copy()


class RequestTiming:
    """One request's nanoseconds in each phase, filled as it goes: the data plane marks where its own steps end
    (:meth:`prepared`, :meth:`resumed`), the batcher adds each batch's share; the block's end records it."""

    __slots__ = ("_counters", "infer_ns", "input_ns", "mark", "output_ns", "queue_ns", "started")

    def __init__(self, counters: VersionStatistics) -> None:
        self._counters = counters
        self.queue_ns = self.input_ns = self.infer_ns = self.output_ns = 0
        self.started = self.mark = time.perf_counter_ns()

    def prepared(self) -> None:
        """The input is ready to queue or compute: the time since the last mark was spent preparing it."""
        now = time.perf_counter_ns()
        self.input_ns += now - self.mark
        self.mark = now

    def resumed(self) -> None:
        """Back from the batcher (or a model call): what follows is the next step's time."""
        self.mark = time.perf_counter_ns()

    def computed(self, rows: int, infer_ns: int) -> None:
        """A model call of its own (not through the batcher), timed where it ran: one execution of ``rows``."""
        self.infer_ns += infer_ns
        self._counters.executed(rows, 0, infer_ns, 0)

    def __enter__(self) -> RequestTiming:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        now = time.perf_counter_ns()
        if kind is None:
            self.output_ns += now - self.mark
            self._counters.succeeded(now - self.started, self)
        else:
            self._counters.failed(now - self.started)


class Statistics:
    """Every model version's counters by (name, version), kept while the server runs: a version replaced by a newer
    one, or unloaded, stays readable. A version served twice (loaded again) adds both incarnations' counters (Triton
    starts a model loaded again from zero; here a version's statistics last as long as the server)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], list[VersionStatistics]] = {}
        self._lock = threading.Lock()

    def track(self, name: str, version: int, counters: VersionStatistics) -> None:
        """List ``counters`` as (a part of) ``name`` version ``version``'s; again: nothing."""
        with self._lock:
            if not counters.tracked:
                self._versions.setdefault((name, version), []).append(counters)
                counters.tracked = True

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(v for n, v in self._versions if n == name)

    def read(self, name: str = "", version: int | None = None) -> list[ModelStatistics]:
        """Every tracked version (``name`` ""), every version of ``name`` (``version`` None), or that one, in order."""
        with self._lock:
            chosen = {key: list(parts) for key, parts in self._versions.items()
                      if (not name or key[0] == name) and (version is None or key[1] == version)}
        results = []
        for (n, v), parts in sorted(chosen.items()):
            total = _Counts()
            for part in parts:
                total.add(part.counts())
            results.append(total.result(n, v))
        return results
