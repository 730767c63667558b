"""Per-worker sample streams of the loader, with exact, cheap fast-forward.

Training stream of worker w on node r (W workers a node, R nodes): the shard
list is permuted per shard cycle c with a generator seeded by (seed, c), the
cycles are concatenated into one endless sequence, and the node/worker split
takes every (R*W)-th shard of it from offset r + R*w. Taking the split from
the endless sequence (not from each cycle) means every worker keeps getting
shards even when there are fewer shards than workers, so no rank ever starves.

Each shard contributes exactly its expected number of items (from
subset.json/sizes.json): a sample, or ``None`` for a sample that is missing or
unreadable (counted in ``skipped``). Items therefore have fixed positions, and
the shuffle buffer's random picks depend only on positions, not on content.
That lets :class:`ShuffleBuffer` jump to "n items emitted" by replaying its
picks with numpy on integers (tens of millions a second), and the reader then
fetch just the few hundred shards' items still in the buffer: resuming costs
seconds, not a re-read of the epoch.
"""

from __future__ import annotations

import bisect
import collections
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from datascale.formats.wds import ShardSample, read_shard
from datascale.errors import count_skip

PICK_CHUNK = 4096  # picks are drawn in fixed chunks so replay and real run draw identically


@dataclass(frozen=True)
class ShardItem:
    """A shard of the source with its expected item count and whether to rank-filter it."""

    path: str
    count: int
    filter: bool


@dataclass(frozen=True)
class SampleFilter:
    """Which stored samples belong to the source: rank < max_rank (boundary shard) and,
    for a class-restricted subset, at least one kept label."""

    max_rank: float
    label_map: tuple | None  # source id -> subset id or -1

    def accepts(self, sample: ShardSample, rank_filter: bool) -> bool:
        if rank_filter:
            rank = sample.meta.get("rank")
            if not isinstance(rank, (int, float)) or rank >= self.max_rank:
                return False
        if self.label_map is not None:
            table = self.label_map
            return any(isinstance(x, int) and 0 <= x < len(table) and table[x] >= 0
                       for x in sample.meta.get("labels", ()))
        return True


def exact_items(shard: ShardItem, accept: SampleFilter, skipped: collections.Counter
                ) -> Iterator[ShardSample | None]:
    """Exactly ``shard.count`` items of one shard: its accepted samples, padded with None."""
    if shard.count == 0:
        return
    produced = 0
    for sample in read_shard(shard.path, skipped):
        if not accept.accepts(sample, shard.filter):
            continue
        if produced == shard.count:
            count_skip(skipped, "unexpected_sample", f"{Path(shard.path).name}:{sample.key} "
                       "beyond the count in subset.json/sizes.json")
            continue
        produced += 1
        yield sample
    for _ in range(shard.count - produced):
        count_skip(skipped, "missing_sample", f"{Path(shard.path).name}: fewer samples than listed")
        yield None


@functools.lru_cache(maxsize=8)
def _cycle_order(num_shards: int, seed: int, cycle: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, cycle, 0x5A4D])
    return tuple(int(i) for i in rng.permutation(num_shards))


class WorkerShards:
    """The endless shard sequence of one (node, worker) and item positions along it."""

    def __init__(self, shards: list[ShardItem], seed: int, offset: int, stride: int,
                 shuffle: bool = True) -> None:
        if sum(s.count for s in shards) == 0:
            raise ValueError("the source holds no samples")
        self.shards, self.seed, self.offset, self.stride = shards, seed, offset, stride
        self.shuffle = shuffle

    def shard(self, i: int) -> ShardItem:
        """The i-th shard this worker reads."""
        global_index = self.offset + self.stride * i
        cycle, within = divmod(global_index, len(self.shards))
        order = _cycle_order(len(self.shards), self.seed, cycle) if self.shuffle else None
        return self.shards[order[within] if order else within]

    def walk(self) -> Iterator[tuple[int, int, ShardItem]]:
        """(shard number i, first item position, shard) forever."""
        i, position = 0, 0
        while True:
            shard = self.shard(i)
            yield i, position, shard
            position += shard.count
            i += 1


class ShuffleBuffer:
    """A shuffle buffer of ``size`` slots over an endless item stream, replayable by position.

    The first ``size`` items fill the slots; then item ``size + t`` arrives,
    a slot k = pick[t] is emitted and refilled with it. Picks come from a
    numpy generator in chunks of PICK_CHUNK, so they are a pure function of
    the seed: :meth:`fast_forward` reconstructs the slot contents after any
    number of emissions without touching data.
    """

    def __init__(self, size: int, seed_words: list[int]) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed_words)
        self.chunk = np.empty(0, dtype=np.int64)
        self.chunk_start = 0      # emission index of chunk[0]
        self.emitted = 0

    def _picks_for(self, t: int) -> None:
        while t >= self.chunk_start + len(self.chunk):
            self.chunk_start += len(self.chunk)
            self.chunk = self.rng.integers(0, self.size, size=PICK_CHUNK, dtype=np.int64)

    def pick(self) -> int:
        """The slot to emit next (advances the emission count)."""
        self._picks_for(self.emitted)
        k = int(self.chunk[self.emitted - self.chunk_start])
        self.emitted += 1
        return k

    def fast_forward(self, emitted: int) -> np.ndarray:
        """Replay ``emitted`` picks; returns the item position held by each slot afterwards.

        Time O(emitted) in numpy; memory O(size + PICK_CHUNK).
        """
        slots = np.arange(self.size, dtype=np.int64)
        while self.emitted < emitted:
            self._picks_for(self.emitted)
            lo = self.emitted - self.chunk_start
            hi = min(len(self.chunk), lo + emitted - self.emitted)
            picks = self.chunk[lo:hi]
            # The last time each slot was picked decides what it holds now.
            rev_unique, rev_index = np.unique(picks[::-1], return_index=True)
            last_t = self.emitted + (len(picks) - 1 - rev_index)
            slots[rev_unique] = self.size + last_t
            self.emitted += len(picks)
        return slots


def shuffled_items(shards: WorkerShards, accept: SampleFilter, buffer: ShuffleBuffer,
                   start: int, skipped: collections.Counter) -> Iterator[ShardSample | None]:
    """Items emitted by the shuffle buffer, starting after ``start`` emissions.

    Only shards holding items still in the buffer at ``start`` (or beyond
    the read frontier) are opened; earlier ones are skipped by count.
    """
    size = buffer.size
    slots = buffer.fast_forward(start)
    frontier = size + start                     # positions below this were read already
    wanted = {int(p): k for k, p in enumerate(slots)}
    needed = sorted(wanted)
    contents: list = [None] * size
    for _, first, shard in shards.walk():
        end = first + shard.count
        if end <= frontier and bisect.bisect_left(needed, first) == bisect.bisect_left(needed, end):
            continue                            # nothing of this shard is still buffered
        for offset, item in enumerate(exact_items(shard, accept, skipped)):
            position = first + offset
            if position < frontier:
                if position in wanted:
                    contents[wanted[position]] = item
                continue
            k = buffer.pick()
            out, contents[k] = contents[k], item
            yield out
