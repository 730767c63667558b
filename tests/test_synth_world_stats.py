"""Statistics of a generated tiny world: cardinality, long tail, measured noise, hierarchy,
look-alike siblings, the dense eval set, and the files labels.jsonl points at."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from datascale.config import load_config
from data_tools.labels import Vocabulary, class_frequencies, noise_stats
from data_tools.synth.config import WorldConfig
from data_tools.synth.vocab import LEVELS_AT_DEPTH, build_classes, sample_leaves, stream_rng
from data_tools.synth.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    config = load_config(WorldConfig, "world/tiny")
    state, summary = generate_world(config, out, workers=1)
    assert state == "written"
    return out, config, summary


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_cardinality_is_near_configured(world):
    out, config, summary = world
    rows = _jsonl(out / "pretrain" / "labels.jsonl")
    assert len(rows) == config.pretrain.images
    mean_true = np.mean([len(r["true_labels"]) for r in rows])
    assert mean_true == pytest.approx(config.labels.cardinality, abs=0.08)
    assert all(r["true_labels"] for r in rows), "every image shows at least one labelled object"
    assert all(r["labels"] for r in rows), "like JFT, every image has at least one given label"
    assert summary["pretrain"]["images_without_noisy_labels"] == 0
    assert summary["pretrain"]["labels_per_image_true"] == pytest.approx(mean_true, abs=1e-6)


def test_measured_noise_rate_is_within_tolerance(world):
    out, config, summary = world
    rows = _jsonl(out / "pretrain" / "labels.jsonl")
    stats = noise_stats((r["labels"], r["true_labels"]) for r in rows)
    assert stats.noise_rate == pytest.approx(config.labels.noise_rate, abs=0.04)
    assert 1 - stats.recall == pytest.approx(config.labels.missing_rate, abs=0.04)
    assert summary["pretrain"]["noise_rate_measured"] == pytest.approx(stats.noise_rate, abs=1e-6)
    outcomes = summary["pretrain"]["label_outcomes"]
    assert outcomes["swapped"] > 0 and outcomes["spurious"] > 0 and outcomes["dropped"] > 0
    assert summary["pretrain"]["noise_rates_feasible"]


def test_wrong_labels_mix_sibling_confusions_and_spurious_extras(world):
    out, config, summary = world
    vocab = Vocabulary.load(out / "classes.json")
    rows = _jsonl(out / "pretrain" / "labels.jsonl")
    wrong = siblings_of_missed = 0
    for r in rows:
        missed = set(r["true_labels"]) - set(r["labels"])
        for label in set(r["labels"]) - set(r["true_labels"]):
            wrong += 1
            siblings_of_missed += any(vocab.parents[label] == vocab.parents[m] for m in missed)
    share = siblings_of_missed / wrong
    assert share == pytest.approx(summary["pretrain"]["confusion_share_measured"], abs=0.1)
    assert share == pytest.approx(config.labels.confusion_share, abs=0.15)


def test_class_frequency_has_a_long_tail(world):
    out, config, summary = world
    vocab = Vocabulary.load(out / "classes.json")
    rows = _jsonl(out / "pretrain" / "labels.jsonl")
    counts = class_frequencies([r["true_labels"] for r in rows], len(vocab))[vocab.leaves()]
    counts = np.sort(counts)[::-1]
    assert counts[0] >= 8 * np.median(counts)
    assert (counts < 20).sum() >= len(counts) // 2
    assert summary["pretrain"]["tail_true"]["classes_lt_20"] == int(((counts > 0) & (counts < 20)).sum())


def test_demo_scale_has_many_rare_classes():
    # Class sampling alone (no rendering) at the demo's scale: many leaves get < 20 images.
    config = load_config(WorldConfig, "world/demo")
    classes = build_classes(config.classes, config.seed)
    counts = Counter()
    for i in range(config.pretrain.images):
        rng = stream_rng(0, "tail-test", i)
        counts.update(sample_leaves(rng, 1 + int(rng.poisson(0.26)), classes.weights))
    per_class = np.array([counts.get(p, 0) for p in range(classes.num_leaves)])
    assert (per_class < 20).sum() >= 60
    assert per_class.max() >= 1000


def test_hierarchy_is_deep_and_siblings_share_attributes(world):
    out, _, summary = world
    records = json.loads((out / "classes.json").read_text())
    vocab = Vocabulary.from_records(records)
    assert vocab.max_depth() >= 4 and summary["classes"]["hierarchy_depth"] == vocab.max_depth()
    assert all({"id", "name", "parent", "depth"} <= set(r) for r in records)
    for rec in records:
        assert rec["depth"] == vocab.depth(rec["id"])
        if rec["parent"] is not None:
            parent = records[rec["parent"]]
            shared = {k: v for k, v in parent.items() if k in ("group", "family", "colour", "texture")}
            assert shared and all(rec[k] == v for k, v in shared.items()), (rec, parent)
    leaves = set(vocab.leaves())
    assert all(records[c]["level"] == "leaf" for c in leaves)
    rows = _jsonl(out / "pretrain" / "labels.jsonl")
    assert all(set(r["labels"]) <= leaves and set(r["true_labels"]) <= leaves for r in rows)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_setting_sets_hierarchy_levels(depth):
    config = load_config(WorldConfig, "world/tiny", [f"classes.depth={depth}"])
    classes = build_classes(config.classes, config.seed)
    assert classes.vocabulary.max_depth() == depth == len(LEVELS_AT_DEPTH[depth])
    assert classes.num_leaves == config.classes.leaves


def test_eval_set_is_dense_correct_and_covers_many_classes(world):
    out, config, summary = world
    rows = _jsonl(out / "eval" / "labels.jsonl")
    assert len(rows) == config.eval.images
    assert all(r["labels"] == r["true_labels"] and r["labels"] for r in rows)
    present = {c for r in rows for c in r["labels"]}
    assert len(present) >= 0.8 * config.classes.leaves
    assert summary["eval"]["leaf_classes_present"] == len(present)


def test_labels_jsonl_points_at_jpegs_of_the_configured_size(world):
    out, config, _ = world
    for pool, size in (("pretrain", config.pretrain.image_size), ("eval", config.eval.image_size)):
        rows = _jsonl(out / pool / "labels.jsonl")
        assert len({r["key"] for r in rows}) == len(rows)
        for r in rows[::37]:
            path = out / pool / r["image"]
            assert path.parent.parent.name == "images" and len(path.parent.name) == 4
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.size == (size, size)


def test_world_json_counts_match_files(world):
    out, config, summary = world
    assert summary == json.loads((out / "world.json").read_text())
    images = summary["images"]
    assert images["pretrain"] == config.pretrain.images and images["eval"] == config.eval.images
    for dataset in ("detection", "pose"):
        for split in ("train", "val", "test"):
            assert len(list((out / dataset / "images" / split).glob("*.jpg"))) == images[dataset][split]
    assert len(list((out / "segmentation" / "JPEGImages").glob("*.jpg"))) == sum(images["segmentation"].values())
    card = (out / "card.md").read_text()
    assert f"{summary['pretrain']['noise_rate_measured']:.3f}" in card
    assert (out / "complete.json").is_file()
