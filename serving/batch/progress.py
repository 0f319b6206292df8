"""Progress for a batch job: a one-line bar (files/s, ETA) redrawn in place on a terminal, plain periodic lines
otherwise (logs, CI, ``nohup``), and the summary printed at the end."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``42s``, ``3:07``, ``1:02:03``."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    return f"{m}:{s:02d}" if m else f"{s}s"


class Progress:
    """Call :meth:`update` as often as you like; it draws at most ``redraw_s`` (bar) or ``interval_s`` (lines) apart."""

    def __init__(self, total: int, stream: TextIO, *, tty: bool | None = None, interval_s: float = 10.0,
                 redraw_s: float = 0.1, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stream, self.enabled, self.clock = total, stream, enabled, clock
        self.tty = stream.isatty() if tty is None else tty
        self.every = redraw_s if self.tty else interval_s
        self.started = clock()
        self.done = self.errors = 0
        self._last_draw = self.started
        self._drawn = False

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        rate = self.rate()
        return format_duration((self.total - self.done) / rate) if rate > 0 else "?"

    def update(self, done: int, errors: int) -> None:
        self.done, self.errors = done, errors
        now = self.clock()
        if self.enabled and (now - self._last_draw >= self.every or done >= self.total):
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        stats = f"{self.rate():.1f} files/s, ETA {self.eta()}, {self.errors} errors"
        if not self.tty:
            self.stream.write(f"batch: {self.done}/{self.total} files ({pct:.1f}%), {stats}\n")
        else:
            text = f"{self.done}/{self.total} {pct:3.0f}% {stats}"
            width = shutil.get_terminal_size((80, 24)).columns - len(text) - 4
            bar = ""
            if width >= 10:
                filled = int(width * self.done / self.total) if self.total else width
                bar = "[" + "#" * filled + "." * (width - filled) + "] "
            self.stream.write("\r\x1b[K" + bar + text)  # carriage return + erase line: redraw in place
            self._drawn = True
        self.stream.flush()

    def close(self) -> None:
        """Leave the terminal on a fresh line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Summary:
    """What a job did: counts over every selected input (earlier runs included), speed of this run."""

    output: str
    total: int = 0                 # inputs selected by the arguments
    done_before: int = 0           # of those, rows already in the output (resume)
    processed: int = 0             # rows written by this run
    errors: int = 0                # error rows among all ``total``
    seconds: float = 0.0           # this run's classification time
    labels: Counter[str] = field(default_factory=Counter)  # top-1 label counts among all ``total``
    dropped_bytes: int = 0         # torn tail removed from the output on resume

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def format(self, max_labels: int = 20) -> str:
        lines = [f"batch: {self.total} files -> {self.output}: {self.total - self.errors} classified, "
                 f"{self.errors} errors"]
        if self.done_before:
            torn = f"; a torn last row ({self.dropped_bytes} bytes) was redone" if self.dropped_bytes else ""
            lines.append(f"  resumed: {self.done_before} rows were already there{torn}")
        lines.append(f"  this run: {self.processed} files in {self.seconds:.2f} s, {self.images_per_s:.1f} images/s")
        ok = sum(self.labels.values())
        if ok:
            lines.append("  labels:")
            common = self.labels.most_common(max_labels)
            width = max(len(label) for label, _ in common)
            lines += [f"    {label:<{width}}  {n:>8}  {100 * n / ok:5.1f}%" for label, n in common]
            if len(self.labels) > max_labels:
                rest = ok - sum(n for _, n in common)
                lines.append(f"    ... {len(self.labels) - max_labels} more labels, {rest} files")
        return "\n".join(lines)
