"""Labels for real data: a stratified sample of pairs to mark, and what the marks say.

Real test sets have no planted copies, so the threshold cannot be calibrated
until a person has looked at pairs. ``datascale dedup label AUDIT --out LABELS``
draws each audited test image's best pair into score *bands* around the
threshold the audit used (narrow bands near it, where the decision is in
doubt; one wide band far below it, where copies may still hide) and samples
more pairs from the bands near the threshold::

    LABELS/pairs.csv        one row per sampled pair; fill is_duplicate with 1 or 0
    LABELS/strata.json      the bands of every test set: score range, images, sampled
    LABELS/gallery-NN.png   the pairs, numbered as in pairs.csv, by band

The marked file is ground truth for ``dedup audit --ground-truth
LABELS/pairs.csv``: each marked image stands for its band's images
(calibration.py weights it), and :func:`remaining_copies` estimates how many
images kept in ``clean/`` still have a copy as their best pool neighbour.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from datascale.atomic import atomic_path, write_json
from datascale.errors import DataError
from data_tools.dedup.heldout import clopper_pearson

log = logging.getLogger(__name__)

COLUMNS = ["pair", "testset", "dataset", "split", "test_id", "test_image", "pretrain_key", "pool_shard",
           "score", "view", "stratum", "stratum_low", "stratum_high", "stratum_images",
           "stratum_sampled", "threshold", "is_duplicate"]
PAIRS_PER_PAGE = 48


def audited_folders(audit_dir: str | Path) -> list[Path]:
    """The test set folders of an audit: ``AUDIT`` itself (one test set) or its finished subfolders."""
    root = Path(audit_dir)
    if (root / "summary.json").is_file():
        return [root]
    folders = sorted(p.parent for p in root.glob("*/summary.json") if (p.parent / "complete.json").is_file())
    if not folders:
        raise DataError(f"{root}: no audited test set (no summary.json here or in a subfolder); "
                        "run `datascale dedup audit INDEX --testset T --out AUDIT` first")
    return folders


def bands(threshold: float, offsets: list[float]) -> list[tuple[float, float]]:
    """[low, high) score bands: below the lowest offset, between offsets, above the highest."""
    edges = [-1.0, *(threshold + o for o in sorted(offsets)), 1.0 + 1e-6]
    edges = sorted({min(max(e, -1.0), 1.0 + 1e-6) for e in edges})
    return list(zip(edges[:-1], edges[1:]))


def allocate(sizes: list[int], weights: list[float], pairs: int) -> list[int]:
    """Pairs per band: at least 2 (or all) in every non-empty band, the rest by weight x sqrt(size).

    Every non-empty band is sampled, so every image has a known chance of
    being drawn (the estimates stay unbiased); bands never get more than they hold.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.minimum(sizes, 2)
    share = np.asarray(weights, dtype=np.float64) * np.sqrt(sizes)
    while out.sum() < min(pairs, sizes.sum()):   # one pair at a time to the most under-served band
        priority = np.where(out < sizes, share / (out + 1), -1.0)
        out[int(np.argmax(priority))] += 1
    return [int(x) for x in out]


def _sample_folder(folder: Path, cfg, rng: np.random.Generator, pairs: int) -> tuple[pd.DataFrame, dict]:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    table = pd.read_parquet(folder / "duplicates.parquet")
    best = table[table["rank"] == 1].reset_index(drop=True)
    threshold = float(summary["threshold"])
    ranges = bands(threshold, cfg.band_offsets)
    which = np.searchsorted([low for low, _ in ranges], best["score"].to_numpy(np.float64), side="right") - 1
    sizes = [int((which == b).sum()) for b in range(len(ranges))]
    counts = allocate(sizes, cfg.band_weights, pairs)
    chosen = []
    for b, (count, (low, high)) in enumerate(zip(counts, ranges)):
        members = np.flatnonzero(which == b)
        picked = best.iloc[np.sort(rng.choice(members, size=count, replace=False))] if count else best.head(0)
        chosen.append(picked.assign(stratum=b, stratum_low=round(low, 4), stratum_high=round(high, 4),
                                    stratum_images=sizes[b], stratum_sampled=count))
    ts = summary["testset"]
    sample = pd.concat(chosen, ignore_index=True).assign(
        testset=folder.name, dataset=ts.get("dataset") or "", split=ts.get("split") or "",
        threshold=threshold, is_duplicate="")
    record = {"testset": folder.name, "audit": str(folder.resolve()), "threshold": threshold,
              "readable_images": int(len(best)),
              "bands": [{"stratum": b, "low": low, "high": high, "images": n, "sampled": c}
                        for b, ((low, high), n, c) in enumerate(zip(ranges, sizes, counts))]}
    return sample, record


def export_sample(audit_dir: str | Path, out_dir: str | Path, cfg, *, progress: bool = True) -> dict:
    """Write pairs.csv, strata.json and the gallery pages for ``cfg.pairs`` pairs (a LabelConfig).

    The pairs are split over the audited test sets in proportion to their
    readable images. Time: reads each duplicates.parquet, then the sampled
    test images and their pool shards (for the gallery).
    """
    folders = audited_folders(audit_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [len(pd.read_parquet(f / "duplicates.parquet", columns=["rank"]).query("rank == 1"))
             for f in folders]
    rng = np.random.default_rng(cfg.seed)
    samples, records = [], []
    for folder, size, share in zip(folders, sizes, allocate(sizes, [1.0] * len(sizes), cfg.pairs)):
        sample, record = _sample_folder(folder, cfg, rng, share)
        samples.append(sample)
        records.append(record)
    table = pd.concat(samples, ignore_index=True)
    table.insert(0, "pair", np.arange(1, len(table) + 1))
    with atomic_path(out / "pairs.csv") as tmp:
        table[COLUMNS].to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.4f")
    write_json(out / "strata.json", {"pairs": int(len(table)), "seed": cfg.seed, "testsets": records,
                                     "band_offsets": list(cfg.band_offsets),
                                     "band_weights": list(cfg.band_weights)})
    pages = write_label_gallery(folders, table, out, progress=progress)
    return {"pairs": int(len(table)), "csv": str(out / "pairs.csv"), "gallery": pages,
            "testsets": [r["testset"] for r in records]}


def write_label_gallery(folders: list[Path], table: pd.DataFrame, out: Path, progress: bool = True) -> list[str]:
    """gallery-NN.png pages of the sampled pairs, ``PAIRS_PER_PAGE`` each, numbered as in pairs.csv."""
    from tqdm import tqdm
    from data_tools.dedup.build import read_meta
    from data_tools.dedup.report import draw_gallery, pool_bytes
    from data_tools.dedup.testsets import open_testset
    by_name = {f.name: f for f in folders}
    test_bytes, pool = {}, {}
    for name, rows in table.groupby("testset"):
        summary = json.loads((by_name[name] / "summary.json").read_text(encoding="utf-8"))
        testset = open_testset(summary["testset"]["path"])
        images = {im.test_id: im for im in testset.images}
        for test_id in tqdm(rows["test_id"], desc=f"gallery {name}", disable=not progress):
            try:
                test_bytes[(name, test_id)] = testset.read(images[test_id])
            except (OSError, KeyError):
                test_bytes[(name, test_id)] = None
        try:
            meta = read_meta(Path(summary["index"]["path"]))
        except (DataError, OSError) as exc:
            log.warning("pool images not shown: %s", exc)
            continue
        found, note = pool_bytes(SimpleNamespace(meta=meta), rows)
        if note:
            log.warning("%s", note)
        pool.update({(name, k): v for k, v in found.items()})
    pages = []
    for page, lo in enumerate(range(0, len(table), PAIRS_PER_PAGE), start=1):
        sections = []
        for (name, stratum), rows in table.iloc[lo:lo + PAIRS_PER_PAGE].groupby(["testset", "stratum"], sort=False):
            first = rows.iloc[0]
            title = (f"{name}: scores [{first.stratum_low:.3f}, {min(first.stratum_high, 1.0):.3f}) "
                     f"({first.stratum_images} images, {first.stratum_sampled} sampled)")
            sections.append((title, [{"test": test_bytes.get((name, r.test_id)),
                                      "pool": pool.get((name, r.pretrain_key)),
                                      "caption": [f"#{r.pair}  cos {r.score:.3f}", f"{r.test_image}"[-30:]]}
                                     for r in rows.itertuples()]))
        path = out / f"gallery-{page:02d}.png"
        draw_gallery(sections, path)
        pages.append(str(path))
    return pages


def remaining_copies(sample: pd.DataFrame, best_scores: pd.Series, threshold: float,
                     confidence: float) -> dict:
    """Images kept at ``threshold`` whose best pair is a copy: estimate and interval, from marked pairs.

    ``sample``: the marked rows of one test set (``stratum``, ``stratum_low``,
    ``stratum_high``, ``is_duplicate`` as 0/1 strings); ``best_scores``: every
    readable image's best score (by test id) in this audit. Within each band,
    the images below ``threshold`` are a population whose marked ones are a
    simple random sample: the marked copies are counted, the unmarked images
    get the band's copy rate. The interval adds each band's Clopper-Pearson
    interval at confidence ``1 - (1 - confidence) / bands`` (Bonferroni:
    conservative, holds for the sum). A band with images kept but none marked
    adds [0, all of them].
    """
    from data_tools.dedup.calibration import _TRUE
    scores = best_scores.astype(np.float64)
    marked = sample.assign(score=sample["test_id"].map(scores),
                           copy=sample["is_duplicate"].isin(_TRUE)).dropna(subset=["score"])
    edges = marked.groupby("stratum")[["stratum_low", "stratum_high"]].first().astype(float)
    parts = []
    for stratum, (low, high) in edges.iterrows():
        kept = int(((scores >= low) & (scores < min(high, threshold))).sum())
        rows = marked[(marked["stratum"] == stratum) & (marked["score"] < threshold)]
        if kept:
            parts.append((stratum, kept, len(rows), int(rows["copy"].sum())))
    level = 1 - (1 - confidence) / max(len(parts), 1)
    estimate, low_sum, high_sum, out = 0.0, 0.0, 0.0, []
    for stratum, kept, n, copies in parts:
        unmarked = kept - n
        if n:
            low, high = clopper_pearson(copies, n, level)
            rate = copies / n
        else:
            low, high, rate = 0.0, 1.0, 0.0
        estimate += copies + unmarked * rate
        low_sum += copies + unmarked * low
        high_sum += copies + unmarked * high
        out.append({"stratum": int(stratum), "kept_images": kept, "marked": n, "copies": copies})
    kept_total = int((scores < threshold).sum())
    return {"threshold": threshold, "kept_images": kept_total, "estimate": round(estimate, 2),
            "interval": [round(low_sum, 2), round(high_sum, 2)], "confidence": confidence,
            "method": "stratified by score band; per-band Clopper-Pearson, Bonferroni-summed",
            "bands": out}
