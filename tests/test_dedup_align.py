"""Crop alignment: an off-grid crop of a real photo is found at its box; distinct photos stay apart."""

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datascale.config import load_config
from datascale.errors import ConfigError
from data_tools.dedup.align import Aligner, Box, align_neighbours, grid_boxes
from data_tools.dedup.embedders import make_embedder
from data_tools.dedup.index import Neighbours
from data_tools.dedup.schema import AlignConfig, DedupConfig
from data_tools.dedup.views import parse_views
from datascale.cli import main

TRUE_BOX = (0.17, 0.04, 0.93, 0.83)  # left, top, right, bottom: 76% x 79%, between the view grid's crops


@pytest.fixture(scope="module")
def pixels():
    return make_embedder(load_config(DedupConfig, "dedup/tiny").embedder)


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()[..., :3])


def _crop(image: Image.Image, box=TRUE_BOX) -> Image.Image:
    w, h = image.size
    return image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def _vector(embedder, image: Image.Image) -> np.ndarray:
    return embedder.embed(embedder.preparer()(image)[None])


def _views_score(embedder, image: Image.Image, target: np.ndarray) -> float:
    views = parse_views(["identity", "mirror", "crop:0.9", "crop:0.8", "rotate:6"])
    prepared = np.stack([embedder.preparer()(view(image)) for view in views])
    return float((embedder.embed(prepared) @ target.T).max())


def _iou(box: Box, true) -> float:
    left, top, right, bottom = box.cx - box.w / 2, box.cy - box.h / 2, box.cx + box.w / 2, box.cy + box.h / 2
    inter = max(0, min(right, true[2]) - max(left, true[0])) * max(0, min(bottom, true[3]) - max(top, true[1]))
    union = box.w * box.h + (true[2] - true[0]) * (true[3] - true[1]) - inter
    return inter / union


def test_an_off_grid_crop_is_found_at_its_box(pixels):
    photo = _photo("astronaut")
    copy = _vector(pixels, _crop(photo).resize((300, 280)))  # cropped, then resized by the host
    before = _views_score(pixels, photo, copy)
    scores, boxes = Aligner(pixels, AlignConfig()).align(photo, copy)
    assert scores[0] > before + 0.03 and scores[0] >= 0.97, (before, scores[0])
    assert _iou(boxes[0], TRUE_BOX) > 0.8, boxes[0]


def test_a_mirrored_crop_is_found_through_the_mirrored_image(pixels):
    photo = _photo("coffee")
    copy = _vector(pixels, _crop(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    aligner = Aligner(pixels, AlignConfig())
    straight, _ = aligner.align(photo, copy)
    mirrored, _ = aligner.align(photo, copy, mirrored=True)
    assert mirrored[0] >= 0.97 and mirrored[0] > straight[0] + 0.1


def test_distinct_photos_stay_far_apart_after_alignment(pixels):
    aligner = Aligner(pixels, AlignConfig())
    targets = np.concatenate([_vector(pixels, _photo(name)) for name in ("chelsea", "rocket", "coffee")])
    scores, _ = aligner.align(_photo("astronaut"), targets)
    assert scores.max() < 0.6, scores


def test_grid_boxes_stay_inside_the_image_within_the_size_and_aspect_limits():
    boxes = grid_boxes(0.6, 5, 1.35)
    assert Box(0.5, 0.5, 1.0, 1.0) in boxes
    for box in boxes:
        assert 0.6 - 1e-9 <= min(box.w, box.h) and max(box.w, box.h) <= 1.0
        assert max(box.w / box.h, box.h / box.w) <= 1.35 + 1e-9
        assert box.cx - box.w / 2 >= -1e-9 and box.cx + box.w / 2 <= 1 + 1e-9
    assert Box(0.95, 0.1, 0.7, 0.9).clamp(0.75) == Box(0.625, 0.45, 0.75, 0.9)
    assert Box(0.5, 0.5, 0.5, 0.5).pixels(200, 100) == (50, 25, 150, 75)


class _Store:
    def __init__(self, vectors):
        self._vectors = np.asarray(vectors, dtype=np.float32)

    def vectors(self, ids):
        return self._vectors[np.asarray(ids)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_align_neighbours_raises_only_borderline_pairs_and_reorders_rows(pixels):
    photo = _photo("astronaut")
    crop, other = _vector(pixels, _crop(photo))[0], _vector(pixels, _photo("chelsea"))[0]
    store = _Store([crop, other, crop])
    views = parse_views(["identity", "mirror"])
    # row 0: the crop (pool 0) ranked second at a borderline score, a distinct photo first;
    # row 1: the same crop at 0.45, below min_score: left as it is; row 2: undecodable bytes.
    found = Neighbours(ids=np.array([[1, 0], [2, -1], [0, -1]]),
                       scores=np.array([[0.8, 0.7], [0.45, -np.inf], [0.9, -np.inf]], np.float32),
                       views=np.zeros((3, 2), np.int16))
    images = [_png(photo), _png(photo), b"not an image"]
    aligned = align_neighbours(found, images.__getitem__, store, views, pixels, AlignConfig(),
                               progress=False)
    assert found.ids[0].tolist() == [0, 1] and found.scores[0, 0] >= 0.97
    assert found.scores[0, 1] == pytest.approx(0.8)  # the distinct photo did not gain
    assert (0, 0) in aligned.raised and aligned.raised[(0, 0)][0] == pytest.approx(0.7)
    assert found.scores[1, 0] == pytest.approx(0.45)
    assert aligned.stats["images_aligned"] == 1 and aligned.stats["images_unreadable"] == 1
    assert aligned.stats["pairs_aligned"] == 2


def test_only_the_best_max_pairs_of_a_row_are_aligned(pixels):
    photo = _photo("astronaut")
    crop, other = _vector(pixels, _crop(photo))[0], _vector(pixels, _photo("chelsea"))[0]
    found = Neighbours(ids=np.array([[1, 0]]), scores=np.array([[0.8, 0.7]], np.float32),
                       views=np.zeros((1, 2), np.int16))
    aligned = align_neighbours(found, lambda row: _png(photo), _Store([crop, other]),
                               parse_views(["identity"]), pixels, AlignConfig(max_pairs=1),
                               progress=False)
    assert aligned.stats["pairs_aligned"] == 1 and not aligned.raised  # the crop was second
    assert found.ids[0].tolist() == [1, 0]


@pytest.mark.parametrize("setting, message", [
    ("audit.align.min_crop=1.2", r"audit\.align\.min_crop: must be in \(0, 1\)"),
    ("audit.align.skip_above=0.3", r"audit\.align\.skip_above: must be in \[min_score, 1\]"),
    ("audit.align.sizes=1", r"audit\.align\.sizes: must be at least 2"),
    ("audit.align.max_pairs=0", r"audit\.align\.max_pairs: must be at least 1"),
])
def test_bad_alignment_settings_are_config_errors(setting, message, tmp_path, capsys):
    assert main(["dedup", "audit", str(tmp_path / "index"), "--testset", str(tmp_path),
                 "--out", str(tmp_path / "audit"), "-c", "dedup/tiny", "--set", setting]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    with pytest.raises(ConfigError):
        AlignConfig(min_crop=0.0).validate()
