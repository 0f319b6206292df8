"""`python -m training export …` (the lead's CLI) over this library: exit codes and one-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.__main__ import main


def test_cli_exit_codes(run_of, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_of("resnet20", 10, 1, 16)
    repo = tmp_path / "repo"
    assert main(["export", str(run), "--repository", str(repo), "--name", "digits"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(repo / "digits" / "1"))

    assert main(["export", str(run), "--repository", str(repo), "--name", "digits", "--atol", "0"]) == 1
    assert "max_abs_diff" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--repository", str(repo), "--name", "digits"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run), "--repository", str(repo), "--name", "digits", "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "config.pbtxt"]
