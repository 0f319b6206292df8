"""Training under ``torchrun``: world size and rank, the process group, and fastai's DistributedTrainer.

``torchrun --nproc_per_node=N -m training fit …`` starts N processes with WORLD_SIZE and RANK set; each trains on
its share of every batch through DistributedDataParallel (gloo on CPU, nccl on CUDA), and only rank 0 chooses the
learning rate and writes the run directory. A plain ``python -m training fit`` is a world of one, where every
function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import Learner


def world_size() -> int:
    """Processes training together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank; 0 is the one that logs and writes the run."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process logs and writes the run directory."""
    return rank() == 0


def init(device: torch.device) -> None:
    """Join the process group (once) when several processes train together."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def finish() -> None:
    """Wait for every rank (rank 0 writes the run meanwhile), then leave the process group."""
    if world_size() > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every rank."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.broadcast(t, 0)
    return float(t.item())


class GlooSafeDL(DistributedDL):
    """fastai's DistributedDL, whose index broadcast also works on CPU (gloo)."""

    def _broadcast(self, t: Any, rank: int) -> list[int]:
        # fastai moves the index tensor to CUDA because nccl needs it; gloo needs it on the CPU.
        on_cuda = torch.distributed.get_backend() == "nccl"
        t = torch.LongTensor(t).cuda() if on_cuda else torch.LongTensor(t)
        torch.distributed.broadcast(t, rank)
        return t.cpu().tolist()


class Trainer(DistributedTrainer):
    """fastai's DistributedTrainer with :class:`GlooSafeDL` loaders."""

    def _wrap_dl(self, dl: Any) -> Any:
        return dl if isinstance(dl, DistributedDL) else GlooSafeDL(dl, device=self.learn.model.device)


@contextmanager
def data_parallel(learn: Learner, device: torch.device) -> Iterator[None]:
    """Train ``learn`` with DistributedDataParallel inside the block when several processes train together."""
    if world_size() == 1:
        yield
        return
    trainer = Trainer(sync_bn=device.type == "cuda", cpu=not torch.cuda.is_available())  # SyncBatchNorm: CUDA only
    learn.add_cb(trainer)
    if not is_main():
        learn.remove_cb(ProgressCallback)
    yield
    learn.remove_cb(trainer)
