"""Label noise for the pretraining pool, with the true labels kept beside the noisy ones.

Definitions (the ones ``data_tools.labels.noise_stats`` measures):

* ``noise_rate`` r = fraction of *given* labels that are wrong = 1 - precision;
* ``missing_rate`` m = fraction of *true* labels that are not given = 1 - recall.

A wrong label is either a **confusion** (a look-alike class, usually a sibling,
given instead of the true class, as when a web annotator or a classifier
mixes up near-identical things) or a **spurious** extra label (drawn from the
class prior: popular tags attached to the wrong image). Per true label the
model keeps it with probability 1 - m, swaps it for a look-alike with
probability q, drops it with probability d = m - q, and adds Poisson(e)
spurious labels, where w = r (1 - m) / (1 - r) is the number of wrong labels
per true label, q = min(confusion_share * w, m) (a swap also loses the true
label, hence the cap) and e = w - q. In expectation precision is then 1 - r
and recall 1 - m.

Like JFT, every image gets at least one label: when all of an image's labels
were dropped and no extra came, one look-alike of a true label is given
(``filled``). That adds wrong labels, so e is lowered to keep the noise rate
(solved for the object-count distribution), and if that is not enough more
of the missing labels become swaps. Where even that cannot absorb them (a
missing rate well above the wrong-label budget) the measured noise rate ends
up above the configured one; ``NoisePlan.feasible`` says so, a warning is
logged and world.json shows both.
``labels.allow_unlabelled: true`` turns the guarantee off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_tools.synth.config import LabelsConfig
from data_tools.synth.vocab import WorldClasses

OUTCOMES = ("kept", "swapped", "dropped", "spurious", "filled")


@dataclass(frozen=True)
class NoisePlan:
    """Per-true-label probabilities derived from a LabelsConfig (see module docstring)."""

    keep: float
    swap: float
    drop: float
    spurious: float
    fill_empty: bool = False
    feasible: bool = True

    @classmethod
    def from_config(cls, cfg: LabelsConfig, count_pmf: np.ndarray | None = None) -> "NoisePlan":
        """The plan for ``cfg``; ``count_pmf[k]`` = P(an image has k true labels) sizes the fills.

        If fills would exceed the wrong-label budget, more of the missing labels
        become swaps (a swap keeps a label on the image) before giving up on
        the configured noise rate (``feasible=False``).
        """
        r, m = cfg.noise_rate, cfg.missing_rate
        wrong = r * (1.0 - m) / (1.0 - r)
        swap = min(cfg.confusion_share * wrong, m)
        if cfg.allow_unlabelled or count_pmf is None:
            return cls(1.0 - m, swap, m - swap, wrong - swap, fill_empty=not cfg.allow_unlabelled)
        top = min(wrong, m)
        if _spurious_rate(swap, m, wrong, count_pmf) is None:
            if _spurious_rate(top, m, wrong, count_pmf) is None:
                return cls(1.0 - m, top, m - top, 0.0, fill_empty=True, feasible=False)
            lo, hi = swap, top  # the smallest swap probability that leaves room for the fills
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _spurious_rate(mid, m, wrong, count_pmf) is None else (lo, mid)
            swap = hi
        return cls(1.0 - m, swap, m - swap, _spurious_rate(swap, m, wrong, count_pmf), fill_empty=True)


def _spurious_rate(swap: float, missing: float, wrong: float, count_pmf: np.ndarray) -> float | None:
    """Spurious labels per true label so that spurious + fills == wrong - swap; None if impossible."""
    drop, room = missing - swap, wrong - swap
    ks = np.arange(len(count_pmf))
    mean_k = float(ks @ count_pmf)

    def fills(extra: float) -> float:  # P(all dropped, no extra) per image, per true label
        return float(count_pmf @ (drop ** ks * np.exp(-extra * ks) * (ks > 0))) / mean_k

    if room < 0 or fills(0.0) > room + 1e-12:
        return None
    lo, hi = 0.0, room  # extra + fills(extra) grows with extra
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid + fills(mid) < room else (lo, mid)
    return (lo + hi) / 2


def corrupt_labels(true_leaves: list[int], rng: np.random.Generator, plan: NoisePlan,
                   classes: WorldClasses) -> tuple[list[int], dict[str, int]]:
    """Noisy leaf positions for one image's true leaf positions.

    Returns (noisy positions in a deterministic order, counts of each outcome
    in ``OUTCOMES``). Never returns a true label as a "wrong" one: swaps,
    extras and fills are drawn outside the true set. O(labels).
    """
    truth = set(true_leaves)
    given: list[int] = []
    counts = dict.fromkeys(OUTCOMES, 0)
    draws = rng.random(len(true_leaves))
    for leaf, u in zip(true_leaves, draws):
        if u < plan.keep:
            given.append(leaf)
            counts["kept"] += 1
        elif u < plan.keep + plan.swap:
            wrong = _wrong_label(leaf, rng, classes, truth, given, counts, "swapped")
            if wrong is not None:
                given.append(wrong)
        else:
            counts["dropped"] += 1
    for _ in range(int(rng.poisson(plan.spurious * len(true_leaves)))):
        extra = _spurious(rng, classes, truth, given)
        if extra is None:
            break
        given.append(extra)
        counts["spurious"] += 1
    if not given and true_leaves and plan.fill_empty:
        leaf = true_leaves[int(rng.integers(len(true_leaves)))]
        wrong = _wrong_label(leaf, rng, classes, truth, given, counts, "filled")
        if wrong is not None:
            given.append(wrong)
    return given, counts


def _wrong_label(leaf: int, rng: np.random.Generator, classes: WorldClasses, truth: set[int],
                 given: list[int], counts: dict[str, int], outcome: str) -> int | None:
    """A look-alike of ``leaf`` outside the true and given sets, else a spurious label."""
    candidates = [q for q in classes.lookalikes[leaf].tolist() if q not in truth and q not in given]
    if candidates:
        counts[outcome] += 1
        return candidates[int(rng.integers(len(candidates)))]
    extra = _spurious(rng, classes, truth, given)  # no free look-alike: still a wrong label
    counts["spurious" if extra is not None else "dropped"] += 1
    return extra


def _spurious(rng: np.random.Generator, classes: WorldClasses, truth: set[int],
              given: list[int]) -> int | None:
    """A label from the class prior that is neither true nor already given (None if none left)."""
    blocked = truth.union(given)
    if len(blocked) >= classes.num_leaves:
        return None
    # Rejection sampling: the blocked set is tiny next to the vocabulary.
    for _ in range(64):
        leaf = classes.draw_from_prior(rng)
        if leaf not in blocked:
            return leaf
    free = [q for q in range(classes.num_leaves) if q not in blocked]
    return free[int(rng.integers(len(free)))]
