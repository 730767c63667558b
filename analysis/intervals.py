"""The statistics under the scaling fits: backbones as the unit, bootstrap draws, AICc, lack of fit.

:mod:`analysis.fit` fits the curves; this module holds what it computes
intervals and model choice with (docs/uncertainty.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit_models import ErrorScale, FitModel
from datascale.errors import DataError


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class CurvePoints:
    """One curve's runs as one point per pretraining run (backbone).

    ``n``, ``y``, ``seeds``: size, mean value over its fine-tuning runs and
    their count, per backbone; ``of_run``: the backbone of each run;
    ``within_var``: pooled variance of fine-tuning runs about their
    backbone's mean (NaN when no backbone has two); ``known``: backbones
    were named (otherwise the runs of one size count as one backbone).
    """

    n: np.ndarray
    y: np.ndarray
    seeds: np.ndarray
    of_run: np.ndarray
    within_var: float
    known: bool

    @property
    def size_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct sizes, index of each backbone's size)."""
        return np.unique(self.n, return_inverse=True)

    @property
    def per_size(self) -> np.ndarray:
        return np.bincount(self.size_index[1])

    def size_means(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct sizes, mean of the backbone means at each)."""
        sizes, index = self.size_index
        return sizes, np.bincount(index, weights=self.y) / np.bincount(index)


def pretraining_points(n, y, pretrain_run=None) -> CurvePoints:
    """Average the fine-tuning runs of each backbone: the points every fit is made on.

    A backbone is a (size, ``pretrain_run``) pair; a missing id (None, NaN)
    or ``pretrain_run=None`` for all makes the runs of one size one backbone,
    the cautious reading (its interval can only be wider than the truth's).
    """
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    known = pretrain_run is not None
    ids = ["" if pd.isna(r) else str(r) for r in pretrain_run] if known else [""] * len(n)
    if len(ids) != len(n):
        raise DataError(f"pretrain_run has {len(ids)} entries for {len(n)} runs")
    known = known and any(ids)
    first_seen: dict = {}
    of_run = np.array([first_seen.setdefault(key, len(first_seen)) for key in zip(n.tolist(), ids)], dtype=int)
    seeds = np.bincount(of_run)
    means = np.bincount(of_run, weights=y) / seeds
    sizes = np.zeros(len(seeds))
    sizes[of_run] = n
    deviations = y - means[of_run]
    dof = int((seeds - 1).sum())
    within = float(deviations @ deviations / dof) if dof else math.nan
    return CurvePoints(sizes, means, seeds, of_run, within, known)


def refuse_nonfinite(n, y, names) -> None:
    """DataError naming the rows whose size or value is NaN or infinite."""
    bad = ~(np.isfinite(np.asarray(n, dtype=float)) & np.isfinite(np.asarray(y, dtype=float)))
    if bad.any():
        listed = [str(name) for name, b in zip(names, bad) if b]
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        raise DataError(f"{len(listed)} row(s) have a data size or value that is NaN or infinite: "
                        f"{', '.join(listed[:10])}{more}; drop or re-collect them before fitting")


# --------------------------------------------------------------------------- bootstrap


def bootstrap_draws(n: np.ndarray, y: np.ndarray, draws: int, rng: np.random.Generator
                    ) -> tuple[str, np.ndarray, np.ndarray]:
    """Resampled copies of one curve's backbone points: ``(kind, n*, y*)``, each (draws, points).

    kind "backbones": every size has >= 2 backbones; their means are
    resampled within each size, deviations from the size mean scaled by
    sqrt(m / (m - 1)) so that the resampled spread is not smaller than the
    backbones' (the plain bootstrap of m values shrinks variance by
    (m - 1) / m). kind "pairs": the (size, mean) pairs are resampled. Each
    backbone mean holds its fine-tuning noise, so resampling fine-tuning
    runs again inside it would count that noise twice. Memory: 2 x draws x points floats.
    """
    sizes, size_index = np.unique(n, return_inverse=True)
    groups = [np.flatnonzero(size_index == i) for i in range(len(sizes))]
    if all(len(g) >= 2 for g in groups):
        y_star = np.empty((draws, len(y)))
        for g in groups:
            values = y[g]
            mean, inflate = values.mean(), math.sqrt(len(g) / (len(g) - 1))
            y_star[:, g] = mean + inflate * (values[rng.integers(0, len(g), (draws, len(g)))] - mean)
        return "backbones", np.broadcast_to(n, y_star.shape), y_star
    picks = rng.integers(0, len(y), size=(draws, len(y)))
    return "pairs", n[picks], y[picks]


def distinct_per_row(n: np.ndarray) -> np.ndarray:
    ordered = np.sort(n, axis=1)
    return 1 + (np.diff(ordered, axis=1) > 0).sum(axis=1)


def expanded_level(level: float, dof: int) -> float:
    """The percentile level that gives ``level`` coverage with few points (expanded percentile interval).

    Percentile intervals act like mean +- z * se with an estimated se, which
    with ~10 points covers clearly less than nominal. As in Hesterberg's
    expanded percentile interval, the level is widened so that its normal
    quantile equals Student's t quantile with ``dof`` = points - parameters.
    """
    return float(2 * stats.norm.cdf(stats.t.ppf((1 + level) / 2, max(dof, 1))) - 1)


def quantiles(values: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    # inverted_cdf picks observed values, so infinite draws (an unreachable
    # target) give an infinite bound instead of NaN from interpolation.
    low = np.quantile(values, tail, axis=axis, method="inverted_cdf")
    high = np.quantile(values, 1 - tail, axis=axis, method="inverted_cdf")
    return low, high


# --------------------------------------------------------------------------- criteria


def aicc(model: FitModel, params: np.ndarray, points: CurvePoints, scale: ErrorScale) -> float:
    """Small-sample AIC of ``params`` on the backbone means (NaN when n <= K + 1).

    n is the number of pretraining runs, not of fine-tuning runs: runs of one
    backbone share its pretraining luck, so they are one observation. K
    counts the noise variance too (parameters + 1); with n <= K + 1 the
    correction is undefined and no comparison is made.
    """
    n, k = len(points.y), len(params) + 1
    if n <= k + 1:
        return math.nan
    residuals = points.y - model.predict(params, points.n, scale)
    rss = max(float(residuals @ residuals), 1e-300)
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def lack_of_fit(points: CurvePoints, fitted: np.ndarray, n_params: int) -> dict:
    """Pure-error F test of the curve's shape, with backbones of one size as replicates.

    The residual sum of squares splits into the backbones' scatter about
    their size mean (pure error, n_backbones - n_sizes dof) and the size
    means' distance from the curve (lack of fit, n_sizes - parameters dof).
    Without a size that has two backbones there is no pure error: NaN.
    Fine-tuning seeds are not replicates here: they share their backbone's
    pretraining luck, which the curve must also absorb.
    """
    sizes, index = points.size_index
    size_means = np.bincount(index, weights=points.y) / np.bincount(index)
    pure = float(((points.y - size_means[index]) ** 2).sum())
    total = float(((points.y - fitted) ** 2).sum())
    dof_pure, dof_lack = len(points.y) - len(sizes), len(sizes) - n_params
    out = {"lack_of_fit_f": math.nan, "lack_of_fit_p": math.nan,
           "lack_of_fit_dof": dof_lack, "pure_error_dof": dof_pure}
    if dof_pure >= 1 and dof_lack >= 1 and pure > 0:
        f_value = (max(total - pure, 0.0) / dof_lack) / (pure / dof_pure)
        out.update(lack_of_fit_f=f_value, lack_of_fit_p=float(stats.f.sf(f_value, dof_lack, dof_pure)))
    return out
