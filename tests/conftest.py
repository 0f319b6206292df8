"""Fixtures shared by every test folder; the helpers behind them are in tests/support/.

The session-wide repository (digits and rgb, version 1 each) and the predictors loaded from it are read-only by
convention: a test that changes a repository copies what it needs into its own ``tmp_path`` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.images import make_image_folder, write_image_files

if TYPE_CHECKING:  # the fixtures import these when used: a test folder that needs no server loads no gRPC
    from serving.config import ServerConfig
    from serving.runtime.predictor import Predictor
    from tests.support.repositories import Repo
    from tests.support.servers import ServerThread

# Two cores, several test workers and servers: keep each library from spawning a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """img0.png … img5.jpg: PNG and JPEG, L/RGB/RGBA, several sizes."""
    return write_image_files(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """digits (L 28×28, 10 classes) and rgb (RGB 32×32, 4 classes), version 1 each, with the runs behind them."""
    from tests.support.repositories import build_repository

    return build_repository(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="session")
def digits(repository: Repo) -> Predictor:
    """The in-process twin of what a server serves from ``repository``: the oracle for its answers."""
    from serving.runtime import loader

    return loader.load(repository.path, "digits", threads=1).predictor


@pytest.fixture(scope="session")
def rgb(repository: Repo) -> Predictor:
    from serving.runtime import loader

    return loader.load(repository.path, "rgb", threads=1).predictor


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    """``make_server(config, load=True)``: an in-thread server for this test, stopped at its end."""
    from tests.support.servers import ServerThread

    started: list[ServerThread] = []

    def make(config: ServerConfig, load: bool = True) -> ServerThread:
        thread = ServerThread(config)
        started.append(thread)
        return thread.start(load)

    yield make
    for thread in started:
        thread.close(grace=0.5)


# ==== the quick tier (make quick): tests that open no sockets and start no processes ================================
# Every test is marked `quick` unless it is `slow` or `not_quick`, uses a fixture in NOT_QUICK_FIXTURES (directly or
# through another fixture), or is listed in NOT_QUICK_TESTS (it starts processes itself, or is too long for a tier
# of 3 minutes on 2 cores). So the classification follows what a test uses, not its folder: a new in-process test (a
# data plane over a tiny model, say) is quick without anyone saying so. `pytest --quick` runs only the quick tests
# and holds them to it: an AF_INET/AF_INET6 bind, connect or sendto, a gRPC server or channel, or a subprocess, fork
# or multiprocessing start fails the test, so a test that is quick by mistake fails instead of quietly opening
# sockets. Other runs (make test, pytest -m quick) are unguarded: a session's servers serve from threads of their own.

# Fixtures that start servers, containers, browsers, Ray or subprocesses (tiny_run runs the experiments, which record
# the CPU with `uname -p`).
NOT_QUICK_FIXTURES = frozenset({
    "make_server", "server", "batch_server", "explain_server", "page_server", "serve_process", "guarded", "servers",
    "ray_address", "docker", "serve_venv", "trained", "browser", "certs", "tiny_run",
})
# A module, or a test with all its parameters. (Tests in tests/batch say it with @pytest.mark.not_quick instead.)
NOT_QUICK_TESTS = frozenset({
    # subprocesses: python -m deploy.check, docker-compose config, hadolint, git ls-files
    "tests/deploy/test_deploy_check_cli.py",
    "tests/deploy/test_deploy_compose.py::test_compose_passes_with_variables_set",
    "tests/deploy/test_deploy_compose.py::test_docker_compose_accepts_every_profile",
    "tests/deploy/test_deploy_compose.py::test_docker_compose_rejects_a_broken_file",
    "tests/deploy/test_deploy_dockerfile.py::test_hadolint_passes_the_dockerfile",
    "tests/deploy/test_deploy_dockerfile.py::test_hadolint_reports_warnings",
    "tests/deploy/test_deploy_dockerfile.py::test_project_rules_pass",
    "tests/deploy/test_deploy_dockerfile.py::test_project_rules_catch",
    # subprocesses: a fresh interpreter, python -m models / serving serve, the experiment runner's `uname -p`
    "tests/models/test_archs.py::test_light_modules_stay_light",
    "tests/models/test_summary_cli.py::test_python_dash_m_models_exit_code",
    "tests/reliability/test_reliability_security.py::test_the_planted_payloads_are_live_and_the_audit_hook_sees_them",
    "tests/reliability/test_reliability_security.py::test_planted_pickles_are_never_executed",
    "tests/serving/test_serving_auth.py::test_a_missing_token_file_stops_the_start",
    "tests/serving/test_serving_cli.py",
    "tests/experiments/test_experiments_transfer.py::test_transfer_fine_tunes_from_the_source_run_with_the_same_budget",
    # in process, but too long: real exports and int8 quantization of every model family, about 2 minutes
    "tests/export/test_export_repository.py",
})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true",
                     help="only the quick tier (no sockets, no processes; tests/conftest.py), with that enforced")


def _is_quick(item: pytest.Item) -> bool:
    return not (item.get_closest_marker("slow") or item.get_closest_marker("not_quick")
                or NOT_QUICK_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                or _listed(item.nodeid))


def _listed(nodeid: str) -> bool:
    """Whether ``nodeid`` (``path::test[params]``) is in NOT_QUICK_TESTS as its module or its test."""
    module, _, test = nodeid.partition("::")
    return module in NOT_QUICK_TESTS or f"{module}::{test.partition('[')[0]}" in NOT_QUICK_TESTS


@pytest.hookimpl(tryfirst=True)  # before -m reads the markers: `pytest -m quick` selects the tier too (unguarded)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    quick = []
    for item in items:
        if _is_quick(item):
            item.add_marker(pytest.mark.quick)
            quick.append(item)
    if config.getoption("--quick"):
        chosen = set(quick)
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = quick


def _refuse(what: str) -> None:
    """Fail the test now (raises): pytest's Failed is a BaseException, so no ``except Exception`` (a retry loop)
    swallows it."""
    pytest.fail(f"quick tier: this test {what}, but quick tests open no sockets and start no processes: give it a "
                "fixture in NOT_QUICK_FIXTURES, or list it in NOT_QUICK_TESTS (tests/conftest.py)")


@pytest.fixture(autouse=True)
def _quick_tier_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under ``--quick``: the calls that open TCP/UDP sockets or start processes fail the test (see above)."""
    if not request.config.getoption("--quick"):
        yield
        return
    import _posixsubprocess
    import inspect
    import multiprocessing.process
    import socket
    import subprocess
    import threading

    import grpc
    import grpc.aio

    elsewhere: list[str] = []  # refused in other threads, where the exception ends only the thread

    def importing() -> bool:
        """Whether a module is being imported on this thread: libraries probe the platform once, whichever test
        imports them first (urllib3 binds ::1 to test for IPv6, ctypes runs ldconfig for torch), and that is not
        what the test does."""
        frame = inspect.currentframe()
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                return True
            frame = frame.f_back
        return False

    def refuse(what: str) -> None:
        if importing():
            return
        if threading.current_thread() is not threading.main_thread():
            elsewhere.append(what)
        _refuse(what)

    def inet(name: str) -> Callable[..., object]:
        original = getattr(socket.socket, name)

        def guarded(self: socket.socket, *args: object) -> object:
            # AF_UNIX stays allowed: asyncio's self-pipe (socketpair), a local daemon's socket
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(f"called socket.{name}{args!r} on an {self.family.name} socket")
            return original(self, *args)

        return guarded

    def refusing(mp: pytest.MonkeyPatch, owner: object, name: str, what: str) -> None:
        """Patch ``owner.name`` to refuse (and to call the original where :func:`refuse` lets it through)."""
        original = getattr(owner, name)

        def guarded(*args: object, **kwargs: object) -> object:
            # Popen._execute_child(self, args, …): name the command
            refuse(f"{what} ({args[1]!r})" if name == "_execute_child" else what)
            return original(*args, **kwargs)

        mp.setattr(owner, name, guarded)

    with pytest.MonkeyPatch.context() as mp:
        for name in ("bind", "connect", "connect_ex", "sendto"):
            mp.setattr(socket.socket, name, inet(name))
        # gRPC's C core opens its sockets itself, out of the socket module's sight
        for module in (grpc, grpc.aio):
            for name in ("server", "insecure_channel", "secure_channel"):
                refusing(mp, module, name, f"created a gRPC {name.replace('_', ' ')}")
        # subprocess (by fork_exec or posix_spawn), then multiprocessing's helpers (fork server, resource tracker)
        refusing(mp, subprocess.Popen, "_execute_child", "started a subprocess")
        refusing(mp, _posixsubprocess, "fork_exec", "started a helper process (fork_exec)")
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            if hasattr(os, name):
                refusing(mp, os, name, f"called os.{name}")
        refusing(mp, multiprocessing.process.BaseProcess, "start", "started a multiprocessing process")
        yield
    if elsewhere:
        _refuse(f"(in another thread) {elsewhere[0]}")
# ==== end of the quick tier ==========================================================================================
