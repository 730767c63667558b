"""``shards write`` on many ranks: one rank-ordered shard set, byte-identical to a one-machine run.

Rank r of W (``RANK``/``WORLD_SIZE`` from the DeepSpeed launcher or torchrun,
or ``--rank``/``--world-size``), all writing one output folder on a shared
filesystem:

1. read this rank's parts of the input (parts p with ``p % W == r``:
   :func:`data_tools.shards.readers.input_parts`; a CSV, which cannot be cut,
   is read whole and its records i with ``i % W == r`` kept) and bucket them
   into this rank's own files, ``.work/wW/buckets/rank-R/``; a record's place
   (part, position) breaks (rank, key) ties as on one machine;
2. settle the bucket tree: the ranks exchange per-bucket counts and each
   splits its own file of every bucket whose *summed* count exceeds
   ``bucket_records`` (:func:`data_tools.shards.buckets.settle_buckets`), so
   all hold the buckets one machine would hold (one round per tree level);
3. plan the groups from the summed counts, the same plan on every rank, so
   the same shard numbers as one machine; write the r-th of W contiguous runs
   of shards, each group merging all ranks' files of its buckets;
4. once every rank has written its shards, rank 0 assembles manifest.parquet,
   sizes.json and the card from the shards' parts.

The barrier is done-marker files in the shared output's ``.work`` folder,
polled, not torch.distributed, because

- shard writing needs no torch, and a rank can be started by anything: the
  DeepSpeed launcher, torchrun, a batch-scheduler array job, a shell on each
  machine;
- a rank killed and rerun rejoins where it stopped: the markers of the steps
  it (and the others) passed are still on disk, whereas a gloo group dies
  with any of its processes and cannot be re-entered by one of them;
- the ranks need a shared filesystem anyway (each reads the input and all
  ranks' bucket files), so the markers need nothing more: no rendezvous port, no network
  between the machines beyond the filesystem.

The cost is polling (one folder listing per rank every ``poll`` seconds at most) and a timeout for a rank that never
comes, which names the missing ranks; a rank that fails with an error leaves a
failure marker, so the others stop at once with its message.
Memory: a rank holds what one machine's run holds (``bucket_records``
records at most) plus one count per bucket.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from datascale.atomic import write_json, write_text
from datascale.errors import DataError
from datascale.lineage import is_complete, read_config_record, same_lineage

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = 24 * 3600.0  # a slow rank is not a missing one: the longest step, on the slowest rank


class BarrierTimeout(DataError):
    """Some ranks did not reach a barrier in time."""


class RankFailed(DataError):
    """Another rank stopped with an error."""


@dataclass
class Ranks:
    """This process's place among the ranks, and the shared folder where they meet.

    ``folder``: the ranks' work folder (``OUT/.work/wW``); with one rank
    nothing is written there and :meth:`exchange` returns at once.
    """

    folder: Path
    rank: int = 0
    world_size: int = 1
    timeout: float = BARRIER_TIMEOUT
    poll: float = 2.0              # the longest pause between two looks at the markers
    started: float = field(default_factory=time.time)

    def _marker(self, step: str, rank: int) -> Path:
        return self.folder / "barrier" / step / f"rank-{rank:05d}.json"

    def bucket_folder(self, rank: int | None = None) -> Path:
        """Where rank ``rank`` (default: this one) keeps its bucket files."""
        return self.folder / "buckets" / f"rank-{self.rank if rank is None else rank:05d}"

    def exchange(self, step: str, payload: dict, wait: bool = True) -> list[dict]:
        """Publish this rank's ``payload`` for ``step`` and wait for every rank's; in rank order.

        Idempotent: a rank that reruns a step it passed before rewrites the
        same marker and finds the others' still there. ``wait=False``: only
        publish (the last step, after which rank 0 removes the markers).
        """
        if self.world_size == 1:
            return [payload]
        write_json(self._marker(step, self.rank), payload)
        if not wait:
            return [payload]
        deadline = time.monotonic() + self.timeout
        pause, logged = 0.05, False
        while True:
            self._raise_if_failed()
            # One listing per poll, not a stat per rank: 1,000 ranks polling must stay cheap
            # for the shared filesystem's metadata server.
            present = _names(self._marker(step, 0).parent)
            missing = [r for r in range(self.world_size) if f"rank-{r:05d}.json" not in present]
            if not missing:
                return [json.loads(self._marker(step, r).read_text(encoding="utf-8"))
                        for r in range(self.world_size)]
            if time.monotonic() > deadline:
                raise BarrierTimeout(
                    f"rank {self.rank} of {self.world_size}: timed out after {self.timeout:g} s at step "
                    f"'{step}' waiting for rank(s) {', '.join(map(str, missing))} (no "
                    f"{self._marker(step, missing[0]).parent}/rank-N.json); start the missing ranks "
                    f"with the same command and --rank N --world-size {self.world_size}, or give "
                    f"them more time with --barrier-timeout")
            if not logged:
                log.info("rank %d/%d: waiting at '%s' for rank(s) %s", self.rank, self.world_size,
                         step, missing)
                logged = True
            time.sleep(pause)
            pause = min(2 * pause, self.poll)  # quick when the ranks arrive together

    def _failure(self, rank: int) -> Path:
        return self.folder / "failed" / f"rank-{rank:05d}.txt"

    def mark_failed(self, exc: BaseException) -> None:
        """Leave this rank's error where the other ranks look while they wait."""
        if self.world_size > 1:
            write_text(self._failure(self.rank), f"{type(exc).__name__}: {exc}\n")

    def clear_failure(self) -> None:
        """Forget this rank's failure of an earlier attempt (it is being rerun)."""
        self._failure(self.rank).unlink(missing_ok=True)

    def _raise_if_failed(self) -> None:
        # A failure older than this process is taken as being rerun along with it.
        failed = _names(self._failure(0).parent)
        for rank in range(self.world_size):
            path = self._failure(rank)
            if rank == self.rank or path.name not in failed:
                continue
            try:
                if path.stat().st_mtime < self.started - 1:
                    continue
                message = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:  # cleared by its rerun just now
                continue
            raise RankFailed(f"rank {rank} of {self.world_size} failed: {message}; fix that and "
                             "rerun the ranks (each resumes where it stopped)")


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def wait_for_folder(out: Path, record: dict, timeout: float, poll: float = 0.5) -> str:
    """A rank other than 0: wait until rank 0 has prepared ``out`` for ``record``.

    Rank 0 alone checks, creates or (``--force``) replaces the folder, so
    that no two ranks empty or judge it at once. Returns ``"complete"`` or
    ``"resume"`` (as :func:`datascale.lineage.prepare_output_dir`).
    """
    deadline = time.monotonic() + timeout
    while not same_lineage(read_config_record(out), record):
        if time.monotonic() > deadline:
            raise BarrierTimeout(
                f"timed out after {timeout:g} s waiting for rank 0 to prepare {out} for this config "
                "(its config.yaml); start rank 0 with the same command, and --force there if the "
                "folder holds output of another config")
        time.sleep(poll)
    return "complete" if is_complete(out) else "resume"


def merge_rank_states(states: list[dict]) -> dict:
    """The bucket-pass state of the whole input from each rank's (skips summed)."""
    skipped: collections.Counter = collections.Counter()
    for state in states:
        skipped.update(state["skipped"])
    return {"skipped": dict(skipped), "has_true": any(s["has_true"] for s in states)}


def shards_of_rank(total: int, ranks: Ranks) -> range:
    """The shard numbers this rank writes: one contiguous run, sizes within one of each other.

    Contiguous runs, not whole groups dealt out, so that the work is even also
    when there are fewer groups than ranks; a rank loads only the groups its
    run touches (at most two of them shared with a neighbour).
    """
    return range(total * ranks.rank // ranks.world_size, total * (ranks.rank + 1) // ranks.world_size)


def with_rank_files(groups: list[dict], ranks: Ranks) -> list[dict]:
    """``groups``, that name their buckets (as planned from the summed counts), listing every
    rank's file of each bucket instead (:func:`data_tools.shards.buckets.load_group` merges them)."""
    return [{**group, "buckets": [str(ranks.bucket_folder(r) / f"{name}.jsonl")
                                  for name in group["buckets"] for r in range(ranks.world_size)]}
            for group in groups]
