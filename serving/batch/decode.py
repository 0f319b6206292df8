"""Reading and preprocessing the batch job's files, in worker processes.

Why processes and not threads: decoding a small image is mostly Python-level work in Pillow and NumPy that holds
the GIL (55-95 µs for a 20 px PNG, most of it in ``Image.open``/``load``), so decoding threads and the thread that
launches onnxruntime take turns rather than overlap, and on a busy machine a preempted GIL holder stalls them all.
In one comparison on the 2 shared cores (7 paired rounds, load average about 7), threads reached 0.45x of
in-process onnxruntime on pre-decoded batches and processes 0.87x. The tensors travel back pickled, which costs far
less than computing them.

This module imports no onnxruntime (workers start in a fraction of a second), and each worker exits as soon as
its parent does, even after a SIGKILL, so that a killed job leaves no orphans.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from serving.contract.preprocess import PreprocessSpec, preprocess
from serving.errors import InvalidInput

Group = tuple[np.ndarray | None, list[str | None]]


def read_file(path: str) -> bytes | str:
    """The file's bytes, or why they cannot be read (the text of an error row)."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"


def load_tensor(path: str, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | str:
    """One file → its (C, H, W) input tensor, or the text of its error row."""
    data = read_file(path)
    if isinstance(data, str):
        return data
    try:
        return preprocess(data, spec, max_pixels)
    except InvalidInput as e:
        return str(e)
    except Exception as e:  # a decoder bug on one odd file must not end a million-file job
        return f"{type(e).__name__}: {e}"


def decode_group(paths: Sequence[str], spec: PreprocessSpec, max_pixels: int) -> Group:
    """A group of files → their good tensors stacked (N, C, H, W), and each file's error text (None if good)."""
    items = [load_tensor(p, spec, max_pixels) for p in paths]
    good = [x for x in items if isinstance(x, np.ndarray)]
    return (np.stack(good) if good else None), [None if isinstance(x, np.ndarray) else x for x in items]


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:  # the sentinel becomes ready when the parent is gone, however it died
        threading.Thread(target=lambda: (wait([parent.sentinel]), os._exit(0)), daemon=True).start()


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the pool)
    _exit_with_parent()


def start_decoders(workers: int) -> ProcessPoolExecutor:
    """``workers`` decoding processes, started now: they boot while the caller loads the model.

    forkserver where available (not fork: no copy of the parent's onnxruntime threads and locks), with this module
    preloaded in the server, so that each worker is a cheap fork of an interpreter that already has NumPy and
    Pillow.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    for _ in range(workers):  # workers are started on demand, one per task that finds none idle
        pool.submit(int)
    return pool


def decoder(spec: PreprocessSpec, max_pixels: int) -> functools.partial[Group]:
    """``decode_group`` with the model's preprocessing bound: picklable, so it can be sent to a worker."""
    return functools.partial(decode_group, spec=spec, max_pixels=max_pixels)
