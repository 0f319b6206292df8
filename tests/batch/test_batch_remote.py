"""Remote mode when the server, not a file, is the problem: the job stops with exit code 1 and blames no file, and
``--resume`` against a server that is back finishes it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from serving import cli
from serving.batch.job import EXIT_FAILED, EXIT_OK
from tests.support.batch import MODEL, read_rows
from tests.support.images import make_pngs
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config, wait_until


def close_when(out: Path, rows: int, server: ServerThread, timeout: float = 60) -> threading.Thread:
    """Stop ``server`` as soon as ``out`` holds ``rows`` rows (the job is then mid-way)."""

    def watch() -> None:
        try:  # the job writes a file: no event to wait on, so the file is polled
            wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") >= rows, timeout, f"{rows} rows",
                       interval=0.002)
        finally:
            server.close(grace=0.0)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_server_gone_mid_job_stops_it_resumably(repository: Repo, make_server: Callable[..., ServerThread],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    n = 600
    make_pngs(tmp_path / "many", n, size=(16, 16))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.jsonl"
    server = make_server(base_config(repository.path))
    watcher = close_when(out, 10, server)
    args = ["batch", "many", "--model", MODEL, "-o", str(out), "--batch-size", "2", "--workers", "1", "-q"]
    try:
        code = cli.main([*args, "--server", server.address, "--retries", "1"])
    finally:
        watcher.join(60)
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert err.startswith("error: server answered UNAVAILABLE: ")
    assert err.rstrip().endswith(f"(after 2 attempts); the rows so far are in {out}: rerun with --resume")
    rows = read_rows(out)
    assert 10 <= len(rows) < n
    assert all(r["error"] is None for r in rows)  # no file was blamed for the server's absence

    again = make_server(base_config(repository.path))
    resumed = cli.main([*args, "--server", again.address, "--resume", "--batch-size", "32", "--workers", "4"])
    assert resumed == EXIT_OK
    assert [r["path"] for r in read_rows(out)] == [f"many/{i:05d}.png" for i in range(n)]
