"""Rows ↔ CSV/JSONL: round trips of awkward paths, torn last records, corrupt files, and the checks made before any
work (format, folder, existing output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.batch.output import (
    OutputError,
    OutputFile,
    check_output,
    complete_records,
    encode_row,
    parse_output,
    read_existing,
)
from serving.batch.rows import Row
from serving.contract.prediction import Prediction
from tests.support.batch import AWKWARD, awkward_rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip_of_awkward_paths_and_messages(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"o.{fmt}"
    with OutputFile(path) as out:
        out.write(awkward_rows()[:3])
        out.write(awkward_rows()[3:])
    got, end = parse_output(path.read_bytes(), fmt)
    assert end == path.stat().st_size
    if fmt == "jsonl":  # valid UTF-8 for any JSON reader, undecodable name bytes included (escaped)
        assert "\\udce9" in path.read_bytes().decode("utf-8")
    assert [r.path for r in got] == AWKWARD
    for g, r in zip(got, awkward_rows(), strict=True):
        assert g.error == " ".join(r.error.split())
        assert [(p.label, p.index) for p in g.predictions] == [(p.label, p.index) for p in r.predictions]
        assert [p.probability for p in g.predictions] == pytest.approx([p.probability for p in r.predictions],
                                                                       rel=1e-7)


def test_formats_written(tmp_path: Path) -> None:
    # float32(0.1) is 0.100000001490116…: written as the shortest decimal that reads back as that float32
    row = Row("a.png", (Prediction("blue", 2, float(np.float32(0.1))),))
    assert encode_row(row, "csv") == (
        b'a.png,blue,0.1,"[{""label"":""blue"",""index"":2,""probability"":0.1}]",\n')
    assert json.loads(encode_row(row, "jsonl")) == {
        "path": "a.png", "label": "blue", "probability": 0.1,
        "top_k": [{"label": "blue", "index": 2, "probability": 0.1}], "error": None}
    bad = Row("b.png", error="empty image payload")
    assert encode_row(bad, "csv") == b"b.png,,,,empty image payload\n"
    assert json.loads(encode_row(bad, "jsonl")) == {"path": "b.png", "label": None, "probability": None,
                                                    "top_k": [], "error": "empty image payload"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_torn_tail_is_dropped_and_only_it(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"o.{fmt}"
    with OutputFile(path) as out:
        out.write(awkward_rows())
    data = path.read_bytes()
    ends = [end for _, end in complete_records(data, fmt)]
    assert ends[-1] == len(data)
    for cut in range(len(data)):  # a crash after any byte
        parsed, end = parse_output(data[:cut], fmt)
        assert end == max([0, *(e for e in ends if e <= cut)])
        assert len(parsed) == len([e for e in ends if e <= cut]) - (fmt == "csv" and end > 0)


def test_resume_truncates_the_torn_record_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    with OutputFile(path) as out:
        out.write(awkward_rows()[:4])
    intact = path.read_bytes()
    path.write_bytes(intact + encode_row(awkward_rows()[4], "csv")[:9])
    existing = read_existing(path)
    assert (existing.end, existing.torn_bytes) == (len(intact), 9)
    assert [r.path for r in existing.rows] == AWKWARD[:4]
    with OutputFile(path, existing=existing) as out:
        out.write(awkward_rows()[4:])
    assert path.read_bytes().startswith(intact)
    assert [r.path for r in read_existing(path).rows] == AWKWARD


def test_resume_of_a_torn_header_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_bytes(b"path,lab")
    with OutputFile(path, existing=read_existing(path)) as out:
        out.write(awkward_rows()[:1])
    assert path.read_bytes() == b"path,label,probability,top_k,error\n" + encode_row(awkward_rows()[0], "csv")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("o.csv", b"name,score\nx,1\n", "does not start with the header path,label,probability,top_k,error"),
    ("o.csv", b"path,label,probability,top_k,error\na.png,blue\nb.png,,,,x\n", "record 2 is not a row of this "
     "tool (2 fields, expected 5); fix it, or start again with --overwrite"),
    ("o.jsonl", b'{"path": "a.png"}\n[1, 2]\n{"path": "c.png"}\n', "record 2 is not a row of this tool "
     "(not an object with a 'path')"),
    ("o.jsonl", b'{"path": "a.png"}\n{"path": "b.png", "top_k": [{"label": "x"}]}\n', "record 2 is not a row"),
])
def test_a_file_that_is_not_ours_is_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(OutputError) as exc:
        read_existing(tmp_path / name)
    assert message in str(exc.value)


def test_checks_before_any_work(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new.jsonl", resume=False, overwrite=False) == "jsonl"
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
    (tmp_path / "old.csv").write_text("x")
    for resume, overwrite in ((True, False), (False, True)):
        assert check_output(tmp_path / "old.csv", resume=resume, overwrite=overwrite) == "csv"
    cases = [
        (tmp_path / "old.csv", "old.csv exists: pass --resume to continue it or --overwrite to replace it"),
        (tmp_path / "o.tsv", "output must end in .csv, .jsonl or .parquet (it picks the format; or pass --format)"),
        (tmp_path / "no" / "o.csv", f"output folder {tmp_path / 'no'} does not exist"),
    ]
    for path, message in cases:
        with pytest.raises(OutputError) as exc:
            check_output(path, resume=False, overwrite=False)
        assert message in str(exc.value)


def test_new_output_refuses_to_clobber(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text("precious")
    with pytest.raises(FileExistsError):
        OutputFile(tmp_path / "o.csv")
    assert (tmp_path / "o.csv").read_text() == "precious"
