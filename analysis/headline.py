"""The answer first: one row per task and mode with what more pretraining data bought.

:func:`headline_table` is what report.md, the notebook and the README's demo
section open with: per (task, mode) on the original test set, the task's main
metric at the smallest and the largest pretraining size, the random-init
baseline, the log-linear slope per 10x data with its interval, and a verdict.
:func:`caveats` lists what the study does not show, from the same tables.
"""

from __future__ import annotations

import math

import pandas as pd

# A bounded metric whose best pretrained mean stays under this share of its range is at its
# floor: differences there are noise, not a trend (e.g. detection AP < 0.02).
FLOOR_SHARE = 0.02
VERDICTS = ("grows", "flat", "falls", "at floor")


def main_metrics(results: pd.DataFrame) -> dict[str, str]:
    """task -> its main metric: the one its runs flag ``is_primary``, else the first listed
    metric that is not a per-class one (no "/" in its name)."""
    out = {}
    for task, rows in results.groupby("task", sort=False):
        flagged = rows[rows["is_primary"].fillna(False).astype(bool)] if "is_primary" in rows else rows.iloc[:0]
        if not flagged.empty:
            out[str(task)] = str(flagged["metric"].mode().iloc[0])
            continue
        plain = [m for m in rows["metric"].astype(str).unique() if "/" not in m]
        if plain:
            out[str(task)] = plain[0]
    return out


# A study's other axes (scaling.study): the headline shows each at its most common value.
SETTING_COLUMNS = ("arch", "budget", "classes", "init_from", "curriculum")
FINETUNE_SETTING_COLUMNS = ("augment", "labelled_fraction")


def main_setting(rows: pd.DataFrame, vary: str | tuple = ()) -> pd.DataFrame:
    """The rows of the study's main setting: for each axis column (but those in ``vary``), its
    main value among pretrained runs (random-init rows are kept for the architecture alone)."""
    vary = (vary,) if isinstance(vary, str) else tuple(vary or ())
    sized = rows[rows["subset_images"].notna()] if "subset_images" in rows else rows
    for column in (c for c in SETTING_COLUMNS if c not in vary):
        if column not in rows or sized.empty or sized[column].nunique(dropna=False) < 2:
            continue
        value = main_value(sized[column], column)
        keep = rows[column].astype(str) == value
        if column != "arch" and "subset_images" in rows:
            keep |= rows["subset_images"].isna()
        rows, sized = rows[keep], sized[sized[column].astype(str) == value]
    # Fine-tuning's own axes (augmentation, labelled fraction) apply to every init alike.
    for column in (c for c in FINETUNE_SETTING_COLUMNS if c not in vary):
        if column in rows and rows[column].nunique(dropna=False) > 1:
            rows = rows[rows[column].astype(str) == main_value(rows[column], column)]
    return rows


def main_value(values: pd.Series, column: str) -> str:
    """An axis's main value: ``all`` classes or no ``init_from`` when present, else the most common."""
    texts = values.astype(str)
    if column == "labelled_fraction":  # every labelled image, where the study ran it
        numbers = pd.to_numeric(values, errors="coerce")
        return texts[numbers.idxmax()] if numbers.notna().any() else texts.mode().iloc[0]
    preferred = {"classes": "all", "init_from": "<NA>", "curriculum": "none", "augment": "flip"}.get(column)
    return preferred if preferred in set(texts) else texts.mode().iloc[0]


def _bound(metric_values: pd.Series) -> float:
    """1 for metrics in [0, 1], 100 for percentages, inf otherwise."""
    high = float(metric_values.max())
    return 1.0 if high <= 1 else (100.0 if high <= 100 else math.inf)


def verdict(slope_low: float, slope_high: float, best: float, bound: float) -> str:
    """grows / falls: the slope's interval excludes 0; at floor: the best mean is under 2% of
    the metric's range; flat otherwise."""
    if math.isfinite(bound) and best < FLOOR_SHARE * bound:
        return "at floor"
    if not (math.isnan(slope_low) or math.isnan(slope_high)):
        if slope_low > 0:
            return "grows"
        if slope_high < 0:
            return "falls"
    return "flat"


def headline_values(results: pd.DataFrame, fits: pd.DataFrame, test_set: str = "original") -> pd.DataFrame:
    """The headline's numbers, one row per (task, mode): the main metric's mean at the smallest
    and largest size (``smallest``/``largest``, at ``smallest_images``/``largest_images``),
    random init's mean (``random``, NaN when not run), the log-linear slope per 10x with its
    interval (``slope``, ``slope_low``, ``slope_high`` at ``ci_level``), the ``verdict``,
    ``beats_random`` (None without random init) and ``converged`` (the fit's
    ``largest_converged``: None or NaN when unknown)."""
    metrics = main_metrics(results)
    rows = []
    main = main_setting(results[(results["test_set"] == test_set)
                                & (results["metric"] == results["task"].astype(str).map(metrics))])
    for (task, mode), group in main.groupby(["task", "mode"], sort=True):
        sized = group[group["subset_images"].notna()]
        if sized.empty:
            continue
        means = sized.groupby("subset_images")["value"].mean()
        random = group[group["subset_images"].isna() & (group["init"] == "random")]["value"].dropna()
        fit = _chosen_fit(fits, task, metrics[str(task)], mode, test_set) or {}
        low, high = fit.get("slope_per_10x_low", math.nan), fit.get("slope_per_10x_high", math.nan)
        rows.append({
            "task": task, "mode": mode, "metric": metrics[str(task)],
            "smallest_images": float(means.index[0]), "smallest": float(means.iloc[0]),
            "largest_images": float(means.index[-1]), "largest": float(means.iloc[-1]),
            "random": float(random.mean()) if len(random) else math.nan,
            "slope": float(fit.get("slope_per_10x", math.nan)), "slope_low": float(low),
            "slope_high": float(high), "ci_level": float(fit.get("ci_level", 0.95)),
            "verdict": verdict(low, high, float(means.max()), _bound(group["value"])),
            "beats_random": bool(means.iloc[-1] > random.mean()) if len(random) else None,
            "converged": fit.get("largest_converged"),
        })
    return pd.DataFrame(rows)


def slope_text(slope: float, low: float, high: float) -> str:
    """``+0.048 [+0.026, +0.071]``, or ``not fitted``."""
    return "not fitted" if math.isnan(slope) else f"{slope:+.3f} [{low:+.3f}, {high:+.3f}]"


def headline_table(results: pd.DataFrame, fits: pd.DataFrame, test_set: str = "original") -> pd.DataFrame:
    """One row per (task, mode): main metric at the smallest and largest size, random init,
    slope per 10x [interval], verdict. Means are over every run at a size."""
    rows = []
    for _, v in headline_values(results, fits, test_set).iterrows():
        level = int(round(100 * v["ci_level"]))
        rows.append({
            "task": v["task"], "mode": v["mode"], "metric": v["metric"],
            "smallest": f"{v['smallest']:.3f} ({images_text(v['smallest_images'])})",
            "largest": f"{v['largest']:.3f} ({images_text(v['largest_images'])})",
            "random init": "not run" if math.isnan(v["random"]) else f"{v['random']:.3f}",
            f"slope per 10x [{level}% CI]": slope_text(v["slope"], v["slope_low"], v["slope_high"]),
            "verdict": v["verdict"],
            "_beats_random": None if v["beats_random"] is None else bool(v["beats_random"]),
            "_converged": v["converged"],
        })
    return pd.DataFrame(rows)


def _chosen_fit(fits: pd.DataFrame, task, metric, mode, test_set) -> dict | None:
    if fits.empty:
        return None
    mask = ((fits["task"].astype(str) == str(task)) & (fits["metric"] == metric) & (fits["mode"] == mode)
            & (fits["test_set"] == test_set) & (fits["model"] == "loglinear"))
    if "init" in fits:
        mask &= fits["init"].astype(str) != "random"
    rows = fits[mask]
    return None if rows.empty else rows.iloc[0].to_dict()


def images_text(n: float) -> str:
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def caveats(headline: pd.DataFrame, fits: pd.DataFrame, results: pd.DataFrame) -> list[str]:
    """What this study does not show, one sentence each, from the headline and the fits."""
    out = []
    for _, row in headline.iterrows():
        where = f"{row['task']} ({row['mode']})"
        if row["verdict"] == "at floor":
            out.append(f"{where}: {row['metric']} stays near its floor; the budget is too small for this "
                       "task to tell the backbones apart.")
        elif row["verdict"] == "flat":
            out.append(f"{where}: the slope's interval includes zero; no trend is shown.")
        if row["_beats_random"] is False:
            out.append(f"{where}: the largest subset's backbone does not beat random init "
                       f"({row['largest']} vs {row['random init']}).")
        if str(row["_converged"]).lower() == "false":
            out.append(f"{where}: the largest subset's pretraining had not converged.")
    sizes = results["subset_images"].dropna().nunique()
    if sizes < 6:
        out.append(f"Saturation: {sizes} pretraining sizes fit only the log-linear curve; the power law "
                   "needs 6 (docs/uncertainty.md).")
    if not fits.empty and "min_backbones_per_size" in fits and (fits["min_backbones_per_size"] < 2).any():
        out.append("Pretraining variance: some sizes have a single pretraining run, so their intervals "
                   "are wide; more pretraining seeds would narrow them.")
    if "cleaned" not in set(results["test_set"].astype(str)):
        out.append("No de-duplicated test sets: how much near-duplicates of pretraining images inflate "
                   "the scores is not measured.")
    return out
