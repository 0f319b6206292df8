"""`python -m training export …` (the lead's CLI) over this library: exit codes and one-line messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.__main__ import main


def test_cli_exit_codes(run_of, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_of("resnet20", 10, 1, 16)  # random weights: it has learned nothing
    repo = tmp_path / "repo"
    assert main(["export", str(run), "--repository", str(repo), "--name", "digits"]) == 1
    refused = capsys.readouterr()
    assert refused.err.count("\n") == 1
    assert refused.err.startswith("verification failed: the model has not learned: validation accuracy ")
    assert "not published (--allow-unlearned publishes it all the same)" in refused.err
    assert not (repo / "digits").exists()

    assert main(["export", str(run), "--repository", str(repo), "--name", "digits", "--allow-unlearned"]) == 0
    published = capsys.readouterr()
    assert published.out.strip().endswith(str(repo / "digits" / "1"))
    assert "learned: NO (" in published.out
    assert "published all the same (--allow-unlearned)" in published.out
    doc = json.loads((repo / "digits" / "1" / "verification.json").read_text())
    assert doc["learned"]["learned"] is False
    assert doc["learned"]["allowed_unlearned"] is True
    assert json.loads((repo / "digits" / "1" / "model.json").read_text())["verification"]["learned"] is False

    assert main(["export", str(run), "--repository", str(repo), "--name", "digits", "--atol", "0"]) == 1
    assert "max_abs_diff" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--repository", str(repo), "--name", "digits"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(run), "--repository", str(repo), "--name", "digits", "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "config.pbtxt"]
