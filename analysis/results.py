"""Collect finished run folders into one tidy results table (``results.parquet``).

A run folder (docs/formats.md, "Run folders") holds ``config.yaml`` whose
``lineage:`` mapping names the run's place in the study, ``metrics.json`` with
``{"metrics": {TEST_SET: {METRIC: value}}}`` and ``complete.json`` when done.
Collection turns every (run, test set, metric) into one row. Runs that are in
progress, failed, unreadable or without lineage are never silently dropped:
each becomes a row of ``excluded.csv`` with the reason, and is printed.

Collection is cheap (two small files per run) and always re-reads the runs,
because runs finish between collections while the runs folder stays the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from datascale.atomic import atomic_path
from datascale.errors import DataError
from datascale.lineage import COMPLETE_FILE, CONFIG_FILE, config_record, write_record

log = logging.getLogger(__name__)

RUN_STAGES = ("pretrain", "finetune", "selftrain")
METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
EXCLUDED_FILE = "excluded.csv"
LINEAGE_FILE = "collect.yaml"

# Columns of results.parquet, in order (docs/formats.md, "Results").
TEXT_COLUMNS = ("task", "metric", "test_set", "mode", "arch", "init", "subset_name",
                "run_dir", "pretrain_run", "stage")
INT_COLUMNS = ("subset_images", "num_classes", "steps", "seed", "pretrain_seed")
# The study's axes besides size and architecture (scaling.study): each value its own curve.
AXIS_COLUMNS = ("budget", "classes", "init_from", "curriculum", "augment")
# The pretraining budget of the backbone (passes over its subset, mAP@100 still to gain, converged).
# labelled_fraction: the share of the labelled downstream training set used (data.labelled_fraction).
FLOAT_COLUMNS = ("pretrain_passes", "pretrain_map_gain", "labelled_fraction")
# is_primary: the metric the run's task names as its main one (complete.json "primary_metric").
BOOL_COLUMNS = ("pretrain_converged", "is_primary")
COLUMNS = ("task", "metric", "test_set", "value", "mode", "arch", "init", "subset_name",
           "subset_images", "num_classes", "steps", "seed", "run_dir", "pretrain_run", "stage",
           *FLOAT_COLUMNS, *BOOL_COLUMNS, *AXIS_COLUMNS, "pretrain_seed")
# Columns a table written before they existed may lack (filled with nulls on reading).
OPTIONAL_COLUMNS = FLOAT_COLUMNS + BOOL_COLUMNS + AXIS_COLUMNS + ("pretrain_seed",)
# The least a researcher's own table needs for `datascale fit`; the rest is filled (read_results).
MINIMAL_COLUMNS = ("task", "metric", "subset_images", "value")
FILLED = {"test_set": "original", "mode": "finetune", "arch": "unknown"}
EXCLUDED_COLUMNS = ("run_dir", "test_set", "metric", "reason")
ROW_KEY = ["run_dir", "test_set", "metric"]
# Without these a row cannot be placed on any curve; the rest may be null
# (a random-init run has no pretraining subset).
REQUIRED_LINEAGE = ("mode", "arch", "seed")


@dataclass
class Collection:
    """What one collection found: the rows, the exclusions and how many runs were read."""

    rows: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    runs_seen: int = 0

    def exclude(self, run_dir: Path | str, reason: str, test_set: str = "", metric: str = "") -> None:
        self.excluded.append({"run_dir": str(run_dir), "test_set": test_set,
                              "metric": metric, "reason": reason})


def find_run_dirs(roots: Iterable[str | Path]) -> Iterator[tuple[Path, dict | None, str]]:
    """Yield ``(folder, record, problem)`` for every candidate run folder under ``roots``.

    A candidate is a folder with ``config.yaml`` (``record`` is its parsed
    lineage record, or None with ``problem`` set when it cannot be read) or a
    folder with ``metrics.json`` but no ``config.yaml`` (a run without lineage).
    Folders of other stages (shards, subsets, dedup) are passed over. The walk
    reads directory listings only; memory is O(depth).
    """
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"runs folder not found: {root} (pass the folder that holds the run folders)")
        for folder, _dirs, files in os.walk(root):
            folder_path = Path(folder).resolve()
            if CONFIG_FILE in files:
                record, problem = _read_record(folder_path / CONFIG_FILE)
                if record is not None and record.get("stage") not in RUN_STAGES:
                    continue
                yield folder_path, record, problem
            elif METRICS_FILE in files:
                yield folder_path, None, f"{METRICS_FILE} without {CONFIG_FILE}: a run without lineage"


# libyaml's safe loader (same safety as yaml.safe_load) parses config.yaml files
# several times faster, which dominates collection time for thousands of runs.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_record(path: Path) -> tuple[dict | None, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            record = yaml.load(handle, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as exc:
        return None, f"{CONFIG_FILE} is not readable YAML: {str(exc).splitlines()[0]}"
    if not isinstance(record, dict):
        return None, f"{CONFIG_FILE} is not a mapping"
    return record, ""


def _read_json(path: Path) -> tuple[object, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), ""
    except FileNotFoundError:
        return None, f"{path.name} missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is not valid JSON: {exc}"


def _lineage_columns(record: dict) -> tuple[dict, str]:
    """The lineage columns of a run, or a problem description."""
    lineage = record.get("lineage")
    if not isinstance(lineage, dict):
        return {}, f"{CONFIG_FILE} has no 'lineage:' mapping (a run without lineage)"
    missing = [k for k in REQUIRED_LINEAGE if lineage.get(k) is None]
    if missing:
        return {}, f"lineage lacks {', '.join(missing)}"
    columns = {k: lineage.get(k) for k in TEXT_COLUMNS + INT_COLUMNS + OPTIONAL_COLUMNS if k in lineage}
    if columns.get("init_from") is not None:
        columns["init_from"] = str(columns["init_from"])
    for key in INT_COLUMNS:
        value = columns.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, float) and value.is_integer():
                columns[key] = int(value)
            else:
                return {}, f"lineage {key} must be an integer, got {value!r}"
    if columns.get("pretrain_run") is None:
        columns["pretrain_run"] = _backbone_id(lineage)
    columns["stage"] = record.get("stage")
    return columns, ""


def _backbone_id(lineage: dict) -> str | None:
    """The backbone a run was fine-tuned from when lineage names no ``pretrain_run``.

    ``datascale finetune`` records the weights it loaded (``backbone``, its
    ``backbone_sha256``); the hash identifies the pretraining run even when
    the file was copied, the path when no hash was kept. Random-init runs
    have neither: None. Fits average the runs of one backbone (analysis.fit).
    """
    digest = lineage.get("backbone_sha256")
    if digest:
        return f"sha256:{digest}"
    path = lineage.get("backbone")
    return str(path) if path else None


def read_run(run_dir: Path, record: dict | None, problem: str, out: Collection) -> None:
    """Append one run's rows (or its exclusion) to ``out``; reads two small files."""
    out.runs_seen += 1
    if record is None:
        out.exclude(run_dir, problem)
        return
    if (run_dir / FAILED_FILE).is_file():
        failure, _ = _read_json(run_dir / FAILED_FILE)
        error = failure.get("error") if isinstance(failure, dict) else None
        out.exclude(run_dir, f"failed: {error or 'see failed.json'}")
        return
    if not (run_dir / COMPLETE_FILE).is_file():
        out.exclude(run_dir, f"in progress or interrupted (no {COMPLETE_FILE})")
        return
    columns, problem = _lineage_columns(record)
    if problem:
        out.exclude(run_dir, problem)
        return
    metrics, problem = _read_json(run_dir / METRICS_FILE)
    if problem:
        out.exclude(run_dir, problem)
        return
    if not isinstance(metrics, dict) or not isinstance(metrics.get("metrics"), dict):
        out.exclude(run_dir, f"{METRICS_FILE} has no 'metrics' mapping of test sets")
        return
    task = columns.get("task") or metrics.get("task")
    if columns.get("task") and metrics.get("task") and columns["task"] != metrics["task"]:
        out.exclude(run_dir, f"task differs: lineage {columns['task']!r}, {METRICS_FILE} {metrics['task']!r}")
        return
    steps = columns.get("steps") if columns.get("steps") is not None else metrics.get("steps")
    base = {**columns, "task": task, "steps": steps, "run_dir": str(run_dir)}
    if base.get("stage") == "pretrain":
        if base.get("pretrain_run") is None:
            base["pretrain_run"] = str(run_dir)  # a pretraining run's own metrics: it is the backbone
        budget = metrics.get("budget") if isinstance(metrics.get("budget"), dict) else {}
        base.update({f"pretrain_{k}": budget.get(k) for k in ("passes", "map_gain", "converged")})
    complete, _ = _read_json(run_dir / COMPLETE_FILE)
    primary = complete.get("primary_metric") if isinstance(complete, dict) else None
    start = len(out.rows)
    _add_metric_rows(run_dir, metrics["metrics"], base, out)
    for row in out.rows[start:]:
        row["is_primary"] = None if primary is None else row["metric"] == primary


def _add_metric_rows(run_dir: Path, by_test_set: dict, base: dict, out: Collection) -> None:
    for test_set, values in by_test_set.items():
        if not isinstance(values, dict):
            out.exclude(run_dir, "test set entry is not a mapping of metrics", test_set=str(test_set))
            continue
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                out.exclude(run_dir, f"value {value!r} is not a finite number", str(test_set), str(metric))
                continue
            out.rows.append({**base, "test_set": str(test_set), "metric": str(metric),
                             "value": float(value)})


def collect_runs(roots: Iterable[str | Path], progress: bool = True) -> Collection:
    """Read every run folder under ``roots`` (recursively) into a :class:`Collection`.

    Raises DataError when a root is missing or holds no run folder at all.
    Time is linear in the number of folders; memory holds only the rows.
    """
    roots = [Path(r) for r in roots]
    out = Collection()
    # Overlapping roots (runs/ and runs/finetune/) must not read a run twice.
    candidates = list({path: (path, record, problem)
                       for path, record, problem in find_run_dirs(roots)}.values())
    if not candidates:
        raise DataError(
            f"no run folders under {', '.join(map(str, roots))}: a run folder holds "
            f"{CONFIG_FILE} with stage {' or '.join(RUN_STAGES)} (docs/formats.md)")
    for run_dir, record, problem in tqdm(candidates, desc="runs", unit="run", disable=not progress):
        read_run(run_dir, record, problem, out)
    return out


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with the documented columns and dtypes (nullable ints)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in INT_COLUMNS:
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    frame["value"] = frame["value"].astype("float64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in BOOL_COLUMNS:
        frame[column] = pd.array([None if v is None or v != v else bool(v) for v in frame[column]],
                                 dtype="boolean")
    for column in TEXT_COLUMNS + AXIS_COLUMNS:
        frame[column] = frame[column].astype("string")
    return frame


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results table: one written by :func:`write_results`, or any CSV/Parquet table with at
    least ``task, metric, subset_images, value`` (a researcher's own numbers), whose other columns
    are filled (:func:`complete_table`). DataError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results table not found: {path} (make it with `datascale results collect`)")
    try:
        frame = pd.read_csv(path, comment="#") if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow and pandas raise several types for a damaged file
        kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
        raise DataError(f"{path} is not a readable {kind} table: {exc}") from None
    if not all(c in frame.columns for c in COLUMNS if c not in OPTIONAL_COLUMNS):
        frame = complete_table(frame, path)
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            dtype = ("boolean" if column in BOOL_COLUMNS else "string" if column in AXIS_COLUMNS
                     else "Int64" if column in INT_COLUMNS else "Float64")
            frame[column] = pd.array([None] * len(frame), dtype=dtype)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {', '.join(missing)}; re-run `datascale results collect`")
    return frame


def complete_table(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A minimal table (task, metric, subset_images, value [, seed, arch, mode, init, test_set,
    pretrain_run, ...]) with every other column filled: test_set ``original``, mode ``finetune``,
    arch ``unknown``, init ``pretrained`` where subset_images > 0 else ``random``, run_dir the
    row (``FILE:row N``). Without ``pretrain_run`` the runs of one size count as one pretraining
    run (the cautious reading: wider intervals)."""
    missing = [c for c in MINIMAL_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {', '.join(missing)}: a results table needs at least "
                        f"{', '.join(MINIMAL_COLUMNS)} (one row per run and metric)")
    values = pd.to_numeric(frame["value"], errors="coerce")
    sizes = pd.to_numeric(frame["subset_images"], errors="coerce")
    bad = values.isna() & frame["value"].notna()
    if bad.any():
        raise DataError(f"{path}: rows {', '.join(str(i + 2) for i in np.flatnonzero(bad)[:10])} have a "
                        "value that is not a number")
    rows = frame.to_dict("records")
    for number, (row, size) in enumerate(zip(rows, sizes)):
        for column, default in FILLED.items():
            if pd.isna(row.get(column)):
                row[column] = default
        if pd.isna(row.get("init")):
            row["init"] = "pretrained" if size > 0 else "random"
        row["subset_images"] = None if pd.isna(size) or size <= 0 else int(size)
        row.setdefault("run_dir", f"{path.name}:row {number + 2}")
        row.setdefault("stage", "pretrain" if row["task"] == "pretrain" else "finetune")
        row["value"] = values.iloc[number]
    return to_frame([{k: (None if _missing(v) else v) for k, v in row.items()} for row in rows])


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


@contextlib.contextmanager
def _locked(table: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock beside ``table`` (concurrent collections queue here)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table.parent / f".{table.name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _merge(old: pd.DataFrame, new: pd.DataFrame, scanned: set[str]) -> pd.DataFrame:
    # What this collection read about a run replaces everything known about it
    # before, so a run that was re-started (and is now in progress) leaves the table.
    kept = old[~old["run_dir"].isin(scanned)]
    merged = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    return merged.drop_duplicates(subset=ROW_KEY, keep="last", ignore_index=True)


def write_results(collection: Collection, out: str | Path, roots: Iterable[str | Path] = (),
                  merge: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``results.parquet``, ``excluded.csv`` and the ``collect.yaml`` lineage record.

    Every write is atomic and the whole read-merge-write happens under an
    fcntl lock beside the table, so concurrent collections into one table
    never lose or duplicate rows. With ``merge`` the rows of runs not read
    this time are kept (rows are unique on run_dir, test_set, metric);
    otherwise the table holds exactly this collection. Returns the written
    (results, excluded) frames. Memory: the table in full (rows are small).
    """
    out = Path(out)
    new = to_frame(collection.rows)
    excluded = pd.DataFrame(collection.excluded, columns=list(EXCLUDED_COLUMNS))
    scanned = set(new["run_dir"].dropna()) | set(excluded["run_dir"])
    roots = [str(Path(r).resolve()) for r in roots]
    with _locked(out):
        excluded_path = out.parent / EXCLUDED_FILE
        if merge and out.is_file():
            new = _merge(read_results(out), new, scanned)
            if excluded_path.is_file():
                old = pd.read_csv(excluded_path, dtype=str, keep_default_na=False)
                excluded = pd.concat([old[~old["run_dir"].isin(scanned)], excluded], ignore_index=True)
            roots = sorted(set(roots) | set(_previous_roots(out.parent / LINEAGE_FILE)))
        new = to_frame(new.to_dict("records"))
        with atomic_path(out) as tmp:
            new.to_parquet(tmp, index=False)
        with atomic_path(excluded_path) as tmp:
            excluded.to_csv(tmp, index=False)
        record = config_record("results", {"runs_dirs": roots, "merge": merge},
                               extra={"rows": len(new), "runs": int(new["run_dir"].nunique()),
                                      "excluded": len(excluded), "table": str(out.resolve())})
        write_record(out.parent / LINEAGE_FILE, record)
    return new, excluded


def _previous_roots(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        record = yaml.safe_load(handle) or {}
    return list((record.get("config") or {}).get("runs_dirs") or [])


def select(frame: pd.DataFrame, where: Iterable[str]) -> pd.DataFrame:
    """Rows matching every ``COLUMN=VALUE`` filter (values compared as text).

    ``COLUMN=A|B`` matches either value. A filter naming no column, or filters
    that leave no row, raise DataError saying what is there, so a typo never
    yields an empty analysis.
    """
    for condition in where:
        column, sep, value = condition.partition("=")
        column = column.strip()
        if not sep or column not in frame.columns:
            raise DataError(f"--where expects COLUMN=VALUE with a column of the results table "
                            f"({', '.join(frame.columns)}); got {condition!r}")
        wanted = [v.strip() for v in value.split("|")]
        matched = frame[frame[column].astype(str).isin(wanted)]
        if matched.empty:
            present = ", ".join(sorted(frame[column].dropna().astype(str).unique())[:20])
            raise DataError(f"--where {condition}: no row has {column}={value.strip()!r}; present: {present}")
        frame = matched
    return frame
