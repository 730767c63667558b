"""COCO metrics through pycocotools: box AP (detection) and keypoint AP by OKS (pose).

``coco_metrics`` takes ground truth as a COCO dict and predictions in the
COCO results format, and returns AP@[.5:.95], AP@.5 and AP@.75 as floats.
pycocotools' own printing is captured and logged at debug level.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Literal, Sequence

import numpy as np

from datascale.errors import DataError

log = logging.getLogger(__name__)

#: COCOeval.stats index of each reported metric (the same for bbox and keypoints).
_STATS = {"AP": 0, "AP50": 1, "AP75": 2}


def coco_metrics(gt: dict, results: Sequence[dict], iou_type: Literal["bbox", "keypoints"], *,
                 kpt_sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """AP, AP50, AP75 of ``results`` against ``gt`` over every image in ``gt``.

    ``results``: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
    (bbox) or ``{..., "keypoints": [x, y, v] * K}`` (keypoints), in original
    image coordinates. ``kpt_sigmas``: per-keypoint OKS sigmas (required for
    keypoints; COCO's person values do not fit other skeletons).
    No predictions at all scores 0. Time: pycocotools' evaluate, about
    linear in images x detections; memory: the per-image IoU matrices.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(not a.get("iscrowd", 0) for a in gt["annotations"]):
        raise DataError("the test set has no (non-crowd) annotations to evaluate against")
    if not results:
        log.warning("no predictions at all: every AP is 0")
        return {name: 0.0 for name in _STATS}
    if iou_type == "keypoints" and kpt_sigmas is None:
        raise ValueError("keypoint evaluation needs per-keypoint OKS sigmas")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        # loadRes adds fields to the dicts it gets: give it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(img["id"] for img in gt["images"])
        if kpt_sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(kpt_sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools:\n%s", printed.getvalue())
    # -1 means "no ground truth in this range": it cannot happen for the "all" range
    # once the check above passed, so the values below are real APs.
    return {name: float(evaluator.stats[index]) for name, index in _STATS.items()}
