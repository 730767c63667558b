"""Data-parallel fine-tuning: this process's rank, its device and precision, its share of each batch, DDP.

    datascale finetune --nproc 2 --task detection ...        # two ranks on this machine
    datascale launch --hostfile hosts.txt --nproc 8 finetune --task detection ...

The launcher (DeepSpeed's, as for pretraining; torchrun works too) starts one
process per rank with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set; each joins a
torch.distributed group (gloo on CPU, nccl on CUDA) and wraps the task model in
DistributedDataParallel. ``train.batch_size`` is the global batch: every rank
draws the same seeded permutation of the training set and trains on its own
contiguous slice of each step's batch, so the ranks' samples are disjoint and
together they are the batch one rank would train on. Rank 0 alone evaluates and
writes; the others wait at a barrier. Without RANK/WORLD_SIZE (or with a world
size of 1) nothing here changes what one process does.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from datascale.errors import ConfigError, DataError
from scaling.models.backbones import sync_batchnorms
from scaling.pretrain.config import pick_precision
from scaling.tasks.config import FinetuneConfig, per_rank_batch

# Rank 0 evaluates paper-sized test sets alone while the others wait at a barrier.
_BARRIER_TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class World:
    """This process's place in a run: rank ``rank`` of ``size``, ``local_size`` of them on this machine."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    owns_group: bool = False  # this process joined the process group, so it leaves it (:meth:`leave`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def leave(self) -> None:
        """Destroy the process group this process joined. A gloo group left to the interpreter's
        exit can abort the process ("terminate called without an active exception", exit 250)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def mean(self, values: list[float]) -> list[float]:
        """The mean of each value over the ranks (the values themselves on one rank)."""
        if self.size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(total)
        return (total / self.size).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on one: ranks stop together."""
        if self.size == 1:
            return flag
        total = torch.tensor([float(flag)], device=self._comm_device)
        dist.all_reduce(total)
        return bool(total.item())

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    @property
    def _comm_device(self) -> torch.device:
        return self.device  # nccl talks from the rank's GPU, gloo from the CPU

    def autocast(self):
        """Mixed precision for a training step (nothing in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def join_world(cfg: FinetuneConfig) -> World:
    """This process's :class:`World`, from the launcher's environment; joins the process group.

    Checks first what a user can get wrong (a global batch that does not divide, SyncBatchNorm
    or bf16/fp16 without a GPU), so a refused run starts no process group.
    """
    size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_size = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or size)
    cuda = torch.cuda.is_available()
    precision = pick_precision(cfg.train.precision, "train.precision", cuda, cuda and torch.cuda.is_bf16_supported())
    check_world(cfg, size, cuda)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = size > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_BARRIER_TIMEOUT)
    return World(rank, size, local_size, device, precision, owns)


def check_world(cfg: FinetuneConfig, size: int, cuda: bool) -> None:
    """ConfigError for settings ``size`` ranks cannot run (before any process starts)."""
    if size == 1:
        return
    per_rank_batch(cfg, size)
    if cfg.dist.batchnorm == "sync" and cfg.train.bn_stats == "update" and not cuda:
        raise ConfigError("dist.batchnorm=sync needs GPUs (torch's SyncBatchNorm has no CPU kernel); "
                          "use dist.batchnorm=frozen on CPU ranks")


class RankShare(torch.utils.data.Sampler):
    """This rank's contiguous slice of every global batch that ``batches`` yields.

    ``batches`` is the one-rank batch sampler (BatchSampler over a RandomSampler
    with the loader's seeded generator), identical on every rank, so the slices
    are disjoint and their union is the global batch; with one rank the batches
    are exactly those of DataLoader(shuffle=True). A short batch (a training set
    smaller than the batch) is split as evenly as it goes.
    """

    def __init__(self, batches: torch.utils.data.BatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self):
        for batch in self.batches:
            n = len(batch)
            yield batch[n * self.rank // self.world_size: n * (self.rank + 1) // self.world_size]

    def __len__(self) -> int:
        return len(self.batches)


def rank_loader(dataset, collate, batch_size: int, seed: int, num_workers: int, world: World):
    """Endlessly reusable DataLoader of this rank's share of shuffled global batches of ``batch_size``."""
    if len(dataset) < world.size:
        raise DataError(f"the training set has {len(dataset)} samples, fewer than the {world.size} ranks")
    generator = torch.Generator().manual_seed(seed)
    batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset, generator=generator),
                                            batch_size, drop_last=len(dataset) > batch_size)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=RankShare(batches, world.rank, world.size), collate_fn=collate,
        generator=generator, num_workers=num_workers,
        persistent_workers=num_workers > 0)  # workers keep their image caches across passes


class _DDP(DistributedDataParallel):
    """DDP that also answers the task model's own attributes (e.g. pose's ``heatmap_sigma``)."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def distribute(model: torch.nn.Module, cfg: FinetuneConfig, world: World) -> torch.nn.Module:
    """``model`` on this rank's device; on more than one rank, DDP-wrapped (with SyncBatchNorm for
    ``dist.batchnorm=sync``). Train the result; evaluate and save ``model`` itself."""
    model.to(world.device)
    if world.size == 1:
        return model
    if cfg.dist.batchnorm == "sync":
        sync_batchnorms(model)  # converted in place: ``model`` keeps the synced layers
        model.to(world.device)
    ids = [world.device.index] if world.device.type == "cuda" else None
    # Every rank's buffers (batch-norm statistics) stay equal without a broadcast: they are
    # fixed, or synced over the global batch.
    return _DDP(model, device_ids=ids, broadcast_buffers=False)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensors inside tuples, lists and dicts) on ``device``; unchanged on CPU."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
