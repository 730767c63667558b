"""Images -> WebDataset shards in hash-rank order (``datascale shards write``).

Any input (image folders, a CSV/Parquet/JSONL manifest, existing WebDataset or
img2dataset tars, an img2dataset ``files`` folder, a synthetic world) becomes::

    SHARDS/shard-000000.tar ...  KEY.jpg (original bytes where possible) + KEY.json [+ KEY.txt]
                                 (``image_format=jpeg``: every image a KEY.jpg)
    SHARDS/manifest.parquet      key, shard, labels, rank, bytes, sha1, ext [, true_labels]
    SHARDS/sizes.json, classes.json, card.md, config.yaml, complete.json

Shards are in increasing rank u = hash(key, salt), so every nested subset is
a prefix of the shard list (design rule 1). The input is re-ordered by a
bucketed external shuffle (:mod:`data_tools.shards.buckets`) in bounded
memory, then shards are written by parallel workers. Each shard is written to
a temporary name and renamed only after its manifest part is saved; the
manifest is assembled last, so an interrupted run resumes where it stopped
and never lists a half-written shard. Many ranks (machines) can write one
folder together, to the same bytes: :mod:`data_tools.shards.distributed`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datascale.atomic import atomic_path, write_json
from datascale.config import to_dict
from datascale.errors import SKIP_LOG_ENV, DatascaleError, DataError
from datascale.launch import rank_from_env
from datascale.lineage import abandon_output_dir, config_record, mark_complete, prepare_output_dir
from datascale.lock import HOUSEKEEPING
from data_tools.shards import buckets as buckets_mod
from data_tools.labels import Vocabulary
from data_tools.shards.config import ShardsConfig
from data_tools.shards.distributed import (BARRIER_TIMEOUT, BarrierTimeout, RankFailed, Ranks,
                                          merge_rank_states, shards_of_rank, wait_for_folder,
                                          with_rank_files)
from data_tools.shards.manifest import WORK_DIR, load_manifest, manifest_schema, shard_name
from data_tools.ranks import sample_rank, sample_ranks
from data_tools.shards.buckets import KEPT, KEY, LABELS, RANK, REF, SOURCE, TRUE
from datascale.formats.wds import (ImageCheckError, ShardSample, iter_shard_samples,
                                 write_tar)
from data_tools.shards.images import stored_image
from data_tools.shards.label_source import CAPTION_FIELD, SAMPLE_FORMATS, check_label_config
from data_tools.shards.readers import READERS, detect_format, input_parts, label_source
from data_tools.shards.sources import IMAGE_EXTENSIONS, count_skip, folder_class_names, read_ref

__all__ = ["ShardsConfig", "ShardSample", "iter_shard_samples", "load_manifest",
           "sample_rank", "sample_ranks", "shard_name", "write_shards"]

log = logging.getLogger(__name__)
STAGE = "shards"
# --------------------------------------------------------------------------- vocabulary


def _resolve_vocabulary(fmt: str, source: Path, cfg: ShardsConfig, ranks: Ranks) -> Vocabulary:
    if cfg.classes:
        return Vocabulary.load(cfg.classes)
    if fmt == "world":
        return Vocabulary.load(source / "classes.json")
    if fmt == "folder":
        return Vocabulary.flat(folder_class_names(source))
    # Manifests and tars without classes.json: one metadata pass over the labels, each rank over
    # its parts, then the union (the bucket pass counts and names the skips, so not here).
    names: set = set()
    for _, record in _skips_unnamed(_records_of_rank(fmt, source, cfg, ranks, collections.Counter())):
        names.update(record.labels)
    if ranks.world_size > 1:
        found = ranks.exchange("vocabulary", {"names": sorted(names, key=lambda n: (str(type(n)), n))})
        names = {name for payload in found for name in payload["names"]}
    if not names:
        where = ("labels_from / labels_column / labels_manifest" if fmt in SAMPLE_FORMATS
                 else "labels_column")
        raise DataError(f"{source}: no labels found; check {where}, or pass --set classes=...")
    kinds = {isinstance(n, int) for n in names}
    if len(kinds) > 1:
        raise DataError(f"{source}: labels mix class ids and class names; give a classes.json "
                        "with --set classes=PATH so that both can be resolved")
    if kinds == {True}:
        log.warning("no classes.json given: building %d classes named by their ids", max(names) + 1)
        return Vocabulary.flat([str(i) for i in range(max(names) + 1)])
    return Vocabulary.flat(sorted(str(n) for n in names))


def _label_ids(raw: list, vocab: Vocabulary, cfg: ShardsConfig, skipped: collections.Counter,
               where: str) -> list[int]:
    ids = set()
    for label in raw:
        try:
            ids.add(vocab.id_of(label))
        except DataError as exc:
            if cfg.unknown_labels == "error":
                raise DataError(f"{where}: {exc}; add the class to classes.json, or pass "
                                "--set unknown_labels=drop to drop such labels (they are counted)"
                                ) from None
            count_skip(skipped, "unknown_label_dropped", f"{where}: {label!r}")
    return sorted(ids)


# --------------------------------------------------------------------------- pass 1


def _bucket_pass(fmt: str, source: Path, cfg: ShardsConfig, vocab: Vocabulary, ranks: Ranks,
                 progress: bool) -> dict:
    """Read this rank's input records, label them with class ids and a rank, append them to its
    buckets, settle the buckets (with the other ranks) and save this rank's bucket state."""
    skipped: collections.Counter = collections.Counter()
    writer = buckets_mod.BucketWriter(ranks.bucket_folder())
    has_true = False
    records = _records_of_rank(fmt, source, cfg, ranks, skipped)
    for index, rec in tqdm(records, desc="shards: reading input", unit=" img", disable=not progress):
        ids = _label_ids(rec.labels, vocab, cfg, skipped, rec.source)
        if not ids:
            count_skip(skipped, "no_labels", rec.source)
            continue
        true = None
        if rec.true_labels is not None:
            true = _label_ids(rec.true_labels, vocab, cfg, skipped, rec.source)
            has_true = True
        writer.add([sample_rank(rec.key, cfg.salt), rec.key, ids, true, rec.source, rec.ref,
                    rec.ext, index, rec.kept])
    leaves, totals = buckets_mod.settle_buckets(writer.close(), cfg.bucket_records, ranks.exchange)
    state = {"buckets": [vars(b) for b in leaves], "totals": totals, "skipped": dict(skipped),
             "has_true": has_true}
    write_json(_rank_state_file(ranks), state)
    return state


def _rank_state_file(ranks: Ranks) -> Path:
    return ranks.folder / f"rank-{ranks.rank:05d}.json"


def _skips_unnamed(records: Iterator) -> Iterator:
    """``records``, with the skips the reader counts while advancing left out of skipped.tsv."""
    iterator = iter(records)
    while True:
        named_in = os.environ.pop(SKIP_LOG_ENV, None)
        try:
            record = next(iterator, None)
        finally:
            if named_in is not None:
                os.environ[SKIP_LOG_ENV] = named_in
        if record is None:
            return
        yield record


def _records_of_rank(fmt: str, source: Path, cfg: ShardsConfig, ranks: Ranks,
                     skipped: collections.Counter) -> Iterator[tuple[list[int], SourceRecord]]:
    """(place, record) for this rank's share of the input, in reading order.

    The input is cut into parts (:func:`data_tools.shards.readers.input_parts`)
    and rank r reads parts p with p % W == r, counting and naming the skips of
    its parts. ``place`` is [p, position in p]: it orders records as one
    machine reads them, which breaks (rank, key) ties in the shard order, so
    the output does not depend on W. An input that cannot be cut (a CSV) is
    read whole by every rank, which keeps the records i with i % W == r;
    there the reader's own skips are rank 0's to name.
    """
    parts = input_parts(fmt, source, cfg, ranks.world_size)
    if parts is None:
        records = READERS[fmt](source, cfg, skipped if ranks.rank == 0 else collections.Counter())
        if ranks.rank:
            records = _skips_unnamed(records)
        for index, record in enumerate(records):
            if index % ranks.world_size == ranks.rank:
                yield [0, index], record
        return
    labels = label_source(fmt, cfg)
    for part in parts:
        if part.number % ranks.world_size != ranks.rank:
            continue
        if labels is not None:  # `labels_from=auto` picks its source on the input's first sample
            labels.first = part.number == 0
        for position, record in enumerate(part.read(skipped, labels)):
            yield [part.number, position], record


# --------------------------------------------------------------------------- pass 2


def _write_shard(task: dict) -> dict:
    """Worker: write one shard (tar + manifest part + stats), atomically. Returns its stats."""
    out, name, decode = Path(task["out"]), task["name"], task["decode"]
    skipped = collections.Counter(task["skipped"])
    rows: list[dict] = []
    reencoded: collections.Counter = collections.Counter()  # source format -> images
    kept_counts: collections.Counter = collections.Counter()

    def samples() -> Iterator[tuple[str, str, bytes, dict, dict]]:
        for rec in task["records"]:
            try:
                data, ext, source_format = stored_image(read_ref(rec[REF]), decode,
                                                        task["image_format"], task["jpeg_quality"])
            except OSError as exc:
                count_skip(skipped, "unreadable_image", f"{rec[SOURCE]}: {exc}")
                continue
            except ImageCheckError as exc:
                count_skip(skipped, "corrupt_image", f"{rec[SOURCE]}: {exc}")
                continue
            if source_format is not None:
                reencoded[source_format] += 1
            meta = {"labels": rec[LABELS], "rank": rec[RANK], "source": rec[SOURCE]}
            row = {"key": rec[KEY], "shard": name, "labels": rec[LABELS], "rank": rec[RANK],
                   "bytes": len(data), "sha1": hashlib.sha1(data).hexdigest(), "ext": ext}
            if task["has_true"]:
                meta["true_labels"] = row["true_labels"] = rec[TRUE] or []
            rows.append(row)
            kept = rec[KEPT] if len(rec) > KEPT and rec[KEPT] else {}
            meta.update(kept)  # caption, url, sha256 of the input sample
            kept_counts.update(kept.keys())
            members = {"txt": kept[CAPTION_FIELD].encode("utf-8")} if CAPTION_FIELD in kept else {}
            yield rec[KEY], ext, data, meta, members

    parts = out / WORK_DIR / "parts"
    with atomic_path(out / name) as tmp:
        write_tar(tmp, samples())
        table = pa.Table.from_pylist(rows, schema=manifest_schema(task["has_true"]))
        with atomic_path(parts / f"{name}.parquet") as part:
            pq.write_table(table, part)
        stats = {"samples": len(rows), "skipped": dict(skipped),
                 "reencoded": sum(reencoded.values()), "reencoded_from": dict(reencoded),
                 "bytes": sum(r["bytes"] for r in rows), "kept": dict(kept_counts)}
        write_json(parts / f"{name}.json", stats)
    return stats


def _shard_tasks(out: Path, groups: list[dict], state: dict, cfg: ShardsConfig,
                 owned: range | None = None) -> Iterator[dict]:
    """One task per shard not yet written (of the ``owned`` numbers, default all), loading one
    group of records at a time (only groups with such a shard)."""
    parts = out / WORK_DIR / "parts"

    def todo(index: int) -> bool:
        name = shard_name(index)
        return ((owned is None or index in owned)
                and not ((out / name).is_file() and (parts / f"{name}.json").is_file()))

    for group in groups:
        indices = range(group["first_shard"], group["first_shard"] + group["shards"])
        if not any(todo(i) for i in indices):
            continue
        records, dups = buckets_mod.drop_duplicate_keys(buckets_mod.load_group(group["buckets"]))
        dup_skips: collections.Counter = collections.Counter()
        for dup in dups:
            count_skip(dup_skips, "duplicate_key", f"{dup[SOURCE]} (key {dup[KEY]!r} seen before)")
        for j, (index, chunk) in enumerate(zip(indices, buckets_mod.split_evenly(records,
                                                                                len(indices)))):
            if not todo(index):
                continue
            # Duplicates are charged to the group's first shard, so they are counted once.
            yield {"out": str(out), "name": shard_name(index), "records": chunk,
                   "decode": cfg.image_check == "decode", "image_format": cfg.image_format,
                   "jpeg_quality": cfg.jpeg_quality, "has_true": state["has_true"],
                   "skipped": dict(dup_skips) if j == 0 else {}}


def _run_tasks(tasks: Iterator[dict], workers: int, total: int, progress: bool) -> None:
    """Run shard tasks on ``workers`` processes with at most 2 per worker in flight."""
    bar = tqdm(total=total, desc="shards: writing", unit=" shard", disable=not progress)
    if workers <= 1:
        for task in tasks:
            _write_shard(task)
            bar.update()
        bar.close()
        return
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: set = set()
        for task in tasks:
            pending.add(pool.submit(_write_shard, task))
            if len(pending) >= 2 * workers:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    future.result()
                    bar.update()
        for future in cf.as_completed(pending):
            future.result()
            bar.update()
    bar.close()


# --------------------------------------------------------------------------- driver


def _lineage(fmt: str, source: Path, cfg: ShardsConfig) -> dict:
    """The lineage record: small input files are hashed; big trees are fingerprinted by listing."""
    inputs: dict[str, Path] = {}
    config = {**to_dict(cfg), "input": str(source.resolve()), "input_format": fmt}
    if fmt == "manifest":
        inputs["manifest"] = source
    elif fmt == "world":
        inputs["labels"] = source / cfg.split / "labels.jsonl"
        inputs["classes"] = source / "classes.json"
    else:
        # Hashing every image would read the whole collection twice; the
        # listing (paths and sizes) pins it well enough to detect a changed input.
        digest = hashlib.sha256()
        files = [source] if source.is_file() else sorted(
            p for p in source.rglob("*") if p.is_file() and p.name not in HOUSEKEEPING)
        for path in files:
            digest.update(f"{path.relative_to(source.parent)}\0{path.stat().st_size}\n".encode())
        config["input_listing_sha256"] = digest.hexdigest()
    if cfg.classes:
        inputs["classes"] = Path(cfg.classes)
    if cfg.labels_manifest:
        inputs["labels_manifest"] = Path(cfg.labels_manifest)
    return config_record(STAGE, config, inputs)


def _clean_stale_temporaries(out: Path, names: list[str]) -> None:
    """Remove what a killed writer of the shards ``names`` left (other ranks' are theirs)."""
    parts = out / WORK_DIR / "parts"
    for name in names:
        for stale in list(out.glob(f".{name}.*.tmp")) + list(parts.glob(f".{name}.*.tmp")):
            stale.unlink(missing_ok=True)


def write_shards(source: str | Path, out_dir: str | Path, cfg: ShardsConfig | None = None, *,
                 force: bool = False, progress: bool = True, rank: int = 0, world_size: int = 1,
                 barrier_timeout: float = BARRIER_TIMEOUT) -> dict:
    """Write the images of ``source`` as rank-ordered WebDataset shards in ``out_dir``.

    Inputs: an image folder tree, a manifest file, a folder of tars or a
    synthetic world (``cfg.format`` or detected), and a :class:`ShardsConfig`.
    Output: the shards folder of docs/formats.md; returns the summary also
    stored in ``complete.json`` (images, shards, skipped counts by reason).
    Re-running with the same config resumes an interrupted run or returns at
    once if it finished; another config raises unless ``force``. An input or
    config error before the first shard is written empties ``out_dir`` again,
    so the corrected command needs no ``force`` (one rank only).
    ``rank`` of ``world_size``: one of the processes that write ``out_dir``
    together, on a shared filesystem (:mod:`data_tools.shards.distributed`);
    the output is byte-identical whatever ``world_size``. Rank 0 prepares
    the folder and returns the summary; another rank returns its own
    ``{"rank", "world_size", "shards", "shards_of_rank"}`` once its shards are
    written. A rank waits at most ``barrier_timeout`` seconds for the others.
    Memory: at most ``cfg.bucket_records`` metadata records per process (see
    :mod:`data_tools.shards.buckets`) plus one image per worker.
    Time: one metadata pass (each rank over its 1/W of the input), then
    read + check + write each image once (on one rank).
    """
    cfg = cfg or ShardsConfig()
    cfg.validate()
    source, out = Path(source), Path(out_dir)
    if not source.exists():
        raise DataError(f"input not found: {source}")
    rank, world_size = rank_from_env(rank, world_size)
    fmt = detect_format(source) if cfg.format == "auto" else cfg.format
    check_label_config(fmt, cfg)
    record = _lineage(fmt, source, cfg)
    if rank == 0:
        state_of_dir = prepare_output_dir(out, record, force=force)
    else:
        state_of_dir = wait_for_folder(out, record, barrier_timeout)
    if state_of_dir == "complete":
        log.info("%s already holds these shards (complete.json); nothing to do", out)
        return json.loads((out / "complete.json").read_text(encoding="utf-8"))
    ranks = Ranks(out / WORK_DIR / f"w{world_size}", rank, world_size, timeout=barrier_timeout)
    try:
        return _write_into(fmt, source, out, cfg, ranks, progress)
    except DatascaleError as exc:
        # An input or config error before the first shard: leave nothing (no config.yaml)
        # that would refuse the corrected command. Other failures (an interrupt, a full
        # disk) keep the folder, so the same command resumes. With many ranks the folder
        # is theirs too: it is kept, and the others learn of the error.
        if world_size == 1 and not any(out.glob("shard-*.tar")):
            log.info("nothing written; emptying %s so that a corrected run can start", out)
            abandon_output_dir(out)
        if not isinstance(exc, (BarrierTimeout, RankFailed)):
            ranks.mark_failed(exc)
        raise


def _write_into(fmt: str, source: Path, out: Path, cfg: ShardsConfig, ranks: Ranks,
                progress: bool) -> dict:
    """The body of :func:`write_shards` once the output folder is prepared."""
    ranks.clear_failure()
    vocab = _resolve_vocabulary(fmt, source, cfg, ranks)
    if _rank_state_file(ranks).is_file():
        log.info("resuming %s: rank %d's input already bucketed", out, ranks.rank)
        state = json.loads(_rank_state_file(ranks).read_text(encoding="utf-8"))
    else:
        state = _bucket_pass(fmt, source, cfg, vocab, ranks, progress)
    merged = merge_rank_states(ranks.exchange(
        "bucketed", {"skipped": state["skipped"], "has_true": state["has_true"]}))
    names = [buckets_mod.bucket_name(buckets_mod.Bucket(**b)) for b in state["buckets"]]
    leaves = [buckets_mod.Bucket(name, b["lo"], b["hi"], state["totals"][name])
              for name, b in zip(names, state["buckets"])]
    groups = buckets_mod.plan_groups(leaves, cfg.bucket_records, cfg.samples_per_shard)
    if not groups:
        what = (f"the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                if fmt == "folder" else "no usable images")
        raise DataError(f"{source}: {what} (skipped: {merged['skipped'] or 'none'})")
    total = groups[-1]["first_shard"] + groups[-1]["shards"]
    owned = shards_of_rank(total, ranks)
    my_shards = [shard_name(i) for i in owned]
    _clean_stale_temporaries(out, my_shards)
    todo = sum(1 for name in my_shards if not (out / name).is_file()
               or not (out / WORK_DIR / "parts" / f"{name}.json").is_file())
    workers = cfg.workers or os.cpu_count() or 1
    _run_tasks(_shard_tasks(out, with_rank_files(groups, ranks), merged, cfg, owned),
               min(workers, todo), todo, progress)
    # Only rank 0 waits here: once all have arrived it removes the markers with .work.
    ranks.exchange("written", {"shards": len(my_shards)}, wait=ranks.rank == 0)
    if ranks.rank != 0:
        return {"rank": ranks.rank, "world_size": ranks.world_size, "shards": total,
                "shards_of_rank": len(my_shards)}
    from data_tools.shards.report import finalize_shards
    summary = finalize_shards(out, total, vocab, merged, salt=cfg.salt,
                              image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality)
    if summary["images"] == 0:
        raise DataError(f"{source}: no usable images: every input was skipped "
                        f"({summary['skipped']}); see the warnings above")
    shutil.rmtree(out / WORK_DIR)
    mark_complete(out, summary)
    return summary
