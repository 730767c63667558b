"""``datascale dedup audit``: the near-duplicates of a test set in the pool, thresholded and cleaned.

Per test set, in ``AUDIT/NAME/``::

    config.yaml, complete.json      lineage (audit config; index, test set, ground truth hashes)
    duplicates.parquet              test_id, test_image, rank, pretrain_key, score, view, pool_shard,
                                    retrieval_score, is_duplicate
                                    (the k best pool neighbours of every readable test image)
    summary.json                    counts, threshold (+ where it came from), sweep, calibration,
                                    unreadable test images, cleaned test set
    report.md + gallery.png         for human review (see report.py)
    clean/...                       the test set without its flagged images, in its own format

Borderline neighbours are re-scored with the test image's best-aligned crop
(align.py; ``retrieval_score`` keeps the score before). A test image is
flagged when its best neighbour's exact cosine >= the threshold: ``--threshold``, else the threshold calibrated on the ground truth
for ``--target-precision`` (over all test sets of the run together), else the
embedder's registered default.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from datascale.atomic import atomic_path, write_json
from datascale.config import from_dict
from datascale.errors import DataError
from datascale.lineage import config_record, mark_complete, prepare_output_dir
from data_tools.dedup import STAGE_AUDIT
from data_tools.dedup.align import align_neighbours
from data_tools.dedup.build import META_FILE, index_is_complete, read_meta
from data_tools.dedup.calibration import Calibration, GroundTruth, joint_calibration, load_ground_truth
from data_tools.dedup.embedders import Embedder, make_embedder
from data_tools.dedup.heldout import cross_validate
from data_tools.dedup.pool_align import PoolBox, align_pool_side
from data_tools.dedup.prepare import PreparePool, embed_prepared
from data_tools.dedup.index import IndexPlan, open_index, search_rescored
from data_tools.dedup.schema import AuditConfig, EmbedderConfig
from data_tools.dedup.store import VECTORS_DIR, VectorStore
from data_tools.dedup.testsets import TestSet, open_testset
from data_tools.dedup.views import parse_views

log = logging.getLogger(__name__)


@dataclass
class LoadedIndex:
    """A finished index folder, opened for queries."""

    path: Path
    meta: dict
    plan: IndexPlan
    store: VectorStore
    embedder: Embedder
    faiss_index: object


def load_index(index_dir: str | Path, expected_embedder: str | None = None) -> LoadedIndex:
    """Open a finished index and rebuild the embedder it was built with.

    Raises DataError when the folder is not a finished index, when
    ``expected_embedder`` differs from the index's, or when the rebuilt
    embedder (e.g. a changed checkpoint) no longer matches the recorded one.
    """
    path = Path(index_dir)
    if not index_is_complete(path):
        raise DataError(f"{path} is not a finished dedup index (no complete.json/index.faiss); "
                        "run `datascale dedup index POOL --out INDEX` to completion first")
    meta = read_meta(path)
    recorded = meta["embedder"]
    if expected_embedder is not None and expected_embedder != recorded["name"]:
        raise DataError(f"{path} was built with the {recorded['name']!r} embedder "
                        f"({recorded['dim']}-d vectors) but this audit asks for {expected_embedder!r}; "
                        f"audit with --embedder {recorded['name']} or build an index with "
                        f"--embedder {expected_embedder}")
    embedder = make_embedder(from_dict(EmbedderConfig, meta["embedder_config"]))
    if embedder.state_file:
        embedder.load_state(path / embedder.state_file)
    if embedder.identity() != recorded:
        changed = sorted(k for k in set(recorded) | set(embedder.identity())
                         if recorded.get(k) != embedder.identity().get(k))
        raise DataError(f"the {recorded['name']} embedder no longer matches {path / META_FILE} "
                        f"(differs in: {', '.join(changed)}); queries would not be comparable "
                        "with the index: restore the checkpoint or rebuild the index")
    plan = IndexPlan.from_dict(meta["plan"])
    store = VectorStore(path / VECTORS_DIR, expected_blocks=meta["store"]["blocks"])
    return LoadedIndex(path, meta, plan, store, embedder, open_index(path, plan))


def embed_testset(testset: TestSet, embedder: Embedder, views: list, *, batch_size: int,
                  workers: int, progress: bool = True) -> tuple[list[str], np.ndarray, list[dict]]:
    """(readable test ids, (n, V, dim) vectors, unreadable [{test_id, image, error}]).

    Files that cannot be read or decoded are listed, never dropped silently.
    """
    unreadable: list[dict] = []
    names = {im.test_id: im.name for im in testset.images}

    def items():
        for image in testset.images:
            try:
                yield image.test_id, testset.read(image)
            except OSError as exc:
                unreadable.append({"test_id": image.test_id, "image": image.name,
                                   "error": f"{type(exc).__name__}: {exc.strerror or exc}"})

    ids, chunks = [], []
    with PreparePool(embedder, views, workers) as prepare, \
            tqdm(total=len(testset.images), unit="img", desc=f"embed {testset.name}",
                 disable=not progress) as bar:
        for batch in embed_prepared(embedder, prepare.map(items()), batch_size):
            if batch.ids:
                ids.extend(batch.ids)
                chunks.append(batch.vectors)
            unreadable.extend({"test_id": t, "image": names[t], "error": e} for t, e in batch.failures)
            bar.update(len(batch.ids) + len(batch.failures))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, len(views), embedder.dim), np.float32)
    return ids, vectors, unreadable


def neighbours_table(testset: TestSet, ids: list[str], found, index: LoadedIndex, view_names: list[str],
                     raised: dict):
    """The duplicates.parquet rows (without is_duplicate): one per (test image, neighbour).

    ``raised``: (row, pool id) -> (retrieval score, Box) for pairs whose score
    crop alignment raised (their view names the box).
    """
    names = {im.test_id: im.name for im in testset.images}
    shard_names = index.meta["pool"]["shard_names"]
    rows, cols = np.nonzero(found.ids >= 0)
    hit_ids = found.ids[rows, cols]
    keys = index.store.keys(hit_ids) if len(rows) else []
    shards = [shard_names[b] for b in index.store.shard_of(hit_ids)] if len(rows) else []
    scores = found.scores[rows, cols].astype(np.float32)
    view = [view_names[v] for v in found.views[rows, cols]]
    retrieval = scores.copy()
    for i, (r, pool_id) in enumerate(zip(rows, hit_ids)):
        if (int(r), int(pool_id)) in raised:
            retrieval[i], box = raised[(int(r), int(pool_id))]
            # the box was scored against the whole pool image (pool view identity)
            mirrored = view[i].startswith("mirror") and not isinstance(box, PoolBox)
            view[i] = f"mirror+{box.name}" if mirrored else box.name
    return pd.DataFrame({
        "test_id": pd.Series([ids[r] for r in rows], dtype="string"),
        "test_image": pd.Series([names[ids[r]] for r in rows], dtype="string"),
        "rank": (cols + 1).astype(np.int32),
        "pretrain_key": pd.Series(keys, dtype="string"),
        "score": scores,
        "view": pd.Series(view, dtype="string"),
        "pool_shard": pd.Series(shards, dtype="string"),
        "retrieval_score": retrieval,
    })


def _threshold(cfg: AuditConfig, fitted: Calibration | None, default: float) -> tuple[float, str]:
    if cfg.threshold is not None:
        return cfg.threshold, "given (--threshold)"
    if fitted is not None and fitted.calibrated is not None:
        return fitted.calibrated, f"calibrated on the ground truth for precision >= {cfg.target_precision}"
    reason = "no ground truth" if fitted is None else \
        f"the ground truth allows no threshold with precision >= {cfg.target_precision}"
    return default, f"the embedder's default ({reason})"


def _joint_record(fitted: Calibration | None, cfg: AuditConfig, threshold: float,
                  default: float) -> dict | None:
    """The joint calibration record with its held-out (cross-validated) precision and recall."""
    if fitted is None:
        return None
    record = fitted.record(threshold, cfg.sweep, cfg.confidence)
    tuned = cfg.threshold is None and fitted.calibrated is not None
    record["held_out"] = cross_validate(fitted, folds=cfg.cv_folds, seed=cfg.cv_seed,
                                        confidence=cfg.confidence, fallback=default,
                                        fixed=None if tuned else threshold)
    return record


def _sweep(table, cfg: AuditConfig, threshold: float, readable: int) -> list[dict]:
    top = table.groupby("test_id")["score"].max().to_numpy() if len(table) else np.zeros(0)
    points = sorted(set(cfg.sweep) | {threshold})
    return [{"threshold": t, "images_with_duplicate": int((top >= t).sum()),
             "fraction": float((top >= t).sum() / max(readable, 1))} for t in points]


@dataclass
class Searched:
    """One test set after embedding and search, before thresholding."""

    testset: TestSet
    out_dir: Path
    table: object            # DataFrame: duplicates.parquet rows without is_duplicate
    readable: int
    unreadable: list[dict]
    views: list[str]
    nprobe: int | None
    seconds: float
    truth: GroundTruth | None = None
    aligned: dict | None = None   # crop-alignment counts (None: alignment off)


def search_testset(index: LoadedIndex, testset: TestSet, out_dir: Path, cfg: AuditConfig,
                   progress: bool = True) -> Searched:
    """Embed ``testset`` through every view and find each image's ``k`` best pool neighbours.

    Time: one embedding per (image, view) + one index search per view + exact
    re-scoring; memory: the test set's vectors and one search chunk.
    """
    started = time.perf_counter()
    views = parse_views(cfg.views)
    ids, vectors, unreadable = embed_testset(testset, index.embedder, views, batch_size=cfg.batch_size,
                                             workers=cfg.workers, progress=progress)
    if unreadable:
        log.warning("%s: %d of %d test images could not be read or decoded (listed in summary.json)",
                    testset.name, len(unreadable), len(testset.images))
    nprobe = (cfg.nprobe or index.plan.nprobe) if index.plan.kind == "ivfpq" else None
    # A pool image's crop is compared with the test image as shown (or mirrored) only: crop
    # against crop multiplies the chances of a look-alike (measured: it lifted a distinct image
    # of the study world above its copies and cost a crop copy at the calibrated threshold).
    pool_views = parse_views(index.meta["embedder_config"].get("pool_views", ["identity"]))
    allowed = np.array([[p.kind == "identity" or v.kind in ("identity", "mirror") for v in views]
                        for p in pool_views])
    found = search_rescored(index.faiss_index, index.store, vectors, k=cfg.k,
                            candidates=cfg.candidates, nprobe=nprobe, allowed=allowed)
    # found.views indexes (pool view, query view) pairs: p * len(views) + v
    pairs = [(p, v) for p in pool_views for v in views]
    names = [v.name if p.kind == "identity" else f"{v.name}|pool:{p.name}" for p, v in pairs]
    aligned = None
    if cfg.align.enabled:
        by_id = {im.test_id: im for im in testset.images}
        aligned = align_neighbours(found, lambda row: testset.read(by_id[ids[row]]), index.store,
                                   [v for _, v in pairs], index.embedder, cfg.align, progress=progress)
        if cfg.align.pool_pairs:
            raised, stats = align_pool_side(found, vectors[:, 0], index, [v for _, v in pairs], cfg.align,
                                            progress=progress)
            for key, (before, box) in raised.items():   # keep the score before any alignment
                aligned.raised[key] = (aligned.raised[key][0] if key in aligned.raised else before, box)
            aligned.stats["pool_side"] = stats
            aligned.stats["pairs_raised"] = len(aligned.raised)   # by either side
    table = neighbours_table(testset, ids, found, index, names, aligned.raised if aligned else {})
    return Searched(testset, out_dir, table, len(ids), unreadable, [v.name for v in views], nprobe,
                    time.perf_counter() - started, aligned=aligned.stats if aligned else None)


def write_audit(index: LoadedIndex, done: Searched, cfg: AuditConfig, threshold: float, source: str,
                joint: dict | None) -> dict:
    """Threshold one searched test set and write its folder (see module docstring); returns the summary."""
    out_dir, testset, table = done.out_dir, done.testset, done.table
    calibration = None
    if done.truth is not None:
        calibration = Calibration(table, done.truth, cfg.target_precision).record(
            threshold, cfg.sweep, cfg.confidence)
    table["is_duplicate"] = table["score"] >= threshold
    with atomic_path(out_dir / "duplicates.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    flagged = set(table.loc[table["is_duplicate"], "test_id"].astype(str))
    summary = {
        "testset": testset.describe(), "index": {"path": str(index.path.resolve()),
                                                 "kind": index.plan.kind, "factory": index.plan.factory,
                                                 "vectors": index.plan.ntotal, "pool_images": index.store.ntotal,
                                                 "pool_views": index.meta["embedder_config"].get(
                                                     "pool_views", ["identity"]),
                                                 "embedder": index.meta["embedder"]},
        "threshold": threshold, "threshold_source": source, "view_specs": list(cfg.views),
        "views": done.views,
        "k": cfg.k, "candidates": cfg.candidates, "nprobe": done.nprobe, "aligned": done.aligned,
        "test_images": len(testset.images), "readable_images": done.readable,
        "unreadable_images": len(done.unreadable), "unreadable": done.unreadable,
        "images_with_duplicate": len(flagged),
        "fraction_with_duplicate": len(flagged) / max(done.readable, 1),
        "sweep": _sweep(table, cfg, threshold, done.readable), "calibration": calibration,
        "joint_calibration": joint, "held_out": joint["held_out"] if joint else None,
        "remaining_duplicates": _remaining(done, table, threshold, cfg),
        "cleaned": testset.write_clean(flagged, out_dir),
        "seconds": round(done.seconds, 2),
    }
    from data_tools.dedup.report import write_report
    summary["gallery"] = write_report(out_dir, summary, table, testset, index, cfg)
    write_json(out_dir / "summary.json", summary)
    mark_complete(out_dir, {"images_with_duplicate": len(flagged), "threshold": threshold})
    return summary


def _remaining(done: Searched, table, threshold: float, cfg: AuditConfig) -> dict | None:
    """Copies estimated to remain in clean/, when the ground truth is a marked `dedup label` sample."""
    if done.truth is None or done.truth.sample is None:
        return None
    from data_tools.dedup.labels import remaining_copies
    best = table.groupby("test_id")["score"].max()
    best.index = best.index.astype(str)
    return remaining_copies(done.truth.sample, best, threshold, cfg.confidence)


def _lineage(index: LoadedIndex, testset: TestSet, cfg: AuditConfig, truth: Path | None,
             companions: list[TestSet]) -> dict:
    inputs = {"index": index.path / META_FILE, "testset": testset.source}
    if truth is not None:
        inputs["ground_truth"] = truth
    # A threshold calibrated jointly depends on the other test sets too.
    inputs.update({f"calibrated_with_{t.name}": t.source for t in companions})
    return config_record(STAGE_AUDIT, {"audit": cfg}, inputs,
                         extra={"index_dir": str(index.path.resolve()), "testset": testset.describe()})


def _open_all(testsets: list[str], ground_truth: str | Path | None) -> tuple[list[TestSet], Path | None]:
    if not testsets:
        raise DataError("give at least one --testset")
    opened = [open_testset(spec) for spec in testsets]
    names = [t.name for t in opened]
    if len(set(names)) != len(names):
        raise DataError(f"two test sets share a name ({', '.join(names)}); name them with NAME=PATH")
    truth = Path(ground_truth) if ground_truth else None
    if truth is not None and not truth.is_file():
        raise DataError(f"ground truth file not found: {truth}")
    return opened, truth


def run_audit(index_dir: str | Path, testsets: list[str], out_root: str | Path, cfg: AuditConfig, *,
              ground_truth: str | Path | None = None, force: bool = False,
              progress: bool = True) -> list[dict]:
    """Audit every test set spec (``PATH`` or ``NAME=PATH``) into ``out_root/NAME/``.

    With ground truth and no ``cfg.threshold``, one threshold is calibrated
    over all the test sets together (more pairs than any one set holds) and
    applied to each; per-set precision/recall are reported at it.
    Test sets whose folder is complete for the same inputs are not rewritten.
    """
    opened, truth = _open_all(testsets, ground_truth)
    index = load_index(index_dir, cfg.embedder)
    jointly = truth is not None and cfg.threshold is None
    pending, summaries = [], {}
    for testset in opened:
        companions = [t for t in opened if t is not testset] if jointly else []
        out_dir = Path(out_root) / testset.name
        record = _lineage(index, testset, cfg, truth, companions)
        if prepare_output_dir(out_dir, record, force=force) == "complete":
            log.info("%s already holds this audit (complete.json); not redone", out_dir)
            summaries[testset.name] = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        else:
            pending.append((testset, out_dir))
    if pending:
        # Every test set is searched when one is pending: the joint threshold needs them all.
        searched = [search_testset(index, t, d, cfg, progress) for t, d in
                    [(t, Path(out_root) / t.name) for t in opened]]
        if truth is not None:
            for done in searched:
                done.truth = load_ground_truth(truth, done.testset, index.store.find_keys)
        fitted = joint_calibration([(d.testset.name, d.table, d.truth) for d in searched],
                                   cfg.target_precision) if truth is not None else None
        threshold, source = _threshold(cfg, fitted, index.meta["default_threshold"])
        joint = _joint_record(fitted, cfg, threshold, index.meta["default_threshold"])
        if cfg.threshold is None and fitted is not None and fitted.calibrated is not None \
                and len(searched) > 1:
            source += f" over {len(searched)} test sets together"
        todo = {t.name for t, _ in pending}
        for done in searched:
            if done.testset.name in todo:
                summaries[done.testset.name] = write_audit(index, done, cfg, threshold, source, joint)
    return [summaries[t.name] for t in opened]
