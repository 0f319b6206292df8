"""What every engine of the batch job shares: the :class:`Backend` it hands the job, the two ways a job stops
(:class:`UsageError`, :class:`JobFailed`), and :func:`load_checked`, the model loaded with the server's checks.

``job`` (the command line, the local and remote engines) and ``ray_engine`` both build on this module, and it imports
neither of them: ``job`` imports ``ray_engine`` only for ``--engine ray``, and nothing here imports back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.batch.rows import Row

if TYPE_CHECKING:
    from serving.runtime.loader import LoadedModel


class UsageError(ValueError):
    """The arguments cannot work (exit code 2)."""


class JobFailed(RuntimeError):
    """The job could not start or finish for a reason that is not the user's arguments (exit code 1)."""


@dataclass
class Backend:
    """Where the rows come from: a loaded local model or a server, checked before the output is touched."""

    described: str
    batches: Callable[[list[str]], Iterator[list[Row]]]
    close: Callable[[], None] = lambda: None


def load_checked(args: argparse.Namespace, threads: int | None = None) -> LoadedModel:
    """The model loaded with every check the server makes (sha256, golden self-check), and ``--top-k`` checked."""
    # Imported here: the command line builds its parser from this package, and onnxruntime is for jobs that run.
    from serving.errors import InvalidInput, ModelNotFound, ModelRejected
    from serving.runtime import loader

    try:
        loaded = loader.load(args.repository, args.model, args.version or None, device=args.device,
                             threads=threads or args.threads)
        loaded.predictor.resolve_top_k(args.top_k)
    except (FileNotFoundError, ModelNotFound, InvalidInput) as e:
        raise UsageError(str(e)) from None
    except ModelRejected as e:
        raise JobFailed(f"model {args.model!r} refused: {e}") from None
    return loaded
