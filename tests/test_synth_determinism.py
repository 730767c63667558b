"""The world is a pure function of its config: the same seed gives identical bytes in every
file whatever the worker count; another seed gives another world."""

import hashlib

import pytest

from datascale.config import load_config
from data_tools.synth.config import WorldConfig
from data_tools.synth.world import generate_world

# Lineage files and the console log carry times and the writer's pid; everything else must match.
TIMESTAMPED = {"config.yaml", "complete.json", "console.log"}
SMALL = ["pretrain.images=240", "eval.images=20", "detection.train=8", "detection.val=4", "detection.test=20",
         "segmentation.train=8", "segmentation.val=4", "segmentation.test=20", "pose.train=8", "pose.val=4",
         "pose.test=20", "duplicates.fraction=0.3"]


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in TIMESTAMPED}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made = {}
    for name, seed, workers in (("one_worker", 0, 1), ("two_workers", 0, 2), ("other_seed", 1, 1)):
        out = tmp_path_factory.mktemp(name)
        config = load_config(WorldConfig, "world/tiny", SMALL + [f"seed={seed}"])
        generate_world(config, out, workers=workers)
        made[name] = _digests(out)
    return made


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(worlds):
    one, two = worlds["one_worker"], worlds["two_workers"]
    assert len(one) > 400
    assert one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []


def test_another_seed_gives_another_world(worlds):
    one, other = worlds["one_worker"], worlds["other_seed"]
    images = [name for name in one if name.endswith(".jpg") and name in other]
    assert images, "both worlds use the same file names"
    assert sum(one[name] != other[name] for name in images) >= 0.95 * len(images)
    for name in ("classes.json", "pretrain/labels.jsonl", "duplicates/planted.csv",
                 "detection/annotations/instances_test.json"):
        assert one[name] != other[name], name
