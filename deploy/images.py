"""Build the project's images: ``python -m deploy.images [serve] [train] [serve-gpu] [--pip-ca FILE]`` (make images).

Works where Docker Hub cannot be reached: when the Dockerfile's default base (python:3.11-slim-bookworm) is neither
present nor pullable, an equivalent base is built from Debian packages (deploy/images/debian-base.sh) and passed as
PYTHON_IMAGE. Builds use BuildKit: the layer cache and pip's cache mount make a rebuild with unchanged dependencies
take seconds. Standard library only, so it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("serve", "train", "serve-gpu", "balancer", "prometheus")
DEFAULT_BASE = "python:3.11-slim-bookworm"
DEBIAN_BASE = "resnet-serving/python:3.11-bookworm"
DEBIAN_BASE_SCRIPT = ROOT / "deploy" / "images" / "debian-base.sh"


class BuildError(RuntimeError):
    """A build step failed; the message is one line for the user."""


def tag(target: str) -> str:
    """The image name docker-compose.yml and the tests use for a Dockerfile target."""
    return f"resnet-serving:{target}"


@dataclass(frozen=True)
class Docker:
    """A Docker client able to build with BuildKit, and the environment it needs."""

    binary: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, timeout: float = 120, capture: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], env=self.env, capture_output=capture, text=True,
                              timeout=timeout, check=False)

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name).returncode == 0


def _builds_with_buildkit(binary: str) -> bool:
    """Clients from 23.0 on hand BuildKit builds to the buildx plugin; older ones (Debian's 20.10) build it in."""
    probe = [binary, "buildx", "version"]
    if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
        return True
    version = subprocess.run([binary, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                             timeout=30, check=False).stdout.strip()
    major = version.split(".")[0]
    return major.isdigit() and int(major) < 23


def find_docker() -> Docker:
    """$DOCKER, else the first client on PATH or Debian's /usr/bin/docker that can build with BuildKit."""
    if os.environ.get("DOCKER"):
        return Docker(os.environ["DOCKER"])
    candidates = dict.fromkeys(p for p in (shutil.which("docker"), "/usr/bin/docker") if p and os.path.exists(p))
    for binary in candidates:
        if _builds_with_buildkit(binary):
            return Docker(binary)
    if candidates:
        raise BuildError(f"no Docker client here can build with BuildKit ({', '.join(candidates)} lack buildx); "
                         "install the buildx plugin or Debian's docker.io")
    raise BuildError("no docker client found (apt-get install docker.io)")


def ensure_base(docker: Docker, base: str | None) -> str:
    """The base to build FROM: ``base`` if given; else the default if present or pullable; else the Debian one."""
    if base:
        return base
    if docker.has_image(DEFAULT_BASE) or docker.run("pull", DEFAULT_BASE, timeout=600).returncode == 0:
        return DEFAULT_BASE
    if not docker.has_image(DEBIAN_BASE):
        print(f"images: {DEFAULT_BASE} cannot be pulled; building {DEBIAN_BASE} from Debian packages", file=sys.stderr)
        result = subprocess.run([str(DEBIAN_BASE_SCRIPT), DEBIAN_BASE], env={**docker.env, "PATH": _path(docker)},
                                timeout=1800, check=False)
        if result.returncode != 0:
            raise BuildError(f"{DEBIAN_BASE_SCRIPT.relative_to(ROOT)} failed (exit {result.returncode})")
    return DEBIAN_BASE


def _path(docker: Docker) -> str:
    """PATH with the chosen client's folder first, so the base script's `docker` is the same client."""
    return f"{Path(docker.binary).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def build(docker: Docker, target: str, base: str, pip_ca: Path | None = None, quiet: bool = False) -> float:
    """``docker build --target TARGET -t resnet-serving:TARGET``; returns the seconds it took."""
    args = ["build", "--target", target, "--tag", tag(target), "--build-arg", f"PYTHON_IMAGE={base}",
            "--progress", "plain"]
    if pip_ca is not None:
        if not pip_ca.is_file():
            raise BuildError(f"--pip-ca {pip_ca}: no such file")
        args += ["--secret", f"id=pip-ca,src={pip_ca}"]
    start = time.perf_counter()
    result = docker.run(*args, str(ROOT), timeout=3600, capture=quiet)
    if result.returncode != 0:
        tail = (result.stderr or "")[-3000:] if quiet else ""
        raise BuildError(f"docker build --target {target} failed (exit {result.returncode}){tail and ':'}\n{tail}")
    return time.perf_counter() - start


def build_all(targets: Sequence[str], base: str | None = None, pip_ca: Path | None = None,
              quiet: bool = False, docker: Docker | None = None) -> dict[str, float]:
    """Build ``targets`` one after another (never two at once: each is CPU- and network-heavy)."""
    docker = docker or find_docker()
    chosen = ensure_base(docker, base)
    return {target: build(docker, target, chosen, pip_ca, quiet) for target in targets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=TARGETS, default=["serve", "train"], metavar="TARGET",
                        help=f"Dockerfile targets to build: {', '.join(TARGETS)} (default: serve train)")
    parser.add_argument("--base", help=f"base image (default: {DEFAULT_BASE} if it can be pulled, else a Debian one)")
    parser.add_argument("--pip-ca", type=Path, help="CA bundle pip trusts inside the build (a BuildKit secret)")
    args = parser.parse_args(argv)
    try:
        seconds = build_all(args.targets or ["serve", "train"], args.base, args.pip_ca)
    except BuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    for target, s in seconds.items():
        print(f"images: {tag(target)} built in {s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
