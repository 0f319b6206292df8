"""Which files a batch job classifies, in a deterministic order: INPUT arguments → a list of path strings.

Rules (also in ``python -m serving batch --help``):
- an INPUT that exists is taken as a path, even when its name holds ``*?[`` (``photo [1].png``);
- a file is always classified, whatever its name (a non-image then gets an error row), except a list of paths:
  a ``.csv`` file with a ``path`` column (a header row names the columns; the batch CLI's own output is one) or a
  ``.parquet`` file or folder with a ``path`` column, whose paths are taken like lines on stdin (below);
- a folder is walked — recursively unless ``recursive=False`` — for files with an image suffix
  (:data:`IMAGE_SUFFIXES`, any case); names starting with ``.`` (``.DS_Store``, macOS ``._x.jpg`` resource forks,
  ``.git/``) are skipped, and symlinked folders are not followed (no loops);
- anything else with ``*?[`` is a glob pattern (``**`` spans folders when recursive); matched files are taken as
  they are — the pattern is the filter — and matched folders are walked as above;
- ``-`` reads one path per line from stdin (files or folders, no patterns: a line is a name, whatever it holds).
  Blank lines are skipped; a listed file that does not exist becomes an error row, not a usage error, since such
  lists are usually made elsewhere and the rest of them is still worth doing;
- every other INPUT that does not exist is a usage error (:class:`InputError`), found before any work.

Order: INPUT arguments in the order given; a folder's or a pattern's files sorted by their path components (code
point order, independent of the locale). A file reached twice (a folder and a file in it) is kept at its first
place only, so each input gets exactly one row.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Iterator
from typing import TextIO

from serving.batch.rows import unescape_surrogates

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".csv", ".parquet"})
STDIN = "-"


class InputError(ValueError):
    """An INPUT argument names nothing, or the arguments select no file at all (a usage error)."""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _sort_key(path: str) -> list[str]:
    return path.split(os.sep)


def walk_folder(folder: str, recursive: bool = True) -> list[str]:
    """The image files under ``folder`` (see the module docstring), sorted by path components."""
    found: list[str] = []

    def unreadable(e: OSError) -> None:  # os.walk would skip it silently, and its files would never get a row
        raise InputError(f"cannot list folder {e.filename}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        found += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_name(f)]
    return sorted(found, key=_sort_key)


def _expand_pattern(pattern: str, recursive: bool) -> list[str]:
    files: list[str] = []
    for match in sorted(glob.glob(pattern, recursive=recursive), key=_sort_key):
        files += walk_folder(match, recursive) if os.path.isdir(match) else [match]
    return files


def read_path_list(stream: TextIO) -> list[str]:
    """One path per line; only the line ending is removed (names may start or end with spaces). Lines are decoded
    like file names (``os.fsdecode``), so a name that is not valid UTF-8 still names its file."""
    raw = getattr(stream, "buffer", None)
    lines = (os.fsdecode(line) for line in raw) if raw is not None else stream
    return [line.rstrip("\r\n") for line in lines if line.strip("\r\n")]


def _read_csv_list(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or ()):
            raise InputError(f"{path}: a list of paths needs a 'path' column, found {reader.fieldnames or 'none'}")
        return [row["path"] for row in reader if row["path"]]


def _read_parquet_list(path: str) -> list[str]:
    from serving.batch.parquet import arrow

    try:
        arrow()
        import pyarrow.parquet as pq

        column = pq.read_table(path, columns=["path"]).column("path")
    except (ImportError, ValueError, KeyError) as e:  # no pyarrow; not Parquet; no such column (ArrowInvalid)
        raise InputError(f"{path}: cannot read a 'path' column: {e}") from None
    return [unescape_surrogates(p) for p in column.to_pylist() if p]  # as the Parquet output writes names


def read_list_file(path: str) -> list[str]:
    """The paths a ``.csv`` or ``.parquet`` list names, in its order (``InputError`` if it has no ``path`` column)."""
    try:
        return (_read_parquet_list if path.lower().endswith(".parquet") else _read_csv_list)(path)
    except OSError as e:
        raise InputError(f"cannot read the list {path}: {e.strerror or e}") from None


def _expand_one(item: str, recursive: bool, from_list: bool) -> list[str]:
    if not from_list and os.path.splitext(item)[1].lower() in LIST_SUFFIXES and os.path.exists(item):
        return [p for listed in read_list_file(item) for p in _expand_one(listed, recursive, from_list=True)]
    if os.path.isdir(item):
        return walk_folder(item, recursive)
    if os.path.lexists(item) or from_list:
        return [item]
    if glob.has_magic(item):
        matches = _expand_pattern(item, recursive)
        if not matches:
            raise InputError(f"pattern {item!r} matches no file")
        return matches
    raise InputError(f"{item}: no such file or folder")


def _unique(paths: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for path in paths:
        path = os.path.normpath(path)
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            yield path


def expand_inputs(inputs: Iterable[str], *, recursive: bool = True, stdin: TextIO | None = None) -> list[str]:
    """Every file the INPUT arguments select, once each, in a deterministic order; ``InputError`` on a bad one."""
    inputs = list(inputs)
    if inputs.count(STDIN) > 1:
        raise InputError("'-' (read paths from stdin) may be given only once")
    paths: list[str] = []
    for item in inputs:
        if item == STDIN:
            if stdin is None:
                raise InputError("'-' given but there is no stdin to read paths from")
            for listed in read_path_list(stdin):
                paths += _expand_one(listed, recursive, from_list=True)
        else:
            paths += _expand_one(item, recursive, from_list=False)
    unique = list(_unique(paths))
    if not unique:
        raise InputError("no image files found in " + " ".join(inputs))
    return unique
