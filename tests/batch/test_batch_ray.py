"""``--engine ray`` on a real local Ray (2 CPUs, loopback only, started once for this module): the same rows as the
local engine on 300-odd inputs with broken files, a SIGKILLed Ray job resumed to every input exactly once, and the
refusals made before Ray starts. Ray's processes are checked gone after the module."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.batch.job import EXIT_FAILED, EXIT_OK, EXIT_ROW_ERRORS, EXIT_USAGE
from tests.support.batch import MODEL, batch, read_rows, spawn
from tests.support.hostile import bombs, mutate, seed_images, unusual_images
from tests.support.images import draw_image, encode, make_pngs
from tests.support.paths import ROOT
from tests.support.processes import descendants, running
from tests.support.repositories import Repo, add_version, tamper_golden
from tests.support.servers import poll, wait_until

pytestmark = pytest.mark.not_quick  # Ray starts processes (and so do its CLI runs here)

# Ray's switch for a one-machine cluster on 127.0.0.1; and the code under test for the workers, which the raylet
# starts with its own environment (a driver's PYTHONPATH does not reach them).
CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT)}


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ray_processes() -> list[int]:
    """Ray's processes under this one: its programs and scripts (files in its package) and its workers (``ray::…``)."""
    import ray

    package = os.path.dirname(ray.__file__)
    return [pid for pid in descendants(os.getpid())
            if any(arg.startswith(("ray::", package)) for arg in _argv(pid))]


def _process_table() -> str:
    """Each process under this one, as ``pid state command``: a zombie (Z) is a child that died unreaped."""
    rows = []
    for pid in descendants(os.getpid()):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        script = next((os.path.basename(arg) for arg in _argv(pid) if arg.endswith(".py")), "")
        rows.append(f"{pid} {state} {comm} {script}".rstrip())
    return "; ".join(rows) or "none"


def _startup_report(error: BaseException, temp_dir: str) -> str:
    """Why a local Ray did not start, from what it left: its processes and the ends of its logs."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    lines = [f"ray.init failed: {error}", f"processes: {_process_table()}",
             f"logs in {logs.resolve()}: {sorted(p.name for p in logs.glob('*')) if logs.is_dir() else 'none'}"]
    for name in ("raylet.out", "raylet.err", "gcs_server.err", "runtime_env_agent.err", "dashboard_agent.err"):
        path = logs / name
        if path.is_file() and path.stat().st_size:
            tail = path.read_text(errors="replace").splitlines()[-8:]
            lines += [f"--- {name}", *tail]
    return "\n".join(lines)


def _start_ray() -> None:
    """``ray.init`` for a 2-CPU local cluster, tried twice: a raylet that does not register with the GCS within
    Ray's fixed 30 s fails the first. What each failed start left is printed; when both fail the Ray tests are
    skipped with that report, unless RAY_TESTS=1 asks for them to fail instead."""
    import ray

    reports = []
    for _ in range(2):
        # A session folder of its own each time: a session left in /tmp/ray by another run (CI's sandbox shares
        # /tmp with the machine) is never what this one reads. Short: Ray's socket paths must fit in 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                     log_to_driver=False, configure_logging=False, _temp_dir=temp_dir)
            return
        except Exception as error:  # Ray raises a bare Exception for a node that does not come up
            reports.append(_startup_report(error, temp_dir))
            print(reports[-1], file=sys.stderr)
            left = _ray_processes()
            ray.shutdown()
            for pid in left:  # a GCS without its raylet outlives ray.shutdown()
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
    message = "a local Ray did not start (twice):\n" + reports[-1]
    if os.environ.get("RAY_TESTS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray for this module; its address, which CLI subprocesses join with ``--ray-address``."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in CLUSTER_ENV.items():
            env.setenv(name, value)  # before Ray is imported: it reads them then
        import ray

        _start_ray()
        try:
            address = ray.get_runtime_context().gcs_address
            assert address.startswith("127.0.0.1:"), address
            yield address
        finally:
            started = _ray_processes()
            ray.shutdown()
    poll(lambda: not any(running(pid) for pid in started), 20)
    left = {pid: " ".join(_argv(pid)) for pid in started if running(pid)}
    for pid in left:  # ours: not to be left behind, even when the assertion below fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray's processes still running 20 s after ray.shutdown(): {left}"


def write_inputs(root: Path) -> None:
    """``root/good``: 250 images of several formats, modes and sizes; ``root/odd``: 70-odd unusual, refused,
    damaged and hostile files (decompression bombs), most of them error rows."""
    for i in range(250):
        fmt, mode = [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("WEBP", "RGB")][i % 5]
        name = root / "good" / f"{i:03d}.{fmt.lower()}"
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_bytes(encode(draw_image(i, (20 + i % 29, 18 + i % 23), mode), fmt))
    odd = {**unusual_images(), **bombs()}
    rng = np.random.default_rng(7)
    for i, data in enumerate(seed_images().values()):
        for j in range(3):
            odd[f"mutated-{i}-{j}.{['png', 'jpg'][i % 2]}"] = mutate(data, rng)[1]
    png = encode(draw_image(1, (40, 40), "RGB"))
    odd |= {"empty.png": b"", "text.jpg": b"not an image\n", "truncated.png": png[:90]}
    (root / "odd").mkdir()
    for name, data in odd.items():
        (root / "odd" / name).write_bytes(data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-inputs")
    write_inputs(root)
    return root


def engine(repository: Repo, *args: str | Path) -> int:
    return batch(*args, "--repository", repository.path, "--model", MODEL, "-q")


def test_refusals_come_before_ray_starts(repository: Repo, inputs: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A bad model or bad arguments are found before any cluster is joined (the address here leads nowhere; this
    test comes before the module's Ray is started, so that a CLI would have to join it)."""
    repo = tmp_path / "repo"
    add_version(repo, repository.path / MODEL / "1", "tampered", 1, tamper_golden)
    nowhere = ["--engine", "ray", "--ray-address", "127.0.0.1:1", "-o", tmp_path / "o.csv"]
    assert batch(inputs / "good", "--repository", repo, "--model", "tampered", *nowhere) == EXIT_FAILED
    assert "error: model 'tampered' refused: golden self-check failed" in capsys.readouterr().err
    assert batch(inputs / "good", "--repository", repo, "--model", "nope", *nowhere) == EXIT_USAGE
    assert "model 'nope' is not in" in capsys.readouterr().err
    assert batch(inputs / "good", "--server", "127.0.0.1:1", "--model", MODEL, *nowhere) == EXIT_USAGE
    assert "--engine ray runs the model in Ray actors: use it with --repository" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    # a finished job resumed has nothing to do: no cluster is needed
    assert batch(inputs / "good", "--repository", repository.path, "--model", MODEL, "-o", tmp_path / "o.csv",
                 "-q") == EXIT_OK
    assert batch(inputs / "good", "--repository", repository.path, "--model", MODEL, *nowhere, "--resume") == EXIT_OK
    assert "resumed: 250 rows were already there" in capsys.readouterr().out


@pytest.mark.slow
def test_ray_rows_equal_local_rows(repository: Repo, ray_address: str, inputs: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(inputs)
    assert engine(repository, "good", "odd", "-o", tmp_path / "local.jsonl") == EXIT_ROW_ERRORS
    want = read_rows(tmp_path / "local.jsonl")
    errors = [r for r in want if r["error"]]
    assert len(want) >= 300, len(want)  # the inputs are what this test means them to be
    assert 20 <= len(errors) <= 80, len(errors)

    # First a part of them, given as a list (with a file that does not exist), and a half-written part as a
    # killed job leaves it; then --resume with all of them: every row comes from Ray.
    with open(tmp_path / "some.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path"], *([r["path"]] for r in want[::3]), ["odd/missing.png"]])
    out = tmp_path / "ray.parquet"
    ray = ["--engine", "ray", "--batch-size", "16"]  # not local's 32: the answers do not depend on the batches
    assert engine(repository, tmp_path / "some.csv", "-o", out, *ray) == EXIT_ROW_ERRORS
    (out / ".part-000009.parquet.tmp").write_bytes(b"PAR1 torn")
    assert engine(repository, "good", "odd", "-o", out, *ray, "--resume") == EXIT_ROW_ERRORS
    got = read_rows(out)
    assert sorted(r["path"] for r in got) == sorted([r["path"] for r in want] + ["odd/missing.png"])
    by_path = {r["path"]: r for r in got}
    assert by_path.pop("odd/missing.png")["error"] == "cannot read file: No such file or directory"
    for w in want:
        g = by_path[w["path"]]
        assert g["error"] == w["error"], w["path"]  # the same error rows, with the same text
        assert g["label"] == w["label"], w["path"]   # the same top-1
        assert [p["label"] for p in g["top_k"]] == [p["label"] for p in w["top_k"]]
        assert [p["probability"] for p in g["top_k"]] == pytest.approx([p["probability"] for p in w["top_k"]],
                                                                       abs=1e-6)


@pytest.mark.slow
def test_killed_ray_job_resumes_to_every_input_once(repository: Repo, ray_address: str, tmp_path: Path) -> None:
    n = 1500
    make_pngs(tmp_path / "many", n, size=(16, 16))
    out = tmp_path / "out.csv"
    args = ["many", "--repository", repository.path, "--model", MODEL, "-o", out, "--engine", "ray",
            "--ray-address", ray_address, "--batch-size", "2", "--workers", "1"]
    proc = spawn(args, tmp_path)  # with the fixture's environment: Ray on loopback
    try:  # killed once rows are on disk: the driver writes each block as it arrives
        wait_until(lambda: proc.poll() is not None or (out.exists() and out.read_bytes().count(b"\n") > 3), 120,
                   "rows on disk", interval=0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it was killed: {proc.stderr.read()}"
    killed = out.read_bytes()
    done = killed.count(b"\n") - 1
    assert 3 <= done < n
    proc = spawn([*args, "--resume", "--workers", "2", "--batch-size", "32"], tmp_path)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_OK, stderr
    assert f"resumed: {done} rows were already there" in stdout
    assert out.read_bytes().startswith(killed)
    assert [r["path"] for r in read_rows(out)] == [f"many/{i:05d}.png" for i in range(n)]  # each once, in order


def test_serving_imports_no_ray() -> None:
    """The serve image has no Ray: the CLI, the server and the local engine must not import it."""
    code = ("import sys, serving.cli, serving.batch.job, serving.batch.runners, serving.server; "
            "sys.exit('ray' in sys.modules or 'pyarrow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
