"""One batch row (:class:`Row`: an input's predictions, or why it has none) and how every output writes its text.

Shared by the writers (``output``: CSV and JSON Lines; ``parquet``: Arrow and Parquet), the runners that make rows and
the Ray engine that ships them; it imports none of them, so each can import it at module level.

Undecodable bytes in file names (``os.fsdecode`` gives them as lone surrogates) survive a write/read round trip: CSV
writes them back as the original bytes, JSON Lines and Arrow as ``\\udcXX`` escapes (:func:`escape_surrogates`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serving.contract.prediction import Prediction

_LONE_SURROGATE = re.compile("[\udc80-\udcff]")
_SURROGATE_ESCAPE = re.compile(r"\\udc[89a-f][0-9a-f]")


@dataclass(frozen=True)
class Row:
    """One input's outcome: its predictions (most probable first), or why there are none."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def label(self) -> str | None:
        return self.predictions[0].label if self.predictions else None

    @property
    def probability(self) -> float | None:
        return self.predictions[0].probability if self.predictions else None


def escape_surrogates(text: str) -> str:
    """A name's undecodable bytes (lone surrogates) as ``\\udcXX`` escapes: valid UTF-8 for JSON and Arrow."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unescape_surrogates(text: str) -> str:
    """The inverse of :func:`escape_surrogates` (JSON readers do it themselves)."""
    return _SURROGATE_ESCAPE.sub(lambda m: chr(int(m.group()[2:], 16)), text)


def one_line(error: str) -> str:
    """An error text as every format writes it: whitespace runs (newlines too) become one space."""
    return " ".join(error.split())
