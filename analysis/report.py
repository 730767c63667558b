"""results/report.md: the answer first (headline table and figure), then what is not shown, then details.

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

from analysis.axes import axis_sections
from analysis import selftrain as selftrain_report
from analysis.fit import read_fits
from analysis.headline import caveats, headline_table, main_metrics
from analysis.results import EXCLUDED_FILE, read_results
from datascale.atomic import atomic_path, write_text

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


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
    metrics = [c for c in table.columns if str(c).startswith("mAP@") and c != "mAP@100 still to gain"]
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
    """Write ``results_dir/report.md``, the answer first; returns its path.

    Order: the headline table (per task and mode: main metric at the smallest
    and largest size, random init, slope per 10x, verdict), the headline
    figure (``plots/headline.png``), what the study does not show, the
    pretraining budget, then links. Every fit, per-class and secondary metric
    and every curve not fitted goes to CSV files beside the report
    (``report_fits.csv``, ``report_metrics.csv``, ``fit_excluded.csv``), so the
    report stays short (~100 lines). Reads results.parquet and the fit files.
    """
    results_dir = Path(results_dir)
    results = read_results(results_dir / "results.parquet")
    fits = read_fits(results_dir)
    if figures is None:
        figures = sorted((results_dir / PLOTS_DIR).glob("*.png"))
    headline = headline_table(results, fits.fits)
    shown = headline[[c for c in headline.columns if not c.startswith("_")]] if not headline.empty else headline
    parts = [f"# {title}\n",
             f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from "
             f"{results['run_dir'].nunique()} runs ({len(results)} metric rows) in `results.parquet`.\n",
             "## Headline\n",
             "Each task's main metric on the original test set, mean over runs. Slope: log-linear fit "
             "per 10x pretraining images, interval over pretraining runs (docs/uncertainty.md). "
             "Verdict: `grows`/`falls` when the interval excludes 0, `at floor` when the metric stays "
             "under 2% of its range, else `flat`.\n",
             markdown_table(shown)]
    headline_png = results_dir / PLOTS_DIR / "headline.png"
    if headline_png.is_file():
        parts.append(f"![every task's main metric]({PLOTS_DIR}/headline.png)\n")
    notes = caveats(headline, fits.fits, results)
    parts += ["## What this study does not show\n", "\n".join(f"- {n}" for n in notes) + "\n" if notes
              else "Nothing flagged: every task grows with data, beats random init and converged.\n"]
    parts += axis_sections(results, fits.fits, markdown_table)
    parts += selftrain_report.section(results, markdown_table)
    parts += _budget_section(results, fits.fits)
    parts += _cleaned_section(results, results_dir)
    parts += _detail_files(results_dir, results, fits, figures)
    path = results_dir / REPORT_FILE
    write_text(path, "\n".join(parts))
    return path


def _cleaned_section(results: pd.DataFrame, results_dir: Path) -> list[str]:
    comparison = compare_test_sets(results)
    if comparison.empty:
        return []
    metrics = main_metrics(results)
    main = comparison[comparison["metric"] == comparison["task"].astype(str).map(metrics)]
    summary = (main.groupby(["task", "metric", "mode"], dropna=False)["cleaned - original"]
               .agg(["mean", "min", "max"]).reset_index())
    summary.columns = ["task", "metric", "mode", "cleaned - original (mean)", "min", "max"]
    with atomic_path(results_dir / "report_cleaned.csv") as tmp:
        comparison.to_csv(tmp, index=False)
    return ["## Original vs cleaned test sets\n",
            "`cleaned` drops test images with near-duplicates in the pretraining data (dedup audit); the "
            "difference over every backbone and size (each setting in `report_cleaned.csv`).\n",
            markdown_table(summary)]


def _detail_files(results_dir: Path, results: pd.DataFrame, fits, figures) -> list[str]:
    """Write the long tables as CSV files and list them with the other figures."""
    summary = fits_summary(fits.fits)
    with atomic_path(results_dir / "report_fits.csv") as tmp:
        summary.to_csv(tmp, index=False)
    metrics = main_metrics(results)
    detail = results[results["metric"] != results["task"].astype(str).map(metrics)]
    table = (detail.groupby(["task", "metric", "test_set", "mode", "init", "subset_images"], dropna=False)
             ["value"].agg(["mean", "std", "count"]).reset_index())
    with atomic_path(results_dir / "report_metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    others = [Path(f) for f in figures if Path(f).stem != "headline" and not Path(f).stem.startswith("axis_")]
    lines = ["## Details\n",
             f"- `report_fits.csv`: every curve and model ({len(summary)} rows: slopes, limits, AICc, "
             "lack of fit, notes); `fits.csv` has every number.",
             f"- `report_metrics.csv`: secondary and per-class metrics ({len(table)} rows).",
             f"- `fit_excluded.csv`: curves not fitted, with the reason ({len(fits.excluded)} rows), "
             "e.g. random-init baselines (no data sizes) and models that need more sizes."]
    excluded_path = results_dir / EXCLUDED_FILE
    if excluded_path.is_file():
        excluded = pd.read_csv(excluded_path, dtype=str, keep_default_na=False)
        lines.append(f"- `{EXCLUDED_FILE}`: runs or metrics left out of the table ({len(excluded)}).")
    for figure in others:
        relative = Path(figure).resolve().relative_to(results_dir.resolve()).as_posix()
        lines.append(f"- figure: [{Path(figure).stem}]({relative})")
    return ["\n".join(lines) + "\n"]
