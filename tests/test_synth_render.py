"""Drawing: every catalogue entry renders, masks and paint agree, figures cover their
keypoints, and scene placement keeps every labelled object visible."""

import numpy as np
import pytest

from datascale.config import load_config
from data_tools.synth.config import RenderConfig, WorldConfig
from data_tools.synth.figures import (BODY_PLANS, KEYPOINTS, POSE_CLASSES, figure_keypoints, figure_mask,
                                     random_pose)
from data_tools.synth.render import SHAPES, TEXTURES, border, paint, shape_mask
from data_tools.synth.scenes import STYLES, compose
from data_tools.synth.vocab import (FIGURE_FAMILIES, SHAPE_FAMILIES, TEXTURES as TEXTURE_NAMES,
                                    build_classes, sample_leaves, stream_rng)


def test_every_catalogue_name_has_a_drawer():
    assert {name for name, _ in SHAPE_FAMILIES} == set(SHAPES)
    assert set(FIGURE_FAMILIES) == set(BODY_PLANS)
    assert {name for name, _ in TEXTURE_NAMES} == set(TEXTURES)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shapes_fill_a_plausible_part_of_their_circle(shape):
    mask = shape_mask(shape, (64, 64), (32.0, 32.0), 20.0, 1.0, 0.3)
    share = mask.sum() / (np.pi * 20 ** 2)
    assert 0.15 < share <= 1.05
    rows, cols = np.nonzero(mask)
    # Outlines reach at most 1.25 radii from the centre.
    assert rows.min() >= 7 and rows.max() <= 57 and cols.min() >= 7 and cols.max() <= 57
    slim = shape_mask(shape, (64, 64), (32.0, 32.0), 20.0, 0.75, 0.0)
    assert not np.array_equal(slim, shape_mask(shape, (64, 64), (32.0, 32.0), 20.0, 1.33, 0.0))


@pytest.mark.parametrize("texture", sorted(TEXTURES))
def test_paint_touches_only_the_mask_and_shows_the_trim(texture):
    canvas = np.zeros((64, 64, 3), dtype=np.float32)
    mask = shape_mask("square", (64, 64), (32.0, 32.0), 24.0, 1.0, 0.0)
    base, trim = np.array([200.0, 0.0, 0.0], np.float32), np.array([0.0, 0.0, 250.0], np.float32)
    paint(canvas, mask, texture, base, trim, (32.0, 32.0), 24.0, 0.2)
    assert (canvas[~mask] == 0).all() and (canvas[mask].sum(axis=1) > 0).all()
    trimmed = canvas[mask][:, 2] > 0
    assert trimmed.any(), "every texture shows the trim colour somewhere"
    if texture == "solid":
        assert (trimmed == border(mask)[mask]).all()


@pytest.mark.parametrize("plan_name", sorted(BODY_PLANS))
def test_figures_cover_their_keypoints(plan_name):
    plan = BODY_PLANS[plan_name]
    for i in range(20):
        rng = stream_rng(0, "figure-test", i)
        keypoints = figure_keypoints(plan, random_pose(rng), (48.0, 48.0), 60.0, rng.uniform(-0.3, 0.3))
        assert keypoints.shape == (len(KEYPOINTS), 2)
        mask = figure_mask(plan, keypoints, 60.0, 1.0, (96, 96))
        for x, y in keypoints:
            if 0 <= x < 96 and 0 <= y < 96:
                assert mask[int(y), int(x)]
        head, ankles = keypoints[0], keypoints[12:14]
        assert head[1] < ankles[:, 1].max(), "figures stand roughly upright"


def _wrists_above_shoulders(keypoints):
    """How many wrists are above (smaller y than) their shoulder: 0, 1 or 2."""
    return int((keypoints[6:8, 1] < keypoints[2:4, 1]).sum())


def test_a_figure_class_names_its_pose_and_the_pose_is_drawn():
    # Figure variants are poses, so pretraining labels say where the limbs are.
    plan = BODY_PLANS["strider"]
    raised = {}
    for pose in POSE_CLASSES:
        counts = [_wrists_above_shoulders(figure_keypoints(plan, random_pose(stream_rng(0, "p", i), pose),
                                                           (48.0, 48.0), 60.0, 0.0)) for i in range(40)]
        raised[pose.name] = set(counts)
    assert raised["arms-up"] == {2} and raised["one-arm-up"] == {1} and raised["arms-down"] == {0}
    assert raised["hands-on-hips"] == {0}
    config = load_config(WorldConfig, "world/demo")
    classes = build_classes(config.classes, config.seed)
    names = classes.vocabulary.names
    figure_leaves = [names[int(classes.leaf_ids[p])] for p in classes.leaves_of(True)]
    pose_names = {pose.name for pose in POSE_CLASSES}
    assert figure_leaves and all(name.split(" ")[0] in pose_names for name in figure_leaves)


def test_scenes_keep_every_object_visible_enough():
    config = load_config(WorldConfig, "world/tiny")
    classes = build_classes(config.classes, config.seed)
    render = RenderConfig(min_visible=0.6)
    placed = dropped = 0
    for i in range(60):
        rng = stream_rng(0, "scene-test", i)
        leaves = sample_leaves(rng, 4, classes.weights)
        scene = compose(classes, leaves, 96, STYLES["downstream"], render, rng)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert len(scene.objects) + scene.dropped == 4
        assert set(np.unique(scene.idmap)) <= {0, *[o.object_id for o in scene.objects]}
        for obj in scene.objects:
            assert scene.visible_mask(obj).sum() >= render.min_visible * obj.area
        placed += len(scene.objects)
        dropped += scene.dropped
    assert dropped < 0.1 * placed
