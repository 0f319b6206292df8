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


def test_check_command_fails_with_one_line_per_problem(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A failed check: FAIL and its name, then each problem indented; exit 1 (what `make check-deploy` stops on)."""
    seen: list[bool] = []

    def run_all(with_hadolint: bool = True) -> dict[str, list[str]]:
        seen.append(with_hadolint)
        return {"Dockerfile": [], "deploy/kubernetes": ["hpa.yaml: one", "hpa.yaml: two"]}

    monkeypatch.setattr(check, "run_all", run_all)
    assert check.main(["--no-hadolint"]) == 1
    assert seen == [False]
    assert capsys.readouterr().out == ("ok   Dockerfile\nFAIL deploy/kubernetes\n     hpa.yaml: one\n"
                                       "     hpa.yaml: two\n")
