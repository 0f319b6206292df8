"""INPUT arguments → the ordered list of files: folders, patterns, stdin lists, odd names, duplicates."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.batch.inputs import InputError, expand_inputs, read_path_list
from tests.support.paths import ROOT
from tests.support.processes import drop_root_privileges


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ["b.png", "a.JPEG", "z.webp", "notes.txt", ".hidden.png", "sub/c.bmp", "sub/deep/d.tif",
                 "sub b/ü ✓.png", ".git/e.png", "[x].png", "other/y.gif"]:
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folder_is_walked_recursively_in_path_order(files: Path) -> None:
    assert expand_inputs(["d"]) == ["d/[x].png", "d/a.JPEG", "d/b.png", "d/other/y.gif", "d/sub/c.bmp",
                                    "d/sub/deep/d.tif", "d/sub b/ü ✓.png", "d/z.webp"]


def test_no_recursive_keeps_the_top_folder(files: Path) -> None:
    assert expand_inputs(["d/"], recursive=False) == ["d/[x].png", "d/a.JPEG", "d/b.png", "d/z.webp"]


def test_named_files_are_always_taken_and_kept_in_argument_order(files: Path) -> None:
    assert expand_inputs(["d/notes.txt", "d/.hidden.png", "d/b.png"]) == ["d/notes.txt", "d/.hidden.png",
                                                                          "d/b.png"]


def test_existing_name_with_glob_characters_is_a_path(files: Path) -> None:
    assert expand_inputs(["d/[x].png"]) == ["d/[x].png"]


def test_patterns(files: Path) -> None:
    assert expand_inputs(["d/*.png"]) == ["d/[x].png", "d/b.png"]  # hidden files are not matched
    assert expand_inputs(["d/**/*.png"]) == ["d/[x].png", "d/b.png", "d/sub b/ü ✓.png"]
    assert expand_inputs(["d/**/*.png"], recursive=False) == ["d/sub b/ü ✓.png"]  # ** is then just *
    assert expand_inputs(["d/sub*"]) == ["d/sub/c.bmp", "d/sub/deep/d.tif", "d/sub b/ü ✓.png"]  # folders walked


def test_duplicates_are_kept_once_at_their_first_place(files: Path) -> None:
    assert expand_inputs(["d/sub/c.bmp", "d/sub", f"{files}/d/sub/c.bmp", "./d/sub/deep/../c.bmp"]) == [
        "d/sub/c.bmp", "d/sub/deep/d.tif"]


def test_stdin_list(files: Path) -> None:
    stdin = io.StringIO("d/b.png\n\n d/lead space.png\r\nd/sub\nd/*.png\n")
    assert expand_inputs(["d/z.webp", "-"], stdin=stdin) == [
        "d/z.webp", "d/b.png", " d/lead space.png", "d/sub/c.bmp", "d/sub/deep/d.tif", "d/*.png"]
    assert read_path_list(io.StringIO("a\n\n\nb")) == ["a", "b"]
    # a real stdin is read as bytes and decoded like file names: a Latin-1 name still names its file
    assert read_path_list(io.TextIOWrapper(io.BytesIO(b"caf\xe9.png\nb.png\n"))) == [os.fsdecode(b"caf\xe9.png"),
                                                                                    "b.png"]


def test_csv_and_parquet_lists_of_paths(files: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the batch CLI's own CSV output is such a list; paths are taken as lines on stdin are (folders walked, a
    # missing file kept for its error row, a pattern taken as a name)
    (files / "list.csv").write_text('label,path\nx,d/z.webp\ny,"d/sub"\nz,\nw,d/gone.png\n', encoding="utf-8")
    pq.write_table(pa.table({"path": ["d/b.png", "d/*.png", "d/z.webp"]}), files / "list.parquet")
    assert expand_inputs(["list.csv", "d/[x].png", "list.parquet"]) == [
        "d/z.webp", "d/sub/c.bmp", "d/sub/deep/d.tif", "d/gone.png", "d/[x].png", "d/b.png", "d/*.png"]
    (files / "d" / "list.CSV").write_text("path\nd/b.png\n")  # any case; a folder walk skips it (not an image)
    assert expand_inputs(["d/list.CSV"]) == ["d/b.png"]
    assert "d/list.CSV" not in expand_inputs(["d"])


@pytest.mark.parametrize(("content", "message"), [
    (b"name\nd/b.png\n", "list.csv: a list of paths needs a 'path' column, found ['name']"),
    (b"", "list.csv: a list of paths needs a 'path' column, found none"),
])
def test_lists_without_a_path_column(files: Path, content: bytes, message: str) -> None:
    (files / "list.csv").write_bytes(content)
    with pytest.raises(InputError, match=re.escape(message)):
        expand_inputs(["list.csv"])
    (files / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"bad\.parquet: cannot read a 'path' column"):
        expand_inputs(["bad.parquet"])


@pytest.mark.parametrize(("inputs", "message"), [
    (["d/missing.png"], "d/missing.png: no such file or folder"),
    (["d/*.jpg"], "pattern 'd/*.jpg' matches no file"),
    (["-", "-"], "'-' (read paths from stdin) may be given only once"),
    (["empty", "d/notes.txt/.."], "d/notes.txt/..: no such file or folder"),
    (["empty", "-"], "no image files found in empty -"),
])
def test_bad_inputs(files: Path, inputs: list[str], message: str) -> None:
    (files / "empty").mkdir()
    with pytest.raises(InputError) as exc:
        expand_inputs(inputs, stdin=io.StringIO(""))
    assert str(exc.value) == message


@pytest.mark.not_quick  # runs Python as a subprocess, without root's capabilities
def test_unreadable_subfolder_is_an_error_not_a_silent_skip(files: Path) -> None:
    (files / "d" / "sub").chmod(0)
    code = "from serving.batch.inputs import expand_inputs; expand_inputs(['d'])"
    try:
        proc = subprocess.run([*drop_root_privileges(), sys.executable, "-c", code], cwd=files, text=True,
                              capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    finally:
        (files / "d" / "sub").chmod(0o755)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "serving.batch.inputs.InputError: cannot list folder d/sub: Permission denied")
