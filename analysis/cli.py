"""``datascale results collect``, ``datascale fit`` and ``datascale plot``.

All three work in one results folder (default ``results/``):

    results.parquet, excluded.csv, collect.yaml, collect.complete.json   results collect
    fits.csv, fit_curves.csv, fit_points.csv,
    fit_excluded.csv, fit.yaml, fit.complete.json                        fit
    plots/*.png|svg, report.md, plot.yaml, plot.complete.json            plot

Each ``*.yaml`` is the lineage record of the command that wrote the files
beside it (datascale.lineage.config_record), each ``*.complete.json`` its
completion marker. ``fit`` and ``plot`` skip work that is up to date for the
same config and input hashes (datascale.lineage.is_up_to_date), unless
``--force``; ``collect`` always re-reads the run folders (it is cheap). pandas, scipy and matplotlib are imported inside the command
functions so that ``datascale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from analysis.config import MODEL_CHOICE_RULE, FitConfig, PlotConfig
from datascale.atomic import write_text
from datascale.cli import add_config_args, add_shortcut, config_from_args, subcommand
from datascale.lineage import COMPLETE_FILE, config_record, is_up_to_date, mark_complete, write_record

DEFAULT_TABLE = "results/results.parquet"


def register_cli(subparsers) -> None:
    """Add ``results collect``, ``fit`` and ``plot`` to the datascale parser."""
    results = subcommand(subparsers, "results", None, help="collect run folders into results.parquet",
                         description="Work with the results table. Actions: collect, compare.")
    results.set_defaults(func=lambda args: _print_help(results))
    actions = results.add_subparsers(dest="action", metavar="ACTION")
    collect = subcommand(actions, "collect", run_collect, help="run folders -> results.parquet + excluded.csv",
                         description="Walk RUNS_DIR recursively for run folders (config.yaml with stage "
                                     "pretrain or finetune) and write one row per run, test set and metric. "
                                     "Unfinished, failed or unreadable runs are listed in excluded.csv.")
    collect.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="folder(s) holding run folders")
    collect.add_argument("--out", default=DEFAULT_TABLE, help="the results table to write")
    collect.add_argument("--merge", action="store_true",
                         help="keep rows of runs not under RUNS_DIR already in the table (locked, deduplicated)")

    compare = subcommand(actions, "compare", run_compare, help="studies side by side (e.g. world seeds)",
                         description="Put the headlines of several studies side by side: per (task, mode), "
                                     "in how many the largest subset beats random init, the slope's interval "
                                     "is above zero and the largest run converged, and the mean slope per 10x "
                                     "with a t interval over the studies (study-to-study variance). Each "
                                     "STUDY is a study folder or its results folder, after `datascale fit`.")
    compare.add_argument("studies", nargs="+", metavar="STUDY", help="study or results folders")
    compare.add_argument("--names", help="comma-separated names for the studies (default: folder names)")
    compare.add_argument("--test-set", default="original", help="which test set's metrics (default: original)")
    compare.add_argument("--out", help="also write the markdown tables to this file")

    fit = subcommand(subparsers, "fit", run_fit, help="scaling-curve fits with intervals over pretraining runs",
                     description="Fit metric against pretraining images per curve (task, metric, test set, "
                                 "mode, arch, init): log-linear and saturating power law; writes fits.csv "
                                 "and friends.\n\n" + MODEL_CHOICE_RULE)
    _table_args(fit)
    add_shortcut(fit, "--predict", key="predict_images", type=float, metavar="IMAGES",
                 help="extrapolate each curve to IMAGES (e.g. 1e9)")
    add_shortcut(fit, "--target", key="target", type=float, metavar="VALUE",
                 help="pretraining images needed to reach VALUE")
    add_config_args(fit, None, FitConfig)

    plot = subcommand(subparsers, "plot", run_plot, help="figures and results/report.md",
                      description="Draw metric against pretraining images with the fitted curves "
                                  "(PNG/SVG in OUT/plots/) and write OUT/report.md.")
    _table_args(plot)
    plot.add_argument("--reference", metavar="CSV",
                      help="points to overlay: columns task, metric, mode, subset_images, value, label")
    add_config_args(plot, None, PlotConfig)


def _table_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=DEFAULT_TABLE,
                        help="results table from `datascale results collect`, or any .csv/.parquet with at least "
                             "task, metric, subset_images, value (optional: seed, arch, mode, init, test_set, "
                             "pretrain_run, ...)")
    parser.add_argument("--out", default=None, help="output folder (default: the results table's folder)")
    add_shortcut(parser, "--where", key="where", repeat=True, metavar="COLUMN=VALUE",
                 help="only rows with COLUMN=VALUE (repeatable), e.g. --where task=detection")


def _progress() -> bool:
    """Progress bars unless the user asked for quiet (-q sets logging to WARNING)."""
    return logging.getLogger().isEnabledFor(logging.INFO)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_collect(args: argparse.Namespace) -> int:
    """``datascale results collect``: prints the counts and every exclusion with its reason."""
    from analysis.results import EXCLUDED_FILE, collect_runs, write_results

    collection = collect_runs(args.runs_dirs, progress=_progress())
    table, excluded = write_results(collection, args.out, roots=args.runs_dirs, merge=args.merge)
    out = Path(args.out)
    mark_complete(out.parent, {"rows": len(table), "excluded": len(excluded)}, marker=f"collect.{COMPLETE_FILE}")
    print(f"{len(collection.rows)} rows from {collection.runs_seen - _excluded_runs(collection)} runs "
          f"({collection.runs_seen} run folders read); table now {len(table)} rows -> {out}")
    if collection.excluded:
        print(f"excluded {len(collection.excluded)} (run or metric) -> {out.parent / EXCLUDED_FILE}:")
        for item in collection.excluded:
            where = "/".join(p for p in (item["test_set"], item["metric"]) if p)
            print(f"  {item['run_dir']}{' [' + where + ']' if where else ''}: {item['reason']}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``datascale results compare``: prints both tables (and writes them to --out)."""
    from analysis.compare import compare_markdown, compare_values

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    text = compare_markdown(compare_values(args.studies, names, args.test_set))
    print(text, end="")
    if args.out:
        write_text(Path(args.out), text)
    return 0


def _excluded_runs(collection) -> int:
    return len({e["run_dir"] for e in collection.excluded if not e["metric"] and not e["test_set"]})


def _up_to_date(out_dir: Path, stage: str, record: dict, outputs: list[Path], force: bool) -> bool:
    """The shared lineage check, with this stage's record file and marker in the results folder."""
    return not force and is_up_to_date(out_dir, record, record_file=f"{stage}.yaml",
                                       marker=f"{stage}.{COMPLETE_FILE}", outputs=outputs)


def _finish(out_dir: Path, stage: str, record: dict, summary: dict) -> None:
    write_record(out_dir / f"{stage}.yaml", record)
    mark_complete(out_dir, summary, marker=f"{stage}.{COMPLETE_FILE}")


def run_fit(args: argparse.Namespace) -> int:
    """``datascale fit``: writes the fit files and prints the fits and exclusions."""
    from analysis.fit import FIT_FILES, fit_table, read_fits, write_fits
    from analysis.report import fits_summary, text_table
    from analysis.results import read_results

    config = config_from_args(FitConfig, args)
    out_dir = Path(args.out) if args.out else Path(args.results).parent
    results = read_results(args.results)  # a clear message for a missing table, before hashing it
    record = config_record("fit", config, inputs={"results": args.results})
    if _up_to_date(out_dir, "fit", record, [out_dir / f for f in FIT_FILES.values()], args.force):
        print(f"fits in {out_dir} are up to date with {args.results} (pass --force to refit)")
        output = read_fits(out_dir)
    else:
        output = fit_table(results, config, progress=_progress())
        write_fits(output, out_dir)
        _finish(out_dir, "fit", record, {"curves": int(output.fits["chosen"].sum()) if len(output.fits) else 0})
    print(text_table(fits_summary(output.fits)))
    if not output.excluded.empty:
        print(f"\nnot fitted ({len(output.excluded)}):")
        print(text_table(output.excluded))
    print(f"\nwrote {', '.join(FIT_FILES.values())} -> {out_dir}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """``datascale plot``: figures into OUT/plots/ and OUT/report.md."""
    from analysis.fit import FIT_FILES, read_fits
    from analysis.axes import varied_axes
    from analysis.plots import plot_axis, plot_headline, plot_scaling, read_reference
    from analysis.report import PLOTS_DIR, write_report
    from analysis.selftrain import plot_selftrain
    from analysis.results import read_results, select

    config = config_from_args(PlotConfig, args)
    out_dir = Path(args.out) if args.out else Path(args.results).parent
    inputs = {"results": args.results, **{name: out_dir / f for name, f in FIT_FILES.items()}}
    if args.reference:
        inputs["reference"] = args.reference
    results = read_results(args.results)  # clear errors for missing inputs, before hashing them
    fits = read_fits(out_dir)
    record = config_record("plot", config, inputs=inputs)
    figures = sorted((out_dir / PLOTS_DIR).glob("*.png"))
    if _up_to_date(out_dir, "plot", record, figures + [out_dir / "report.md"], args.force) and figures:
        print(f"plots in {out_dir / PLOTS_DIR} are up to date (pass --force to redraw)")
        return 0
    reference = read_reference(args.reference) if args.reference else None
    written = plot_scaling(results, fits, out_dir / PLOTS_DIR, config, reference)
    selected = select(results, config.where)
    written += plot_headline(selected, out_dir / PLOTS_DIR, config)
    for axis in varied_axes(selected):
        written += plot_axis(selected, axis, out_dir / PLOTS_DIR, config)
    written += plot_selftrain(selected, out_dir / PLOTS_DIR, config)
    report = write_report(out_dir, figures=[p for p in written if p.suffix == ".png"])
    _finish(out_dir, "plot", record, {"figures": len(written)})
    print(f"wrote {len(written)} figure files -> {out_dir / PLOTS_DIR}")
    print(f"wrote {report}")
    return 0
