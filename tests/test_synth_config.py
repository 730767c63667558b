"""The world config: built-in configs load, impossible values are ConfigErrors naming the key,
and the label-noise model hits the configured precision and recall."""

import numpy as np
import pytest

from datascale.config import load_config
from datascale.errors import ConfigError
from data_tools.synth.config import LabelsConfig, WorldConfig
from data_tools.synth.noise import NoisePlan, corrupt_labels
from data_tools.synth.vocab import (build_classes, object_count_pmf, poisson_rate_for_mean, sample_leaves,
                                    stream_rng)


@pytest.mark.parametrize("name", ["world/demo", "world/tiny"])
def test_builtin_world_configs_load(name):
    config = load_config(WorldConfig, name)
    assert config.classes.families == 20
    assert config.classes.depth >= 4


@pytest.mark.parametrize("override, key", [
    ("labels.noise_rate=1.5", "labels.noise_rate"),
    ("labels.noise_rate=-0.1", "labels.noise_rate"),
    ("labels.missing_rate=1.0", "labels.missing_rate"),
    ("labels.cardinality=0.5", "labels.cardinality"),
    ("classes.depth=0", "classes.depth"),
    ("classes.colours=0", "classes.colours"),
    ("classes.zipf_exponent=-1", "classes.zipf_exponent"),
    ("duplicates.fraction=1.5", "duplicates.fraction"),
    ("duplicates.fraction=-0.2", "duplicates.fraction"),
    ("duplicates.transforms=[resize,smudge]", "duplicates.transforms"),
    ("pretrain.image_size=8", "pretrain.image_size"),
    ("detection.image_size=48", "detection.image_size"),
    ("pose.test=0", "pose.test"),
    ("segmentation.void_border=9", "segmentation.void_border"),
])
def test_impossible_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(WorldConfig, "world/tiny", [override])
    assert key in str(info.value)


def test_zero_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="classes.shape_families"):
        load_config(WorldConfig, "world/tiny", ["classes.shape_families=0", "classes.figure_families=0"])


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="labels.noise_rat.*noise_rate"):
        load_config(WorldConfig, "world/tiny", ["labels.noise_rat=0.1"])


def test_too_many_planted_copies_are_refused():
    with pytest.raises(ConfigError, match="duplicates.fraction"):
        load_config(WorldConfig, "world/tiny", ["pretrain.images=20", "duplicates.fraction=1.0"])


def _measure(plan, classes, images=20000):
    given = true = correct = empty = 0
    for i in range(images):
        rng = stream_rng(0, "noise-test", i)
        truth = sample_leaves(rng, 1 + int(rng.poisson(0.26)), classes.weights)
        noisy, counts = corrupt_labels(truth, rng, plan, classes)
        assert len(set(noisy)) == len(noisy)
        assert counts["kept"] + counts["swapped"] + counts["dropped"] == len(truth)
        given += len(noisy)
        true += len(truth)
        correct += len(set(noisy) & set(truth))
        empty += not noisy
    return 1 - correct / given, 1 - correct / true, empty


@pytest.fixture(scope="module")
def demo_classes():
    return build_classes(load_config(WorldConfig, "world/demo").classes, seed=0)


@pytest.mark.parametrize("noise_rate, missing_rate, share, allow_unlabelled", [
    (0.2, 0.1, 0.3, False), (0.2, 0.1, 0.0, False), (0.4, 0.05, 0.5, False), (0.05, 0.3, 0.9, True),
    (0.0, 0.0, 0.5, False),
])
def test_noise_model_hits_configured_precision_and_recall(demo_classes, noise_rate, missing_rate, share,
                                                           allow_unlabelled):
    cfg = LabelsConfig(noise_rate=noise_rate, missing_rate=missing_rate, confusion_share=share,
                       allow_unlabelled=allow_unlabelled)
    plan = NoisePlan.from_config(cfg, object_count_pmf(poisson_rate_for_mean(1.26, 4), 4))
    assert plan.feasible
    assert plan.keep + plan.swap + plan.drop == pytest.approx(1.0)
    assert plan.swap <= missing_rate + 1e-12
    noise, missing, empty = _measure(plan, demo_classes)
    assert noise == pytest.approx(noise_rate, abs=0.01)
    assert missing == pytest.approx(missing_rate, abs=0.01)
    assert (empty == 0) == (not allow_unlabelled or missing_rate == 0)


def test_rates_that_cannot_hold_with_a_label_per_image_are_flagged(demo_classes):
    # 30% missing but only ~5% wrong labels: single-object images that lose their label need a wrong one.
    cfg = LabelsConfig(noise_rate=0.05, missing_rate=0.3)
    plan = NoisePlan.from_config(cfg, object_count_pmf(poisson_rate_for_mean(1.26, 4), 4))
    assert not plan.feasible
    noise, missing, empty = _measure(plan, demo_classes, images=3000)
    assert empty == 0 and noise > 0.1
    assert missing == pytest.approx(0.3, abs=0.02)


def test_confusions_are_look_alikes(demo_classes):
    classes = demo_classes
    plan = NoisePlan(keep=0.0, swap=1.0, drop=0.0, spurious=0.0)
    for i in range(300):
        rng = stream_rng(1, "swap-test", i)
        leaf = sample_leaves(rng, 1, classes.weights)[0]
        (swapped,), counts = corrupt_labels([leaf], rng, plan, classes)
        assert counts["swapped"] == 1 and swapped != leaf
        same = (classes.family[swapped], classes.colour[swapped], classes.texture[swapped])
        assert same == (classes.family[leaf], classes.colour[leaf], classes.texture[leaf])


def test_object_count_matches_label_cardinality():
    lam = poisson_rate_for_mean(1.26, 4)
    counts = np.minimum(1 + np.random.default_rng(0).poisson(lam, 200000), 4)
    assert counts.mean() == pytest.approx(1.26, abs=0.01)
    assert poisson_rate_for_mean(1.0, 4) == 0.0
