"""More than one process: torch.distributed as ``torchrun`` sets it up, and nothing when it does not.

``torchrun --nproc_per_node N -m assignments <assignment> ...`` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE in their environment; :func:`init` joins them (nccl on CUDA, gloo on the CPU). Every helper
here is the identity in a single process (Colab, ``python -m assignments``), which runs as before.

How a run shares the work (``assignments.run.Run`` applies it):
- training: each global batch of the single-process loader (same seeded permutation) is cut into N equal
  rank slices (:class:`ShardBatchSampler`); DistributedDataParallel averages the gradients, so a step
  equals the single-process step on the same global batch;
- testing: each rank evaluates its contiguous shard of the test set and the sums are all-reduced
  (:func:`all_reduce_sum`);
- rank 0 alone runs the LR range test (the result is broadcast), writes the log, checkpoints, figures,
  metrics.json and report.md.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0


def _active() -> bool:
    """A process group is up (some torch builds have no torch.distributed at all)."""
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> World:
    """Join the process group torchrun described (nccl for CUDA, gloo for the CPU); a single process gets
    ``World()`` and no process group."""
    if not launched():
        return World()
    if not _active():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return World(dist.get_rank(), dist.get_world_size(), local)


def current() -> World:
    """The World of an initialised process group, else a single process."""
    if not _active():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close() -> None:
    """Leave the process group (if any). What still refers to it is collected first: a Run that failed half-built
    keeps its DistributedDataParallel model in a reference cycle, and freed after the group, at interpreter exit,
    it aborted gloo ranks ("terminate called without an active exception"; a missing --data-dir under load: 21 of
    50 runs, 0 of 50 with the collection first)."""
    if not _active():
        return
    gc.collect()
    dist.destroy_process_group()


def barrier() -> None:
    if _active():
        dist.barrier()


class _Failed:
    """What rank 0 broadcasts when its part failed: the others raise the same error (one line on every rank)."""

    def __init__(self, error: Exception):
        self.error = error


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. a download), the others after it: no two processes write one file.
    If rank 0's block raises, every rank raises the same error (no rank is left waiting)."""
    world = current()
    if world.size == 1:
        yield
        return
    if not world.main:
        if isinstance(failed := broadcast(None), _Failed):
            raise failed.error
        yield
        return
    try:
        yield
    except Exception as e:
        broadcast(_Failed(e))
        raise
    broadcast(None)


def decided(compute):
    """``compute()`` on rank 0, its result on every rank; if it raises, every rank raises the same error."""
    if current().size == 1:
        return compute()
    result = None
    if current().main:
        try:
            result = compute()
        except Exception as e:
            broadcast(_Failed(e))
            raise
    result = broadcast(result)
    if isinstance(result, _Failed):
        raise result.error
    return result


def broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable object)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], device=None) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact)."""
    if not _active():
        return list(values)
    device = device if device is not None and torch.device(device).type == "cuda" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over all ranks, on its device (no host read); ``t`` itself in one process."""
    if _active():
        t = t.clone()
        dist.all_reduce(t)
    return t


class ShardBatchSampler(Sampler):
    """This rank's slice of every global batch of ``sampler``: global batch k (``batch_size`` items, in the
    order ``sampler`` yields them) -> items [rank * b, (rank + 1) * b) with b = batch_size / world_size.

    The last global batch, if shorter than ``batch_size``, is dropped: its slices could not be equal.
    """

    def __init__(self, sampler, batch_size: int, world: World):
        if batch_size % world.size:
            raise ValueError(f"--batch-size {batch_size} is not divisible by the {world.size} processes")
        self.sampler, self.batch_size, self.world = sampler, batch_size, world
        self.per_rank = batch_size // world.size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        order = list(self.sampler)  # the single-process order (a seeded permutation per epoch)
        start = self.world.rank * self.per_rank
        for k in range(len(self)):
            yield order[k * self.batch_size + start:k * self.batch_size + start + self.per_rank]


def shard_range(n: int, world: World) -> range:
    """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks get one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))
