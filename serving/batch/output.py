"""The batch job's output: one row per input, CSV or JSON Lines (appended and flushed as rows complete) or Parquet.

Columns: ``path``, ``label`` (top-1), ``probability`` (its probability), ``top_k`` (the top-k as a list of
``{"label", "index", "probability"}``; in CSV that list is a JSON string in one cell) and ``error`` (why the file
has no prediction; empty in CSV, ``null`` in JSON when it has one). Probabilities are written with the shortest
decimal that reads back as the same float32.

Crash safety: each batch of rows is encoded first and handed to the OS in one ``write`` on an unbuffered file, so a
killed process loses at most the rows it had not written yet, and a torn record can only be the last one. Resuming
reads the file back, drops a torn last record (the bytes after the last complete one: a record is complete when it
ends with a newline outside any quoted CSV field), and appends. A malformed record *before* the end is not ours to
guess about: :class:`OutputError`.

Parquet output is a folder of parts written whole (``serving.batch.parquet``); :func:`check_output`,
:func:`read_existing` and :func:`open_output` take either kind. The row itself and the escaping of odd names are in
``serving.batch.rows``, which both writers share (so neither imports the other's module for them).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.batch.rows import Row, escape_surrogates, one_line
from serving.contract.prediction import Prediction

if TYPE_CHECKING:
    from serving.batch.parquet import ParquetOutput

COLUMNS = ("path", "label", "probability", "top_k", "error")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
# CSV is written and read with surrogateescape: a name's undecodable bytes go back to disk as the bytes they were.
_ENCODING, _ERRORS = "utf-8", "surrogateescape"


class OutputError(ValueError):
    """The output path cannot be used as asked (a usage error, reported before any work)."""


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``: ``fmt`` if given (unless the suffix names another), else from the suffix."""
    suffix = Path(path).suffix.lower()
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise OutputError(f"format must be one of {', '.join(FORMATS.values())}, got {fmt!r}")
        if FORMATS.get(suffix, fmt) != fmt:
            raise OutputError(f"output {str(path)!r} has the suffix of {FORMATS[suffix]}, but the format is {fmt}")
        return fmt
    if suffix not in FORMATS:
        *others, last = FORMATS
        raise OutputError(f"output must end in {', '.join(others)} or {last} (it picks the format; or pass "
                          f"--format), got {str(path)!r}")
    return FORMATS[suffix]


def _short(p: float) -> float:
    """The float whose repr is the shortest decimal that reads back as the same float32 (0.1, not 0.100000001…)."""
    return float(str(np.float32(p)))


def _top_k(row: Row) -> list[dict[str, Any]]:
    return [{"label": p.label, "index": p.index, "probability": _short(p.probability)} for p in row.predictions]


def encode_row(row: Row, fmt: str) -> bytes:
    error = one_line(row.error)  # whatever the exception said
    if fmt == "jsonl":
        doc = {"path": row.path, "label": row.label,
               "probability": None if row.probability is None else _short(row.probability),
               "top_k": _top_k(row), "error": error or None}
        # A name's undecodable bytes (lone surrogates here) become \udcXX escapes: the line stays valid UTF-8 for
        # every JSON reader, and Python's json.loads gives the very same name back.
        text = escape_surrogates(json.dumps(doc, ensure_ascii=False))
        return (text + "\n").encode(_ENCODING)
    buf = io.StringIO()
    probability = "" if row.probability is None else repr(_short(row.probability))
    top_k = json.dumps(_top_k(row), ensure_ascii=False, separators=(",", ":")) if row.predictions else ""
    # With "\r\n" as the terminator the writer quotes fields holding either character (with "\n" it would leave a
    # bare "\r" unquoted, which readers take for a line end); the record then ends in a plain "\n".
    csv.writer(buf, lineterminator="\r\n").writerow([row.path, row.label or "", probability, top_k, error])
    return (buf.getvalue()[:-2] + "\n").encode(_ENCODING, _ERRORS)


def csv_header() -> bytes:
    return (",".join(COLUMNS) + "\n").encode()


# ---- reading back (resume) -----------------------------------------------------------------------------------------

def complete_records(data: bytes, fmt: str) -> Iterator[tuple[bytes, int]]:
    """Each complete record and the offset just past it; a torn tail (no final newline) is not yielded."""
    start = pos = 0
    while (newline := data.find(b"\n", pos)) != -1:
        pos = newline + 1
        # CSV doubles quotes inside quoted fields, so an odd count means this newline is inside a field.
        if fmt == "csv" and data.count(b'"', start, pos) % 2:
            continue
        yield data[start:pos], pos
        start = pos


def _predictions(items: Any) -> tuple[Prediction, ...]:
    if not isinstance(items, list):
        raise ValueError("top_k is not a list")
    return tuple(Prediction(str(p["label"]), int(p["index"]), float(p["probability"])) for p in items)


def _parse_jsonl(record: bytes) -> Row:
    doc = json.loads(record.decode(_ENCODING, _ERRORS))
    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
        raise ValueError("not an object with a 'path'")
    return Row(doc["path"], _predictions(doc.get("top_k") or []), doc.get("error") or "")


def _parse_csv(record: bytes) -> Row:
    fields = next(csv.reader(io.StringIO(record.decode(_ENCODING, _ERRORS), newline="")))
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} fields, expected {len(COLUMNS)}")
    path, _label, _probability, top_k, error = fields
    return Row(path, _predictions(json.loads(top_k)) if top_k else (), error)


def parse_output(data: bytes, fmt: str, name: str = "output") -> tuple[list[Row], int]:
    """The rows of an existing output and the length of its intact part (everything before a torn last record)."""
    rows: list[Row] = []
    end = 0
    parse = _parse_jsonl if fmt == "jsonl" else _parse_csv
    for number, (record, record_end) in enumerate(complete_records(data, fmt), start=1):
        if fmt == "csv" and number == 1:
            if record != csv_header():
                raise OutputError(f"{name} does not start with the header {','.join(COLUMNS)}: not written by "
                                  "this tool (or in the other format); use --overwrite to replace it")
        else:
            try:
                rows.append(parse(record))
            except (ValueError, KeyError, TypeError) as e:
                raise OutputError(f"{name}: record {number} is not a row of this tool ({e}); fix it, or start "
                                  "again with --overwrite") from None
        end = record_end
    return rows, end


# ---- writing -------------------------------------------------------------------------------------------------------

def _check_parquet_folder(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """The folder that must be writable: the dataset folder if it exists, else its parent."""
    from serving.batch import parquet

    try:
        parquet.arrow()
    except ImportError as e:
        raise OutputError(str(e)) from None
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} is a file (Parquet output is a folder of parts)")
    if not path.is_dir():
        return path.parent
    if other := parquet.foreign(path):
        raise OutputError(f"output folder {path} holds files this tool did not write ({', '.join(other[:3])}"
                          f"{', …' if len(other) > 3 else ''}); choose another output")
    if parquet.parts(path) and not (resume or overwrite):
        raise OutputError(f"output {path} exists: pass --resume to continue it or --overwrite to replace it")
    return path


def check_output(path: str | Path, *, resume: bool, overwrite: bool, fmt: str | None = None) -> str:
    """Everything that can be said about the output before any work; returns the format. ``OutputError`` if unusable."""
    path = Path(path)
    fmt = output_format(path, fmt)
    if not path.parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist")
    if fmt == "parquet":
        folder = _check_parquet_folder(path, resume=resume, overwrite=overwrite)
    else:
        folder = path.parent
        if path.is_dir():
            raise OutputError(f"output {path} is a folder")
        if path.exists() and not (resume or overwrite):
            raise OutputError(f"output {path} exists: pass --resume to continue it or --overwrite to replace it")
    # os.access would say yes to root on a read-only folder; creating a file is the only honest test.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".batch-probe-")
        os.close(fd)
        os.unlink(probe)
        if path.is_file():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as e:
        raise OutputError(f"cannot write the output {path}: {e.strerror or e}") from None
    return fmt


@dataclass(frozen=True)
class Existing:
    """What an output to be resumed already holds: its rows, and how much of it is intact."""

    rows: list[Row]
    end: int                       # bytes before a torn last record (Parquet: in complete parts)
    size: int                      # bytes found (Parquet: with half-written parts)

    @property
    def torn_bytes(self) -> int:
        return self.size - self.end


def _read_parquet(path: Path) -> Existing:
    from serving.batch import parquet

    try:
        rows, torn = parquet.read_rows(path)
    except (ValueError, KeyError, TypeError) as e:  # pyarrow's errors are ValueErrors (ArrowInvalid, …)
        raise OutputError(f"{path}: a part is not Parquet of this tool ({e}); fix it, or start again with "
                          "--overwrite") from None
    end = sum(p.stat().st_size for p in parquet.parts(path))
    return Existing(rows, end, end + torn)


def read_existing(path: str | Path, fmt: str | None = None) -> Existing:
    """Parse an output written by an earlier run (``OutputError`` if it is not one); nothing is changed yet."""
    path = Path(path)
    fmt = output_format(path, fmt)
    try:
        if fmt == "parquet":
            return _read_parquet(path) if path.is_dir() else Existing([], 0, 0)
        data = path.read_bytes()
    except FileNotFoundError:
        return Existing([], 0, 0)
    except OSError as e:
        raise OutputError(f"cannot read the output {path} to resume it: {e.strerror or e}") from None
    rows, end = parse_output(data, fmt, str(path))
    return Existing(rows, end, len(data))


class OutputFile:
    """An output opened for appending rows: new (``xb``; ``wb`` with ``overwrite``) or resumed after ``existing``."""

    def __init__(self, path: str | Path, *, existing: Existing | None = None, overwrite: bool = False,
                 fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = output_format(self.path, fmt)
        if existing is not None and existing.size:
            self._file = open(self.path, "r+b", buffering=0)  # noqa: SIM115 - closed by close()
            self._file.truncate(existing.end)  # drop a torn last record
            self._file.seek(existing.end)
            fresh = existing.end == 0
        else:
            self._file = open(self.path, "wb" if overwrite or existing else "xb", buffering=0)  # noqa: SIM115
            fresh = True
        if fresh and self.format == "csv":
            self._write(csv_header())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may be partial
            view = view[self._file.write(view) or 0:]

    def write(self, rows: Sequence[Row]) -> None:
        """Append rows with one write; they are in the OS's hands when this returns."""
        if rows:
            self._write(b"".join(encode_row(row, self.format) for row in rows))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_output(path: str | Path, *, existing: Existing | None = None, overwrite: bool = False,
                fmt: str | None = None) -> OutputFile | ParquetOutput:
    """The output to append rows to, in its format: :class:`OutputFile` or a Parquet dataset folder."""
    if output_format(path, fmt) == "parquet":
        from serving.batch.parquet import ParquetOutput

        return ParquetOutput(Path(path), overwrite=overwrite)
    return OutputFile(path, existing=existing, overwrite=overwrite, fmt=fmt)
