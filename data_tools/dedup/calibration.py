"""Calibration against known duplicates: precision and recall as functions of the threshold.

Ground truth is a CSV with ``test_id`` and ``pretrain_key`` columns, and
optionally ``dataset``/``split`` (rows are matched to the audited test set),
``transform`` (recall is reported per transform) and ``is_duplicate``
(0/1 labels). The synthetic world's ``duplicates/planted.csv`` has no label
column: every listed pair is a duplicate and every other test image is
taken to have none (*exhaustive* ground truth). With a label column only the
labelled test images are evaluated.

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
    for column, value in (("dataset", testset.dataset), ("split", testset.split)):
        if column in table.columns and value is not None:
            table = table[table[column] == value]
    ids = {im.test_id for im in testset.images}
    unknown = table[~table["test_id"].isin(ids)]
    table = table[table["test_id"].isin(ids)]
    labelled = None
    if "is_duplicate" in table.columns:
        values = table["is_duplicate"].str.strip().str.lower()
        bad = values[~values.isin(_TRUE | _FALSE)]
        if len(bad):
            raise DataError(f"{path}: is_duplicate must be 0/1 or true/false, got {bad.iloc[0]!r}")
        labelled = set(table["test_id"])
        table = table[values.isin(_TRUE)]
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
             "true_pairs": int(len(present)), "exhaustive": labelled is None}
    if len(unknown):
        log.warning("%s: %d ground-truth rows name test images this test set does not have (e.g. %s)",
                    path, len(unknown), unknown["test_id"].iloc[0])
    return GroundTruth(pairs, transforms, labelled, stats)


def _curve(top: np.ndarray, positive: np.ndarray, pair: np.ndarray, thresholds: np.ndarray) -> dict:
    flagged = top[None, :] >= thresholds[:, None]                       # (T, N)
    n_flagged = flagged.sum(axis=1)
    true_flags = (flagged & positive[None, :]).sum(axis=1)
    found = (pair[None, positive] >= thresholds[:, None]).sum(axis=1)
    precision = np.where(n_flagged > 0, true_flags / np.maximum(n_flagged, 1), 1.0)
    recall = found / max(int(positive.sum()), 1)
    return {"flagged": n_flagged, "precision": precision, "recall": recall}


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
        self.calibrated = self._calibrate()

    def _calibrate(self) -> float | None:
        finite = np.concatenate([self.top[np.isfinite(self.top)], self.pair[np.isfinite(self.pair)]])
        grid = np.unique(finite)
        if not len(grid) or not self.positive.any():
            return None
        curve = _curve(self.top, self.positive, self.pair, grid)
        ok = (curve["precision"] >= self.target) & (curve["flagged"] > 0)
        # lowest t with precision >= target at t and at every higher candidate threshold
        suffix_ok = np.flip(np.logical_and.accumulate(np.flip(ok)))
        if not suffix_ok.any():
            return None
        i = int(np.argmax(suffix_ok))
        # Every t in (grid[i-1], grid[i]] flags the same images; the midpoint
        # keeps the widest margin on both sides of the decision.
        return float(grid[i] if i == 0 else (grid[i - 1] + grid[i]) / 2)

    def record(self, threshold: float, sweep: list[float]) -> dict:
        """The calibration record: counts, curve over ``sweep``, figures at ``threshold``."""
        positive, pair, top = self.positive, self.pair, self.top
        out = {**self.truth.stats, "positives": int(positive.sum()),
               "positives_unreadable": len(set(self.truth.pairs) - set(self.test_ids)),
               "negatives": int((~positive).sum()), "target_precision": self.target,
               "calibrated_threshold": self.calibrated}
        points = np.array(sorted(set(sweep) | {threshold}), dtype=np.float64)
        table = _curve(top, positive, pair, points)
        out["curve"] = [{"threshold": float(t), "precision": float(p), "recall": float(r), "flagged": int(f)}
                        for t, p, r, f in zip(points, table["precision"], table["recall"], table["flagged"])]
        at = _curve(top, positive, pair, np.array([threshold]))
        flagged = top >= threshold
        out["at_threshold"] = {
            "threshold": float(threshold), "precision": float(at["precision"][0]),
            "recall": float(at["recall"][0]), "flagged": int(at["flagged"][0]),
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
    tables, pairs, transforms, labelled, stats = [], {}, {}, set(), {}
    exhaustive = all(truth.labelled is None for _, _, truth in parts)
    for name, table, truth in parts:
        prefixed = table.assign(test_id=name + "/" + table["test_id"].astype(str))
        tables.append(prefixed[["test_id", "pretrain_key", "score"]])
        pairs.update({f"{name}/{t}": keys for t, keys in truth.pairs.items()})
        transforms.update({(f"{name}/{t}", k): x for (t, k), x in truth.transforms.items()})
        labelled |= {f"{name}/{t}" for t in (truth.labelled if truth.labelled is not None
                                             else set(table["test_id"].astype(str)))}
        for key, value in truth.stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stats[key] = stats.get(key, 0) + value
    stats.update(source=parts[0][2].stats["source"], rows_in_file=parts[0][2].stats["rows_in_file"],
                 exhaustive=exhaustive,
                 testsets=[name for name, _, _ in parts])
    truth = GroundTruth(pairs, transforms, None if exhaustive else labelled, stats)
    return Calibration(pd.concat(tables, ignore_index=True), truth, target_precision)
