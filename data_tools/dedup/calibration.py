"""Calibration against known duplicates: precision and recall as functions of the threshold.

Ground truth is a CSV with ``test_id`` and ``pretrain_key`` columns, and
optionally ``dataset``/``split`` (rows are matched to the audited test set),
``transform`` (recall is reported per transform) and ``is_duplicate``
(0/1 labels; empty = not marked yet, counted and left out). The synthetic
world's ``duplicates/planted.csv`` has no label column: every listed pair is
a duplicate and every other test image is taken to have none (*exhaustive*
ground truth: the negatives are the test images the file does not list).
With a label column only the labelled test images are evaluated, and a file
that labels no pair 0 is refused: with no negatives, precision cannot be
measured and any threshold would read "precision 1.000".

A sample exported by ``datascale dedup label`` also has ``stratum_images``
(the images of its score band): each marked image then stands for
``stratum_images / marked images of its band`` images (its *weight*), so
precision and recall estimate the whole test set's, not the sample's.

Definitions (image level, because the audit removes images):

* a *positive* image has a true pair whose pool image is in the index;
* an image is *flagged* at threshold t when its best neighbour scores >= t;
* recall(t) = positives whose true pool image is among the retrieved
  neighbours with score >= t, over positives;
* precision(t) = flagged positives over flagged evaluated images.

The calibrated threshold is the lowest t from which precision stays at or
above the target for every higher threshold: the most recall the target allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from datascale.errors import DataError
from data_tools.dedup.heldout import proportion

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass
class GroundTruth:
    """True duplicate pairs of one test set, restricted to pool images that are in the index."""

    pairs: dict[str, set[str]]                       # test id -> true pool keys (in the index)
    transforms: dict[tuple[str, str], str]           # (test id, key) -> transform name
    labelled: set[str] | None                        # evaluated test ids; None = all (exhaustive)
    stats: dict = field(default_factory=dict)
    weights: dict[str, float] | None = None          # test id -> images it stands for; None = 1 each
    sample: object = None                            # the marked rows of a `dedup label` sample (DataFrame)


def _read_csv(path: Path):
    import pandas as pd
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read ground truth {path}: {exc}") from None
    missing = {"test_id", "pretrain_key"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: ground truth needs columns test_id and pretrain_key "
                        f"(missing {', '.join(sorted(missing))}; has {', '.join(table.columns)})")
    if "is_duplicate" in table.columns:
        values = table["is_duplicate"].str.strip().str.lower()
        bad = values[~values.isin(_TRUE | _FALSE | {""})]
        if len(bad):
            raise DataError(f"{path}: is_duplicate must be 0/1 or true/false (empty: not marked), "
                            f"got {bad.iloc[0]!r}")
        if not values.isin(_TRUE | _FALSE).any():
            raise DataError(f"{path}: no pair is marked (is_duplicate is empty in every row); mark "
                            "each pair 1 (a copy) or 0 (not a copy) and run again")
        if not values.isin(_FALSE).any():
            raise DataError(f"{path}: no pair is marked is_duplicate=0, so precision cannot be "
                            "measured (every flagged image would count as a true copy). Mark the "
                            "pairs that are not copies 0 (`datascale dedup label AUDIT --out LABELS` "
                            "exports pairs on both sides of the threshold), or drop the is_duplicate "
                            "column if the file lists every duplicate of the test sets: then every "
                            "test image it does not list counts as a negative")
        table = table.assign(is_duplicate=values)
    return table


def load_ground_truth(path: str | Path, testset, find_keys: Callable[[set[str]], dict[str, int]]
                      ) -> GroundTruth:
    """Ground truth rows for ``testset`` (matched on dataset/split when the CSV has them).

    ``find_keys`` maps pool keys to index ids (the store's :meth:`find_keys`):
    pairs whose pool image is not in the index are dropped and counted (for
    a 10M subset most planted copies may lie outside it). Test ids the test
    set does not have are counted too; nothing is dropped silently.
    """
    path = Path(path)
    table = _read_csv(path)
    rows_in_file = len(table)
    if "testset" in table.columns:   # a `dedup label` sample names the audited test set
        table = table[table["testset"] == testset.name]
    for column, value in (("dataset", testset.dataset), ("split", testset.split)):
        if column in table.columns and value is not None:
            table = table[table[column] == value]
    ids = {im.test_id for im in testset.images}
    unknown = table[~table["test_id"].isin(ids)]
    table = table[table["test_id"].isin(ids)]
    labelled, weights, sample, unmarked = None, None, None, 0
    if "is_duplicate" in table.columns:
        unmarked = int((table["is_duplicate"] == "").sum())
        table = table[table["is_duplicate"] != ""]
        labelled = set(table["test_id"])
        weights, sample = _sample_weights(path, table)
        table = table[table["is_duplicate"].isin(_TRUE)]
    in_index = find_keys(set(table["pretrain_key"]))
    present = table[table["pretrain_key"].isin(in_index)]
    pairs: dict[str, set[str]] = {}
    for test_id, key in zip(present["test_id"], present["pretrain_key"]):
        pairs.setdefault(test_id, set()).add(key)
    transform = present["transform"] if "transform" in present.columns else ["all"] * len(present)
    transforms = {(t, k): str(x or "unspecified") for t, k, x in
                  zip(present["test_id"], present["pretrain_key"], transform)}
    stats = {"source": str(path.resolve()), "rows_in_file": rows_in_file,
             "rows_for_this_testset": len(unknown) + len(table) if labelled is None else len(table),
             "unknown_test_ids": int(len(unknown)),
             "pairs_not_in_index": int(len(table) - len(present)),
             "true_pairs": int(len(present)), "exhaustive": labelled is None,
             "unmarked_rows": unmarked, "weighted": weights is not None}
    if len(unknown):
        log.warning("%s: %d ground-truth rows name test images this test set does not have (e.g. %s)",
                    path, len(unknown), unknown["test_id"].iloc[0])
    return GroundTruth(pairs, transforms, labelled, stats, weights, sample)


def _sample_weights(path: Path, table) -> tuple[dict[str, float] | None, object]:
    """Per-image weights of a stratified sample (``stratum``, ``stratum_images`` columns), else None.

    A band's marked images stand for all ``stratum_images`` of it, so pairs
    left unmarked only widen the intervals. One row per test image (the
    export lists each image's best pair once).
    """
    if "stratum_images" not in table.columns:
        return None, None
    try:
        sizes = table["stratum_images"].astype(int)
    except ValueError:
        raise DataError(f"{path}: stratum_images must be whole numbers; re-export the sample "
                        "with `datascale dedup label`") from None
    group = [table[c] for c in ("testset", "stratum") if c in table.columns]
    marked = table.groupby(group)["test_id"].transform("count") if group else len(table)
    weights = dict(zip(table["test_id"], (sizes / marked).astype(float)))
    return weights, table.assign(stratum_images=sizes)


def _curve(top: np.ndarray, positive: np.ndarray, pair: np.ndarray, thresholds: np.ndarray,
           weight: np.ndarray | None = None) -> dict:
    """Counts, precision and recall at each threshold; images weighted by ``weight`` (default 1)."""
    weight = np.ones(len(top)) if weight is None else weight
    flagged = top[None, :] >= thresholds[:, None]                       # (T, N)
    weighted_flags = flagged @ weight
    true_flags = (flagged & positive[None, :]) @ weight
    found = (pair[None, positive] >= thresholds[:, None]) @ weight[positive]
    precision = np.where(weighted_flags > 0, true_flags / np.maximum(weighted_flags, 1e-12), 1.0)
    recall = found / max(float(weight[positive].sum()), 1e-12)
    return {"flagged": flagged.sum(axis=1), "precision": precision, "recall": recall}


def choose_threshold(top: np.ndarray, positive: np.ndarray, pair: np.ndarray, target: float,
                     weight: np.ndarray | None = None) -> float | None:
    """The lowest threshold from which precision stays >= ``target``; None if none does.

    ``top``: each image's best score; ``positive``: it has a true pair;
    ``pair``: its true pair's score (-inf when not retrieved).
    """
    finite = np.concatenate([top[np.isfinite(top)], pair[np.isfinite(pair)]])
    grid = np.unique(finite)
    if not len(grid) or not positive.any():
        return None
    curve = _curve(top, positive, pair, grid, weight)
    ok = (curve["precision"] >= target) & (curve["flagged"] > 0)
    # lowest t with precision >= target at t and at every higher candidate threshold
    suffix_ok = np.flip(np.logical_and.accumulate(np.flip(ok)))
    if not suffix_ok.any():
        return None
    i = int(np.argmax(suffix_ok))
    # Every t in (grid[i-1], grid[i]] flags the same images; the midpoint
    # keeps the widest margin on both sides of the decision.
    return float(grid[i] if i == 0 else (grid[i - 1] + grid[i]) / 2)


class Calibration:
    """Precision/recall of an audit's neighbours against ground truth, at any threshold.

    ``neighbours``: DataFrame of the readable test images' neighbours
    (test_id, pretrain_key, score). Built once; :attr:`calibrated` is the
    lowest threshold whose precision (and that of every higher threshold)
    reaches ``target_precision``, or None; :meth:`record` gives the record
    stored in summary.json. See the module docstring for the definitions.
    """

    def __init__(self, neighbours, ground_truth: GroundTruth, target_precision: float) -> None:
        self.truth, self.target = ground_truth, target_precision
        self.evaluated = neighbours if ground_truth.labelled is None else \
            neighbours[neighbours["test_id"].isin(ground_truth.labelled)]
        self.test_ids = np.array(sorted(set(self.evaluated["test_id"])), dtype=object)
        scores = self.evaluated.groupby("test_id")["score"]
        self.top = scores.max().reindex(self.test_ids).to_numpy(np.float64)
        is_true = np.array([key in ground_truth.pairs.get(t, ()) for t, key in
                            zip(self.evaluated["test_id"], self.evaluated["pretrain_key"])], dtype=bool)
        hits = self.evaluated[is_true].groupby("test_id")["score"].max()
        self.pair = hits.reindex(self.test_ids).astype(np.float64).fillna(-np.inf).to_numpy()
        self.positive = np.array([t in ground_truth.pairs for t in self.test_ids], dtype=bool)
        weights = ground_truth.weights
        self.weight = None if weights is None else \
            np.array([weights.get(t, 1.0) for t in self.test_ids], dtype=np.float64)
        self.calibrated = choose_threshold(self.top, self.positive, self.pair, self.target, self.weight)

    def record(self, threshold: float, sweep: list[float], confidence: float = 0.95) -> dict:
        """The calibration record: counts, curve over ``sweep``, figures at ``threshold``.

        The intervals at ``threshold`` are in-sample; the held-out estimate is
        :func:`data_tools.dedup.heldout.cross_validate`'s.
        """
        positive, pair, top = self.positive, self.pair, self.top
        out = {**self.truth.stats, "positives": int(positive.sum()),
               "positives_unreadable": len(set(self.truth.pairs) - set(self.test_ids)),
               "negatives": int((~positive).sum()), "target_precision": self.target,
               "calibrated_threshold": self.calibrated}
        points = np.array(sorted(set(sweep) | {threshold}), dtype=np.float64)
        table = _curve(top, positive, pair, points, self.weight)
        out["curve"] = [{"threshold": float(t), "precision": float(p), "recall": float(r), "flagged": int(f)}
                        for t, p, r, f in zip(points, table["precision"], table["recall"], table["flagged"])]
        at = _curve(top, positive, pair, np.array([threshold]), self.weight)
        flagged = top >= threshold
        weight = np.ones(len(top)) if self.weight is None else self.weight
        precision = proportion(positive[flagged], weight[flagged], confidence)
        recall = proportion((pair >= threshold)[positive], weight[positive], confidence)
        out["at_threshold"] = {
            "threshold": float(threshold), "precision": float(at["precision"][0]),
            "recall": float(at["recall"][0]), "flagged": int(at["flagged"][0]),
            # in-sample: the threshold may have been chosen on these very images (see held_out)
            "precision_interval": precision["interval"], "recall_interval": recall["interval"],
            "false_positives": [str(t) for t in self.test_ids[flagged & ~positive]],
            "missed": [str(t) for t in self.test_ids[positive & ~(pair >= threshold)]],
        }
        out["per_transform"] = _per_transform(self.truth, self.evaluated, threshold, set(self.test_ids))
        return out


def _per_transform(ground_truth: GroundTruth, neighbours, threshold: float, readable: set[str]) -> dict:
    """Recall per transform at ``threshold``: a pair counts when its pool key is retrieved >= t.

    Pairs of unreadable test images are left out here as in the image-level
    figures (the audit lists those images separately).
    """
    retrieved = {(t, k): s for t, k, s in zip(neighbours["test_id"], neighbours["pretrain_key"],
                                               neighbours["score"])}
    out: dict[str, dict] = {}
    for (test_id, key), name in sorted(ground_truth.transforms.items()):
        if test_id not in readable:
            continue
        entry = out.setdefault(name, {"pairs": 0, "found": 0})
        entry["pairs"] += 1
        entry["found"] += int(retrieved.get((test_id, key), -np.inf) >= threshold)
    for entry in out.values():
        entry["recall"] = entry["found"] / entry["pairs"]
    return out


def joint_calibration(parts: list[tuple[str, object, GroundTruth]], target_precision: float) -> Calibration:
    """One calibration over several test sets: ``[(name, neighbours, ground truth)]``.

    Test ids are prefixed ``NAME/`` so that ids shared by two sets (COCO ids
    start at 1 everywhere) stay apart. The stats are summed.
    """
    import pandas as pd
    tables, pairs, transforms, labelled, stats, weights = [], {}, {}, set(), {}, {}
    exhaustive = all(truth.labelled is None for _, _, truth in parts)
    weighted = any(truth.weights is not None for _, _, truth in parts)
    for name, table, truth in parts:
        prefixed = table.assign(test_id=name + "/" + table["test_id"].astype(str))
        tables.append(prefixed[["test_id", "pretrain_key", "score"]])
        pairs.update({f"{name}/{t}": keys for t, keys in truth.pairs.items()})
        transforms.update({(f"{name}/{t}", k): x for (t, k), x in truth.transforms.items()})
        labelled |= {f"{name}/{t}" for t in (truth.labelled if truth.labelled is not None
                                             else set(table["test_id"].astype(str)))}
        weights.update({f"{name}/{t}": w for t, w in (truth.weights or {}).items()})
        for key, value in truth.stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stats[key] = stats.get(key, 0) + value
    stats.update(source=parts[0][2].stats["source"], rows_in_file=parts[0][2].stats["rows_in_file"],
                 exhaustive=exhaustive, weighted=weighted,
                 testsets=[name for name, _, _ in parts])
    truth = GroundTruth(pairs, transforms, None if exhaustive else labelled, stats,
                        weights if weighted else None)
    joint = Calibration(pd.concat(tables, ignore_index=True), truth, target_precision)
    if not (~joint.positive).any():
        raise DataError(f"{stats['source']}: every evaluated test image has a listed duplicate, so "
                        "there are no negatives and precision cannot be measured; audit the whole "
                        "test set (the images the file does not list are the negatives) or add pairs "
                        "marked is_duplicate=0")
    return joint
