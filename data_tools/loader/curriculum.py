"""The EfficientTrain++ curriculum of the training loader: low frequencies first, stronger augmentation later.

EfficientTrain++ (Wang et al., TPAMI 2024) shows the network the "easier"
patterns of each image first: early in training only its low-frequency
content, as a smaller image (the low-frequency crop of
:mod:`data_tools.loader.frequency`), so each step is cheaper; the band grows
stage by stage to the full image. RandAugment's magnitude ramps up linearly
over the same budget. Both are functions of the budget fraction spent::

    curriculum:
      name: efficienttrain
      starts: [0.0, 0.25, 0.5]   # each stage begins at this fraction of the budget
      sizes: [0.6, 0.8, 1.0]     # its band B as a fraction of the crop (the last stage: 1.0, full size)
      magnitude: [0, 9]          # RandAugment magnitude at fraction 0 and at fraction 1 (linear, rounded)
      num_ops: 2                 # RandAugment operations per image (0: no RandAugment)
      method: fft                # fft: the paper's crop (exact); resize: its Lanczos approximation
      budget: compute            # fractions of the compute spent (the paper) or of the steps

The budget is ``schedule.steps`` optimizer steps either way. With ``budget:
compute`` (the paper's accounting) a step at band B costs (B / crop)^2 of a
full-size step, and each stage gets its share of the run's compute, not of
its steps: starts [0, 0.35, 0.7] at 32 / 40 / 56 px of a 56 px crop give the
three stages 52% / 33% / 15% of the steps, and the run costs 0.49 of the
same steps at full size (:meth:`CurriculumSchedule.compute_share`). The
magnitude ramps with the compute fraction too. EfficientTrain++'s released
recipes do the same: each of their 10 segments spends equal compute, so the
low-resolution segments run (224 / B)^2 times the epochs. ``budget: steps``
puts the boundaries at fractions of the steps instead.

Exact resume: the stage and magnitude of a batch are a pure function of its
optimizer step, and the step of this rank's batch k is ``k // batches_per_step``
(the micro-batches of one step), so every micro-batch of a step has one size
and a resumed loader reproduces the stages bit for bit. RandAugment draws its
randomness from the loader's per-sample generator, never from process-global
state (no torch RNG is used).

Cost per image: RandAugment at the full crop, batched (:class:`CurriculumAugment`),
plus the crop (~0.1 ms); the model's step is what gets cheaper (about with B*B).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from datascale.config import require
from data_tools.loader.frequency import LOW_FREQUENCY

MAX_MAGNITUDE = 30  # RandAugment's 31 magnitude bins


@dataclass
class CurriculumConfig:
    """The curriculum settings (a config section: ``--set curriculum.name=efficienttrain``)."""

    name: Literal["none", "efficienttrain"] = "none"
    starts: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    sizes: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0])
    magnitude: list[int] = field(default_factory=lambda: [0, 9])
    num_ops: int = 2
    method: Literal["fft", "resize"] = "fft"
    budget: Literal["compute", "steps"] = "compute"

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def validate(self) -> None:
        require(len(self.starts) >= 1 and len(self.starts) == len(self.sizes), "sizes",
                f"needs one size per stage start: {len(self.starts)} starts, {len(self.sizes)} sizes")
        require(self.starts[0] == 0, "starts", f"the first stage starts at 0, got {self.starts[0]}")
        require(all(a < b for a, b in zip(self.starts, self.starts[1:])) and self.starts[-1] < 1, "starts",
                f"must increase strictly and stay below 1 (fractions of the budget), got {self.starts}")
        require(all(0 < s <= 1 for s in self.sizes) and self.sizes[-1] == 1, "sizes",
                f"are fractions of the crop in (0, 1] and the last stage is full size (1.0), got {self.sizes}")
        require(all(a <= b for a, b in zip(self.sizes, self.sizes[1:])), "sizes",
                f"must not shrink from one stage to the next, got {self.sizes}")
        require(len(self.magnitude) == 2 and all(0 <= m <= MAX_MAGNITUDE for m in self.magnitude),
                "magnitude", f"is [start, end], each 0..{MAX_MAGNITUDE}, got {self.magnitude}")
        require(self.num_ops >= 0, "num_ops", f"must be 0 or more, got {self.num_ops}")
        require(self.budget in ("compute", "steps"), "budget", f"is compute or steps, got {self.budget!r}")

    def bands(self, crop: int) -> list[int]:
        """The side in pixels of each stage's images for a ``crop`` px full size."""
        return [max(1, min(crop, round(size * crop))) for size in self.sizes]


class StageSetting(NamedTuple):
    """What one batch gets: its stage, the side of its images and its RandAugment magnitude."""

    stage: int
    band: int
    magnitude: int


@dataclass(frozen=True)
class CurriculumSchedule:
    """A curriculum resolved for one run: the budget in steps and how batches map to steps."""

    config: CurriculumConfig
    crop: int                 # the full side (the loader's crop size)
    steps: int                # the budget: schedule.steps (resolved for "same epochs")
    batches_per_step: int     # this rank's micro-batches per optimizer step

    def _costs(self) -> list[float]:
        """Each stage's cost of one step relative to a full-size step: (B / crop)^2, or 1 each
        with ``budget: steps``."""
        if self.config.budget == "steps":
            return [1.0] * len(self.config.sizes)
        return [(band / self.crop) ** 2 for band in self.config.bands(self.crop)]

    def _step_starts(self) -> list[float]:
        """Where each stage starts, as a fraction of the steps (unrounded)."""
        if self.config.budget == "steps":  # exactly the configured fractions (no re-summing rounding)
            return [float(start) for start in self.config.starts]
        shares = np.diff([*self.config.starts, 1.0]) / np.asarray(self._costs())  # steps per stage, relative
        return [0.0, *np.cumsum(shares / shares.sum())[:-1].tolist()]

    def boundaries(self) -> list[int]:
        """The first optimizer step of each stage."""
        return [round(start * self.steps) for start in self._step_starts()]

    def compute_share(self) -> float:
        """The run's compute over the same steps at full size (``budget: compute``'s accounting,
        (B / crop)^2 per step, whatever ``budget`` places the stages by)."""
        starts = [*self.boundaries(), self.steps]
        costs = [(band / self.crop) ** 2 for band in self.config.bands(self.crop)]
        return sum((b - a) * c for a, b, c in zip(starts, starts[1:], costs)) / max(1, self.steps)

    def describe(self) -> str:
        """One line for the run's log: the stages, where they start, and the compute they cost."""
        return (f"{self.config.name}: stages of {self.config.bands(self.crop)} px start at steps "
                f"{self.boundaries()} (by {self.config.budget}); compute {self.compute_share():.2f} of "
                "the same steps at full size")

    def fraction(self, step: int) -> float:
        """The share of the budget (compute or steps, as ``budget`` says) spent before ``step``."""
        bounds, costs = self.boundaries(), self._costs()
        ends = [*bounds[1:], self.steps]
        spent = sum(c * max(0, min(step, end) - start) for start, end, c in zip(bounds, ends, costs))
        total = sum(c * (end - start) for start, end, c in zip(bounds, ends, costs))
        return min(1.0, max(0.0, spent / total)) if total else 1.0

    def at_step(self, step: int) -> StageSetting:
        """The setting of optimizer step ``step`` (0-based); steps past the budget stay in the last stage."""
        stage = bisect.bisect_right(self.boundaries(), step) - 1
        low, high = self.config.magnitude
        magnitude = int(round(low + (high - low) * self.fraction(step)))
        return StageSetting(stage, self.config.bands(self.crop)[stage], magnitude)

    def at_batch(self, batch: int) -> StageSetting:
        """The setting of this rank's ``batch``-th micro-batch since the start of training."""
        return self.at_step(batch // self.batches_per_step)


class CurriculumAugment:
    """Applies a batch's setting to its cropped images: RandAugment, then the low-frequency crop.

    RandAugment runs on the whole batch at once. Each image draws its own
    ``num_ops`` operations and signs from its own generator, as torchvision's
    RandAugment draws them for one image; then each (operation, sign) is
    applied in one batched call to the images that drew it, with
    torchvision's own operations at the batch's magnitude (those kernels work
    on any leading batch dimensions). The result is image for image what
    applying each image's draws alone gives (``tests/test_loader_curriculum.py``),
    at a fraction of the cost: one image at a time, torchvision's per-call
    overhead made RandAugment 4x the decode and crop of a 56 px image
    (docs/benchmarks.md).
    """

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self.crop = LOW_FREQUENCY[config.method]
        self._augmenter = None

    def _space(self):
        if self._augmenter is None:
            from torchvision.transforms import v2  # the loader's worker imports it once

            self._augmenter = v2.RandAugment(num_ops=self.config.num_ops)
        return self._augmenter

    def draws(self, rng: np.random.Generator) -> list[tuple[int, bool]]:
        """One image's RandAugment draws from its generator: (operation index, negated) per op."""
        ops = rng.integers(0, len(self._space()._AUGMENTATION_SPACE), self.config.num_ops)
        negate = rng.random(self.config.num_ops) < 0.5
        return [(int(o), bool(n)) for o, n in zip(ops, negate)]

    def batch(self, images: list[np.ndarray], setting: StageSetting,
              rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """(H, W, 3) uint8 images -> (band, band, 3) uint8; ``rngs[i]`` (image i's generator) draws its ops."""
        if self.config.num_ops and images:
            images = self._rand_augment(images, setting.magnitude, [self.draws(r) for r in rngs])
        return [self.crop(image, setting.band) for image in images]

    def __call__(self, image: np.ndarray, setting: StageSetting, rng: np.random.Generator) -> np.ndarray:
        """One image: :meth:`batch` of one."""
        return self.batch([image], setting, [rng])[0]

    def _rand_augment(self, images: list[np.ndarray], magnitude: int,
                      draws: list[list[tuple[int, bool]]]) -> list[np.ndarray]:
        import torch

        augmenter = self._space()
        names = list(augmenter._AUGMENTATION_SPACE)
        planar = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
        height, width = planar.shape[-2:]
        for op in range(self.config.num_ops):
            chosen = [d[op] for d in draws]
            for key in sorted(set(chosen)):
                name = names[key[0]]
                values, signed = augmenter._AUGMENTATION_SPACE[name]
                values = values(augmenter.num_magnitude_bins, height, width)
                value = 0.0 if values is None else float(values[magnitude]) * (-1 if signed and key[1] else 1)
                rows = torch.tensor([i for i, c in enumerate(chosen) if c == key])
                planar[rows] = augmenter._apply_image_or_video_transform(
                    planar[rows], name, value, interpolation=augmenter.interpolation, fill=augmenter._fill)
        return list(planar.numpy().transpose(0, 2, 3, 1))
