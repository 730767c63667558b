"""One report section per study axis, drawn as the paper draws them (Sun et al. 2017, sec. 5.2).

* capacity (``arch``, Fig. 5) and budget (Tables 4-5): the slope per 10x data of
  each axis value side by side, per task and mode, with its interval (is the
  gain larger for a wider model, or for a longer schedule?);
* class count (``classes``, Table 6): paired values at equal image counts, the
  difference with a t interval over the pairs (does restricting the label
  space change what the images buy?);
* initialisation (``init_from``) and curriculum (``curriculum``, EfficientTrain++ or none):
  the same slope table (does the curriculum change what 10x data buys?).

An axis appears only when the study varied it. Figures: ``plots/axis_AXIS.png``.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from analysis.headline import main_metrics, main_setting, main_value

AXES = {"arch": "Model capacity", "budget": "Training budget", "classes": "Number of classes",
        "init_from": "Initialisation", "curriculum": "Pretraining curriculum"}


def varied_axes(results: pd.DataFrame) -> list[str]:
    """The axes with more than one value among pretrained runs."""
    sized = results[results["subset_images"].notna()]
    return [axis for axis in AXES if axis in sized and sized[axis].astype(str).nunique() > 1]


def slope_table(fits: pd.DataFrame, results: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Per task, mode and axis value: the log-linear slope per 10x of the main metric [interval]."""
    metrics = main_metrics(results)
    rows = fits[(fits["model"] == "loglinear") & (fits["test_set"] == "original")
                & (fits["metric"] == fits["task"].astype(str).map(metrics))]
    rows = main_setting(rows, vary=axis)
    if "init" in rows:
        rows = rows[rows["init"].astype(str) != "random"]
    out = []
    for _, row in rows.iterrows():
        level = int(round(100 * row["ci_level"]))
        out.append({"task": row["task"], "mode": row["mode"], axis: row.get(axis),
                    f"slope per 10x [{level}% CI]": f"{row['slope_per_10x']:+.3f} "
                    f"[{row['slope_per_10x_low']:+.3f}, {row['slope_per_10x_high']:+.3f}]",
                    "pretraining runs": int(row["n_backbones"])})
    return pd.DataFrame(out).sort_values(["task", "mode", axis]) if out else pd.DataFrame()


def paired_table(results: pd.DataFrame, axis: str = "classes") -> pd.DataFrame:
    """Each non-default value against the default at equal image counts: mean difference of the
    main metric over (size, seed) pairs with a 95% t interval."""
    metrics = main_metrics(results)
    main = main_setting(results[(results["test_set"] == "original") & results["subset_images"].notna()
                                & (results["metric"] == results["task"].astype(str).map(metrics))], vary=axis)
    default = main_value(main[axis], axis)
    out = []
    for (task, mode), group in main.groupby(["task", "mode"]):
        means = group.assign(value_key=group[axis].astype(str)).pivot_table(
            index=["subset_images", "seed"], columns="value_key", values="value", aggfunc="mean")
        for other in [c for c in means.columns if c != default]:
            diff = (means[other] - means[default]).dropna().to_numpy()
            if len(diff) < 2:
                continue
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
            out.append({"task": task, "mode": mode, "compared": f"{other} - {default}", "pairs": len(diff),
                        "mean difference [95% CI]": f"{diff.mean():+.3f} [{diff.mean() - half:+.3f}, "
                        f"{diff.mean() + half:+.3f}]",
                        "reads": "no clear change" if abs(diff.mean()) <= half else
                        ("higher" if diff.mean() > 0 else "lower")})
    return pd.DataFrame(out)


def axis_sections(results: pd.DataFrame, fits: pd.DataFrame, table) -> list[str]:
    """Markdown sections, one per varied axis (``table`` formats a DataFrame)."""
    parts = []
    for axis in varied_axes(results):
        parts += [f"## {AXES[axis]} (`{axis}`)\n"]
        if axis == "classes":
            parts += ["Values at equal image counts, paired by size and seed (Table 6 of the paper): "
                      "a difference whose interval contains 0 means the gain is from images, not labels.\n",
                      table(paired_table(results, axis))]
        parts += ["Slope per 10x pretraining images of each value (the paper's Fig. 5 / Tables 4-5 "
                  "question: does it buy more per 10x data?).\n", table(slope_table(fits, results, axis))]
        parts.append(f"![{axis}](plots/axis_{axis}.png)\n")
    return parts


