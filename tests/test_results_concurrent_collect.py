"""Concurrent collections into one table never lose or duplicate rows (fcntl lock + atomic write)."""

from __future__ import annotations

import multiprocessing

from analysis.results import read_results
from datascale.cli import main
from test_results_run_folders import make_study

WORKERS = 4
TRIALS = 3


def _collect_once(runs_dir: str, out: str, barrier) -> None:
    barrier.wait()  # start together so that the read-merge-write steps overlap
    raise SystemExit(main(["-q", "results", "collect", runs_dir, "--out", out, "--merge"]))


def _run_together(folders: list, out) -> list:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(folders))
    workers = [context.Process(target=_collect_once, args=(str(folder), str(out), barrier)) for folder in folders]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return [worker.exitcode for worker in workers]


def test_concurrent_merging_collections_keep_every_row_once(tmp_path):
    sizes = (10_000_000, 30_000_000, 100_000_000)
    folders = [tmp_path / f"runs{i}" for i in range(WORKERS)]
    runs = [run for folder in folders for run in make_study(folder, sizes=sizes, seeds=(0,), modes=("frozen",),
                                                            slopes=(0.02,))]
    # Each worker adds its own runs once: without the lock, two workers that read
    # the table before either writes it would lose one worker's rows.
    for trial in range(TRIALS):
        out = tmp_path / f"results{trial}" / "results.parquet"
        assert _run_together(folders, out) == [0] * WORKERS
        table = read_results(out)
        assert set(table["run_dir"]) == {str(r.resolve()) for r in runs}
        assert len(table) == 2 * len(runs)  # original + cleaned, one metric each
        assert not table.duplicated(["run_dir", "test_set", "metric"]).any()
        assert not list(out.parent.glob(".results.parquet.*.tmp"))
