"""Scaling-curve fits with uncertainty: metric against pretraining data size.

The curve families (log-linear, saturating power law) live in
:mod:`analysis.fit_models`, chosen by name from its registry ``FIT_MODELS``.

The unit of a fit is the pretraining run (backbone, results column
``pretrain_run``), not the fine-tuning run: runs fine-tuned from one backbone
share its luck, so their values are averaged first and each backbone is one
point (:func:`pretraining_points`). Intervals are then taken over backbones,
so they hold both pretraining and fine-tuning variance (docs/uncertainty.md):

* models linear in their parameters (log-linear) get exact t intervals from
  least squares on the backbone means, on n_backbones - 2 degrees of freedom;
* the power law gets a bootstrap over backbones (resampled within each size
  when every size has two or more, else (size, mean) pairs), read as expanded
  percentile intervals (:func:`expanded_level`).

Model choice uses AICc on the backbone means and the error of predicting the
largest size from the smaller ones (:func:`_choose`); a model is fitted only
on as many sizes as :attr:`FitModel.fit_sizes` says. A pure-error F test of
lack of fit is reported where some size has two or more backbones.
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
from analysis.fit_models import FIT_MODELS, ErrorScale, FitModel, error_scale, metric_range
from analysis.intervals import (CurvePoints, aicc, bootstrap_draws, distinct_per_row, expanded_level, lack_of_fit,
                                pretraining_points, quantiles, refuse_nonfinite)
from analysis.results import AXIS_COLUMNS, select
from datascale.atomic import atomic_path
from datascale.errors import DataError

log = logging.getLogger(__name__)

# A curve is one combination of these (more with FitConfig.group_by): every axis of a study
# but the pretraining seed, whose runs are replicates of one point (pretrain_run).
CURVE_KEYS = ["task", "metric", "test_set", "mode", "arch", "init", *AXIS_COLUMNS, "labelled_fraction"]
# Columns that should be constant along one curve (rule 3: same compute for every size).
SAME_ALONG_CURVE = ("steps", "num_classes")
BACKBONE_COLUMN = "pretrain_run"
CONVERGED_COLUMN = "pretrain_converged"


def _estimate_columns() -> list[str]:
    """Every model's parameter and derived columns, each with its _low / _high bounds."""
    names = dict.fromkeys(name for model in FIT_MODELS.values()
                          for name in model.param_names + model.derived_names)
    return [f"{name}{end}" for name in names for end in ("", "_low", "_high")]


FIT_COLUMNS = (["model", "chosen", "chosen_by", "n_runs", "n_backbones", "n_sizes", "min_backbones_per_size",
                "min_images", "max_images"] + _estimate_columns()
               + ["r2", "rmse", "aicc", "heldout_error", "lack_of_fit_f", "lack_of_fit_p", "lack_of_fit_dof",
                  "pure_error_dof", "ci_level", "interval_kind", "interval_dof", "bootstrap_used",
                  "predict_images", "predicted", "predicted_low", "predicted_high", "target",
                  "images_for_target", "images_for_target_low", "images_for_target_high",
                  "largest_converged", "note"])
FIT_FILES = {"fits": "fits.csv", "curves": "fit_curves.csv", "points": "fit_points.csv",
             "excluded": "fit_excluded.csv"}


# --------------------------------------------------------------------------- one curve


def _notes(points: CurvePoints) -> list[str]:
    notes = []
    if not points.known:
        notes.append(f"no {BACKBONE_COLUMN}: the runs of one size are taken as one pretraining run")
    single = int((points.per_size < 2).sum())
    if single:
        notes.append(f"{single} of {len(points.per_size)} sizes have one pretraining run: the interval rests "
                     f"on {len(points.y)} backbone means (wide) and lack of fit cannot be told from "
                     "run-to-run noise there; more pretraining runs per size would narrow it")
    return notes


def _fit_one(model: FitModel, points: CurvePoints, scale: ErrorScale, value_range: tuple[float, float],
             config: FitConfig, rng: np.random.Generator, grid: np.ndarray) -> dict:
    """Point fit, intervals, criteria and predictions of one model on one curve's backbone means.

    Time: closed forms for linear models; for the others a few batched array
    passes (well under a second for 1000 resamples). Memory: bootstrap x
    max(points x 200, len(grid)) floats.
    """
    n, y = points.n, points.y
    n_params = len(model.param_names)
    dof = len(y) - n_params
    if dof < 1:
        raise ValueError(f"{len(y)} pretraining runs leave no degree of freedom for {n_params} parameters")
    params = model.fit(n[None], y[None], scale)[0]
    fitted = model.predict(params, n, scale)
    residuals = y - fitted
    rss, tss = float(residuals @ residuals), float(((y - y.mean()) ** 2).sum())
    # A new run's scatter about the curve: its backbone's (the residual variance of
    # backbone means holds 1/m of the fine-tuning variance) plus the rest of its own.
    own = points.within_var * (1 - float(np.mean(1 / points.seeds))) if np.isfinite(points.within_var) else 0.0
    level = config.ci_level
    if model.design is not None:
        design = model.design(n)
        cov = rss / dof * np.linalg.inv(design.T @ design)
        quantile = float(stats.t.ppf((1 + level) / 2, dof))
        half = quantile * np.sqrt(np.diag(cov))
        low, high = params - half, params + half
        at_grid = model.design(grid)
        curve = at_grid @ params
        band_half = quantile * np.sqrt(np.einsum("gi,ij,gj->g", at_grid, cov, at_grid))
        band = (curve - band_half, curve + band_half)
        kind, draw_level, draws = "t", level, None
        if config.target is not None:  # parameters drawn from their multivariate t, for the inverse
            z = rng.standard_normal((config.bootstrap, n_params)) @ np.linalg.cholesky(cov).T
            draws = params + z * np.sqrt(dof / rng.chisquare(dof, config.bootstrap))[:, None]
    else:
        kind, n_star, y_star = bootstrap_draws(n, y, config.bootstrap, rng)
        usable = distinct_per_row(n_star) >= model.min_sizes
        if usable.sum() < 50:
            raise ValueError(f"only {usable.sum()} of {config.bootstrap} bootstrap resamples had enough sizes")
        draws = model.fit(n_star[usable], y_star[usable], scale)
        draw_level = expanded_level(level, dof)
        low, high = quantiles(draws, draw_level)
        curve = model.predict(params, grid, scale)
        band = quantiles(model.predict(draws, grid, scale), draw_level)
    lo, hi = value_range
    clipped = [np.clip(curve, lo, hi), np.clip(band[0], lo, hi), np.clip(band[1], lo, hi)]
    row = {"model": model.name, "n_runs": len(points.of_run), "n_backbones": len(y),
           "n_sizes": len(points.per_size), "min_backbones_per_size": int(points.per_size.min()),
           "min_images": float(n.min()), "max_images": float(n.max()),
           "interval_kind": kind, "interval_dof": dof,
           "bootstrap_used": 0 if draws is None else len(draws), "ci_level": level}
    for i, name in enumerate(model.param_names):
        row.update({name: float(params[i]), f"{name}_low": float(low[i]), f"{name}_high": float(high[i])})
    if model.derived is not None:
        row.update(model.derived(params, low, high, scale))
    row.update(r2=1 - rss / tss if tss > 0 else math.nan, rmse=math.sqrt(rss / len(y)),
               aicc=aicc(model, params, points, scale),
               heldout_error=_heldout_error(model, points, scale, value_range),
               **lack_of_fit(points, fitted, n_params))
    row["_curve"] = tuple(clipped)
    row["_fitted"] = np.clip(fitted[points.of_run], lo, hi)
    predictions, was_clipped = _predictions(model, params, draws, residuals, own, scale, value_range,
                                            draw_level, config, rng, cov if model.design is not None else None)
    row.update(predictions)
    notes = _notes(points)
    if was_clipped or any((c != u).any() for c, u in zip(clipped, (curve, *band))):
        notes.append(f"predictions clipped to the metric's range [{lo:g}, {hi:g}]")
    row["note"] = "; ".join(notes)
    return row


def fit_curve(n, y, model: str = "loglinear", config: FitConfig | None = None, metric: str = "value",
              pretrain_run=None) -> dict:
    """Fit one model to one curve: pretraining sizes ``n`` and metric values ``y`` (one per run).

    ``pretrain_run`` names each run's backbone (pretraining run); runs of one
    backbone are averaged and intervals are over backbones. Without it the
    runs of one size are taken as one backbone. Returns the fits.csv columns
    of that model as a dict (estimates, intervals, r2, aicc, held-out error,
    lack of fit, predictions). Raises DataError for NaN or infinite inputs,
    too few sizes for the model (:attr:`FitModel.fit_sizes`) or a power law
    on a metric it does not apply to. Random draws are seeded by config.seed.
    """
    config = config or FitConfig()
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    refuse_nonfinite(n, y, [f"row {i}" for i in range(len(n))])
    fit_model = FIT_MODELS[model]
    points = pretraining_points(n, y, pretrain_run)
    scale, problem = _applies(fit_model, len(points.per_size), metric, y)
    if not problem and np.ptp(y) == 0:
        problem = f"all {len(y)} values equal {y[0]:g}: nothing to fit"
    if problem:
        raise DataError(problem)
    grid = np.geomspace(n.min(), max(n.max(), config.predict_images or 0), config.curve_points)
    row = _fit_one(fit_model, points, scale, metric_range(metric, y), config,
                   np.random.default_rng(config.seed), grid)
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _applies(model: FitModel, n_sizes: int, metric: str, y: np.ndarray) -> tuple[ErrorScale, str]:
    """(error scale, "") when ``model`` may be fitted to this curve, else (None, why not)."""
    scale, problem = error_scale(metric, y) if model.needs_scale else (ErrorScale(None), "")
    if not problem and n_sizes < model.fit_sizes:
        problem = (f"{model.name} ({len(model.param_names)} parameters) is fitted only on at least "
                   f"{model.fit_sizes} data sizes; this curve has {n_sizes}")
    return scale, problem


def _heldout_error(model: FitModel, points: CurvePoints, scale: ErrorScale,
                   value_range: tuple[float, float]) -> float:
    """|mean at the largest size - prediction from a fit on the smaller sizes| (backbone means)."""
    largest = points.n.max()
    train = points.n < largest
    if len(np.unique(points.n[train])) < model.min_sizes:
        return math.nan
    params = model.fit(points.n[train][None], points.y[train][None], scale)[0]
    predicted = np.clip(model.predict(params, np.array([largest]), scale)[0], *value_range)
    return float(abs(points.y[~train].mean() - predicted))


def _predictions(model: FitModel, params: np.ndarray, draws: np.ndarray | None, residuals: np.ndarray,
                 own_var: float, scale: ErrorScale, value_range: tuple[float, float], level: float,
                 config: FitConfig, rng: np.random.Generator, cov: np.ndarray | None) -> tuple[dict, bool]:
    """--predict / --target columns, and whether a prediction was clipped to the metric's range."""
    out: dict = {}
    clipped = False
    lo, hi = value_range
    dof = len(residuals) - len(params)
    if config.predict_images is not None:
        at = np.array([config.predict_images])
        predicted = float(model.predict(params, at, scale)[0])
        # A prediction interval for one new run: the fit's uncertainty plus a new
        # backbone's scatter (the residuals) plus its own fine-tuning noise.
        if cov is not None:
            x = model.design(at)[0]
            half = stats.t.ppf((1 + level) / 2, dof) * math.sqrt(x @ cov @ x + residuals @ residuals / dof
                                                                  + own_var)
            low, high = predicted - half, predicted + half
        else:
            noise = (rng.choice(residuals - residuals.mean(), size=len(draws)) * math.sqrt(len(residuals) / dof)
                     + rng.normal(0, math.sqrt(own_var), len(draws)))
            low, high = quantiles(model.predict(draws, at, scale)[:, 0] + noise, level)
        values = [predicted, float(low), float(high)]
        bounded = [float(np.clip(v, lo, hi)) for v in values]
        clipped = bounded != values
        out.update(predict_images=config.predict_images, predicted=bounded[0],
                   predicted_low=bounded[1], predicted_high=bounded[2])
    if config.target is not None:
        if lo <= config.target <= hi:
            needed = float(model.inverse(params, config.target, scale)[0])
            low, high = quantiles(model.inverse(draws, config.target, scale), level)
        else:  # the metric cannot take that value
            needed = low = high = math.inf
        out.update(target=config.target, images_for_target=needed,
                   images_for_target_low=float(low), images_for_target_high=float(high))
    return out, clipped


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
    note = "; ".join([f"{c} differs along the curve ({', '.join(map(str, group[c].dropna().unique()))})"
                      for c in SAME_ALONG_CURVE if c in group and group[c].nunique() > 1]
                     + [_convergence_note(group, n)])
    converged = _largest_converged(group, n)
    if note:
        log.warning("%s: %s", key, note)
    backbones = group[BACKBONE_COLUMN].to_numpy(dtype=object) if BACKBONE_COLUMN in group else None
    points = pretraining_points(n, y, backbones)
    metric = str(key.get("metric"))
    value_range = metric_range(metric, y)
    grid = np.geomspace(n.min(), max(n.max(), config.predict_images or 0), config.curve_points)
    # A seed per curve from its key, so a curve's intervals do not change when others are added.
    rng = np.random.default_rng([config.seed, zlib.crc32(repr(sorted(key.items())).encode())])
    rows, excluded = [], []
    for name in config.models:
        model = FIT_MODELS[name]
        scale, problem = _applies(model, len(sizes), metric, y)
        if problem:
            excluded.append({**key, "model": name, "reason": problem})
            continue
        try:
            row = _fit_one(model, points, scale, value_range, config, rng, grid)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            excluded.append({**key, "model": name, "reason": f"fit failed: {exc}"})
            continue
        row["note"] = "; ".join(part for part in (note, row["note"]) if part)
        rows.append({**key, **row, "largest_converged": converged, "_grid": grid, "_group": group})
    _choose(rows, config.choose_by)
    return rows, excluded


def _largest_converged(group: pd.DataFrame, n: np.ndarray):
    """Whether every backbone at the largest size had converged (None: not recorded)."""
    if CONVERGED_COLUMN not in group:
        return None
    values = group.loc[n == n.max(), CONVERGED_COLUMN].dropna()
    return None if values.empty else bool(values.all())


def _convergence_note(group: pd.DataFrame, n: np.ndarray) -> str:
    """A curve whose largest size measures an unfinished pretraining says so."""
    if _largest_converged(group, n) is not False:
        return ""
    gain = group.loc[n == n.max(), "pretrain_map_gain"].dropna() if "pretrain_map_gain" in group else []
    more = f" (mAP@100 still rising: +{float(max(gain)):.3f} over 25% more steps)" if len(gain) else ""
    return (f"the largest size's pretraining had not converged{more}; its point, and the slope, "
            "measure an unfinished run")


def _choose(rows: list[dict], choose_by: str) -> None:
    """Mark one row of a curve ``chosen``.

    "heldout" / "aicc": the smallest held-out error / AICc. "both" (default):
    start from the model with the fewest parameters and move to a larger one
    only if it is better on both criteria, because with few sizes either
    criterion alone rests on very few points. Where a held-out error is
    missing (too few sizes to refit without the largest), AICc decides; where
    an AICc is undefined (n_backbones <= parameters + 2) no criterion compares
    the models and the one with the fewest parameters is kept ("fewest parameters").
    """
    if not rows:
        return
    order = sorted(range(len(rows)), key=lambda i: len(FIT_MODELS[rows[i]["model"]].param_names))
    criterion = choose_by
    if criterion != "aicc" and any(math.isnan(r["heldout_error"]) for r in rows):
        criterion = "aicc"
    if criterion != "heldout" and any(math.isnan(r["aicc"]) for r in rows):
        criterion = "fewest parameters"
    if criterion == "both":
        best = order[0]
        for i in order[1:]:
            if rows[i]["heldout_error"] < rows[best]["heldout_error"] and rows[i]["aicc"] < rows[best]["aicc"]:
                best = i
    elif criterion == "fewest parameters":
        best = order[0]
    else:
        column = "heldout_error" if criterion == "heldout" else "aicc"
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
    # A table without the study's other axes has one value of each (null).
    results = results.assign(**{c: pd.NA for c in (*AXIS_COLUMNS, "labelled_fraction") if c not in results.columns})
    missing = [c for c in keys + ["subset_images", "value", "seed", "run_dir"] if c not in results.columns]
    if missing:
        raise DataError(f"the results table lacks columns {', '.join(missing)}")
    if results.empty:
        raise DataError("the results table has no rows: every run was excluded at collection "
                        "(see excluded.csv beside it) or none has finished yet")
    on_axis = results["subset_images"].notna() & (results["subset_images"].fillna(0) > 0)
    refuse_nonfinite(np.ones(len(results)), results["value"].to_numpy(dtype=float, na_value=np.nan),
                     _row_names(results))
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


def _row_names(results: pd.DataFrame) -> list[str]:
    """run_dir [test_set/metric] of each row, for error messages."""
    return [f"{run} [{test_set}/{metric}]" for run, test_set, metric
            in zip(results["run_dir"], results["test_set"], results["metric"])]


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
                                    BACKBONE_COLUMN: (group[BACKBONE_COLUMN].to_numpy() if BACKBONE_COLUMN in group
                                                      else None),
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
