"""``datascale results compare``: one study's headline next to another's (world seeds, configs).

A finding of one synthetic world (or one sample of a lab's data) may be that
world's luck. Run the same study on several world seeds, then::

    datascale results compare study-findings /work/runs/findings-w1 /work/runs/findings-w2 \\
        --names "world 0,world 1,world 2" --out docs/findings-worlds.md

Each folder is a study folder (holding ``results/``) or a results folder
(holding ``results.parquet`` and ``fits.csv``, all a kept copy needs, e.g.
``docs/measured/findings-world1``). Two tables come out:

- per study: each (task, mode)'s main metric at the largest subset against random
  init, the slope per 10x with its interval, the verdict and whether the largest
  subset's pretraining converged (:func:`analysis.headline.headline_values`);
- across studies: in how many the largest subset beats random init, the slope's
  interval is above zero and the largest run converged, and the mean slope with a
  t interval over the studies, which counts study-to-study (world-to-world) variance,
  the one the per-study intervals cannot see.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from datascale.errors import DataError
from analysis.headline import headline_values, images_text, slope_text


def results_folder(path: str | Path) -> Path:
    """The results folder of a study folder or of itself; DataError naming what is missing."""
    path = Path(path)
    for folder in (path / "results", path):
        if (folder / "results.parquet").is_file():
            return folder
    raise DataError(f"{path}: no results.parquet in it or in {path / 'results'}; run the study (or "
                    "`datascale results collect` and `datascale fit`) there first")


def compare_values(folders: Sequence[str | Path], names: Sequence[str] | None = None,
                   test_set: str = "original") -> pd.DataFrame:
    """headline_values of every study, with a ``study`` column (``names`` or the folder names)."""
    from analysis.results import read_results

    if names is not None and len(names) != len(folders):
        raise DataError(f"{len(names)} names for {len(folders)} studies: give one name per study")
    if names is not None and len(set(names)) != len(names):
        raise DataError(f"study names repeat in {list(names)}: give each study its own name")
    frames = []
    for i, folder in enumerate(folders):
        results_dir = results_folder(folder)
        values = headline_values(read_results(results_dir / "results.parquet"), _fits(results_dir), test_set)
        if values.empty:
            raise DataError(f"{results_dir}: no pretrained runs on the {test_set!r} test set to compare")
        study = names[i] if names is not None else _study_name(Path(folder), results_dir)
        frames.append(values.assign(study=study, test_set=test_set))
    studies = [frame["study"].iloc[0] for frame in frames]
    if len(set(studies)) != len(studies):
        raise DataError(f"two studies are both named {max(studies, key=studies.count)!r} (their folders' "
                        "names): pass --names to tell them apart")
    return pd.concat(frames, ignore_index=True)


def _fits(results_dir: Path) -> pd.DataFrame:
    """fits.csv alone (the headline needs no curve files, so a kept copy of a study's results can be
    just results.parquet and fits.csv)."""
    path = results_dir / "fits.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: run `datascale fit --results {results_dir / 'results.parquet'}` first")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a study with nothing fitted
        return pd.DataFrame()


def _study_name(folder: Path, results_dir: Path) -> str:
    return (results_dir.parent if results_dir.name == "results" else results_dir).resolve().name or str(folder)


def _is_true(value) -> bool:
    return str(value).lower() == "true"


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean; NaN bounds with fewer than 2 values."""
    from scipy import stats

    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def per_study_table(values: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, mode, study), the numbers formatted as in the report's headline."""
    rows = []
    for _, v in values.sort_values(["task", "mode"], kind="stable").iterrows():
        rows.append({
            "task": v["task"], "mode": v["mode"], "study": v["study"], "metric": v["metric"],
            "largest": f"{v['largest']:.3f} ({images_text(v['largest_images'])})",
            "random init": "not run" if math.isnan(v["random"]) else f"{v['random']:.3f}",
            f"slope per 10x [{int(round(100 * v['ci_level']))}% CI]":
                slope_text(v["slope"], v["slope_low"], v["slope_high"]),
            "verdict": v["verdict"],
            "largest converged": {True: "yes", False: "no"}.get(
                None if v["converged"] is None or pd.isna(v["converged"]) else _is_true(v["converged"]), "?"),
        })
    return pd.DataFrame(rows)


def summary_table(values: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (task, mode) over the studies: counts of what held, and the mean slope with
    its t interval over the studies."""
    rows = []
    for (task, mode), group in values.groupby(["task", "mode"], sort=True):
        n = len(group)
        fitted = int(group["slope"].notna().sum())
        mean, low, high = t_interval(group["slope"].tolist(), level)
        ran_random = group["beats_random"].notna()
        if fitted == 0:
            mean_text = "not fitted"
        elif fitted == 1:
            mean_text = f"{mean:+.3f} (one study)"
        else:
            mean_text = slope_text(mean, low, high) + ("" if fitted == n else f" ({fitted} of {n} fitted)")
        rows.append({
            "task": task, "mode": mode, "studies": n,
            "largest beats random": (f"{int(group['beats_random'].fillna(False).astype(bool).sum())}/"
                                     f"{int(ran_random.sum())}") if ran_random.any() else "no random init",
            "slope interval above 0": f"{int((group['slope_low'] > 0).sum())}/{n}",
            "largest converged": _converged_count(group["converged"]),
            "largest, range over studies": f"{group['largest'].min():.3f}-{group['largest'].max():.3f}",
            f"mean slope per 10x [{int(round(100 * level))}% CI over studies]": mean_text,
        })
    return pd.DataFrame(rows)


def _converged_count(values: pd.Series) -> str:
    """``k/N``, with how many studies did not record it (``(u unknown)``)."""
    unknown = int(values.map(lambda v: v is None or (not isinstance(v, str) and pd.isna(v))).sum())
    text = f"{int(values.map(_is_true).sum())}/{len(values)}"
    return text + (f" ({unknown} unknown)" if unknown else "")


def compare_markdown(values: pd.DataFrame) -> str:
    """Both tables as markdown, each under a heading, with what the counts mean."""
    from analysis.report import markdown_table

    studies = ", ".join(dict.fromkeys(values["study"].astype(str)))
    test_set = values["test_set"].iloc[0] if "test_set" in values else "original"
    return "\n".join([
        f"# Studies compared: {studies}\n",
        "## Across studies\n",
        "Counts are over the studies; the mean slope's interval is a Student-t interval over the "
        "studies' slopes, so it counts study-to-study variance (one slope per study).\n",
        markdown_table(summary_table(values)),
        "## Per study\n",
        f"Each study's headline on the {test_set!r} test set (its report.md), the "
        "largest subset's mean against random init.\n",
        markdown_table(per_study_table(values)),
    ]).rstrip("\n") + "\n"
