"""Batch rows as Arrow tables, and the Parquet output: a dataset folder of parts, each one written whole or not at all.

One Arrow schema (:data:`SCHEMA`) carries rows everywhere they travel as columns: from the Ray engine's actors to the
driver, and into Parquet. Its columns are the CSV/JSONL columns with their natural types: ``path``, ``label`` and
``probability`` (float32, the model's own value; null on an error row), ``top_k`` (a list of
``{label, index, probability}``) and ``error`` (null when the file has a prediction). Arrow strings are UTF-8: a
name's undecodable bytes are written as ``\\udcXX`` escapes, as in JSON Lines, and read back as the same name.

Why a folder and not one file: a Parquet file is readable only once its footer is written, so a job killed while
writing one big file would lose every row. Instead rows are gathered and written as ``part-NNNNNN.parquet`` files,
each first to a hidden temporary name and then renamed (atomic on POSIX): a part is either complete or absent, and a
killed job leaves at most one hidden temporary file, which ``--resume`` removes. Readers (pyarrow, pandas, Spark,
DuckDB, Ray Data) take the folder as one data set and skip hidden files.

pyarrow is imported only when a Parquet output or a Ray job needs it (it is in the ``ray`` extra, not in the slim
serve image).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.batch.rows import Row, escape_surrogates, one_line, unescape_surrogates
from serving.contract.prediction import Prediction

if TYPE_CHECKING:
    import pyarrow as pa

PART = re.compile(r"part-(\d{6})\.parquet")
TEMPORARY = re.compile(r"\.part-\d{6}\.parquet\.tmp")
PART_ROWS = 50_000      # rows per part at most: a few MB, and a resumed job redoes at most this many…
PART_SECONDS = 10.0     # …or this many seconds of work, whichever comes first


def arrow() -> Any:
    """pyarrow, or ``ImportError`` with the line to install it."""
    try:
        import pyarrow
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'resnet-serving[ray]'") from None
    return pyarrow


def schema() -> pa.Schema:
    pa = arrow()
    prediction = pa.struct([("label", pa.string()), ("index", pa.int32()), ("probability", pa.float32())])
    return pa.schema([("path", pa.string()), ("label", pa.string()), ("probability", pa.float32()),
                      ("top_k", pa.list_(prediction)), ("error", pa.string())])


def rows_to_table(rows: Sequence[Row]) -> pa.Table:
    """Rows → an Arrow table in :func:`schema` (an error text on one line, as in CSV and JSONL)."""
    return arrow().Table.from_pylist(
        [{"path": escape_surrogates(r.path), "label": r.label, "probability": r.probability,
          "top_k": [{"label": p.label, "index": p.index, "probability": p.probability} for p in r.predictions],
          "error": one_line(r.error) or None}
         for r in rows], schema=schema())


def rows_from_table(table: pa.Table) -> list[Row]:
    """An Arrow table in :func:`schema` (or with at least its ``path``, ``top_k`` and ``error``) → rows."""
    columns = table.select(["path", "top_k", "error"]).to_pydict()
    return [Row(unescape_surrogates(path),
                tuple(Prediction(p["label"], p["index"], p["probability"]) for p in top_k or ()), error or "")
            for path, top_k, error in zip(columns["path"], columns["top_k"], columns["error"], strict=True)]


# ---- the dataset folder --------------------------------------------------------------------------------------------

def parts(folder: Path) -> list[Path]:
    """The complete parts, in the order they were written."""
    return sorted(p for p in folder.iterdir() if PART.fullmatch(p.name))


def temporaries(folder: Path) -> list[Path]:
    """Parts a killed job left half-written."""
    return [p for p in folder.iterdir() if TEMPORARY.fullmatch(p.name)]


def foreign(folder: Path) -> list[str]:
    """Names in ``folder`` this tool did not write: it will not add to, nor delete, such a folder."""
    return sorted(p.name for p in folder.iterdir() if not (PART.fullmatch(p.name) or TEMPORARY.fullmatch(p.name)))


def read_rows(folder: Path) -> tuple[list[Row], int]:
    """The rows of every complete part, and the bytes of half-written ones (dropped when the job resumes)."""
    import pyarrow.parquet as pq

    rows: list[Row] = []
    for part in parts(folder):
        rows += rows_from_table(pq.read_table(part, columns=["path", "top_k", "error"]))
    return rows, sum(p.stat().st_size for p in temporaries(folder))


class ParquetOutput:
    """Rows appended to a dataset folder, one part per ``part_rows`` rows or ``part_seconds`` seconds, and at close."""

    def __init__(self, folder: Path, *, overwrite: bool = False, part_rows: int = PART_ROWS,
                 part_seconds: float = PART_SECONDS) -> None:
        self.folder, self.part_rows, self.part_seconds = folder, part_rows, part_seconds
        self.format = "parquet"
        folder.mkdir(exist_ok=True)
        # Resuming drops what a killed job left half-written; --overwrite drops everything (the caller has checked
        # that the folder holds nothing but parts).
        for stale in temporaries(folder) + (parts(folder) if overwrite else []):
            stale.unlink()
        done = parts(folder)
        self._next = int(PART.fullmatch(done[-1].name).group(1)) + 1 if done else 0  # type: ignore[union-attr]
        self._pending: list[Row] = []
        self._since = time.monotonic()

    def write(self, rows: Sequence[Row]) -> None:
        self._pending += rows
        if len(self._pending) >= self.part_rows or time.monotonic() - self._since >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the gathered rows as one part: to a hidden name, synced, then renamed into place."""
        import pyarrow.parquet as pq

        self._since = time.monotonic()
        if not self._pending:
            return
        name = f"part-{self._next:06d}.parquet"
        temporary = self.folder / f".{name}.tmp"
        pq.write_table(rows_to_table(self._pending), temporary)
        with open(temporary, "rb") as f:  # the data on disk before the name says the part is complete
            os.fsync(f.fileno())
        os.rename(temporary, self.folder / name)
        self._next += 1
        self._pending = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
