"""Remote mode when the server, not a file, is the problem: the job stops with exit code 1 and blames no file, and
``--resume`` against a server that is back finishes it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from batch_fixtures import MODEL, make_pngs, read_rows

from serving import cli
from serving.batch.job import EXIT_FAILED, EXIT_OK
from tests.serving.serving_fixtures import ServerThread, base_config


def close_when(out: Path, rows: int, server: ServerThread, timeout: float = 60) -> threading.Thread:
    """Stop ``server`` as soon as ``out`` holds ``rows`` rows (the job is then mid-way)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= rows:
                break
            time.sleep(0.002)
        server.close(grace=0.0)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_server_gone_mid_job_stops_it_resumably(batch_repository: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    n = 600
    make_pngs(tmp_path / "many", n, size=(16, 16))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.jsonl"
    server = ServerThread(base_config(batch_repository)).start()
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

    again = ServerThread(base_config(batch_repository)).start()
    try:
        resumed = cli.main([*args, "--server", again.address, "--resume", "--batch-size", "32", "--workers", "4"])
        assert resumed == EXIT_OK
    finally:
        again.close()
    assert [r["path"] for r in read_rows(out)] == [f"many/{i:05d}.png" for i in range(n)]
