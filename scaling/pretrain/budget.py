"""What a pretraining schedule bought its subset: passes over it, and whether mAP@k had stopped rising.

Recorded in metrics.json (``budget``) and backbone.json's lineage; fits and
the report flag a curve whose largest size had not converged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_tools.loader.curriculum import CurriculumSchedule
from scaling.pretrain.config import PretrainConfig


# A run has converged when training 25% longer at its recent rate would add less than this
# fraction of its final mAP@k (and less than CONVERGED_ABS in absolute terms).
CONVERGED_REL, CONVERGED_ABS = 0.02, 0.002


def evaluations(out: Path, key: str) -> list[tuple[int, float]]:
    """(step, mAP@k) of every evaluation in metrics.jsonl, in step order."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted((int(r["step"]), float(r[key])) for r in rows if key in r)


def training_budget(cfg: PretrainConfig, subset_images: int, evals: list[tuple[int, float]]) -> dict:
    """What the schedule bought this subset: passes over it, and whether mAP@k had stopped rising.

    The slope is a least-squares line through the evaluations of the last quarter
    of training (at least the last two); ``map_gain`` is what 25% more steps at
    that rate would add. ``converged`` is None with fewer than two evaluations.
    With a curriculum only its full-size stage counts (the jump at the switch to
    full size is not "still rising"), and fewer than two evaluations in it give None.
    """
    steps = cfg.schedule.steps
    passes = steps * cfg.schedule.global_batch / max(1, subset_images)
    tail = [e for e in evals if e[0] >= 0.75 * steps]
    tail = tail if len(tail) >= 2 else evals[-2:]
    if cfg.curriculum.enabled:
        full_size = CurriculumSchedule(cfg.curriculum, crop=cfg.data.loader.crop_size, steps=steps,
                                       batches_per_step=1).boundaries()[-1]
        tail = [e for e in tail if e[0] > full_size]  # an evaluation at step s follows s optimizer steps
    if len(tail) < 2:
        return {"passes": round(passes, 3), "map_slope_per_1k_steps": None, "map_gain": None, "converged": None}
    x, y = (np.asarray(v, dtype=float) for v in zip(*tail))
    slope = float(np.polyfit(x, y, 1)[0])
    gain = slope * 0.25 * steps
    converged = bool(gain < max(CONVERGED_REL * y[-1], CONVERGED_ABS))
    return {"passes": round(passes, 3), "map_slope_per_1k_steps": round(slope * 1000, 6),
            "map_gain": round(gain, 6), "converged": converged}
