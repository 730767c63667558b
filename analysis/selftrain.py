"""Self-training against pretraining, in the form of Zoph et al. 2020 (their Tables 1-3).

The question: does pretraining's benefit fade as the labelled data and the
augmentation grow, and does self-training help where pretraining does not?
For each task, fine-tune mode only (Zoph et al. fine-tune every layer), the
main metric on the original test set at each labelled fraction and
augmentation level, one column per init: random, pretrained on the largest
subset, and self-training (``init`` ``selftrain``: a random-init teacher's
student). The figure ``plots/selftrain.png`` draws the same numbers: metric
against labelled fraction, one line per init, one panel per task and
augmentation level. The section appears when a study ran self-training or
varied the labelled fraction or the augmentation.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.headline import main_metrics, main_setting

INIT_ORDER = ("random", "pretrained", "selftrain")


def applies(results: pd.DataFrame) -> bool:
    """True when the table holds what the section compares."""
    varied = any(c in results and results[c].nunique(dropna=True) > 1 for c in ("augment", "labelled_fraction"))
    return varied or ("init" in results and (results["init"].astype(str) == "selftrain").any())


def comparison_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Main-metric rows of the comparison with a readable ``init`` label, fine-tune mode,
    original test set; pretrained rows are the largest subset's of the main setting."""
    metrics = main_metrics(results)
    rows = results[(results["metric"] == results["task"].astype(str).map(metrics))
                   & (results["test_set"] == "original") & (results["mode"].astype(str) == "finetune")]
    rows = main_setting(rows, vary=("augment", "labelled_fraction"))
    keep = []
    for task, group in rows.groupby("task"):
        pretrained = group[group["subset_images"].notna()]
        if len(pretrained):
            largest = pretrained["subset_images"].max()
            keep.append(pretrained[pretrained["subset_images"] == largest]
                        .assign(label=f"pretrained ({int(largest):,} images)", order=1))
        for order, init in ((0, "random"), (2, "selftrain")):
            chosen = group[group["subset_images"].isna() & (group["init"].astype(str) == init)]
            keep.append(chosen.assign(label=init, order=order))
    out = pd.concat(keep) if keep else rows.iloc[:0].assign(label="", order=0)
    for column, default in (("augment", "flip"), ("labelled_fraction", 1.0)):
        if column not in out:
            out[column] = default
    return out.assign(augment=out["augment"].astype(str),
                      labelled_fraction=pd.to_numeric(out["labelled_fraction"]).fillna(1.0))


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """task, augment, labelled fraction, then one 'mean ± half-range (n)' column per init."""
    rows = comparison_rows(results)
    if rows.empty:
        return pd.DataFrame()
    labels = list(dict.fromkeys(rows.sort_values("order")["label"]))
    out = []
    for (task, augment, fraction), group in rows.groupby(["task", "augment", "labelled_fraction"]):
        line = {"task": task, "augment": augment, "labelled fraction": f"{fraction:g}"}
        for label in labels:
            values = group[group["label"] == label]["value"]
            line[label] = (f"{values.mean():.3f} ± {(values.max() - values.min()) / 2:.3f} ({len(values)})"
                           if len(values) else "not run")
        out.append(line)
    return pd.DataFrame(out)


def section(results: pd.DataFrame, table) -> list[str]:
    """The report's markdown section (``table`` formats a DataFrame), or nothing."""
    if not applies(results):
        return []
    frame = comparison_table(results)
    if frame.empty:
        return []
    return ["## Self-training and pretraining (Zoph et al. 2020)\n",
            "Main metric, fine-tune mode, original test set: mean ± half the range over fine-tuning "
            "seeds (runs). Pretraining helps where its column beats random init; Zoph et al. found the "
            "gap closing as the labelled fraction and the augmentation grow, and self-training "
            "helping at every size.\n", table(frame), "![self-training](plots/selftrain.png)\n"]


def plot_selftrain(results: pd.DataFrame, out_dir: str | Path, config) -> list[Path]:
    """``selftrain.png|svg``: metric against labelled fraction, a line per init, a panel per
    task and augmentation level."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from analysis.plots import _save

    if not applies(results):
        return []
    rows = comparison_rows(results)
    if rows.empty:
        return []
    metrics = main_metrics(results)
    panels = sorted({(str(t), str(a)) for t, a in zip(rows["task"], rows["augment"])})
    labels = list(dict.fromkeys(rows.sort_values("order")["label"]))
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        figure = Figure(figsize=(config.panel_width * len(panels), config.panel_height + 0.8), layout="constrained")
        FigureCanvasAgg(figure)
        for ax, (task, augment) in zip(figure.subplots(1, len(panels), squeeze=False).ravel(), panels):
            panel = rows[(rows["task"].astype(str) == task) & (rows["augment"] == augment)]
            for label in labels:
                means = panel[panel["label"] == label].groupby("labelled_fraction")["value"].mean()
                if len(means):
                    ax.plot(means.index, means.values, marker="o", color=palette[label], label=label)
            fractions = sorted(panel["labelled_fraction"].unique())
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.set_xlabel("labelled fraction of the training set")
            ax.set_ylim(0, min(1.0, float(panel["value"].max()) * 1.15 + 0.01))
            ax.set_title(f"{task}: {metrics[task]}, augment {augment}")
        handles, names = figure.axes[0].get_legend_handles_labels()
        figure.legend(handles, names, loc="outside lower center", ncol=max(1, len(names)), frameon=False)
    return _save(figure, Path(out_dir) / "selftrain", config)
