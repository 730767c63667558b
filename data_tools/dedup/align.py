"""Crop alignment: re-score a test image's borderline neighbours with the crop that fits best.

Query views (views.py) try a fixed 3 x 3 grid of crops; a pool copy cut at
another size, aspect or position falls between them and scores lower than the
copy it is (measured on the demo world: a planted crop scored 0.75 through
the views and 0.99 at its true box). Alignment searches the box for the
pairs that matter: for each test image, its best ``max_pairs`` neighbours
scoring in ``[min_score, skip_above)`` are compared with crops of the test
image,

1. a coarse grid: linear sizes from ``min_crop`` to 1 (width and height
   apart, aspect ratio change up to ``max_aspect``) at 3 x 3 positions;
2. a pattern search from the best ``starts`` grid boxes: move the centre and
   change the width and height by +-step, keep any improvement, halve the
   step when none helps, stop below 1/64 of the image.

Every crop is embedded with the index's own embedder and scored against the
pool image's stored vector (no pool pixels are read), so an aligned score is
a cosine like any other and the threshold is calibrated on it. Only the
direction the views cover is searched: the pool image showing a part of the
test image (a mirrored test image when the pair matched through ``mirror``).
Cost: ~(grid + 8 x refinement steps) embeddings per aligned pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm


@dataclass(frozen=True)
class Box:
    """A crop in fractions of the image: centre (cx, cy), width w, height h."""

    cx: float
    cy: float
    w: float
    h: float

    def clamp(self, min_crop: float) -> "Box":
        w, h = min(max(self.w, min_crop), 1.0), min(max(self.h, min_crop), 1.0)
        cx = min(max(self.cx, w / 2), 1 - w / 2)
        cy = min(max(self.cy, h / 2), 1 - h / 2)
        return Box(*(round(float(v), 6) for v in (cx, cy, w, h)))

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        w, h = max(1, round(self.w * width)), max(1, round(self.h * height))
        x0 = min(max(0, round((self.cx - self.w / 2) * width)), width - w)
        y0 = min(max(0, round((self.cy - self.h / 2) * height)), height - h)
        return x0, y0, x0 + w, y0 + h

    @property
    def name(self) -> str:
        left, top = self.cx - self.w / 2, self.cy - self.h / 2
        return f"aligned{self.w:.2f}x{self.h:.2f}@{left:.2f},{top:.2f}"


def grid_boxes(min_crop: float, sizes: int, max_aspect: float) -> list[Box]:
    """Coarse boxes: ``sizes`` linear sizes in [min_crop, 1] per side, 3 x 3 positions."""
    linear = np.linspace(min_crop, 1.0, sizes)
    boxes = []
    for w in linear:
        for h in linear:
            if max(w / h, h / w) > max_aspect:
                continue
            for fy in (0.0, 0.5, 1.0):
                for fx in (0.0, 0.5, 1.0):
                    box = Box(w / 2 + fx * (1 - w), h / 2 + fy * (1 - h), w, h).clamp(min_crop)
                    if box not in boxes:
                        boxes.append(box)
    return boxes


class Aligner:
    """Scores crops of one test image against pool vectors with the index's embedder."""

    def __init__(self, embedder, cfg) -> None:
        self.embedder, self.cfg = embedder, cfg
        self.prepare = embedder.preparer()
        # Work on a copy a few times the embedder's input size: crops keep enough
        # pixels (>= its input at min_crop) and each costs a small resize.
        self.side = max(64, 2 * int(embedder.decode_side()) + 1)
        self.grid = grid_boxes(cfg.min_crop, cfg.sizes, cfg.max_aspect)

    def _working(self, image: Image.Image, mirrored: bool) -> Image.Image:
        if mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = self.side / (min(image.size) * self.cfg.min_crop)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        return image

    def _scores(self, image: Image.Image, boxes: list[Box], targets: np.ndarray) -> np.ndarray:
        """(len(boxes), len(targets)) cosines of each box's crop with each target vector."""
        batch = np.stack([self.prepare(image.crop(b.pixels(*image.size))) for b in boxes])
        return self.embedder.embed(batch) @ targets.T

    def align(self, image: Image.Image, targets: np.ndarray, mirrored: bool = False
              ) -> tuple[np.ndarray, list[Box]]:
        """Best crop score and box for each unit vector of ``targets`` (T, dim)."""
        work = self._working(image, mirrored)
        grid = self._scores(work, self.grid, targets)                   # (G, T)
        best = grid.max(axis=0)
        boxes = [self.grid[i] for i in grid.argmax(axis=0)]
        for t in range(len(targets)):
            starts = np.argsort(-grid[:, t])[: self.cfg.starts]
            for s in starts:
                score, box = self._refine(work, self.grid[s], float(grid[s, t]), targets[t:t + 1])
                if score > best[t]:
                    best[t], boxes[t] = score, box
        return best, boxes

    def _refine(self, image: Image.Image, box: Box, score: float, target: np.ndarray
                ) -> tuple[float, Box]:
        step = (1.0 - self.cfg.min_crop) / max(self.cfg.sizes - 1, 1) / 2
        while step >= 1 / 64:
            moves = [Box(box.cx + dx, box.cy + dy, box.w + dw, box.h + dh).clamp(self.cfg.min_crop)
                     for dx, dy, dw, dh in ((step, 0, 0, 0), (-step, 0, 0, 0), (0, step, 0, 0),
                                            (0, -step, 0, 0), (0, 0, step, 0), (0, 0, -step, 0),
                                            (0, 0, 0, step), (0, 0, 0, -step))]
            moves = [m for m in dict.fromkeys(moves) if m != box]
            scores = self._scores(image, moves, target)[:, 0] if moves else np.zeros(0)
            if len(scores) and scores.max() > score:
                score, box = float(scores.max()), moves[int(scores.argmax())]
            else:
                step /= 2
        return score, box


@dataclass
class Aligned:
    """What alignment changed: raised pairs and counts for summary.json."""

    raised: dict              # (query row, pool id) -> (retrieval score, Box)
    stats: dict


def align_neighbours(found, read_bytes, store, views: list, embedder, cfg, *,
                     progress: bool = True) -> Aligned:
    """Raise ``found``'s scores (a data_tools.dedup.index.Neighbours) to their aligned crop scores.

    ``read_bytes(row)`` returns query row ``row``'s encoded test image. The
    best ``cfg.max_pairs`` pairs of a row scoring in ``[cfg.min_score,
    cfg.skip_above)`` are aligned; a pair keeps the higher of its two scores,
    and each row is re-ordered by score. An image that no longer decodes
    keeps its scores and is counted. Time: ~8 ms per pair with ``pixels`` on
    one core; memory: one decoded test image and its crops.
    """
    from data_tools.dedup.prepare import ImageDecodeError, decode_image
    started = time.perf_counter()
    aligner = Aligner(embedder, cfg)
    todo = (found.ids >= 0) & (found.scores >= cfg.min_score) & (found.scores < cfg.skip_above)
    todo &= np.cumsum(todo, axis=1) <= cfg.max_pairs   # rows are in score order: the best ones
    rows = np.flatnonzero(todo.any(axis=1))
    raised: dict = {}
    failed = pairs = 0
    for row in tqdm(rows, unit="img", desc="align", disable=not progress):
        try:
            image = decode_image(read_bytes(int(row)), round(aligner.side / cfg.min_crop))
        except (OSError, ImageDecodeError):
            failed += 1
            continue
        for mirrored in (False, True):
            cols = [c for c in np.flatnonzero(todo[row])
                    if (views[found.views[row, c]].kind == "mirror") == mirrored]
            if not cols:
                continue
            scores, boxes = aligner.align(image, store.vectors(found.ids[row, cols]), mirrored)
            pairs += len(cols)
            for c, score, box in zip(cols, scores, boxes):
                if score > found.scores[row, c]:
                    raised[(int(row), int(found.ids[row, c]))] = (float(found.scores[row, c]), box)
                    found.scores[row, c] = score
        order = np.argsort(-found.scores[row], kind="stable")
        for array in (found.ids, found.scores, found.views):
            array[row] = array[row][order]
    stats = {"pairs_aligned": pairs, "images_aligned": len(rows) - failed,
             "images_unreadable": failed, "pairs_raised": len(raised),
             "seconds": round(time.perf_counter() - started, 2)}
    return Aligned(raised, stats)
