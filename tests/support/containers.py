"""Helpers for the container tests: a Docker engine and its containers; without one, an image's command run here.

With an engine (:func:`docker_or_skip_reason`), :class:`Container` wraps ``docker run`` and what the tests ask of a
running container: its published ports, health, logs and exit code. Without one, an image is stood in for by its
parts: the venv its deps stage builds (``.venv-serve/`` for ``serve``; the project's
``.venv`` for ``train``, which has the train set and more), a folder holding what the stage COPYs (its WORKDIR), and
the stage's ENV read from the Dockerfile with the container paths mapped to those folders. The command itself (CMD,
HEALTHCHECK) is read from the Dockerfile and run as written, resolved through the mapped PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from deploy.dockerfile import Dockerfile, ImageConfig
from deploy.images import BuildError, Docker, find_docker
from tests.support.paths import ROOT
from tests.support.processes import Periodic
from tests.support.servers import poll

SERVE_VENV = ROOT / ".venv-serve"
# The PATH of the official python images, which the stages' ENV PATH=/opt/venv/bin:${PATH} extends.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _venv_fingerprint() -> str:
    """What the serve venv depends on: the project metadata, the lock, the recipe and this interpreter."""
    h = hashlib.sha256()
    for name in ("pyproject.toml", "requirements/constraints.txt"):
        h.update((ROOT / name).read_bytes())
    recipe = Dockerfile.read(ROOT / "Dockerfile").stage("serve-deps").instructions
    h.update(repr([(i.keyword, i.args) for i in recipe]).encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def _pip(venv: Path, *args: str, cwd: Path | None = None) -> None:
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def ensure_serve_venv(venv: Path = SERVE_VENV) -> tuple[Path, float]:
    """The [serve] set alone in ``venv``, built like the Dockerfile's serve-deps stage; cached between runs.

    Returns the venv and the seconds spent building it (0.0 when the cached one was still current). A lock keeps two
    test processes from building it at once.
    """
    stamp = venv / ".fingerprint"
    lock_path = Path(tempfile.gettempdir()) / f"venv-serve-{hashlib.sha256(bytes(venv)).hexdigest()[:12]}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = _venv_fingerprint()
        if stamp.is_file() and stamp.read_text() == fingerprint and (venv / "bin" / "python").exists():
            return venv, 0.0
        start = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        with tempfile.TemporaryDirectory() as src:
            # The stage's build context: only pyproject.toml, README.md and the lock (the project is an empty wheel).
            for name in ("pyproject.toml", "README.md", "requirements/constraints.txt"):
                (Path(src) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / name, Path(src) / name)
            _pip(venv, "install", "--quiet", "-c", "requirements/constraints.txt", ".[serve]", cwd=Path(src))
        _pip(venv, "check")
        stamp.write_text(fingerprint)
        return venv, time.perf_counter() - start


@dataclass(frozen=True)
class StandIn:
    """An image's command environment on this machine: argv resolution, cwd and env with paths mapped."""

    config: ImageConfig
    paths: Mapping[str, Path]     # container path prefix → folder here

    def map(self, value: str) -> str:
        """Container paths in ``value`` (a path, or a PATH-style list) → folders here, in one pass."""
        prefixes = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
        pattern = rf"(?<![\w./])({prefixes})(?=/|:|$)"
        return re.sub(pattern, lambda m: str(self.paths[m.group(1)]), value)

    @property
    def env(self) -> dict[str, str]:
        return {k: self.map(v) for k, v in self.config.env.items()}

    @property
    def cwd(self) -> Path:
        return Path(self.map(self.config.workdir))

    def argv(self, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """``command`` with its program resolved through the container's (mapped) PATH, as exec form does."""
        program = command[0] if command[0].startswith("/") else shutil.which(command[0], path=env["PATH"])
        if program is None:
            raise FileNotFoundError(f"{command[0]} is not on the image's PATH {env['PATH']}")
        return [self.map(program), *command[1:]]


def stand_in(dockerfile: Dockerfile, stage: str, workdir: Path, paths: Mapping[str, Path]) -> StandIn:
    """Copy what ``stage`` COPYs from the build context into ``workdir`` (its WORKDIR) and map the paths."""
    config = dockerfile.config(stage, base_env={"PATH": IMAGE_PATH})
    image = StandIn(config, {config.workdir: workdir, **paths})
    for copy in dockerfile.copies(stage):
        if copy.from_stage is not None:
            continue  # from another stage: the venv, mapped through ``paths``
        dest_in_image = copy.dest if copy.dest.startswith("/") else str(PurePosixPath(config.workdir) / copy.dest)
        for source in copy.sources:
            src, dest = ROOT / source, Path(image.map(dest_in_image))
            if src.is_dir():  # a folder's contents go into the destination folder
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"),
                                dirs_exist_ok=True)
                continue
            if copy.dest.endswith("/"):
                dest = dest / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            if "chmod" in copy.flags:
                dest.chmod(int(copy.flags["chmod"], 8))
    return image


class WriteWatch(Periodic):
    """Records every path that appears under ``root`` while active, even briefly (the tree is polled every 50 ms).

    In the images the code (WORKDIR) belongs to root and the commands run as uid 10001, so a command that writes
    there fails in a container. The tests run as root, to whom permissions do not apply: this watch stands in.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(0.05)
        self.root = root
        self.before = set(root.rglob("*"))
        self.appeared: set[Path] = set()

    def tick(self) -> bool:
        self.appeared |= set(self.root.rglob("*")) - self.before
        return True


def run(image: StandIn, argv: Sequence[str], env: Mapping[str, str], timeout: float
        ) -> subprocess.CompletedProcess[str]:
    """Run a command the way the container would: in its WORKDIR, with its env only."""
    return subprocess.run(list(argv), env=dict(env), cwd=image.cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def wait_for(image: StandIn, probe: Sequence[str], env: Mapping[str, str], deadline_s: float,
             server: subprocess.Popen[bytes]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the health probe every 0.2 s until it exits 0 (or the server dies, or time runs out); returns the last
    probe and the wait. The probe is a process outside the server: there is no event to wait on but its exit code."""
    start = time.perf_counter()
    last: list[subprocess.CompletedProcess[str]] = []

    def probed() -> bool:
        last.append(run(image, probe, env, timeout=30))
        return last[-1].returncode == 0 or server.poll() is not None

    poll(probed, deadline_s, interval=0.2)
    return last[-1], time.perf_counter() - start


def terminate(process: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, float]:
    """SIGTERM (the image's STOPSIGNAL) and wait; kills it if it outlives ``timeout``. Returns (code, seconds)."""
    start = time.perf_counter()
    if process.poll() is None:
        process.terminate()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        code = None
    return code, time.perf_counter() - start


# ---- a real Docker engine ------------------------------------------------------------------------------------------

def docker_or_skip_reason() -> tuple[Docker | None, str]:
    """A client whose engine answers, or None and the reason to skip (one line).

    CONTAINER_TESTS=0 turns the container tests off; CONTAINER_TESTS=1 (what .ci/run sets) makes them required: the
    fixtures fail instead of skipping.
    """
    if os.environ.get("CONTAINER_TESTS") == "0":
        return None, "CONTAINER_TESTS=0"
    try:
        docker = find_docker()
    except BuildError as e:
        return None, str(e)
    try:
        info = docker.run("version", "--format", "{{.Server.Version}}", timeout=20)
    except subprocess.TimeoutExpired:
        return None, "no Docker engine answered within 20 s"
    if info.returncode != 0 or not info.stdout.strip():
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return None, f"no Docker engine reachable ({reason}); `bash .ci/run` starts one"
    return docker, ""


@dataclass
class Container:
    """One ``docker run -d`` container; removed by :meth:`remove` (the fixtures do it)."""

    docker: Docker
    id: str
    removed: bool = field(default=False)

    @classmethod
    def start(cls, docker: Docker, image: str, *args: str, env: Mapping[str, str] | None = None) -> Container:
        """``docker run -d ARGS IMAGE`` with loopback-published ports chosen by Docker (``-p 127.0.0.1::PORT``)."""
        env_args = [a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")]
        result = docker.run("run", "--detach", *env_args, *args, image, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"docker run {image} failed: {result.stderr.strip()}")
        return cls(docker, result.stdout.strip())

    def inspect(self) -> dict:
        result = self.docker.run("inspect", self.id, timeout=30)
        return json.loads(result.stdout)[0]

    def port(self, container_port: int) -> int:
        """The host port Docker published ``container_port`` on."""
        bindings = self.inspect()["NetworkSettings"]["Ports"][f"{container_port}/tcp"]
        return int(bindings[0]["HostPort"])

    @property
    def health(self) -> str:
        state = self.inspect()["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until the image's HEALTHCHECK reports healthy; raises with the logs if it never does."""
        start = time.perf_counter()
        ok = poll(lambda: self.health in ("healthy", "unhealthy", "exited", "dead"), timeout, interval=0.25)
        if not ok or self.health != "healthy":
            raise AssertionError(f"container {self.id[:12]} is {self.health}, not healthy:\n{self.logs()[-3000:]}")
        return time.perf_counter() - start

    def wait_exit(self, timeout: float) -> int:
        result = self.docker.run("wait", self.id, timeout=timeout)
        return int(result.stdout.strip())

    def stop(self, timeout_s: int) -> tuple[int, float]:
        """``docker stop -t`` (SIGTERM, the image's STOPSIGNAL; SIGKILL after ``timeout_s``): (exit code, seconds)."""
        start = time.perf_counter()
        self.docker.run("stop", "--time", str(timeout_s), self.id, timeout=timeout_s + 30)
        return self.wait_exit(30), time.perf_counter() - start

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.docker.run("exec", self.id, *command, timeout=60)

    def logs(self) -> str:
        result = self.docker.run("logs", self.id, timeout=30)
        return result.stdout + result.stderr

    def remove(self) -> None:
        if not self.removed:
            self.docker.run("rm", "--force", "--volumes", self.id, timeout=60)
            self.removed = True
