"""results/report.md: the fits, the figures and the test-set comparison, readable on its own.

:func:`write_report` reads what ``results collect``, ``fit`` and ``plot``
wrote into one results folder, so the study orchestrator can call it after
those stages. The table helpers here also format the fits for the terminal.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.fit import FIT_FILES, read_fits
from analysis.results import EXCLUDED_FILE, read_results
from datascale.atomic import write_text

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
MAX_LISTED = 50  # longer exclusion lists are cut, with the count of what was left out


def _number(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _interval(row: pd.Series, name: str) -> str:
    if name not in row or pd.isna(row[name]):
        return ""
    return f"{_number(row[name])} [{_number(row[f'{name}_low'])}, {_number(row[f'{name}_high'])}]"


def fit_keys(fits: pd.DataFrame) -> list[str]:
    """The curve-key columns of a fits table (every column before ``model``)."""
    return list(fits.columns[: list(fits.columns).index("model")])


def fits_summary(fits: pd.DataFrame) -> pd.DataFrame:
    """One readable row per curve and model: estimates with [low, high] intervals as text."""
    if fits.empty:
        return pd.DataFrame()
    keys = fit_keys(fits)
    rows = []
    for _, row in fits.iterrows():
        level = int(round(100 * row["ci_level"]))
        out = {k: "" if pd.isna(row[k]) else str(row[k]) for k in keys}
        out.update({"model": row["model"], "chosen": "yes" if row["chosen"] else "",
                    f"slope per 10x [{level}% CI]": _interval(row, "slope_per_10x"),
                    "limit (N→∞)": _interval(row, "limit"), "alpha": _interval(row, "alpha"),
                    "R²": _number(row["r2"]), "held-out err": _number(row["heldout_error"]),
                    "AICc": _number(row["aicc"], 4), "lack of fit p": _number(row["lack_of_fit_p"]),
                    "runs": int(row["n_runs"]), "pretraining runs": int(row["n_backbones"]),
                    "sizes": int(row["n_sizes"])})
        if "predicted" in row and not pd.isna(row["predicted"]):
            out[f"at {_number(row['predict_images'])} images"] = _interval(row, "predicted")
        if "images_for_target" in row and not pd.isna(row["target"]):
            needed = _interval(row, "images_for_target")
            if row["images_for_target"] < row["min_images"]:
                needed = f"below the smallest size ({_number(row['min_images'])})"
            out[f"images for {_number(row['target'])}"] = needed
        if isinstance(row.get("note"), str) and row["note"]:
            out["note"] = row["note"]
        rows.append(out)
    return pd.DataFrame(rows).fillna("")


def _replication_advice(fits: pd.DataFrame) -> list[str]:
    """A paragraph for curves resting on one pretraining run per size (or on unnamed backbones)."""
    if fits.empty or "min_backbones_per_size" not in fits:
        return []
    single = fits[(fits["model"] == fits["model"].iloc[0]) & (fits["min_backbones_per_size"] < 2)]
    if single.empty:
        return []
    return [f"**{len(single)} of {int((fits['model'] == fits['model'].iloc[0]).sum())} curves have a size with "
            "a single pretraining run.** Their intervals come from the scatter of a handful of "
            "backbone means about the curve (few degrees of freedom), so they are wide, and the "
            "shape of the curve cannot be tested against run-to-run noise there. More pretraining "
            "runs per size (two or more) would narrow the intervals and allow the lack-of-fit test.\n"]


def pretraining_budget(results: pd.DataFrame) -> pd.DataFrame:
    """One row per pretraining run: its subset, passes over it, mAP@100 (annotated classes and
    all levels) and whether it had converged (design rule 3: compute is a stated axis)."""
    if "stage" not in results or results.empty:
        return pd.DataFrame()
    rows = results[results["stage"] == "pretrain"]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index=["subset_images", "run_dir"], columns="metric", values="value",
                             aggfunc="first").reset_index()
    info = rows.drop_duplicates("run_dir").set_index("run_dir")
    table["passes"] = table["run_dir"].map(info["pretrain_passes"]).round(1)
    table["converged"] = table["run_dir"].map(
        info["pretrain_converged"].map(lambda v: "not recorded" if pd.isna(v) else ("yes" if v else "no")))
    table["mAP@100 still to gain"] = table["run_dir"].map(info["pretrain_map_gain"]).round(4)
    table["run"] = table["run_dir"].map(lambda p: Path(str(p)).name)
    metrics = [c for c in table.columns if str(c).startswith("mAP@")]
    return table[["run", "subset_images", "passes", *metrics, "converged", "mAP@100 still to gain"]] \
        .sort_values("subset_images")


def _budget_section(results: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    table = pretraining_budget(results)
    if table.empty:
        return []
    parts = ["## Pretraining budget\n",
             "Every subset trains for the same steps (the paper's subset study), so small subsets are "
             "seen many times. `mAP@100` averages the eval set's annotated (leaf) classes, "
             "`mAP@100_all_levels` every class after hierarchy closure. `converged`: 25% more steps at "
             "the rate of the last quarter would add under 2% of the final mAP@100.\n",
             markdown_table(table)]
    unfinished = (fits["largest_converged"].astype(str).str.lower() == "false") if "largest_converged" in fits \
        else pd.Series(False, index=fits.index)
    if unfinished.any():
        curves = fits[unfinished & fits["chosen"].astype(bool)]
        parts.append(f"**The largest subset's pretraining had not converged**: the top point of "
                     f"{len(curves)} chosen curve(s) measures an unfinished run, so their slopes "
                     "understate (or misstate) what the data buys. Train longer or say so.\n")
    return parts


def text_table(frame: pd.DataFrame) -> str:
    """A fixed-width table for the terminal."""
    return "(none)" if frame.empty else frame.to_string(index=False)


def markdown_table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); '|' in cells is escaped."""
    if frame.empty:
        return "_none_\n"
    shown = frame if max_rows is None else frame.head(max_rows)

    def cell(value) -> str:
        if pd.isna(value):
            return ""
        text = _number(value, 4) if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in shown.columns) + " |",
             "|" + "|".join("---" for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in shown.itertuples(index=False)]
    if max_rows is not None and len(frame) > max_rows:
        lines.append(f"\n_{len(frame) - max_rows} more rows not shown_")
    return "\n".join(lines) + "\n"


def compare_test_sets(results: pd.DataFrame) -> pd.DataFrame:
    """Mean metric over seeds on the original and the cleaned test set, side by side.

    Only settings measured on both appear; ``cleaned - original`` shows what
    the near-duplicates of pretraining images were worth.
    """
    both = results[results["test_set"].isin(["original", "cleaned"])]
    if both.empty or both["test_set"].nunique() < 2:
        return pd.DataFrame()
    keys = ["task", "metric", "mode", "arch", "init", "subset_images"]
    # groupby(dropna=False): random-init runs have no subset_images and must still appear.
    table = (both.groupby(keys + ["test_set"], dropna=False)["value"].mean()
             .unstack("test_set").dropna(subset=["original", "cleaned"]))
    if table.empty:
        return pd.DataFrame()
    table["cleaned - original"] = table["cleaned"] - table["original"]
    table = table.reset_index()
    table.columns.name = None
    return table[keys + ["original", "cleaned", "cleaned - original"]]


def write_report(results_dir: str | Path, figures: Sequence[str | Path] | None = None,
                 title: str = "Scaling results") -> Path:
    """Write ``results_dir/report.md`` from the files in ``results_dir``; returns its path.

    Reads results.parquet, fits.csv and fit_excluded.csv (from ``datascale
    fit``), excluded.csv (from collection, if present) and links the figures
    (default: every PNG in ``results_dir/plots``) by relative path, so the
    folder can be moved or published as a whole. Memory: the tables in full.
    """
    results_dir = Path(results_dir)
    results = read_results(results_dir / "results.parquet")
    fits = read_fits(results_dir)
    if figures is None:
        figures = sorted((results_dir / PLOTS_DIR).glob("*.png"))
    parts = [f"# {title}\n",
             f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from "
             f"{results['run_dir'].nunique()} runs ({len(results)} metric rows) in `results.parquet`.\n",
             "## Fits\n",
             "Log-linear: metric = a + b·log10(N), b is the gain per 10x pretraining images. "
             "Power law: error = c + k·N^-alpha, the limit is the metric at infinite data. "
             "Each pretraining run (backbone) is one point, the mean of the runs fine-tuned from it, "
             "and intervals are over pretraining runs, so they hold both pretraining and fine-tuning "
             "variance: t intervals for the log-linear fit, a bootstrap over backbones for the power "
             "law (docs/uncertainty.md). `chosen`: the simpler model unless the other is better both at "
             "predicting the largest size from the smaller ones (held-out err) and by AICc on the "
             "backbone means; the power law is fitted only on 6 or more sizes. `lack of fit p`: pure-error F test "
             "of the curve's shape, possible where a size has two or more pretraining runs.\n",
             markdown_table(fits_summary(fits.fits))]
    parts += _replication_advice(fits.fits)
    parts += _budget_section(results, fits.fits)
    if figures:
        parts.append("## Figures\n")
        for figure in figures:
            relative = Path(figure).resolve().relative_to(results_dir.resolve()).as_posix()
            parts.append(f"![{Path(figure).stem}]({relative})\n")
    comparison = compare_test_sets(results)
    if not comparison.empty:
        parts += ["## Original vs cleaned test sets\n",
                  "Mean over seeds; `cleaned` drops test images with near-duplicates in the "
                  "pretraining data (dedup audit).\n", markdown_table(comparison)]
    parts += ["## Curves not fitted\n", markdown_table(fits.excluded, MAX_LISTED)]
    excluded_path = results_dir / EXCLUDED_FILE
    if excluded_path.is_file():
        excluded = pd.read_csv(excluded_path, dtype=str, keep_default_na=False)
        if not excluded.empty:
            parts += [f"## Runs excluded from the table ({len(excluded)})\n", markdown_table(excluded, MAX_LISTED)]
    parts.append(f"Files: `results.parquet`, {', '.join(f'`{name}`' for name in FIT_FILES.values())}.\n")
    path = results_dir / REPORT_FILE
    write_text(path, "\n".join(parts))
    return path
