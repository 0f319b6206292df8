"""The progress bar on a terminal, plain lines elsewhere, and the summary, driven by a fake clock."""

from __future__ import annotations

import io
from collections import Counter

from serving.batch.progress import Progress, Summary, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 187, 3723, -1)] == ["0s", "42s", "3:07", "1:02:03", "0s"]


def test_terminal_bar_is_redrawn_in_place() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(1000, stream, tty=True, clock=clock)
    clock.now += 2.0
    progress.update(250, 3)
    clock.now += 0.05
    progress.update(260, 3)  # too soon after the last redraw: nothing drawn
    progress.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 1
    assert "] 250/1000  25% 125.0 files/s, ETA 6s, 3 errors" in text
    assert "[" + "#" in text
    assert text.endswith("\n")


def test_plain_lines_every_interval_and_at_the_end() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, stream, tty=False, interval_s=10.0, clock=clock)
    for _ in range(9):
        clock.now += 2.5
        progress.update(progress.done + 10, 0)
    progress.update(100, 1)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "batch: 40/100 files (40.0%), 4.0 files/s, ETA 15s, 0 errors",
        "batch: 80/100 files (80.0%), 4.0 files/s, ETA 5s, 0 errors",
        "batch: 100/100 files (100.0%), 4.4 files/s, ETA 0s, 1 errors",
    ]
    assert "\r" not in stream.getvalue()


def test_quiet_draws_nothing() -> None:
    stream = io.StringIO()
    progress = Progress(10, stream, tty=True, enabled=False)
    progress.update(10, 0)
    progress.close()
    assert stream.getvalue() == ""


def test_summary() -> None:
    summary = Summary("out.csv", total=130, done_before=30, processed=100, errors=4, seconds=2.0,
                      labels=Counter({"cat": 80, "dog": 40, "eel": 6}), dropped_bytes=17)
    assert summary.format(max_labels=2).splitlines() == [
        "batch: 130 files -> out.csv: 126 classified, 4 errors",
        "  resumed: 30 rows were already there; a torn last row (17 bytes) was redone",
        "  this run: 100 files in 2.00 s, 50.0 images/s",
        "  labels:",
        "    cat        80   63.5%",
        "    dog        40   31.7%",
        "    ... 1 more labels, 6 files",
    ]
