"""``--engine ray``: the batch job on Ray Data, for more images than one machine gets through.

The driver (this process) does what it does for the local engine: it expands the inputs, reads the output to resume
it, loads the model once with every check (an unknown model is a usage error, a model failing its golden check stops
the job before Ray even starts), and writes the rows as they arrive, in input order. Between those, Ray Data spreads
the paths over a pool of actors; each actor loads the model from the same repository path on its own node (so the
checks run there too), and turns its batches of paths into rows with :func:`~serving.batch.runners.classify_local`,
the local engine's own function: the same file reading, decoding, onnxruntime run and top-k, hence the same rows.

Why the actors read the files, and not Ray Data's ``read_binary_files``: a file that cannot be read must become an
error row, while a failed read task fails the whole data set. Rows travel back as Arrow tables
(``serving.batch.parquet.schema``) of a few hundred bytes per image, so the driver is never the bottleneck.

Ray is imported only here, and only for ``--engine ray``: the serve image has no Ray.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from serving.batch.backends import Backend, JobFailed, UsageError, load_checked
from serving.batch.parquet import rows_from_table, rows_to_table
from serving.batch.rows import Row, escape_surrogates, unescape_surrogates
from serving.batch.runners import chunks, classify_local

if TYPE_CHECKING:
    import pyarrow as pa

RAY_LOGS = "/tmp/ray/session_latest/logs on the head node"
NO_RAY = "--engine ray needs Ray: pip install 'resnet-serving[ray]'"
BLOCK_BATCHES = 128  # at most this many batches per Ray block (one task on one actor): progress stays fine-grained


class Classifier:
    """One Ray actor: the model, loaded with every check on the actor's node, and rows for batches of paths."""

    def __init__(self, version_dir: str, device: str, threads: int, top_k: int) -> None:
        from serving.runtime.loader import load_model

        self.predictor = load_model(version_dir, device=device, threads=threads).predictor
        self.top_k = top_k

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Columns ``path`` (as the row names it) and ``file`` (where to read it) → rows."""
        files = [unescape_surrogates(f) for f in batch.column("file").to_pylist()]
        paths = [unescape_surrogates(p) for p in batch.column("path").to_pylist()]
        groups = classify_local(self.predictor, files, top_k=self.top_k, batch_size=max(1, len(files)))
        rows = [row for group in groups for row in group]
        return rows_to_table([replace(row, path=path) for row, path in zip(rows, paths, strict=True)])


def block_rows(total: int, batch_size: int, workers: int) -> int:
    """Paths per input block: about eight blocks per actor, whole batches, at least one batch and at most 128."""
    batches = math.ceil(total / (batch_size * workers * 8))
    return batch_size * min(max(batches, 1), BLOCK_BATCHES)


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(NO_RAY) from None
    return ray


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a new local one); True if we started Ray."""
    ray = _ray()
    if ray.is_initialized():  # a caller (a test, a notebook) already chose the cluster
        return False
    # Ray's own lines (cluster start, a C++ notice about actor restarts on every job) are not this tool's output; its
    # log files under /tmp/ray keep them, and errors still reach the user as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # ConnectionError, a bad address, a version mismatch…
        raise JobFailed(f"cannot start or join Ray at {address or 'a new local cluster'}: {_last_line(e)}") from None
    return True


def _last_line(e: BaseException) -> str:
    """Ray wraps a worker's error in its traceback; the last line says what happened."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def classify_ray(paths: list[str], version_dir: str, *, top_k: int, batch_size: int, workers: int, threads: int,
                 device: str = "cpu") -> Iterator[list[Row]]:
    """Rows for ``paths`` in input order, one list per block, from a pool of ``workers`` :class:`Classifier` actors."""
    ray = _ray()
    import pyarrow as pa

    # Ray Data's console lines (plans, warnings, a failed job's stack traces) are not this tool's output: a failure
    # reaches the user as one line (JobFailed) and Ray's log files keep the rest.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # the same row order as the local engine, and as the inputs
    # An actor's working folder is not ours: it reads each file by its absolute path, and names it as given. Arrow
    # strings are UTF-8: undecodable bytes in names travel escaped.
    texts = [(escape_surrogates(p), escape_surrogates(os.path.abspath(p))) for p in paths]
    blocks = [pa.table({"path": [p for p, _ in chunk], "file": [f for _, f in chunk]})
              for chunk in chunks(texts, block_rows(len(paths), batch_size, workers))]
    if not blocks:
        return
    dataset = ray.data.from_arrow(blocks).map_batches(
        Classifier, batch_format="pyarrow", batch_size=batch_size,
        fn_constructor_kwargs={"version_dir": version_dir, "device": device, "threads": threads, "top_k": top_k},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=threads, num_gpus=1 if device == "cuda" else 0)
    for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield rows_from_table(table)


def ray_backend(args: argparse.Namespace, todo: list[str]) -> Backend:
    """The model checked here, then a Ray cluster joined (or started) to run the actors."""
    if importlib.util.find_spec("ray") is None:  # said first, but without the cost of importing Ray yet
        raise UsageError(NO_RAY)
    loaded = load_checked(args, threads=1)  # before Ray starts: a refused model costs no cluster start-up
    predictor, version_dir = loaded.predictor, str(loaded.path.resolve())
    top_k = predictor.resolve_top_k(args.top_k)
    described = f"{predictor.name} version {predictor.version} from {loaded.path}"
    del loaded, predictor  # the actors hold the model; the driver only writes rows
    if not todo:  # a finished job resumed: no cluster to start
        return Backend(described, lambda todo: iter(()))
    ray = _ray()
    started = connect(args.ray_address)
    threads = args.threads or 1
    workers = args.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))

    def batches(todo: list[str]) -> Iterator[list[Row]]:
        try:
            yield from classify_ray(todo, version_dir, top_k=top_k, batch_size=args.batch_size, workers=workers,
                                    threads=threads, device=args.device)
        except (ray.exceptions.RayError, ray.data.exceptions.SystemException) as e:  # an actor failed or died
            raise JobFailed(f"the Ray job failed: {_last_line(e)} (Ray's logs: {RAY_LOGS})") from None

    return Backend(f"{described} on Ray ({workers} actors x {threads} CPUs)", batches,
                   ray.shutdown if started else lambda: None)
