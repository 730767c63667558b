"""``datascale dedup index``: pool -> vector store -> FAISS index, in resumable steps.

Steps (``--step``), each safe to rerun and skipping finished work:

1. ``embed``: each rank embeds its shards into ``vectors/`` (fits the PCA
   first, on rank 0, when the embedder needs one);
2. ``train``: choose the index shape (:func:`~data_tools.dedup.index.plan_index`),
   write ``index.json``, train the empty IVF-PQ index on a sample;
3. ``add``: build part ``--part I`` of ``--parts N`` (or every part);
4. ``merge``: merge the parts on disk, write ``complete.json``.

``all`` (the default) runs the four in one process. Output folder::

    INDEX/config.yaml, complete.json, index.json, metrics.jsonl
    INDEX/vectors/block-*.npy, *.keys.parquet, *.skipped.json   (see store.py)
    INDEX/index.faiss [+ index.ivfdata]  [pca.npz]
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from datascale.atomic import append_jsonl, write_json
from datascale.config import to_dict
from datascale.errors import ConfigError, DataError
from datascale.lineage import (config_record, is_complete, mark_complete, prepare_output_dir,
                               read_config_record, same_lineage)
from data_tools.dedup import STAGE_INDEX
from data_tools.dedup.embedders import EMBEDDERS, Embedder, embedder_inputs, make_embedder
from data_tools.dedup.extract import embed_pool, fit_embedder_state
from datascale.launch import rank_from_env
from data_tools.dedup.index import (INDEX_FILE, IVFDATA_FILE, TRAINED_FILE, IndexPlan, add_part,
                                    build_flat, merge_parts, plan_index, train_index)
from data_tools.dedup.pool import Pool, open_pool
from data_tools.dedup.schema import DedupConfig
from data_tools.dedup.store import VECTORS_DIR, VectorStore
from data_tools.dedup.views import parse_views

log = logging.getLogger(__name__)

META_FILE = "index.json"
METRICS_FILE = "metrics.jsonl"
PARTS_DIR = "parts"
STEPS = ("all", "embed", "train", "add", "merge")
_WAIT_SECONDS = 3600


def _wait_for(path: Path, what: str, timeout: float = _WAIT_SECONDS,
              ready: Callable[[], bool] | None = None) -> None:
    """Poll for a file another rank writes (ranks share a filesystem, not a process group)."""
    deadline = time.monotonic() + timeout
    while not path.is_file() or (ready is not None and not ready()):
        if time.monotonic() > deadline:
            raise DataError(f"waited {timeout:.0f}s for {path} ({what}); is rank 0 running?")
        time.sleep(2.0)


def index_record(pool: Pool, cfg: DedupConfig) -> dict:
    """The lineage record of an index folder: embedder + index config, pool (and checkpoint) hashes."""
    inputs = {"pool": pool.pin_file(), **embedder_inputs(cfg.embedder)}
    return config_record(STAGE_INDEX, {"embedder": cfg.embedder, "index": cfg.index}, inputs,
                         extra={"pool": str(pool.path.resolve())})


def read_meta(out_dir: Path) -> dict:
    """index.json of an index folder (written by the train step); DataError if absent."""
    path = Path(out_dir) / META_FILE
    if not path.is_file():
        raise DataError(f"{out_dir}: no {META_FILE}; run `datascale dedup index ... --step train` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _step_embed(pool: Pool, out: Path, cfg: DedupConfig, embedder: Embedder, rank: int,
                world_size: int, progress: bool) -> dict:
    if embedder.state_file:
        state_path = out / embedder.state_file
        if not state_path.is_file():
            if rank == 0:
                fit_embedder_state(pool, embedder, state_path,
                                   images=cfg.embedder.backbone.pca_fit_images,
                                   batch_size=cfg.embedder.batch_size, workers=cfg.embedder.workers)
            else:
                _wait_for(state_path, f"the {embedder.name} embedder's fitted state")
        embedder.load_state(state_path)
    return embed_pool(pool, out / VECTORS_DIR, embedder, rank=rank, world_size=world_size,
                      batch_size=cfg.embedder.batch_size, workers=cfg.embedder.workers,
                      views=parse_views(cfg.embedder.pool_views),
                      metrics_path=out / METRICS_FILE, progress=progress)


def _step_train(pool: Pool, out: Path, cfg: DedupConfig, embedder: Embedder) -> IndexPlan:
    store = VectorStore(out / VECTORS_DIR, expected_blocks=pool.num_shards)
    plan = plan_index(store.ntotal * store.views, store.dim, cfg.index)
    if embedder.state_file and embedder.needs_fit():
        embedder.load_state(out / embedder.state_file)
    if embedder.dim != store.dim:
        raise DataError(f"{out / VECTORS_DIR} holds {store.dim}-d vectors but the {embedder.name} "
                        f"embedder makes {embedder.dim}-d ones; rebuild with --force")
    meta = {"embedder": embedder.identity(), "embedder_config": to_dict(cfg.embedder),
            "default_threshold": EMBEDDERS[embedder.name].default_threshold,
            "plan": plan.to_dict(),
            "pool": {**pool.describe(), "shard_names": [pool.shard_name(i) for i in range(pool.num_shards)]},
            "store": {"blocks": len(store.blocks), "ntotal": store.ntotal, "dim": store.dim,
                      "views": store.views, "pool_views": list(cfg.embedder.pool_views)},
            "skipped_pool_images": store.skipped()}
    write_json(out / META_FILE, meta)
    if plan.kind == "ivfpq" and not (out / TRAINED_FILE).is_file():
        started = time.perf_counter()
        train_index(plan, store, out, cfg.index.seed)
        append_jsonl(out / METRICS_FILE, {"step": "train", "vectors": plan.train_points,
                                          "seconds": round(time.perf_counter() - started, 3)})
    log.info("index plan: %s over %d vectors of dim %d (%.1f bytes/vector)",
             plan.factory, plan.ntotal, plan.dim, plan.bytes_per_vector)
    return plan


def _step_add(pool: Pool, out: Path, plan: IndexPlan, part: int | None, parts: int | None,
              progress: bool) -> None:
    store = VectorStore(out / VECTORS_DIR, expected_blocks=pool.num_shards)
    if plan.kind == "flat":
        if (parts or 1) > 1:
            raise ConfigError(f"this pool ({plan.ntotal:,} vectors) gets an exact flat index, built "
                              "in one part; run --step add without --part/--parts")
        if not (out / INDEX_FILE).is_file():
            build_flat(store, out)
        return
    parts = parts or plan.parts
    todo = range(parts) if part is None else [part]
    for p in todo:
        if _part_path(out, p, parts).is_file():
            log.info("part %d/%d already built", p, parts)
            continue
        started = time.perf_counter()
        add_part(store, out, p, parts, _part_path(out, p, parts), progress)
        append_jsonl(out / METRICS_FILE, {"step": "add", "part": p, "parts": parts,
                                          "seconds": round(time.perf_counter() - started, 3)})


def _part_path(out: Path, part: int, parts: int) -> Path:
    # The part count is in the name, so parts of two different splits never get merged together.
    return out / PARTS_DIR / f"part-{part:04d}-of-{parts:04d}.index"


def _step_merge(out: Path, plan: IndexPlan, parts: int | None) -> dict:
    if plan.kind == "ivfpq" and (out / INDEX_FILE).is_file() and not (out / PARTS_DIR).exists():
        log.info("%s: parts already merged (a previous merge stopped before complete.json)", out)
    elif plan.kind == "ivfpq":
        parts = parts or plan.parts
        started = time.perf_counter()
        staged = [_part_path(out, p, parts) for p in range(parts)]
        missing = [p.name for p in staged if not p.is_file()]
        if missing:
            raise DataError(f"cannot merge: parts not built yet: {', '.join(missing)}; "
                            f"run `--step add --part I --parts {parts}` for each")
        merge_parts(out, staged)
        shutil.rmtree(out / PARTS_DIR)
        append_jsonl(out / METRICS_FILE, {"step": "merge", "parts": parts,
                                          "seconds": round(time.perf_counter() - started, 3)})
    elif not (out / INDEX_FILE).is_file():
        raise DataError(f"{out}: no {INDEX_FILE}; run --step add first")
    files = [out / INDEX_FILE, out / IVFDATA_FILE]
    index_bytes = sum(f.stat().st_size for f in files if f.is_file())
    vector_bytes = sum(f.stat().st_size for f in (out / VECTORS_DIR).glob("*.npy"))
    meta = read_meta(out)
    summary = {"kind": plan.kind, "factory": plan.factory, "vectors": plan.ntotal, "dim": plan.dim,
               "pool_images": meta["store"]["ntotal"], "pool_views": meta["store"].get("views", 1),
               "nlist": plan.nlist, "pq_bytes": plan.pq_bytes, "parts": parts or 1,
               "index_bytes": index_bytes, "index_bytes_per_vector": round(index_bytes / plan.ntotal, 2),
               "stored_vector_bytes": vector_bytes, "embedder": meta["embedder"]["name"],
               "skipped_pool_images": meta["skipped_pool_images"]["counts"]}
    mark_complete(out, summary)
    return summary


def build_index(pool_path: str | Path, out_dir: str | Path, cfg: DedupConfig, *, step: str = "all",
                part: int | None = None, parts: int | None = None, rank: int | None = None,
                world_size: int | None = None, force: bool = False, progress: bool = True) -> dict:
    """Run one step (or ``all``) of the index build of ``pool_path`` into ``out_dir``.

    Returns a summary dict (``complete.json``'s content once merged). Rank and
    world size come from the arguments or ``RANK``/``WORLD_SIZE``; parts from
    the arguments or the plan (``index.part_vectors`` per part). Time and
    memory: see the step functions; nothing holds the whole pool in RAM.
    """
    if step not in STEPS:
        raise ConfigError(f"--step must be one of {', '.join(STEPS)}; got {step!r}")
    rank, world_size = rank_from_env(rank, world_size)
    if step == "all" and world_size > 1:
        raise ConfigError(f"world size {world_size}: under a launcher run `--step embed` on every rank, "
                          "then `--step train`, `--step add` and `--step merge`")
    if part is not None and (parts is None or not 0 <= part < parts):
        raise ConfigError("--part I needs --parts N with 0 <= I < N")
    if parts is not None and parts < 1:
        raise ConfigError("--parts must be at least 1")
    out = Path(out_dir)
    pool = open_pool(pool_path)
    record = index_record(pool, cfg)
    if rank > 0:  # rank 0 creates (or, with --force, replaces) the folder; the others join it
        _wait_for(out / "config.yaml", "rank 0 creating the index folder",
                  ready=lambda: same_lineage(read_config_record(out), record))
    state = prepare_output_dir(out, record, force=force and rank == 0)
    if state == "complete":
        log.info("%s already holds this index (complete.json); nothing to do", out)
        return json.loads((out / "complete.json").read_text(encoding="utf-8"))
    result: dict = {}
    embedder = make_embedder(cfg.embedder) if step in ("all", "embed", "train") else None
    if step in ("all", "embed"):
        result["embed"] = _step_embed(pool, out, cfg, embedder, rank, world_size, progress)
    if step in ("all", "train"):
        _step_train(pool, out, cfg, embedder)
    if step in ("add", "merge") or step == "all":
        plan = IndexPlan.from_dict(read_meta(out)["plan"])
        if step in ("all", "add"):
            _step_add(pool, out, plan, part, parts, progress)
        if step in ("all", "merge"):
            result = _step_merge(out, plan, parts)
    return result


def index_is_complete(index_dir: Path) -> bool:
    """True when the index folder finished its merge step."""
    return is_complete(index_dir) and (Path(index_dir) / INDEX_FILE).is_file()
