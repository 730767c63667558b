"""EfficientTrain++ in the loader: the low-frequency crop on a real photo, stages by step, exact resume."""

from __future__ import annotations

import math

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from datascale.errors import ConfigError
from data_tools.loader.curriculum import CurriculumAugment, CurriculumConfig, CurriculumSchedule, StageSetting
from data_tools.loader.frequency import LowFrequencyCrop, low_frequency_crop_fft, resize_low_frequency
from data_tools.loader.pipeline import LoaderConfig, make_train_loader
from test_shards_data import small_shards

# The Lanczos fast path against the paper's crop, measured on the photo below (grey levels of 255):
# mean 3.5-4.5, 99th percentile 14-17 at 56 and 224 px for bands of 0.6-0.8 of the side.
RESIZE_MEAN_TOLERANCE, RESIZE_P99_TOLERANCE = 5.0, 20.0


@pytest.fixture(scope="module")
def photo():
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


def _square(photo, side: int) -> np.ndarray:
    return np.asarray(photo.resize((side, side), Image.LANCZOS))


def _centred_spectrum(image: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(image.astype(np.float64), axes=(0, 1)), axes=(0, 1))


@pytest.mark.parametrize("side, band", [(56, 34), (56, 45), (57, 40), (224, 160)])
def test_low_frequency_crop_keeps_the_low_band_of_a_real_photo_and_drops_the_rest(photo, side, band):
    image = _square(photo, side)
    small = low_frequency_crop_fft(image, band)
    assert small.shape == (band, band, 3)
    # Keeps: the output's spectrum is the photo's central band (scaled), up to uint8 rounding.
    start = side // 2 - band // 2
    kept = _centred_spectrum(image)[start:start + band, start:start + band] * (band * band) / (side * side)
    got = _centred_spectrum(small)
    rounding = np.sqrt(band * band / 12.0) * 3  # the rms of uniform rounding noise, 3 sigma margin
    assert np.abs(got - kept).max() < rounding + 0.02 * np.abs(kept).max()
    # Drops: put the output back on the full grid by zero-padding its spectrum (ideal
    # interpolation); what it lacks against the photo is exactly the photo's high band.
    padded = np.zeros_like(_centred_spectrum(image))
    padded[start:start + band, start:start + band] = got * (side * side) / (band * band)
    restored = np.fft.ifft2(np.fft.ifftshift(padded, axes=(0, 1)), axes=(0, 1)).real
    spectrum = _centred_spectrum(image)
    high = spectrum.copy()
    high[start:start + band, start:start + band] = 0
    high_energy = (np.abs(high) ** 2).sum() / (side * side)        # Parseval: energy in pixel space
    missing = ((image - restored) ** 2).sum()
    assert high_energy > 1e-3 * (image.astype(float) ** 2).sum()  # the photo has detail to drop
    assert missing == pytest.approx(high_energy, rel=0.1)
    # The restored image has no energy outside the band (for an even band the real part also
    # holds the mirror of the band's Nyquist line, one bin beyond the window).
    rest = _centred_spectrum(restored)
    edge = band + 1 - band % 2
    rest[start:start + edge, start:start + edge] = 0
    assert (np.abs(rest) ** 2).sum() < 1e-12 * (np.abs(spectrum) ** 2).sum()


@pytest.mark.parametrize("side, band", [(56, 33), (56, 40), (57, 45), (64, 64), (224, 134)])
def test_matrix_form_gives_the_papers_crop_exactly(photo, side, band):
    image = _square(photo, side)
    assert np.array_equal(LowFrequencyCrop()(image, band), low_frequency_crop_fft(image, band))


@pytest.mark.parametrize("side, band", [(56, 34), (56, 45), (224, 134), (224, 179)])
def test_resize_fast_path_is_within_its_measured_tolerance(photo, side, band):
    image = _square(photo, side)
    diff = np.abs(resize_low_frequency(image, band).astype(float) - low_frequency_crop_fft(image, band))
    assert diff.mean() <= RESIZE_MEAN_TOLERANCE and np.percentile(diff, 99) <= RESIZE_P99_TOLERANCE
    # A resize on pixel centres (not the crop's sampling grid) is measurably further off.
    plain = np.asarray(Image.fromarray(image).resize((band, band), Image.LANCZOS)).astype(float)
    assert np.abs(plain - low_frequency_crop_fft(image, band)).mean() > diff.mean()


@pytest.mark.parametrize("change, key", [
    ({"starts": [0.1, 0.5, 0.7]}, "starts"), ({"starts": [0.0, 0.5, 0.5], "sizes": [0.5, 0.7, 1.0]}, "starts"),
    ({"sizes": [0.6, 0.8, 0.9]}, "sizes"), ({"sizes": [0.8, 0.6, 1.0]}, "sizes"),
    ({"sizes": [0.6, 1.0]}, "sizes"), ({"magnitude": [0, 31]}, "magnitude"), ({"num_ops": -1}, "num_ops"),
    ({"budget": "flops"}, "budget"),
])
def test_bad_schedules_name_their_key(change, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        CurriculumConfig(name="efficienttrain", **change).validate()


def test_stage_is_a_pure_function_of_the_step_and_one_step_has_one_size():
    schedule = CurriculumSchedule(CurriculumConfig(name="efficienttrain", starts=[0.0, 1 / 3, 5 / 6],
                                                   sizes=[0.5, 0.75, 1.0], magnitude=[0, 9], budget="steps"),
                                  crop=48, steps=12, batches_per_step=2)
    assert schedule.boundaries() == [0, 4, 10]
    stages = [schedule.at_step(s) for s in range(12)]
    assert [s.band for s in stages] == [24] * 4 + [36] * 6 + [48] * 2
    assert stages[0].magnitude == 0 and stages[6].magnitude == round(9 * 6 / 12) and stages[11].magnitude == 8
    assert schedule.at_step(40).band == 48  # past the budget: the last stage
    assert [schedule.at_batch(k).band for k in range(8, 10)] == [36, 36]  # step 4's two micro-batches


def test_step_budget_places_stages_at_exactly_the_configured_fractions_of_the_steps():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        inner = np.sort(rng.choice(np.arange(1, 20) / 20, size=int(rng.integers(1, 4)), replace=False))
        starts, steps = [0.0, *inner.tolist()], int(rng.integers(1, 41))
        sizes = [*np.linspace(0.5, 1.0, len(starts)).tolist()]
        schedule = CurriculumSchedule(CurriculumConfig(name="efficienttrain", starts=starts, sizes=sizes,
                                                       budget="steps"), crop=32, steps=steps, batches_per_step=1)
        assert schedule.boundaries() == [round(start * steps) for start in starts], (starts, steps)
        assert [schedule.fraction(s) for s in (0, steps // 2, steps)] == [0.0, (steps // 2) / steps, 1.0]


def test_compute_budget_gives_each_stage_its_share_of_the_compute_not_of_the_steps():
    # Half the compute at 16 px of a 32 px crop (a quarter of the cost per step), half at full size.
    schedule = CurriculumSchedule(CurriculumConfig(name="efficienttrain", starts=[0.0, 0.5], sizes=[0.5, 1.0],
                                                   magnitude=[0, 8]), crop=32, steps=100, batches_per_step=1)
    assert schedule.boundaries() == [0, 80]               # 80 steps x 1/4 = 20 steps x 1
    assert [schedule.at_step(s).band for s in (0, 79, 80, 99)] == [16, 16, 32, 32]
    assert math.isclose(schedule.compute_share(), (80 / 4 + 20) / 100)
    # The magnitude ramps with the compute spent: half of it is spent at step 80, not step 50.
    assert schedule.at_step(80).magnitude == 4 and schedule.at_step(40).magnitude == 2
    assert schedule.at_step(90).magnitude == 6 and schedule.at_step(100).magnitude == 8
    # The demo's schedule: 32 / 40 / 56 px of 56 from compute fractions 0 / 0.35 / 0.7.
    demo = CurriculumSchedule(CurriculumConfig(name="efficienttrain", starts=[0.0, 0.35, 0.7],
                                               sizes=[0.58, 0.72, 1.0]), crop=56, steps=4000, batches_per_step=1)
    bounds = [*demo.boundaries(), 4000]
    spent = [(b - a) * (band / 56) ** 2 for a, b, band in zip(bounds, bounds[1:], (32, 40, 56))]
    assert np.allclose(np.array(spent) / sum(spent), [0.35, 0.35, 0.30], atol=1e-3)
    assert 0.45 < demo.compute_share() < 0.52
    assert "[32, 40, 56] px start at steps [0, 2083, 3417] (by compute); compute 0.49" in demo.describe()


def test_augment_is_seeded_by_the_sample_rng_and_leaves_torch_rng_alone(photo):
    augment = CurriculumAugment(CurriculumConfig(name="efficienttrain"))
    image, setting = _square(photo, 48), StageSetting(1, 36, 9)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = augment(image, setting, np.random.default_rng(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(a, augment(image, setting, np.random.default_rng(5)))
    assert a.shape == (36, 36, 3) and a.dtype == np.uint8
    outs = {augment(image, setting, np.random.default_rng(s)).tobytes() for s in range(6)}
    assert len(outs) > 1


def _crops(photo, count: int, side: int = 48) -> list[np.ndarray]:
    """``count`` different real-photo squares: crops of the photo at several places and scales."""
    rng = np.random.default_rng(0)
    width, height = photo.size
    out = []
    for _ in range(count):
        size = int(rng.integers(min(width, height) // 3, min(width, height)))
        left, top = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        out.append(np.asarray(photo.crop((left, top, left + size, top + size)).resize((side, side))))
    return out


@pytest.mark.parametrize("magnitude", [0, 9, 30])
def test_batched_randaugment_gives_each_image_what_its_own_draws_give_alone(photo, magnitude):
    """Grouping images by operation must not mix them: contrast, equalize and autocontrast use
    per-image statistics, the geometric ops per-image grids."""
    augment = CurriculumAugment(CurriculumConfig(name="efficienttrain", num_ops=3))
    images, setting = _crops(photo, 48), StageSetting(2, 48, magnitude)
    together = augment.batch(images, setting, [np.random.default_rng(s) for s in range(48)])
    alone = [augment(image, setting, np.random.default_rng(s)) for s, image in enumerate(images)]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    draws = [augment.draws(np.random.default_rng(s)) for s in range(48)]
    assert len({d[0] for ds in draws for d in ds}) >= 12  # most of the 14 operations were exercised
    if magnitude:
        changed = sum(not np.array_equal(a, b) for a, b in zip(together, images))
        assert changed >= 40


def test_randaugment_draws_every_operation_alike_and_each_sign_half_the_time():
    augment = CurriculumAugment(CurriculumConfig(name="efficienttrain", num_ops=2))
    draws = [d for s in range(2100) for d in augment.draws(np.random.default_rng(s))]
    counts = np.bincount([op for op, _ in draws], minlength=14)
    assert len(counts) == 14 and abs(counts - 300).max() < 4 * np.sqrt(300)  # 4 sigma of a uniform draw
    assert abs(np.mean([negated for _, negated in draws]) - 0.5) < 0.03


# --------------------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return small_shards(tmp_path_factory.mktemp("curriculum"), images=40, per_shard=7)


def _cfg(workers: int) -> LoaderConfig:
    return LoaderConfig(batch_size=6, num_workers=workers, shuffle_buffer=10, image_size=16, seed=7)


def _schedule(steps: int = 10) -> CurriculumSchedule:
    # Steps 0-3 at 8 px, 4-6 at 12 px, 7-9 at 16 px; 2 micro-batches a step.
    config = CurriculumConfig(name="efficienttrain", starts=[0.0, 0.4, 0.7], sizes=[0.5, 0.75, 1.0], budget="steps")
    return CurriculumSchedule(config, crop=16, steps=steps, batches_per_step=2)


def _batches(shards, cfg, count, epoch=0, samples_seen=0):
    loader = make_train_loader(shards, cfg, num_classes=7, epoch=epoch, samples_seen=samples_seen,
                               curriculum=_schedule())
    out = []
    while len(out) < count:
        for batch in loader:
            out.append((dict(loader.state_dict()), batch))
            if len(out) == count:
                break
    return out


def test_batches_follow_the_stages(shards):
    batches = _batches(shards, _cfg(0), 20)
    sides = [b.images.shape[-1] for _, b in batches]
    assert sides == [8] * 8 + [12] * 6 + [16] * 6
    assert all(b.images.shape[0] == 6 for _, b in batches)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_is_exact_inside_a_stage_and_at_a_boundary(shards, workers):
    cfg = _cfg(workers)
    reference = _batches(shards, cfg, 20)
    # Cut after batch 7 (resume at step 4, the first of stage 1), 10 (inside it) and 13 (at stage 2).
    for cut in (7, 10, 13):
        state = reference[cut][0]
        resumed = _batches(shards, cfg, 19 - cut, epoch=state["epoch"], samples_seen=state["samples_seen"])
        for (_, a), (_, b) in zip(resumed, reference[cut + 1:]):
            assert a.keys == b.keys and torch.equal(a.images, b.images), f"cut {cut}"


def test_resume_is_exact_with_stages_placed_by_compute(shards):
    # The default placement: 8 / 12 / 16 px cost 1/4, 9/16 and 1 of a step, so the stages start at
    # steps 0, 7 and 9 of 10 (batches 0, 14 and 18 at 2 micro-batches a step).
    config = CurriculumConfig(name="efficienttrain", starts=[0.0, 0.4, 0.7], sizes=[0.5, 0.75, 1.0])
    schedule = CurriculumSchedule(config, crop=16, steps=10, batches_per_step=2)
    assert schedule.boundaries() == [0, 7, 9]

    def run(count, epoch=0, samples_seen=0):
        loader = make_train_loader(shards, _cfg(2), num_classes=7, epoch=epoch, samples_seen=samples_seen,
                                   curriculum=schedule)
        out = []
        while len(out) < count:
            for batch in loader:
                out.append((dict(loader.state_dict()), batch))
                if len(out) == count:
                    break
        return out

    reference = run(20)
    assert [b.images.shape[-1] for _, b in reference] == [8] * 14 + [12] * 4 + [16] * 2
    for cut in (13, 15):  # resume at the first batch of stage 1, and inside it
        state = reference[cut][0]
        resumed = run(19 - cut, epoch=state["epoch"], samples_seen=state["samples_seen"])
        for (_, a), (_, b) in zip(resumed, reference[cut + 1:]):
            assert a.keys == b.keys and torch.equal(a.images, b.images), f"cut {cut}"


def test_without_a_curriculum_batches_are_unchanged(shards):
    plain = make_train_loader(shards, _cfg(0), num_classes=7)
    first = next(iter(plain))
    assert first.images.shape[-1] == 16
    with pytest.raises(ConfigError, match="curriculum"):
        make_train_loader(shards, _cfg(0), num_classes=7,
                          curriculum=CurriculumSchedule(CurriculumConfig(), crop=32, steps=5, batches_per_step=1))
