"""``python -m serving batch`` end to end: rows and error rows in both formats, local vs a real server, exit codes,
usage errors refused before any work, and a real SIGKILL followed by ``--resume``."""

from __future__ import annotations

import io
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.batch.job import EXIT_FAILED, EXIT_OK, EXIT_ROW_ERRORS, EXIT_USAGE
from serving.runtime import loader
from tests.support.batch import MODEL, Tree, batch, local, read_rows, spawn
from tests.support.images import make_pngs
from tests.support.processes import descendants, drop_root_privileges, running
from tests.support.repositories import Repo, add_version, tamper_golden
from tests.support.servers import wait_until


def reference(repository: Repo, paths: list[str], k: int) -> list[list]:
    predictor = loader.load(repository.path, MODEL).predictor
    return predictor.classify(paths, top_k=k)


@pytest.mark.not_quick  # more files than two batches: the local engine starts its decoding processes
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_and_error_rows(repository: Repo, tree: Tree, in_trees: Path, tmp_path: Path, suffix: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"out{suffix}"
    assert local(repository, "imgs", "--output", out, "--top-k", "3", "--batch-size", "3") == EXIT_ROW_ERRORS
    rows = read_rows(out)
    assert [r["path"] for r in rows] == tree.all  # every input once, sorted; .txt and hidden files skipped
    expected = dict(zip(tree.good, reference(repository, tree.good, 3), strict=True))
    for row in rows:
        if row["path"] in tree.bad:
            assert row["error"].startswith(tree.bad[row["path"]]), row
            assert (row["label"], row["probability"], row["top_k"]) == (None, None, [])
            continue
        want = expected[row["path"]]
        assert row["error"] is None
        assert row["label"] == want[0].label
        assert row["probability"] == pytest.approx(want[0].probability, abs=1e-6)
        assert [p["label"] for p in row["top_k"]] == [p.label for p in want]
        assert [p["probability"] for p in row["top_k"]] == pytest.approx([p.probability for p in want], abs=1e-6)
    captured = capsys.readouterr()
    assert f"batch: 11 files -> {out}: 8 classified, 3 errors" in captured.out
    assert "images/s" in captured.out
    assert "labels:" in captured.out
    top = max({r["label"] for r in rows if r["label"]}, key=[r["label"] for r in rows].count)
    assert f"    {top}" in captured.out
    assert "batch: 11/11 files (100.0%)" in captured.err  # not a terminal: plain progress lines


@pytest.mark.parametrize(("send", "atol"), [("png", 1e-5), ("tensor", 1e-5), ("original", 1e-5), ("jpeg", 5e-2)])
def test_remote_gives_the_same_rows_as_local(repository: Repo, batch_server, tree: Tree,  # type: ignore
                                             in_trees: Path, tmp_path: Path, send: str, atol: float) -> None:
    # Resized here (png, tensor, jpeg) or by the server (original): the same rows, error rows included (a file the
    # client cannot decode goes as it is, and the server's message is the row's error). 1e-5: onnxruntime in
    # batches of 32 here and of 4 there; the JPEG re-encoding moved one probability by 0.02 at 32 px (same labels).
    assert local(repository, "imgs", "-o", tmp_path / "local.jsonl", "-q") == EXIT_ROW_ERRORS
    assert batch("imgs", "--server", batch_server.address, "--model", MODEL, "-o", tmp_path / "remote.jsonl",
                 "--batch-size", "4", "--workers", "3", "-q", "--send", send) == EXIT_ROW_ERRORS
    here, there = read_rows(tmp_path / "local.jsonl"), read_rows(tmp_path / "remote.jsonl")
    assert [(r["path"], r["label"], r["error"]) for r in here] == [(r["path"], r["label"], r["error"]) for r in there]
    assert [r["probability"] for r in here] == pytest.approx([r["probability"] for r in there], abs=atol)


def test_exit_code_zero_when_every_file_is_classified(repository: Repo, tree: Tree, in_trees: Path,
                                                      tmp_path: Path) -> None:
    assert local(repository, "imgs/nested", "imgs/a.png", "-o", tmp_path / "o.csv", "-q") == EXIT_OK
    assert [r["path"] for r in read_rows(tmp_path / "o.csv")] == [
        "imgs/nested/d.JPG", "imgs/nested/deeper/c.png", "imgs/nested/rgba.png", "imgs/a.png"]


def test_stdin_list_no_recursive_and_duplicates(repository: Repo, tree: Tree, in_trees: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    listed = "imgs/ünï cödé ✓.webp\n\nimgs/missing.png\nimgs/nested\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(listed))
    out = tmp_path / "o.jsonl"
    assert local(repository, "-", "imgs/nested/d.JPG", "--no-recursive", "-o", out, "-q") == EXIT_ROW_ERRORS
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["imgs/ünï cödé ✓.webp", "imgs/missing.png", "imgs/nested/d.JPG",
                                         "imgs/nested/rgba.png"]
    assert rows[1]["error"] == "cannot read file: No such file or directory"


def test_resume_skips_rows_already_done(repository: Repo, tree: Tree, in_trees: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.csv"
    assert local(repository, "imgs/nested", "-o", out, "-q") == EXIT_OK
    first = out.read_bytes()
    capsys.readouterr()
    assert local(repository, "imgs", "-o", out, "--resume", "-q") == EXIT_ROW_ERRORS
    assert out.read_bytes().startswith(first)  # appended, the earlier rows untouched
    assert sorted(r["path"] for r in read_rows(out)) == sorted(tree.all)
    summary = capsys.readouterr().out
    assert "resumed: 3 rows were already there" in summary
    assert "this run: 8 files" in summary
    # --overwrite starts again
    assert local(repository, "imgs/a.png", "-o", out, "--overwrite", "-q") == EXIT_OK
    assert [r["path"] for r in read_rows(out)] == ["imgs/a.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["imgs", "-o", "{tmp}/exists.csv"], "exists.csv exists: pass --resume to continue it or --overwrite"),
    (["imgs", "-o", "{tmp}/out.txt"], "output must end in .csv, .jsonl or .parquet"),
    (["imgs", "-o", "{tmp}/out.csv", "--format", "parquet"], "has the suffix of csv, but the format is parquet"),
    (["imgs", "-o", "{tmp}/o.csv", "--ray-address", "127.0.0.1:1"], "--ray-address needs --engine ray"),
    (["imgs", "-o", "{tmp}/o.csv", "--engine", "ray", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["imgs", "-o", "{tmp}/no/such/out.csv"], "output folder {tmp}/no/such does not exist"),
    (["imgs", "-o", "{tmp}/dir.csv"], "output {tmp}/dir.csv is a folder"),
    (["imgs/nope", "-o", "{tmp}/o.csv"], "imgs/nope: no such file or folder"),
    (["imgs/*.gif", "-o", "{tmp}/o.csv"], "pattern 'imgs/*.gif' matches no file"),
    (["{tmp}", "-o", "{tmp}/o.csv"], "no image files found in {tmp}"),
    (["imgs", "-o", "{tmp}/o.csv", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["imgs", "-o", "{tmp}/o.csv", "--top-k", "9"], "top_k must be between 1 and 4 (the number of classes), got 9"),
    (["imgs", "-o", "{tmp}/o.csv", "--version", "7"], "model 'rgb' has no version 7"),
])
def test_usage_errors_exit_2_before_any_work(repository: Repo, tree: Tree, in_trees: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    (tmp_path / "exists.csv").write_text("path,label,probability,top_k,error\n")
    (tmp_path / "dir.csv").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    assert local(repository, *args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message.format(tmp=tmp_path) in err
    assert "files to classify" not in err  # refused before the job started
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.csv", "exists.csv"]  # and nothing was written


def test_unknown_model_and_argument_conflicts_are_usage_errors(repository: Repo, tree: Tree, in_trees: Path,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert batch("imgs", "--repository", repository.path, "--model", "nope", "-o", tmp_path / "o.csv") == EXIT_USAGE
    assert "model 'nope' is not in" in capsys.readouterr().err
    for extra in (["--resume", "--overwrite"], ["--server", "127.0.0.1:1"]):
        with pytest.raises(SystemExit) as exc:
            local(repository, "imgs", "-o", tmp_path / "o.csv", *extra)
        assert exc.value.code == EXIT_USAGE
        assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.not_quick  # binds a port to find one nobody listens on
def test_rejected_model_and_unreachable_server_exit_1(repository: Repo, tree: Tree, in_trees: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    add_version(repo, repository.path / MODEL / "1", "tampered", 1, tamper_golden)
    assert batch("imgs", "--repository", repo, "--model", "tampered", "-o", tmp_path / "o.csv") == EXIT_FAILED
    assert "error: model 'tampered' refused: golden self-check failed" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert batch("imgs", "--server", f"127.0.0.1:{port}", "--model", MODEL, "-o", tmp_path / "o.csv") == EXIT_FAILED
    assert f"error: server 127.0.0.1:{port}: UNAVAILABLE" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_remote_unknown_model_is_a_usage_error(batch_server, tree: Tree, in_trees: Path, tmp_path: Path,  # type: ignore
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert batch("imgs", "--server", batch_server.address, "--model", "nope", "-o", tmp_path / "o.csv") == EXIT_USAGE
    assert "error: " in (err := capsys.readouterr().err)
    assert "nope" in err


@pytest.mark.not_quick  # runs the CLI as a subprocess
# ---- subprocesses --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the child processes")
def test_sigkill_then_resume_gives_every_input_exactly_once(repository: Repo, tmp_path: Path) -> None:
    n = 800
    make_pngs(tmp_path / "many", n, size=(16, 16))
    out = tmp_path / "out.csv"
    args = ["many", "--repository", repository.path, "--model", MODEL, "-o", out, "--batch-size", "4",
            "--workers", "1", "--threads", "1"]
    proc = spawn(args, tmp_path)
    try:  # kill it once some rows are on disk: they were flushed as they completed (a file has no event to wait on)
        wait_until(lambda: proc.poll() is not None or (out.exists() and out.read_bytes().count(b"\n") > 12), 60,
                   "rows on disk", interval=0.002)
        helpers = descendants(proc.pid)  # the decoding processes (and multiprocessing's own helpers)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, f"the job ended by itself before it could be killed: {proc.stderr}"
    assert helpers, "the job had no decoding processes"
    # They are not our children: no wait() tells when they end, /proc does.
    wait_until(lambda: not any(running(pid) for pid in helpers), 10, "the decoding processes to end after the job")
    killed = out.read_bytes()
    done = killed.count(b"\n") - 1
    assert 12 <= done < n
    # A crash in the middle of a write would leave a torn last row: make one, resume must redo that file.
    torn = f"many/{done:05d}.png,blue,0.4".encode()
    out.write_bytes(killed + torn)
    proc = spawn([*args, "--resume", "--workers", "2", "--batch-size", "32", "--threads", "2"], tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_OK, stderr
    assert f"resumed: {done} rows were already there; a torn last row ({len(torn)} bytes) was redone" in stdout
    final = out.read_bytes()
    assert final.startswith(killed)
    paths = [r["path"] for r in read_rows(out)]
    assert paths == [f"many/{i:05d}.png" for i in range(n)]  # each once, in order, no fragment left


@pytest.mark.not_quick  # runs the CLI as a subprocess
def test_read_only_output_folder_fails_fast(repository: Repo, tree: Tree, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = spawn([tree.root, "--repository", repository.path, "--model", MODEL, "-o", locked / "o.csv"],
                     tmp_path, drop_root_privileges())
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == EXIT_USAGE, stderr
    assert stderr == f"error: cannot write the output {locked / 'o.csv'}: Permission denied\n"
    assert stdout == ""
    assert list(locked.iterdir()) == []


def test_probabilities_are_float32_exact(repository: Repo, tree: Tree, in_trees: Path, tmp_path: Path) -> None:
    """What is written reads back as the very float32 the model produced (shortest repr, no rounding loss)."""
    assert local(repository, "imgs/a.png", "-o", tmp_path / "o.csv", "--top-k", "4", "-q") == EXIT_OK
    (want,) = reference(repository, ["imgs/a.png"], 4)
    (row,) = read_rows(tmp_path / "o.csv")
    got = np.array([p["probability"] for p in row["top_k"]], dtype=np.float32)
    np.testing.assert_array_equal(got, np.array([p.probability for p in want], dtype=np.float32))
