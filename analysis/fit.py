"""Scaling-curve fits with uncertainty: metric against pretraining data size.

The curve families (log-linear, saturating power law) live in
:mod:`analysis.fit_models`, chosen by name from its registry ``FIT_MODELS``.

Uncertainty comes from a bootstrap over the runs of one curve: seeds are
resampled within each data size when every size has several seeds, otherwise
(one seed per size) the (size, value) pairs are resampled; intervals are
expanded percentile intervals (see :func:`expanded_level`), which keep their
nominal coverage with the dozen runs a study has. Each model is also refitted
on all but the largest size to measure how well it extrapolates; the choice
between models uses that held-out error and AIC (see :func:`_choose`).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from analysis.config import FitConfig
from analysis.fit_models import FIT_MODELS, ErrorScale, FitModel, error_scale
from analysis.results import select
from datascale.atomic import atomic_path
from datascale.errors import DataError

log = logging.getLogger(__name__)

# A curve is one combination of these; more can be added with FitConfig.group_by.
# "arch" is always a key, so runs of two architectures never share a curve.
CURVE_KEYS = ["task", "metric", "test_set", "mode", "arch", "init"]
# Columns that should be constant along one curve (rule 3: same compute for every size).
SAME_ALONG_CURVE = ("steps", "num_classes")

FIT_COLUMNS = ["model", "chosen", "chosen_by", "n_runs", "n_sizes", "min_images", "max_images",
               "intercept", "intercept_low", "intercept_high",
               "slope_per_10x", "slope_per_10x_low", "slope_per_10x_high",
               "error_floor", "error_floor_low", "error_floor_high", "coefficient", "coefficient_low",
               "coefficient_high", "alpha", "alpha_low", "alpha_high", "limit", "limit_low", "limit_high",
               "r2", "rmse", "aic", "heldout_error", "ci_level", "bootstrap_kind", "bootstrap_used",
               "predict_images", "predicted", "predicted_low", "predicted_high", "target",
               "images_for_target", "images_for_target_low", "images_for_target_high", "note"]
FIT_FILES = {"fits": "fits.csv", "curves": "fit_curves.csv", "points": "fit_points.csv",
             "excluded": "fit_excluded.csv"}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_draws(n: np.ndarray, y: np.ndarray, draws: int, rng: np.random.Generator
                    ) -> tuple[str, np.ndarray, np.ndarray]:
    """Resampled copies of one curve's runs: ``(kind, n*, y*)``, each (draws, runs).

    kind "seeds": every size has >= 2 runs; values are resampled within each
    size, their deviations from the size mean scaled by sqrt(m / (m - 1)) so
    that the resampled spread is not smaller than the seeds' (the plain
    bootstrap of m values shrinks variance by (m - 1) / m, which with 3 seeds
    would make 95% intervals cover only ~87% of the time). kind "pairs": the
    (size, value) pairs are resampled. Memory: 2 x draws x runs floats.
    """
    sizes, size_index = np.unique(n, return_inverse=True)
    groups = [np.flatnonzero(size_index == i) for i in range(len(sizes))]
    if all(len(g) >= 2 for g in groups):
        y_star = np.empty((draws, len(y)))
        for g in groups:
            values = y[g]
            mean, inflate = values.mean(), math.sqrt(len(g) / (len(g) - 1))
            y_star[:, g] = mean + inflate * (values[rng.integers(0, len(g), (draws, len(g)))] - mean)
        return "seeds", np.broadcast_to(n, y_star.shape), y_star
    picks = rng.integers(0, len(y), size=(draws, len(y)))
    return "pairs", n[picks], y[picks]


def _distinct_per_row(n: np.ndarray) -> np.ndarray:
    ordered = np.sort(n, axis=1)
    return 1 + (np.diff(ordered, axis=1) > 0).sum(axis=1)


def expanded_level(level: float, dof: int) -> float:
    """The percentile level that gives ``level`` coverage with few runs (expanded percentile interval).

    Percentile intervals act like mean +- z * se with an estimated se, which
    with ~10 runs covers clearly less than nominal (a 95% interval from 3
    seeds at 4 sizes covers ~89%). As in Hesterberg's expanded percentile
    interval, the level is widened so that its normal quantile equals
    Student's t quantile with ``dof`` = runs - parameters.
    """
    return float(2 * stats.norm.cdf(stats.t.ppf((1 + level) / 2, max(dof, 1))) - 1)


def _quantiles(values: np.ndarray, level: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - level) / 2
    # inverted_cdf picks observed values, so infinite draws (an unreachable
    # target) give an infinite bound instead of NaN from interpolation.
    low = np.quantile(values, tail, axis=axis, method="inverted_cdf")
    high = np.quantile(values, 1 - tail, axis=axis, method="inverted_cdf")
    return low, high


# --------------------------------------------------------------------------- one curve


def _fit_one(model: FitModel, n: np.ndarray, y: np.ndarray, scale: ErrorScale,
             config: FitConfig, rng: np.random.Generator, grid: np.ndarray) -> dict:
    """Point fit, bootstrap intervals, held-out error and predictions of one model on one curve.

    Time: a few batched array passes (well under a second for 1000 resamples
    of 100 runs). Memory: bootstrap x max(runs x 200, len(grid)) floats.
    """
    params = model.fit(n[None], y[None], scale)[0]
    fitted = model.predict(params, n, scale)
    residuals = y - fitted
    rss, tss = float(residuals @ residuals), float(((y - y.mean()) ** 2).sum())
    kind, n_star, y_star = bootstrap_draws(n, y, config.bootstrap, rng)
    usable = _distinct_per_row(n_star) >= model.min_sizes
    if usable.sum() < 50:
        raise ValueError(f"only {usable.sum()} of {config.bootstrap} bootstrap resamples had enough sizes")
    boot = model.fit(n_star[usable], y_star[usable], scale)
    level = expanded_level(config.ci_level, len(y) - len(params))
    low, high = _quantiles(boot, level)
    row = {"model": model.name, "n_runs": len(y), "n_sizes": len(np.unique(n)),
           "min_images": float(n.min()), "max_images": float(n.max()),
           "bootstrap_kind": kind, "bootstrap_used": len(boot), "ci_level": config.ci_level}
    for i, name in enumerate(model.param_names):
        row.update({name: float(params[i]), f"{name}_low": float(low[i]), f"{name}_high": float(high[i])})
    if model.derived is not None:
        row.update(model.derived(params, low, high, scale))
    row.update(r2=1 - rss / tss, rmse=math.sqrt(rss / len(y)),
               aic=len(y) * math.log(max(rss, 1e-300) / len(y)) + 2 * (len(params) + 1),
               heldout_error=_heldout_error(model, n, y, scale))
    band_low, band_high = _quantiles(model.predict(boot, grid, scale), level)
    row["_curve"] = (model.predict(params, grid, scale), band_low, band_high)
    row["_fitted"] = fitted
    row.update(_predictions(model, params, boot, residuals, scale, level, config, rng))
    return row


def fit_curve(n, y, model: str = "loglinear", config: FitConfig | None = None, metric: str = "value") -> dict:
    """Fit one model to one curve: pretraining sizes ``n`` and metric values ``y`` (one per run).

    Returns the fits.csv columns of that model as a dict (estimates, intervals,
    r2, aic, held-out error, predictions). Raises DataError when the power law
    does not apply to ``metric``'s values. Resampling is seeded by config.seed.
    """
    config = config or FitConfig()
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    fit_model = FIT_MODELS[model]
    scale, problem = error_scale(metric, y) if fit_model.needs_scale else (ErrorScale(None), "")
    if len(np.unique(n)) <= len(fit_model.param_names) or np.ptp(y) == 0:
        problem = f"{model} needs more than {len(fit_model.param_names)} data sizes and values that differ"
    if problem:
        raise DataError(problem)
    grid = np.geomspace(n.min(), max(n.max(), config.predict_images or 0), config.curve_points)
    row = _fit_one(fit_model, n, y, scale, config, np.random.default_rng(config.seed), grid)
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _heldout_error(model: FitModel, n: np.ndarray, y: np.ndarray, scale: ErrorScale) -> float:
    """|mean value at the largest size - prediction from a fit on the smaller sizes|."""
    largest = n.max()
    train = n < largest
    if len(np.unique(n[train])) < model.min_sizes:
        return math.nan
    params = model.fit(n[train][None], y[train][None], scale)[0]
    return float(abs(y[~train].mean() - model.predict(params, np.array([largest]), scale)[0]))


def _predictions(model: FitModel, params: np.ndarray, boot: np.ndarray, residuals: np.ndarray,
                 scale: ErrorScale, level: float, config: FitConfig, rng: np.random.Generator) -> dict:
    out: dict = {}
    if config.predict_images is not None:
        at = np.array([config.predict_images])
        # A prediction interval for one new run: the fit's uncertainty plus a
        # run's scatter (residuals rescaled for the fitted parameters' degrees of freedom).
        dof = max(len(residuals) - len(params), 1)
        noise = rng.choice(residuals - residuals.mean(), size=len(boot)) * math.sqrt(len(residuals) / dof)
        low, high = _quantiles(model.predict(boot, at, scale)[:, 0] + noise, level)
        out.update(predict_images=config.predict_images, predicted=float(model.predict(params, at, scale)[0]),
                   predicted_low=float(low), predicted_high=float(high))
    if config.target is not None:
        low, high = _quantiles(model.inverse(boot, config.target, scale), level)
        out.update(target=config.target, images_for_target=float(model.inverse(params, config.target, scale)[0]),
                   images_for_target_low=float(low), images_for_target_high=float(high))
    return out


# --------------------------------------------------------------------------- a results table


@dataclass
class FitOutput:
    """Everything ``datascale fit`` writes: one frame per file (see docs/formats.md)."""

    fits: pd.DataFrame       # fits.csv: one row per curve and model
    curves: pd.DataFrame     # fit_curves.csv: fitted curve and confidence band on a grid of N
    points: pd.DataFrame     # fit_points.csv: every run with its fitted value and residual
    excluded: pd.DataFrame   # fit_excluded.csv: curves (or models of a curve) not fitted, and why


def curve_keys(config: FitConfig) -> list[str]:
    """The columns that define one curve: :data:`CURVE_KEYS` plus ``config.group_by``."""
    return CURVE_KEYS + [k for k in config.group_by if k not in CURVE_KEYS]


def _sizes_text(sizes: np.ndarray) -> str:
    return ", ".join(f"{s:.3g}" for s in sizes)


def _fit_group(key: dict, group: pd.DataFrame, config: FitConfig) -> tuple[list[dict], list[dict]]:
    """Fit every configured model to one curve; returns (rows, exclusions)."""
    n = group["subset_images"].to_numpy(dtype=float)
    y = group["value"].to_numpy(dtype=float)
    sizes = np.unique(n)
    if len(sizes) < config.min_sizes:
        return [], [{**key, "model": "", "reason": f"only {len(sizes)} data size(s) ({_sizes_text(sizes)}); "
                     f"a curve needs at least {config.min_sizes}"}]
    if np.ptp(y) == 0:
        return [], [{**key, "model": "", "reason": f"all {len(y)} values equal {y[0]:g}: nothing to fit"}]
    note = "; ".join(f"{c} differs along the curve ({', '.join(map(str, group[c].dropna().unique()))})"
                     for c in SAME_ALONG_CURVE if c in group and group[c].nunique() > 1)
    if note:
        log.warning("%s: %s", key, note)
    grid = np.geomspace(n.min(), max(n.max(), config.predict_images or 0), config.curve_points)
    # A seed per curve from its key, so a curve's intervals do not change when others are added.
    rng = np.random.default_rng([config.seed, zlib.crc32(repr(sorted(key.items())).encode())])
    rows, excluded = [], []
    for name in config.models:
        model = FIT_MODELS[name]
        scale, problem = error_scale(str(key.get("metric")), y) if model.needs_scale else (ErrorScale(None), "")
        if not problem and len(sizes) <= len(model.param_names):
            problem = f"{len(model.param_names)} parameters need more than {len(sizes)} data sizes"
        if problem:
            excluded.append({**key, "model": name, "reason": problem})
            continue
        try:
            row = _fit_one(model, n, y, scale, config, rng, grid)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            excluded.append({**key, "model": name, "reason": f"fit failed: {exc}"})
            continue
        rows.append({**key, **row, "note": note, "_grid": grid, "_group": group})
    _choose(rows, config.choose_by)
    return rows, excluded


def _choose(rows: list[dict], choose_by: str) -> None:
    """Mark one row of a curve ``chosen``.

    "heldout" / "aic": the smallest held-out error / AIC. "both" (default):
    start from the model with the fewest parameters and move to a larger one
    only if it is better on both criteria, because with four sizes either
    criterion alone rests on very few points. Where a held-out error is
    missing (too few sizes to refit without the largest), AIC decides.
    """
    if not rows:
        return
    criterion = choose_by
    if criterion != "aic" and any(math.isnan(r["heldout_error"]) for r in rows):
        criterion = "aic"
    order = sorted(range(len(rows)), key=lambda i: len(FIT_MODELS[rows[i]["model"]].param_names))
    if criterion == "both":
        best = order[0]
        for i in order[1:]:
            if rows[i]["heldout_error"] < rows[best]["heldout_error"] and rows[i]["aic"] < rows[best]["aic"]:
                best = i
    else:
        column = "heldout_error" if criterion == "heldout" else "aic"
        best = min(order, key=lambda i: rows[i][column])
    for i, row in enumerate(rows):
        row["chosen"] = i == best
        row["chosen_by"] = criterion if len(rows) > 1 else "only model"


def fit_table(results: pd.DataFrame, config: FitConfig | None = None, progress: bool = True) -> FitOutput:
    """Fit every curve of a results table (``analysis.results`` columns).

    Rows without a positive ``subset_images`` (random-init baselines) and
    curves with too few sizes or constant values are reported in
    ``excluded``, never dropped silently. Time: about 0.1 s per curve with
    1000 resamples (batched); memory: one curve's resamples at a time.
    """
    config = config or FitConfig()
    results = select(results, config.where)
    keys = curve_keys(config)
    missing = [c for c in keys + ["subset_images", "value", "seed", "run_dir"] if c not in results.columns]
    if missing:
        raise DataError(f"the results table lacks columns {', '.join(missing)}")
    if results.empty:
        raise DataError("the results table has no rows: every run was excluded at collection "
                        "(see excluded.csv beside it) or none has finished yet")
    on_axis = results["subset_images"].notna() & (results["subset_images"].fillna(0) > 0)
    excluded = [{**dict(zip(keys, k)), "model": "", "reason": f"{len(g)} row(s) without a positive "
                 "subset_images (e.g. random-init baselines): not on the data-size axis"}
                for k, g in results[~on_axis].groupby(keys, dropna=False, sort=True)]
    rows = []
    groups = results[on_axis].groupby(keys, dropna=False, sort=True)
    for key_values, group in tqdm(groups, desc="curves", unit="curve", disable=not progress):
        group_rows, group_excluded = _fit_group(dict(zip(keys, key_values)), group, config)
        rows.extend(group_rows)
        excluded.extend(group_excluded)
    return _assemble(rows, excluded, keys)


def _assemble(rows: list[dict], excluded: list[dict], keys: list[str]) -> FitOutput:
    curves, points = [], []
    for row in rows:
        fitted, low, high = row.pop("_curve")
        base = {**{k: row[k] for k in keys}, "model": row["model"], "chosen": row["chosen"]}
        curves.append(pd.DataFrame({**base, "subset_images": row.pop("_grid"), "fitted": fitted,
                                    "band_low": low, "band_high": high}))
        group = row.pop("_group")
        values = group["value"].to_numpy(dtype=float)
        fitted_runs = row.pop("_fitted")
        points.append(pd.DataFrame({**base, "subset_images": group["subset_images"].to_numpy(dtype=float),
                                    "seed": group["seed"].to_numpy(), "run_dir": group["run_dir"].to_numpy(),
                                    "value": values, "fitted": fitted_runs, "residual": values - fitted_runs}))
    fits = pd.DataFrame(rows)
    if not fits.empty:
        fits = fits[[c for c in keys + FIT_COLUMNS if c in fits.columns]]
    return FitOutput(fits=fits,
                     curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
                     points=pd.concat(points, ignore_index=True) if points else pd.DataFrame(),
                     excluded=pd.DataFrame(excluded, columns=keys + ["model", "reason"]))


def write_fits(output: FitOutput, out_dir: str | Path) -> dict[str, Path]:
    """Write the four CSV files of ``output`` atomically into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = {}
    for name, file_name in FIT_FILES.items():
        paths[name] = out_dir / file_name
        with atomic_path(paths[name]) as tmp:
            getattr(output, name).to_csv(tmp, index=False)
    return paths


def read_fits(out_dir: str | Path) -> FitOutput:
    """Read the files written by :func:`write_fits`; DataError naming a missing one."""
    out_dir = Path(out_dir)
    frames = {}
    for name, file_name in FIT_FILES.items():
        path = out_dir / file_name
        if not path.is_file():
            raise DataError(f"{path} not found: run `datascale fit` first")
        try:
            frames[name] = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frames[name] = pd.DataFrame()
    return FitOutput(**frames)
