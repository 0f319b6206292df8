"""`python -m deploy.check`: the offline checks of every container file in one command."""

from __future__ import annotations

import pytest

from deploy import check


def test_check_command_runs_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m deploy.check` (the Makefile's check-deploy): every check by name, all passing."""
    assert check.main([]) == 0
    out = capsys.readouterr().out
    for name in ("Dockerfile", "docker-compose.yml", "docker compose config",
                 "deploy/prometheus.yml", "deploy/kubernetes", "hadolint"):
        assert f"ok   {name}\n" in out
