"""Scaling-curve figures: metric against pretraining images on a log axis.

One figure per test set and architecture (and any other curve key that is not
task, metric or mode); one panel per (task, metric); one colour per mode
(frozen / fine-tuned). Each panel shows the mean over seeds with error bars
(one standard deviation), the fitted curve with its confidence band, the
slope per 10x data in the legend, random-init baselines as dotted lines and
optional reference points (e.g. published values) as stars.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas, never
through pyplot, so plotting leaves no global state behind (safe in notebooks,
threads and tests) and needs no display.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.config import PLOT_FORMATS, PlotConfig
from analysis.fit import FitOutput
from analysis.headline import images_text, main_metrics, main_setting
from analysis.report import fit_keys
from analysis.results import select
from datascale.atomic import atomic_path
from datascale.errors import DataError

log = logging.getLogger(__name__)

REFERENCE_COLUMNS = ("task", "metric", "mode", "subset_images", "value", "label")
PANEL_KEYS = ["task", "metric"]


def read_reference(path: str | Path) -> pd.DataFrame:
    """Reference points (columns task, metric, mode, subset_images, value, label); DataError if unusable."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, comment="#")
    except FileNotFoundError:
        raise DataError(f"reference file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {', '.join(missing)} (expected {', '.join(REFERENCE_COLUMNS)})")
    numeric = frame[["subset_images", "value"]].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1) | (numeric["subset_images"] <= 0)
    if bad.any():
        raise DataError(f"{path}: rows {', '.join(str(i + 2) for i in np.flatnonzero(bad))} need a "
                        "positive subset_images and a numeric value")
    frame[["subset_images", "value"]] = numeric
    return frame


def slope_label(fit: pd.Series) -> str:
    """Legend text for one curve, e.g. 'finetune: +0.031 AP per 10x [0.029, 0.033]'."""
    text = f"{fit['mode']}"
    if "slope_per_10x" in fit and not pd.isna(fit["slope_per_10x"]):
        text += (f": {fit['slope_per_10x']:+.3g} {fit['metric']} per 10x "
                 f"[{fit['slope_per_10x_low']:.3g}, {fit['slope_per_10x_high']:.3g}]")
    if fit["model"] != "loglinear":
        text += f"; {fit['model']} curve"
    return text


def _curve_rows(fits: FitOutput, curve: str) -> pd.DataFrame:
    """The fits whose curve is drawn, with the loglinear slope columns joined in for the legend."""
    frame = fits.fits
    if frame.empty:
        return frame
    keys = fit_keys(frame)
    drawn = frame[frame["chosen"].astype(bool)] if curve == "chosen" else frame[frame["model"] == curve]
    slopes = frame[frame["model"] == "loglinear"][keys + ["slope_per_10x", "slope_per_10x_low",
                                                          "slope_per_10x_high"]]
    drawn = drawn.drop(columns=[c for c in slopes.columns if c not in keys and c in drawn.columns])
    return drawn.merge(slopes, on=keys, how="left")


def _matches(frame: pd.DataFrame, key: dict) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in key.items():
        column_values = frame[column]
        mask &= column_values.isna() if pd.isna(value) else (column_values.astype(str) == str(value))
    return mask


def _draw_panel(ax, points: pd.DataFrame, drawn: pd.DataFrame, curves: pd.DataFrame,
                baselines: pd.DataFrame, reference: pd.DataFrame, palette: dict) -> list:
    """Points with error bars, fitted curves and bands, baselines and references on one axis."""
    handles = []
    if not points.empty:
        sns.lineplot(data=points, x="subset_images", y="value", hue="mode", palette=palette,
                     errorbar="sd", err_style="bars", marker="o", linestyle="", ax=ax, legend=False,
                     err_kws={"capsize": 3})
    for _, fit in drawn.iterrows():
        color = palette.get(fit["mode"], "0.3")
        curve = curves[_matches(curves, {k: fit[k] for k in fit_keys(drawn)}) & (curves["model"] == fit["model"])]
        measured = curve["subset_images"] <= fit["max_images"] * (1 + 1e-9)
        ax.plot(curve["subset_images"][measured], curve["fitted"][measured], color=color, linewidth=1.6)
        # Beyond the largest measured size the curve is an extrapolation: dashed.
        ax.plot(curve["subset_images"][~measured], curve["fitted"][~measured], color=color, linewidth=1.6,
                linestyle="--")
        ax.fill_between(curve["subset_images"], curve["band_low"], curve["band_high"], color=color, alpha=0.18,
                        linewidth=0)
        handles.append(Line2D([], [], color=color, marker="o", label=slope_label(fit)))
    for mode in sorted(set(points["mode"].dropna()) - set(drawn["mode"] if not drawn.empty else [])):
        handles.append(Line2D([], [], color=palette.get(mode, "0.3"), marker="o", linestyle="",
                              label=f"{mode} (no fit)"))
    for mode, rows in baselines.groupby("mode"):
        color = palette.get(mode, "0.3")
        ax.axhline(rows["value"].mean(), color=color, linestyle=":", linewidth=1.2)
        handles.append(Line2D([], [], color=color, linestyle=":", label=f"{mode}: random init"))
    for label, rows in reference.groupby("label"):
        colors = [palette.get(m, "0.2") for m in rows["mode"]]
        ax.scatter(rows["subset_images"], rows["value"], marker="*", s=140, c=colors, edgecolors="black",
                   linewidths=0.7, zorder=5)
        handles.append(Line2D([], [], color="0.4", marker="*", markeredgecolor="black", markersize=11,
                              linestyle="", label=str(label)))
    ax.set_xscale("log")
    # Minor ticks of a short log range label every 2x..9x and overlap: keep their marks only.
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining images")
    return handles


def _file_stem(key: dict) -> str:
    text = "_".join(str(v) for v in key.values() if not pd.isna(v))
    return "scaling_" + (re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "all")


def plot_scaling(results: pd.DataFrame, fits: FitOutput, out_dir: str | Path,
                 config: PlotConfig | None = None, reference: pd.DataFrame | None = None) -> list[Path]:
    """Draw and save every figure (one per figure key, see module docstring); returns the files.

    Reference points are overlaid on the panels of their (task, metric); a
    point that matches no panel is logged and counted, not dropped silently.
    Time: about a second per figure; memory: one figure at a time.
    """
    config = config or PlotConfig()
    results = select(results, config.where)
    out_dir = Path(out_dir)
    keys = fit_keys(fits.fits) if not fits.fits.empty else ["task", "metric", "test_set", "mode", "arch", "init"]
    figure_keys = [k for k in keys if k not in PANEL_KEYS + ["mode"]]
    sized = results["subset_images"].notna() & (results["subset_images"].fillna(0) > 0)
    drawn = _curve_rows(fits, config.curve)
    modes = sorted(results["mode"].dropna().astype(str).unique())
    palette = dict(zip(modes, sns.color_palette("colorblind", len(modes))))
    reference = reference if reference is not None else pd.DataFrame(columns=list(REFERENCE_COLUMNS))
    used_reference: set = set()
    written = []
    for figure_values, points in results[sized].groupby(figure_keys, dropna=False, sort=True):
        figure_key = dict(zip(figure_keys, figure_values))
        baselines = results[~sized & _matches(results, {k: v for k, v in figure_key.items() if k != "init"})]
        figure = _figure(points, figure_key, drawn, fits.curves, baselines, reference, palette, config,
                         used_reference)
        written += _save(figure, out_dir / _file_stem(figure_key), config)
    # Figures of an earlier call whose curves are gone would otherwise look current.
    for stale in set(out_dir.glob("scaling_*.*")) - set(written):
        if stale.suffix.lstrip(".") in PLOT_FORMATS:
            stale.unlink()
    unused = len(reference) - len(used_reference)
    if unused:
        log.warning("%d reference point(s) match no panel (task, metric) and were not drawn", unused)
    return written


def _figure(points, figure_key, drawn, curves, baselines, reference, palette, config, used_reference) -> Figure:
    panels = points.groupby(PANEL_KEYS, sort=True)
    columns = min(config.columns, panels.ngroups)
    rows = math.ceil(panels.ngroups / columns)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        figure = Figure(figsize=(config.panel_width * columns, (config.panel_height + 0.9) * rows + 0.4),
                        layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax, ((task, metric), panel_points) in zip(axes, panels):
            panel = {"task": task, "metric": metric}
            ref = reference[_matches(reference, panel)]
            used_reference.update(ref.index)
            panel_fits = drawn[_matches(drawn, {**figure_key, **panel})] if not drawn.empty else drawn
            handles = _draw_panel(ax, panel_points, panel_fits, curves,
                                  baselines[_matches(baselines, panel)], ref, palette)
            ax.set_title(f"{task}: {metric}")
            ax.set_ylabel(metric)
            if handles:  # below the panel, so it never hides points
                ax.legend(handles=handles, fontsize="small", loc="upper center",
                          bbox_to_anchor=(0.5, -0.2), frameon=False)
        for ax in axes[panels.ngroups:]:
            ax.set_visible(False)
        figure.suptitle(", ".join(f"{k}={v}" for k, v in figure_key.items() if not pd.isna(v)))
    return figure


def _save(figure: Figure, stem: Path, config: PlotConfig) -> list[Path]:
    paths = []
    for fmt in config.formats:
        path = stem.with_suffix(f".{fmt}")
        # No creation date in SVG/PDF metadata: the same data gives the same file.
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None
        # svg.fonttype none keeps text as text: smaller, editable and searchable SVG.
        with atomic_path(path) as tmp, matplotlib.rc_context({"svg.fonttype": "none"}):
            figure.savefig(tmp, format=fmt, dpi=config.dpi, metadata=metadata)
        paths.append(path)
    return paths


def plot_headline(results: pd.DataFrame, out_dir: str | Path, config: PlotConfig | None = None) -> list[Path]:
    """``headline.png|svg``: every task's main metric in one figure, one panel per task.

    One colour per mode; the original test set solid with filled markers, the
    cleaned one dashed with open markers; random init dotted. Ticks sit at
    the subset sizes and a bounded metric's axis stays in its range.
    """
    config = config or PlotConfig()
    metrics = main_metrics(results)
    main = main_setting(results[results["metric"] == results["task"].astype(str).map(metrics)])
    tasks = sorted(t for t in metrics if main[main["task"] == t]["subset_images"].notna().any())
    if not tasks:
        return []
    modes = sorted(main["mode"].dropna().astype(str).unique())
    palette = dict(zip(modes, sns.color_palette("colorblind", len(modes))))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        figure = Figure(figsize=(config.panel_width * len(tasks), config.panel_height + 0.8), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, len(tasks), squeeze=False).ravel()
        for ax, task in zip(axes, tasks):
            _headline_panel(ax, main[main["task"] == task], palette)
            ax.set_title(f"{task}: {metrics[task]}")
            ax.set_ylabel(metrics[task])
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=max(1, len(labels)), frameon=False)
        figure.suptitle("What more pretraining data buys (mean over runs; dotted: random init)")
    return _save(figure, Path(out_dir) / "headline", config)


def _headline_panel(ax, rows: pd.DataFrame, palette: dict) -> None:
    sized = rows[rows["subset_images"].notna()]
    for (mode, test_set), group in sized.groupby(["mode", "test_set"]):
        if test_set not in ("original", "cleaned"):
            continue
        means = group.groupby("subset_images")["value"].mean()
        original = test_set == "original"
        ax.plot(means.index.astype(float), means.values, color=palette[mode], marker="o",
                linestyle="-" if original else "--", markerfacecolor=palette[mode] if original else "white",
                label=f"{mode}, {test_set}")
    for mode, group in rows[rows["subset_images"].isna() & (rows["test_set"] == "original")].groupby("mode"):
        ax.axhline(group["value"].mean(), color=palette[mode], linestyle=":", linewidth=1.2)
    _size_axis(ax, rows)


def plot_axis(results: pd.DataFrame, axis: str, out_dir: str | Path, config: PlotConfig | None = None) -> list[Path]:
    """``axis_AXIS.png|svg``: the main metric per task and mode against data, one line per axis
    value (curves per architecture on one panel, as the paper's Fig. 5)."""
    config = config or PlotConfig()
    metrics = main_metrics(results)
    main = results[(results["metric"] == results["task"].astype(str).map(metrics))
                   & (results["test_set"] == "original") & results["subset_images"].notna()]
    panels = sorted({(str(t), str(m)) for t, m in zip(main["task"], main["mode"])})
    if not panels:
        return []
    values = sorted(main[axis].astype(str).unique())
    palette = dict(zip(values, sns.color_palette("colorblind", len(values))))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        figure = Figure(figsize=(config.panel_width * len(panels), config.panel_height + 0.8), layout="constrained")
        FigureCanvasAgg(figure)
        for ax, (task, mode) in zip(figure.subplots(1, len(panels), squeeze=False).ravel(), panels):
            rows = main[(main["task"].astype(str) == task) & (main["mode"].astype(str) == mode)]
            for value, group in rows.groupby(rows[axis].astype(str)):
                means = group.groupby("subset_images")["value"].mean()
                ax.plot(means.index.astype(float), means.values, marker="o", color=palette[value], label=value)
            _size_axis(ax, rows)
            ax.set_title(f"{task} ({mode}): {metrics[task]}")
        handles, labels = figure.axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, title=axis)
    return _save(figure, Path(out_dir) / f"axis_{axis}", config)


def _size_axis(ax, rows: pd.DataFrame) -> None:
    """Log x axis with ticks at the subset sizes; a bounded metric's y axis kept in its range."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    sizes = sorted(rows["subset_images"].dropna().astype(float).unique())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: images_text(x)))
    ax.set_xlabel("pretraining images")
    high = float(rows["value"].max()) if len(rows) else 1.0
    bound = 1.0 if high <= 1 else (100.0 if high <= 100 else None)
    if bound is not None:
        ax.set_ylim(0, min(bound, high * 1.15 + 0.01 * bound))
