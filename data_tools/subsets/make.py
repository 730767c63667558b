"""The streaming passes behind ``datascale subsets make`` (see :mod:`data_tools.subsets.subset`).

Pass 0 (only for ``top_classes``): class frequencies from the labels column.
Pass 1 (only for sizes given as counts): the rank column (and labels, for a
class-restricted subset) up to the largest boundary, to find each subset's
max_rank; fractions f need no pass, their max_rank is f (design rule 1).
Pass 2: every column up to the largest boundary; each batch is cut at the
boundaries, tallied once per segment and appended to each subset's manifest.
A subset of every row is the shards manifest itself: it is hard-linked (copied
across file systems), and the rows past the last written boundary are read
with only the columns the statistics need.

Memory: a few batches of ``batch_rows`` rows (one tallied, one read ahead,
up to 8 slices waiting for the writer) plus O(classes x subsets) counters;
578 MiB peak at the default 2^18 rows with 18k classes (benchmarks).
Time: one read of the manifest prefix the largest subset covers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from datascale.atomic import atomic_path, write_json
from datascale.config import to_dict
from datascale.errors import DataError
from datascale.lineage import child_folder, config_record, is_complete, mark_complete, prepare_output_dir
from data_tools.labels import Vocabulary
from data_tools.shards.manifest import MANIFEST_WRITE_OPTIONS
from data_tools.shards.sources import iter_parquet_batches
from data_tools.subsets.stats import SegmentTally, ancestor_table, list_arrays, map_labels
from data_tools.subsets.subset import (STAGE, SUBSET_FILE, ShardEntry, Subset, SubsetsConfig,
                                load_subset, parse_sizes, resolve_classes, restricted_vocabulary,
                                shards_salt, size_name)
from data_tools.subsets.wds_view import write_wds_view


def _batches(manifest: Path, columns: list[str] | None, batch_rows: int, row_groups=None):
    return iter_parquet_batches(manifest, columns, batch_rows, row_groups)


def _class_counts(manifest: Path, num_classes: int, batch_rows: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for batch in _batches(manifest, ["labels"], batch_rows):
        values, _ = list_arrays(batch.column("labels"))
        counts += np.bincount(values, minlength=num_classes)
    return counts


def _kept_rows(batch, label_map: np.ndarray | None) -> np.ndarray | None:
    if label_map is None:
        return None
    values, offsets = list_arrays(batch.column("labels"))
    _, new_offsets = map_labels(values, offsets, label_map)
    return np.diff(new_offsets) > 0


def find_boundaries(manifest: Path, targets: list[int], label_map: np.ndarray | None,
                    batch_rows: int) -> list[float]:
    """max_rank per target count: the rank of the (n+1)-th eligible row, or 1.0 for all rows.

    Checks that ranks never decrease (the shards contract) up to the largest
    boundary. Raises DataError when a target exceeds the eligible rows.
    """
    columns = ["rank"] + (["labels"] if label_map is not None else [])
    found: dict[int, float] = {}
    seen, last = 0, -1.0
    for batch in _batches(manifest, columns, batch_rows):
        ranks = np.asarray(batch.column("rank"), dtype=np.float64)
        if len(ranks) and (ranks[0] < last or np.any(np.diff(ranks) < 0)):
            raise DataError(f"{manifest}: ranks are not in increasing order; the shards were not "
                            "written by `datascale shards write` (re-shard them)")
        last = ranks[-1] if len(ranks) else last
        kept = _kept_rows(batch, label_map)
        eligible = ranks if kept is None else ranks[kept]
        for target in targets:
            if target not in found and seen <= target < seen + len(eligible):
                found[target] = float(eligible[target - seen])
        seen += len(eligible)
        if len(found) == len(targets):
            break
    for target in targets:
        if target not in found:
            if target > seen:
                raise DataError(f"a subset of {target:,} images is larger than the collection "
                                f"({seen:,} eligible images); use sizes up to {seen:,}")
            found[target] = 1.0
    return [found[t] for t in targets]


class _SubsetPass:
    """Pass 2 state: per-segment tallies, per-shard counts, dropped counts, writers."""

    def __init__(self, boundaries: list[float], vocab: Vocabulary, label_map, num_out: int):
        self.boundaries = boundaries
        self.closure = ancestor_table(vocab)
        self.label_map = label_map
        self.tallies = [SegmentTally(num_out) for _ in boundaries]
        self.shards = [collections.Counter() for _ in boundaries]
        self.dropped = [collections.Counter() for _ in boundaries]

    def restrict(self, batch):
        """Keep rows with a kept label; labels (and true_labels) renumbered."""
        values, offsets = list_arrays(batch.column("labels"))
        mapped, new_offsets = map_labels(values, offsets, self.label_map)
        kept = np.diff(new_offsets) > 0
        columns = {name: batch.column(name) for name in batch.schema.names}
        columns["labels"] = pa.ListArray.from_arrays(new_offsets.astype(np.int32),
                                                     mapped.astype(np.int32))
        if "true_labels" in columns:
            tv, to = list_arrays(batch.column("true_labels"))
            tm, tno = map_labels(tv, to, self.label_map)
            columns["true_labels"] = pa.ListArray.from_arrays(tno.astype(np.int32),
                                                              tm.astype(np.int32))
        table = pa.table(columns).cast(batch.schema)
        return table.filter(pa.array(kept)), values, offsets, kept

    def add(self, batch, write) -> bool:
        """Tally and write one manifest batch; False once past the largest boundary."""
        ranks = np.asarray(batch.column("rank"), dtype=np.float64)
        cuts = np.searchsorted(ranks, self.boundaries, side="left")
        source_values, source_offsets = list_arrays(batch.column("labels"))
        table = pa.Table.from_batches([batch])
        kept = None
        if self.label_map is not None:
            table, source_values, source_offsets, kept = self.restrict(batch)
        start = 0
        for seg, cut in enumerate(cuts):
            self._segment(seg, batch, start, int(cut), source_values, source_offsets, kept)
            start = int(cut)
        for j, cut in enumerate(cuts):
            rows = int(cut) if kept is None else int(kept[:cut].sum())
            if rows:
                write(j, table.slice(0, rows))
        return bool(cuts[-1] == len(ranks))

    def _segment(self, seg, batch, lo, hi, values, offsets, kept) -> None:
        if hi <= lo:
            return
        seg_offsets = offsets[lo: hi + 1]
        seg_values = values[seg_offsets[0]: seg_offsets[-1]]
        seg_offsets = seg_offsets - seg_offsets[0]
        shard_names = batch.column("shard").slice(lo, hi - lo)
        if kept is not None:
            seg_kept = kept[lo:hi]
            self.dropped[seg]["images"] += int((~seg_kept).sum())
            self.dropped[seg]["rows_before_restriction"] += hi - lo
            row_keep = np.repeat(seg_kept, np.diff(seg_offsets))
            self.dropped[seg]["labels"] += int((self.label_map[seg_values] < 0).sum())
            self.dropped[seg]["labels_before_restriction"] += len(seg_values)
            # Tally only the rows that stay; their stored labels, mapped inside the tally.
            seg_values = seg_values[row_keep]
            seg_offsets = np.concatenate([[0], np.cumsum(np.diff(seg_offsets)[seg_kept])])
            shard_names = shard_names.filter(seg_kept)
        self.tallies[seg].add(seg_values, seg_offsets, self.closure, self.label_map)
        for entry in pc.value_counts(shard_names).to_pylist():
            self.shards[seg][entry["values"]] += entry["counts"]


def _subset_entries(sizes: dict[str, int], counts: collections.Counter, max_rank: float,
                    restricted: bool) -> list[ShardEntry]:
    names = sorted(sizes)
    used = [i for i, n in enumerate(names) if counts.get(n, 0) > 0]
    if not used:
        return []
    entries = []
    for name in names[: used[-1] + 1]:
        samples = counts.get(name, 0)
        boundary = samples < sizes[name] if not restricted else max_rank < 1.0
        entries.append(ShardEntry(name, samples, False))
        entries[-1].filter = False if name != names[used[-1]] else bool(boundary)
    return entries


def _plan(cfg: SubsetsConfig, manifest: Path, vocab: Vocabulary, total: int):
    """(kept classes, label map, [(name, requested images, max_rank, fraction)] ascending)."""
    keep = None
    if cfg.classes or cfg.top_classes:
        counts = (_class_counts(manifest, len(vocab), cfg.batch_rows) if cfg.top_classes
                  else None)
        keep = resolve_classes(cfg, vocab, counts)
    label_map = None
    if keep is not None:
        label_map = np.full(len(vocab), -1, dtype=np.int64)
        label_map[np.asarray(keep)] = np.arange(len(keep))
    texts = [str(s).strip() for s in cfg.sizes]
    fractions, values = parse_sizes(texts, total)
    if fractions:
        requested, boundaries = [None] * len(texts), values
    else:
        requested = values
        too_big = [n for n in requested if n > total]
        if too_big and label_map is None:
            raise DataError(f"a subset of {max(too_big):,} images is larger than the collection "
                            f"({total:,} images); use sizes up to {total:,}")
        boundaries = find_boundaries(manifest, requested, label_map, cfg.batch_rows)
    names = cfg.names or [None] * len(texts)
    suffix = f"-{len(keep)}classes" if keep is not None else ""
    plan = []
    for text, name, req, boundary in zip(texts, names, requested, boundaries):
        default = "all" if text.lower() == "all" else (size_name(req) if req else f"f{text}")
        plan.append({"name": name or default + suffix,
                     "size": text, "requested": req, "max_rank": boundary})
    if len({p["name"] for p in plan}) != len(plan):
        raise DataError(f"subset names repeat ({', '.join(p['name'] for p in plan)}); "
                        "give distinct sizes or --names")
    return keep, label_map, sorted(plan, key=lambda p: p["max_rank"])


def make_subsets(shards_dir: str | Path, out_dir: str | Path, cfg: SubsetsConfig | None = None,
                 *, force: bool = False, progress: bool = True) -> list[Subset]:
    """Cut the nested subsets of ``cfg`` from a shards folder into ``out_dir/NAME/``.

    Returns the subsets (ascending). A subset folder that is complete with
    the same config is left as it is. See the module docstring for memory.
    """
    cfg = cfg or SubsetsConfig()
    cfg.validate()
    root, out = Path(shards_dir).resolve(), Path(out_dir)
    for name in cfg.names or []:  # before any pass: a name must be a folder inside out_dir
        child_folder(out, name, "subset name")
    manifest = root / "manifest.parquet"
    if not is_complete(root) or not manifest.is_file():
        raise DataError(f"{root}: not a finished shards folder (no complete.json or "
                        "manifest.parquet); run `datascale shards write` first")
    vocab = Vocabulary.load(root / "classes.json")
    sizes = json_load(root / "sizes.json")
    total = pq.ParquetFile(manifest).metadata.num_rows
    keep, label_map, plan = _plan(cfg, manifest, vocab, total)
    # The shards' complete.json is rewritten by every `shards write`, so its hash
    # pins the manifest without reading it (hashing a 300M-row manifest takes minutes).
    base_record = config_record(STAGE, to_dict(cfg), {"shards_complete": root / "complete.json",
                                                       "shards_sizes": root / "sizes.json",
                                                       "shards_classes": root / "classes.json"})
    folders = [child_folder(out, p["name"], "subset name") for p in plan]
    states = []
    for p, folder in zip(plan, folders):
        record = {**base_record, "config": {**base_record["config"], "subset": p["name"]}}
        states.append(prepare_output_dir(folder, record, force=force))
    if all(s == "complete" for s in states):
        return [_with_wds_view(f, cfg.webdataset_copy) for f in folders]
    num_out = len(keep) if keep is not None else len(vocab)
    state = _SubsetPass([p["max_rank"] for p in plan], vocab, label_map, num_out)
    # A subset of every row is the shards manifest itself: link it instead of re-encoding.
    copies = {j for j, p in enumerate(plan) if p["max_rank"] >= 1.0 and label_map is None}
    written = [p["max_rank"] for j, p in enumerate(plan) if j not in copies]
    batches = _pass_batches(manifest, max(written, default=0.0), cfg.batch_rows)
    _stream_pass(batches, manifest, folders, state, copies, total, progress)
    for j in copies:
        link_or_copy(manifest, folders[j] / "manifest.parquet")
    return [_finish(p, j, f, state, root, sizes, keep, vocab, total, cfg.webdataset_copy)
            for j, (p, f) in enumerate(zip(plan, folders))]


TALLY_COLUMNS = ["rank", "labels", "shard"]


def _pass_batches(manifest: Path, written_rank: float, batch_rows: int):
    """Pass 2's batches: every column while a row may fall in a written subset (rank <
    ``written_rank``), then only TALLY_COLUMNS, decided per row group from its rank
    statistics (a group without them is read whole)."""
    meta = pq.ParquetFile(manifest).metadata
    # Row-group statistics are per leaf column: find rank's by path, not by field position.
    rank = next(i for i in range(len(meta.schema)) if meta.schema.column(i).path == "rank")
    groups = meta.num_row_groups
    narrow = next((i for i in range(groups)
                   if (stats := meta.row_group(i).column(rank).statistics) is not None
                   and stats.has_min_max and stats.min >= written_rank), groups)
    if narrow > 0:
        yield from _batches(manifest, None, batch_rows, range(narrow))
    if narrow < groups:
        yield from _batches(manifest, TALLY_COLUMNS, batch_rows, range(narrow, groups))


def link_or_copy(source: Path, target: Path) -> None:
    """Atomically put ``source``'s content at ``target``: a hard link (no bytes copied;
    files here are only ever replaced by rename, never edited in place), else a copy."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(source, tmp)


def prefetch(iterable, pool: ThreadPoolExecutor):
    """Yield ``iterable``'s items, reading the next one on ``pool`` meanwhile (one ahead).

    Parquet decoding releases the GIL, so reading overlaps the caller's work.
    """
    iterator = iter(iterable)
    sentinel = object()
    ahead = pool.submit(next, iterator, sentinel)
    while (item := ahead.result()) is not sentinel:
        ahead = pool.submit(next, iterator, sentinel)
        yield item


def _stream_pass(batches, manifest: Path, folders: list[Path], state: _SubsetPass,
                 copies: set[int], total: int, progress: bool) -> None:
    """Pass 2: tally every batch on this thread, append subset rows on a writer thread.

    pyarrow releases the GIL while encoding, so writing overlaps reading and
    counting; at most 8 slices wait for the writer (bounded memory).
    """
    schema = pq.ParquetFile(manifest).schema_arrow
    pending: collections.deque = collections.deque()
    with contextlib.ExitStack() as stack:
        writers = {j: stack.enter_context(pq.ParquetWriter(
            stack.enter_context(atomic_path(f / "manifest.parquet")), schema,
            **MANIFEST_WRITE_OPTIONS)) for j, f in enumerate(folders) if j not in copies}
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        bar = stack.enter_context(tqdm(total=total, desc="subsets", unit=" row",
                                       disable=not progress))

        def write(j: int, table) -> None:
            if j in writers:
                pending.append(pool.submit(writers[j].write_table, table))
            while len(pending) > 8:
                pending.popleft().result()

        for batch in prefetch(batches, pool=stack.enter_context(ThreadPoolExecutor(1))):
            going = state.add(batch, write)
            bar.update(len(batch))
            if not going:
                break
        while pending:
            pending.popleft().result()


def json_load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"missing {path}") from None


def _with_wds_view(folder: Path, copy_restricted: bool = True) -> Subset:
    """A finished subset folder, given its plain-WebDataset view if an older datascale made it
    without one (a class-restricted subset's too; the view is derived from subset.json and the
    shards alone)."""
    subset = load_subset(folder)
    data = json_load(folder / SUBSET_FILE)
    if data.get("webdataset") is None and (copy_restricted or subset.classes is None):
        data["webdataset"] = write_wds_view(subset, folder)
        write_json(folder / SUBSET_FILE, data, indent=2 if len(subset.shards) <= 1000 else None)
    return subset


def _finish(p: dict, j: int, folder: Path, state: _SubsetPass, root: Path, sizes: dict,
            keep, vocab: Vocabulary, total: int, copy_restricted: bool = True) -> Subset:
    """Sum the segments below subset j and write its subset.json, stats.json, classes.json."""
    tally = SegmentTally(len(state.tallies[0].counts))
    counts: collections.Counter = collections.Counter()
    dropped: collections.Counter = collections.Counter()
    for seg in range(j + 1):
        tally.merge(state.tallies[seg])
        counts.update(state.shards[seg])
        dropped.update(state.dropped[seg])
    entries = _subset_entries(sizes, counts, p["max_rank"], keep is not None)
    fraction = p["max_rank"] if p["requested"] is None else tally.images / max(total, 1)
    subset = Subset(p["name"], tally.images, p["max_rank"], shards_salt(root), root, entries,
                    keep, fraction, folder)
    data = subset.to_json()
    data["shards_root"] = os.path.relpath(root, folder.resolve())
    data["num_classes"] = len(keep) if keep is not None else len(vocab)
    data["webdataset"] = (write_wds_view(subset, folder) if keep is None or copy_restricted
                          else None)
    # Python's indenting JSON encoder takes ~0.1 s per 10k shard entries; the C one is 10x faster.
    write_json(folder / SUBSET_FILE, data, indent=2 if len(entries) <= 1000 else None)
    if keep is None:
        shutil.copyfile(root / "classes.json", folder / "classes.json")
    else:
        restricted_vocabulary(vocab, keep).save(folder / "classes.json")
    stats = {"name": p["name"], "requested_images": p["requested"], "max_rank": p["max_rank"],
             "fraction": fraction, "shards": len(entries), **tally.summary()}
    if keep is not None:
        stats["restriction"] = {"classes_kept": len(keep), "classes_total": len(vocab),
                                "dropped": dict(dropped)}
    write_json(folder / "stats.json", stats, indent=None)  # C encoder: 18k-class lists
    mark_complete(folder, {"images": tally.images, "max_rank": p["max_rank"]})
    return subset
