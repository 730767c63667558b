"""The world's classes: a visual hierarchy, names, Zipf frequencies and look-alikes.

A leaf class is a combination of four visual attributes, from coarse to fine:
family (the shape or figure body plan), colour band, texture and variant (aspect
and trim colour for a shape, pose for a figure). Internal classes fix a prefix of those attributes, so siblings
share everything but the last one and look alike, which is what makes label
confusions between siblings plausible and fine-grained recognition learnable::

    group "round shape" > family "crescent" > colour "teal crescent"
        > texture "striped teal crescent" > leaf "slim striped teal crescent"

``ClassesConfig.depth`` picks which of those levels become classes; leaves
always carry all four attributes. Families are the detection and segmentation
categories; figure families are the pose branch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from data_tools.labels import Vocabulary
from data_tools.synth.figures import POSE_CLASSES
from data_tools.synth.config import ClassesConfig

GROUPS = {"angular": "angular shape", "round": "round shape",
          "pointed": "pointed shape", "figure": "figure"}

# Ordered so that the first N families cover all three shape groups.
SHAPE_FAMILIES = [
    ("triangle", "angular"), ("circle", "round"), ("star", "pointed"),
    ("square", "angular"), ("ellipse", "round"), ("cross", "pointed"),
    ("pentagon", "angular"), ("crescent", "round"), ("arrow", "pointed"),
    ("hexagon", "angular"), ("ring", "round"), ("chevron", "pointed"),
    ("diamond", "angular"), ("semicircle", "round"), ("bolt", "pointed"),
    ("trapezoid", "angular"), ("teardrop", "round"), ("sparkle", "pointed"),
]
FIGURE_FAMILIES = ["strider", "stocky", "longarm", "bighead"]
FIGURE_NAMES = {"strider": "strider figure", "stocky": "stocky figure",
                "longarm": "long-armed figure", "bighead": "big-headed figure"}

COLOURS = [("red", 0.0), ("orange", 28.0), ("yellow", 55.0), ("green", 115.0),
           ("teal", 172.0), ("blue", 218.0), ("purple", 272.0), ("pink", 322.0)]
TEXTURES = [("solid", "solid"), ("stripes", "striped"), ("dots", "dotted"),
            ("checker", "checkered"), ("rings", "ringed"), ("gradient", "shaded"),
            ("halves", "two-tone"), ("waves", "wavy")]
# (name, aspect ratio, trim colour); the trim is the texture's second colour.
VARIANTS = [("pale-trim", 1.0, "light"), ("dark-trim", 1.0, "dark"),
            ("slim", 0.75, "light"), ("broad", 1.33, "light"),
            ("slim dark-trim", 0.75, "dark"), ("broad dark-trim", 1.33, "dark")]

LEVELS = ("group", "family", "colour", "texture", "leaf")
# Which levels are classes at each hierarchy depth (the leaf always is).
LEVELS_AT_DEPTH = {1: ("leaf",), 2: ("family", "leaf"), 3: ("group", "family", "leaf"),
                   4: ("group", "family", "colour", "leaf"), 5: LEVELS}


def stream_rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    """A generator for one named random stream and item: (seed, stream, index...).

    Every image is drawn from its own stream, so output does not depend on the
    order or the number of worker processes.
    """
    return np.random.default_rng([seed, zlib.crc32(stream.encode("utf-8")), *index])


@dataclass
class WorldClasses:
    """The class vocabulary plus per-leaf visual attributes and frequencies.

    Leaves are addressed by position ``p`` in 0..L-1; ``leaf_ids[p]`` is the
    class id written in labels. Attribute arrays index the catalogues above.
    """

    vocabulary: Vocabulary
    leaf_ids: np.ndarray
    family: np.ndarray
    colour: np.ndarray
    texture: np.ndarray
    variant: np.ndarray
    family_keys: list[str]
    family_names: list[str]
    family_groups: list[str]
    family_is_figure: list[bool]
    weights: np.ndarray
    lookalikes: list[np.ndarray]
    cumulative: np.ndarray | None = None

    def draw_from_prior(self, rng: np.random.Generator) -> int:
        """One leaf position drawn by the Zipf weights, in O(log L)."""
        if self.cumulative is None:
            self.cumulative = np.cumsum(self.weights)
        return int(min(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], side="right"),
                       self.num_leaves - 1))

    @property
    def num_leaves(self) -> int:
        return len(self.leaf_ids)

    def leaves_of(self, figures: bool) -> np.ndarray:
        """Positions of the figure leaves (``True``) or of the shape leaves."""
        is_fig = np.asarray(self.family_is_figure)[self.family]
        return np.flatnonzero(is_fig == figures)

    def tempered(self, temperature: float, positions: np.ndarray | None = None) -> np.ndarray:
        """Sampling weights ``weight ** temperature`` over ``positions`` (all leaves by default)."""
        w = self.weights if positions is None else self.weights[positions]
        w = np.power(w, temperature)
        return w / w.sum()


def _choose(rng: np.random.Generator, count: int, n: int) -> list[int]:
    return sorted(rng.choice(n, size=count, replace=False).tolist())


def _families(cfg: ClassesConfig) -> list[tuple[str, str, str, bool]]:
    """(catalogue key, class name, group, is_figure) for each family in use."""
    shapes = [(k, k, g, False) for k, g in SHAPE_FAMILIES[:cfg.shape_families]]
    figures = [(k, FIGURE_NAMES[k], "figure", True) for k in FIGURE_FAMILIES[:cfg.figure_families]]
    return shapes + figures


def variant_look(group: str, v: int) -> tuple[str, float, str]:
    """(name, aspect, trim) of variant ``v``: a shape's build and trim, a figure's pose.

    Figure variants differ only in pose (same build and trim), so a figure's
    leaf class can be told only from where its limbs are.
    """
    if group == "figure":
        return POSE_CLASSES[v].name, 1.0, "light"
    return VARIANTS[v]


def _level_name(level: str, fam_name: str, group: str, c: int, t: int, v: int) -> str:
    colour, texture, variant = COLOURS[c][0], TEXTURES[t][1], variant_look(group, v)[0]
    return {"group": GROUPS[group], "family": fam_name,
            "colour": f"{colour} {fam_name}", "texture": f"{texture} {colour} {fam_name}",
            "leaf": f"{variant} {texture} {colour} {fam_name}"}[level]


def _level_attrs(level: str, fam_key: str, group: str, c: int, t: int, v: int) -> dict:
    attrs = {"level": level, "group": group}
    steps = [("family", fam_key), ("colour", COLOURS[c][0]),
             ("texture", TEXTURES[t][0]), ("variant", variant_look(group, v)[0])]
    for depth, (key, value) in enumerate(steps, start=1):
        if LEVELS.index(level) >= depth:
            attrs[key] = value
    if level == "leaf":
        attrs["aspect"], attrs["trim"] = variant_look(group, v)[1:]
    return attrs


def build_classes(cfg: ClassesConfig, seed: int) -> WorldClasses:
    """Build the hierarchy, the leaf attributes and the Zipf class weights from ``seed``.

    Which colour bands a family has, which textures a colour band has and which
    variants a texture has are drawn from the seed; families come from the
    catalogue in order. Time and memory are O(number of classes).
    """
    rng = stream_rng(seed, "vocab")
    kept = LEVELS_AT_DEPTH[cfg.depth]
    names: list[str] = []
    parents: list[int | None] = []
    extra: list[dict] = []
    node_of: dict[tuple, int] = {}
    leaves: list[tuple[int, int, int, int, int]] = []  # (class id, family, colour, texture, variant)
    families = _families(cfg)
    for f, (key, fam_name, group, _) in enumerate(families):
        for c in _choose(rng, cfg.colours, len(COLOURS)):
            for t in _choose(rng, cfg.textures, len(TEXTURES)):
                for v in _choose(rng, cfg.variants, len(VARIANTS)):
                    path = {"group": (group,), "family": (group, f), "colour": (group, f, c),
                            "texture": (group, f, c, t), "leaf": (group, f, c, t, v)}
                    parent = None
                    for level in kept:
                        node = node_of.get(path[level])
                        if node is None:
                            node = len(names)
                            node_of[path[level]] = node
                            names.append(_level_name(level, fam_name, group, c, t, v))
                            parents.append(parent)
                            extra.append(_level_attrs(level, key, group, c, t, v))
                        parent = node
                    leaves.append((parent, f, c, t, v))
    table = np.asarray(leaves, dtype=np.int64)
    order = rng.permutation(len(table))  # Zipf rank of each leaf, independent of the hierarchy
    ranks = np.empty(len(table), dtype=np.int64)
    ranks[order] = np.arange(len(table))
    weights = 1.0 / np.power(ranks + 1.0, cfg.zipf_exponent)
    weights /= weights.sum()
    for pos, cid in enumerate(table[:, 0]):
        extra[cid]["frequency_rank"] = int(ranks[pos])
    for rec in extra:
        rec["kind"] = "figure" if rec["group"] == "figure" else "shape"
    vocabulary = Vocabulary(names, parents, extra)
    for cid in range(len(names)):
        extra[cid]["depth"] = vocabulary.depth(cid)
    classes = WorldClasses(
        vocabulary=vocabulary, leaf_ids=table[:, 0], family=table[:, 1], colour=table[:, 2],
        texture=table[:, 3], variant=table[:, 4],
        family_keys=[f[0] for f in families], family_names=[f[1] for f in families],
        family_groups=[f[2] for f in families], family_is_figure=[f[3] for f in families],
        weights=weights, lookalikes=[])
    classes.lookalikes = _lookalikes(classes)
    return classes


def _lookalikes(classes: WorldClasses) -> list[np.ndarray]:
    """For each leaf, its nearest relatives: the leaves sharing the longest attribute prefix.

    Siblings (same family, colour and texture) come first; a leaf without
    siblings falls back to cousins, and so on up to any other leaf.
    """
    attrs = np.stack([classes.family, classes.colour, classes.texture], axis=1)
    by_prefix: dict[tuple, list[int]] = {}
    for p, row in enumerate(attrs.tolist()):
        for prefix in (3, 2, 1, 0):
            by_prefix.setdefault(tuple(row[:prefix]), []).append(p)
    out = []
    for p, row in enumerate(attrs.tolist()):
        for prefix in (3, 2, 1, 0):
            relatives = [q for q in by_prefix[tuple(row[:prefix])] if q != p]
            if relatives or prefix == 0:
                out.append(np.asarray(relatives, dtype=np.int64))
                break
    return out


def object_count_pmf(lam: float, max_objects: int) -> np.ndarray:
    """P(count = k) for k = 0..max_objects of count = min(1 + Poisson(lam), max_objects)."""
    ks = np.arange(0, max_objects)
    log_fact = np.cumsum(np.log(np.maximum(ks, 1)))
    poisson = np.exp(-lam + ks * np.log(max(lam, 1e-300)) - log_fact)
    poisson[0] = np.exp(-lam)
    pmf = np.zeros(max_objects + 1)
    pmf[1:max_objects] = poisson[:max_objects - 1]
    pmf[max_objects] = max(0.0, 1.0 - pmf.sum())
    return pmf


def poisson_rate_for_mean(mean: float, max_objects: int) -> float:
    """Rate lam such that E[min(1 + Poisson(lam), max_objects)] == mean (bisection)."""
    if max_objects <= 1 or mean <= 1.0:
        return 0.0
    counts = np.arange(max_objects + 1)
    lo, hi = 0.0, 64.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts @ object_count_pmf(mid, max_objects) < mean else (lo, mid)
    return (lo + hi) / 2


def sample_leaves(rng: np.random.Generator, count: int, weights: np.ndarray,
                  positions: np.ndarray | None = None) -> list[int]:
    """``count`` distinct leaf positions drawn by ``weights`` (over ``positions`` if given)."""
    pool = len(weights)
    count = min(count, pool)
    picked = rng.choice(pool, size=count, replace=False, p=weights)
    if positions is not None:
        picked = positions[picked]
    return [int(p) for p in picked]
