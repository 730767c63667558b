"""``generate_world``: render every split in parallel and write the world's files.

Work is cut into chunks of consecutive items; a pool of worker processes
renders chunks and writes their images, and the parent gathers the small
per-item records in index order to write labels.jsonl, the COCO and VOC files,
planted.csv, world.json and card.md. Output bytes do not depend on the number
of workers. Memory: the records (a few hundred bytes per image) plus one
scene per worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from datascale.errors import DatascaleError
from datascale.lineage import config_record, mark_complete, prepare_output_dir
from data_tools.synth.config import WorldConfig
from data_tools.synth.items import WorldPlan, make_plan, render_item

log = logging.getLogger(__name__)

STAGE = "synth"
CHUNK = {"pretrain": 200, "eval": 200, "detection": 25, "segmentation": 25, "pose": 25}
Job = tuple[str, str, int, int]  # kind, split, start, stop

_PLAN: WorldPlan | None = None
_OUT: Path | None = None


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_jobs(config: WorldConfig) -> list[Job]:
    """Chunks of every split; downstream first because planted copies are quick and small."""
    sizes: list[tuple[str, str, int]] = []
    for dataset in ("detection", "segmentation", "pose"):
        cfg = getattr(config, dataset)
        sizes += [(dataset, split, getattr(cfg, split)) for split in ("train", "val", "test")]
    sizes += [("eval", "all", config.eval.images), ("pretrain", "all", config.pretrain.images)]
    jobs = []
    for kind, split, count in sizes:
        step = CHUNK[kind]
        jobs += [(kind, split, start, min(start + step, count)) for start in range(0, count, step)]
    return jobs


def _init_worker(plan: WorldPlan, out_dir: Path) -> None:
    global _PLAN, _OUT
    _PLAN, _OUT = plan, out_dir


def _write_file(path: Path, data: bytes) -> None:
    # Atomic rename without fsync: the folder is not valid before complete.json
    # anyway, and a fsync per image would dominate the run time.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def render_chunk(job: Job) -> tuple[Job, list[dict], dict[str, int]]:
    """Render and write one chunk in a worker; returns its records (in order) and summed counters."""
    assert _PLAN is not None and _OUT is not None, "worker not initialised"
    kind, split, start, stop = job
    records, stats = [], Counter()
    for index in range(start, stop):
        result = render_item(_PLAN, kind, split, index)
        for rel, data in result.files:
            _write_file(_OUT / rel, data)
        records.append(result.record)
        stats.update(result.stats)
    return job, records, dict(stats)


def run_jobs(plan: WorldPlan, jobs: list[Job], out_dir: Path, workers: int
             ) -> tuple[dict[tuple[str, str], list[dict]], dict[tuple[str, str], Counter]]:
    """Render all jobs with ``workers`` processes (1 = in this process); records per (kind, split)."""
    done: dict[tuple[str, str], list[tuple[int, list[dict]]]] = {}
    stats: dict[tuple[str, str], Counter] = {}
    total = sum(stop - start for _, _, start, stop in jobs)
    with tqdm(total=total, desc="synth", unit="img", disable=None) as bar:
        def collect(job: Job, records: list[dict], counts: dict[str, int]) -> None:
            done.setdefault(job[:2], []).append((job[2], records))
            stats.setdefault(job[:2], Counter()).update(counts)
            bar.update(job[3] - job[2])

        if workers <= 1:
            _init_worker(plan, out_dir)
            for job in jobs:
                collect(*render_chunk(job))
        else:
            # spawn, not fork: safe whatever threads the parent runs (tqdm, BLAS, torch).
            context = multiprocessing.get_context("spawn")
            try:
                with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                         initargs=(plan, out_dir)) as pool:
                    for future in as_completed([pool.submit(render_chunk, job) for job in jobs]):
                        collect(*future.result())
            except BrokenProcessPool:
                raise DatascaleError(
                    "a synth worker process died (out of memory, killed, or it could not start). "
                    "Worker processes are spawned and import the calling script: from a script, call "
                    "generate_world under `if __name__ == '__main__':`, or pass workers=1") from None
    ordered = {key: [r for _, chunk in sorted(parts, key=lambda p: p[0]) for r in chunk]
               for key, parts in done.items()}
    return ordered, stats


def generate_world(config: WorldConfig, out_dir: str | Path, workers: int | None = None,
                   force: bool = False) -> tuple[str, dict]:
    """Generate the synthetic world described by ``config`` into ``out_dir``.

    Returns (state, summary): state is ``"complete"`` when the folder already
    held this world (nothing is done), else ``"written"``; summary is the
    world.json content. A folder made with another config raises
    OutputExistsError unless ``force``. An interrupted run is redone from the
    start (rendering is deterministic, so files are simply rewritten). Time:
    about 1-2 ms per image per worker.
    """
    from data_tools.synth.report import write_outputs  # the writers need pycocotools

    out_dir = Path(out_dir)
    record = config_record(STAGE, config)
    state = prepare_output_dir(out_dir, record, force=force)
    if state == "complete":
        from data_tools.synth.report import read_summary
        log.info("%s already holds this world (complete.json present): nothing to do", out_dir)
        return "complete", read_summary(out_dir)
    if state == "resume":
        log.info("%s holds an unfinished world of the same config: rendering it again", out_dir)
    workers = workers or default_workers()
    plan = make_plan(config)
    jobs = plan_jobs(config)
    log.info("rendering %d images in %d chunks with %d worker(s) into %s",
             sum(j[3] - j[2] for j in jobs), len(jobs), workers, out_dir)
    records, stats = run_jobs(plan, jobs, out_dir, workers)
    summary = write_outputs(plan, records, stats, out_dir)
    mark_complete(out_dir, {"images": summary["images"]["total"]})
    return "written", summary
