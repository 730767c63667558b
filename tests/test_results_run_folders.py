"""Run folders in the documented format (docs/formats.md, "Run folders"), made on the fly.

The analysis tests build their runs with these helpers because no training
code writes them yet; the tests here check that the helpers follow the
format, so the analysis tests check the real contract.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from datascale.atomic import write_json, write_text
from datascale.config import dump_yaml
from datascale.lineage import config_record, is_complete, mark_complete

PAPER_SIZES = (10_000_000, 30_000_000, 100_000_000, 300_000_000)


def make_run(root: Path, name: str, *, metrics: dict, task: str = "detection", mode: str = "finetune",
             arch: str = "resnet50", seed: int = 0, subset_images: int | None = 10_000_000,
             init: str = "pretrained", steps: int = 100, num_classes: int = 18291,
             stage: str = "finetune", state: str = "complete", lineage: dict | None = None) -> Path:
    """Write one run folder: config.yaml (lineage), metrics.json and a state marker.

    ``metrics`` is {TEST_SET: {METRIC: value}}; ``state`` is "complete",
    "running" (no marker) or "failed" (failed.json). ``lineage`` overrides
    the whole lineage mapping (use {} for a run without lineage keys).
    """
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    subset_name = None if subset_images is None else f"{subset_images // 1_000_000}M"
    if lineage is None:
        lineage = {"task": task, "mode": mode, "seed": seed, "arch": arch, "init": init,
                   "pretrain_run": None if subset_images is None else f"runs/pretrain/{subset_name}",
                   "subset_name": subset_name, "subset_images": subset_images,
                   "num_classes": num_classes, "steps": steps}
    record = config_record(stage, {"task": task, "seed": seed}, extra={"lineage": lineage})
    write_text(run_dir / "config.yaml", dump_yaml(record))
    write_json(run_dir / "metrics.json", {"task": task, "steps": steps, "metrics": metrics})
    if state == "complete":
        mark_complete(run_dir)
    elif state == "failed":
        write_json(run_dir / "failed.json", {"error": "loss became NaN", "step": 42})
    return run_dir


def make_study(root: Path, *, sizes=PAPER_SIZES, seeds=(0, 1, 2), modes=("frozen", "finetune"),
               task: str = "detection", metric: str = "AP", arch: str = "resnet50",
               intercept: float = 0.20, slopes=(0.02, 0.03), noise: float = 0.003,
               cleaned_drop: float = 0.01, rng_seed: int = 0) -> list[Path]:
    """Runs following metric = intercept + slope * log10(N / 1e7) + noise, per mode.

    Every run reports the metric on the original and the cleaned test set
    (cleaned is ``cleaned_drop`` lower, as when near-duplicates inflated it).
    """
    rng = np.random.default_rng(rng_seed)
    runs = []
    for mode, slope in zip(modes, slopes):
        for size in sizes:
            for seed in seeds:
                value = intercept + slope * math.log10(size / 1e7) + rng.normal(0, noise)
                runs.append(make_run(root, f"{task}-{arch}-{mode}-{size}-s{seed}", task=task, mode=mode,
                                     arch=arch, seed=seed, subset_images=int(size),
                                     metrics={"original": {metric: value},
                                              "cleaned": {metric: value - cleaned_drop}}))
    return runs


def test_made_run_follows_the_run_folder_format(tmp_path):
    run_dir = make_run(tmp_path, "r", metrics={"original": {"AP": 0.3}}, seed=4, subset_images=30_000_000)
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert record["stage"] == "finetune"
    assert set(record["lineage"]) == {"task", "mode", "seed", "arch", "init", "pretrain_run", "subset_name",
                                      "subset_images", "num_classes", "steps"}
    assert record["lineage"]["subset_images"] == 30_000_000 and record["lineage"]["seed"] == 4
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())
    assert metrics == {"task": "detection", "steps": 100, "metrics": {"original": {"AP": 0.3}}}
    assert is_complete(run_dir)


def test_made_run_states_are_marked(tmp_path):
    running = make_run(tmp_path, "a", metrics={}, state="running")
    failed = make_run(tmp_path, "b", metrics={}, state="failed")
    assert not is_complete(running) and not (running / "failed.json").exists()
    assert not is_complete(failed) and (failed / "failed.json").is_file()


def test_made_study_has_every_size_seed_and_mode(tmp_path):
    runs = make_study(tmp_path, sizes=(1, 2, 3), seeds=(0, 1))
    assert len(runs) == 3 * 2 * 2
