"""Parquet output (both engines write it the same way): rows ↔ Arrow, the folder of whole parts, what a killed job
leaves and ``--resume`` removes, the checks made before any work, and the local engine end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving.batch import parquet
from serving.batch.job import EXIT_OK, EXIT_ROW_ERRORS
from serving.batch.output import OutputError, check_output, open_output, read_existing
from serving.batch.rows import Row
from serving.contract.prediction import Prediction
from tests.support.batch import AWKWARD, Tree, awkward_rows, local, read_rows
from tests.support.repositories import Repo


def test_rows_round_trip_through_arrow_exactly() -> None:
    original = awkward_rows()
    back = parquet.rows_from_table(parquet.rows_to_table(original))
    assert [r.path for r in back] == AWKWARD  # odd names, newlines and undecodable bytes included
    for got, want in zip(back, original, strict=True):
        assert got.error == " ".join(want.error.split())  # one line, as in CSV and JSONL
        assert [(p.label, p.index) for p in got.predictions] == [(p.label, p.index) for p in want.predictions]
        # float32 in the file: the very value the model computed, nothing rounded away
        assert [p.probability for p in got.predictions] == [float(np.float32(p.probability))
                                                            for p in want.predictions]


def test_parts_are_written_whole_and_resume_drops_a_half_written_one(tmp_path: Path) -> None:
    folder = tmp_path / "o.parquet"
    with parquet.ParquetOutput(folder, part_rows=3) as out:
        out.write(awkward_rows()[:2])            # gathered…
        assert parquet.parts(folder) == []
        out.write(awkward_rows()[2:4])           # …written once there are enough
        assert [p.name for p in parquet.parts(folder)] == ["part-000000.parquet"]
        out.write(awkward_rows()[4:5])
    assert [p.name for p in parquet.parts(folder)] == ["part-000000.parquet", "part-000001.parquet"]  # at close
    # A job killed while writing a part leaves a hidden temporary file: readers skip it, resume removes it.
    torn = folder / ".part-000002.parquet.tmp"
    torn.write_bytes(b"PAR1 half a part")
    assert [r["path"] for r in read_rows(folder)] == AWKWARD[:5]
    existing = read_existing(folder)
    assert [r.path for r in existing.rows] == AWKWARD[:5]
    assert existing.torn_bytes == len(b"PAR1 half a part")
    with open_output(folder, existing=existing) as out:
        out.write(awkward_rows()[5:])
    assert not torn.exists()
    assert [p.name for p in parquet.parts(folder)][-1] == "part-000002.parquet"
    assert [r.path for r in read_existing(folder).rows] == AWKWARD


def test_parts_follow_the_time_too(tmp_path: Path) -> None:
    out = parquet.ParquetOutput(tmp_path / "o.parquet", part_seconds=0.0)
    out.write(awkward_rows()[:1])
    out.write(awkward_rows()[1:2])
    assert len(parquet.parts(tmp_path / "o.parquet")) == 2
    out.close()


def test_checks_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "o.parquet"
    assert check_output(folder, resume=False, overwrite=False) == "parquet"
    assert check_output(tmp_path / "o.out", resume=False, overwrite=False, fmt="parquet") == "parquet"
    folder.mkdir()  # an empty folder is as good as none
    assert check_output(folder, resume=False, overwrite=False) == "parquet"
    with parquet.ParquetOutput(folder) as out:
        out.write([Row("a.png", (Prediction("x", 0, 0.5),))])
    with pytest.raises(OutputError, match=r"o\.parquet exists: pass --resume to continue it or --overwrite"):
        check_output(folder, resume=False, overwrite=False)
    assert check_output(folder, resume=True, overwrite=False) == "parquet"
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files this tool did not write \(notes.txt\)"):
        check_output(folder, resume=False, overwrite=True)
    (tmp_path / "f.parquet").write_bytes(b"")
    with pytest.raises(OutputError, match=r"f\.parquet is a file"):
        check_output(tmp_path / "f.parquet", resume=True, overwrite=False)


def test_overwrite_replaces_the_parts(tmp_path: Path) -> None:
    folder = tmp_path / "o.parquet"
    with parquet.ParquetOutput(folder) as out:
        out.write(awkward_rows())
    with open_output(folder, overwrite=True) as out:
        out.write(awkward_rows()[:1])
    assert [r.path for r in read_existing(folder).rows] == AWKWARD[:1]


def test_a_damaged_part_is_refused_on_resume(tmp_path: Path) -> None:
    folder = tmp_path / "o.parquet"
    folder.mkdir()
    (folder / "part-000000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(OutputError, match="a part is not Parquet of this tool"):
        read_existing(folder)


def test_local_engine_writes_the_same_rows_as_jsonl_and_resumes(repository: Repo, tree: Tree, in_trees: Path,
                                                                tmp_path: Path) -> None:
    jsonl, folder = tmp_path / "o.jsonl", tmp_path / "o.parquet"
    assert local(repository, "imgs", "-o", jsonl, "-q") == EXIT_ROW_ERRORS
    assert local(repository, "imgs/nested", "-o", folder, "-q") == EXIT_OK
    (folder / ".part-000001.parquet.tmp").write_bytes(b"torn")
    assert local(repository, "imgs", "-o", folder, "--resume", "-q") == EXIT_ROW_ERRORS
    assert sorted(r["path"] for r in read_rows(folder)) == tree.all  # each input once
    assert sorted(read_rows(folder), key=lambda r: r["path"]) == sorted(read_rows(jsonl), key=lambda r: r["path"])
    assert sorted(os.listdir(folder)) == ["part-000000.parquet", "part-000001.parquet"]
    assert pq.read_table(folder).schema == parquet.schema()
