"""Near-duplicates of real photos are found in the pool; distinct real photos are not.

The pool holds transformed copies (resize, crop, flip, JPEG re-encode, colour
jitter) of some real photos plus other, unrelated real photos; the test set
holds the originals plus photos that have no copy. Runs the real commands.
"""

import io
import json

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images

from data_tools.ranks import sanitize_key
from datascale.cli import main


def _photos() -> dict[str, np.ndarray]:
    photos = {name: getattr(skimage.data, name)() for name in (
        "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
        "retina", "camera", "coins", "moon", "page")}
    china, flower = load_sample_images().images
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    photos.update(china=china, flower=flower, hopper=hopper)
    return {k: np.stack([v] * 3, -1) if v.ndim == 2 else v[..., :3] for k, v in photos.items()}


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image: Image.Image) -> Image.Image:  # keeps ~75% of the area, off-centre
    w, h = image.size
    return image.crop((int(0.12 * w), int(0.02 * h), int(0.98 * w), int(0.89 * h)))


def _off_grid_crop(image: Image.Image) -> Image.Image:
    """61% of the area at an aspect change, between the query views' crops; then resized.

    Through the views alone it scores below the default threshold; crop
    alignment finds its box.
    """
    w, h = image.size
    crop = image.crop((int(0.21 * w), int(0.03 * h), int(0.93 * w), int(0.88 * h)))
    return crop.resize((crop.width * 2 // 3, crop.height * 2 // 3), Image.BILINEAR)


def _jitter(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(1.15)
    image = ImageEnhance.Contrast(image).enhance(0.85)
    image = ImageEnhance.Color(image).enhance(1.3)
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 6) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


COPIES = {  # test photo -> transform of its copy in the pool
    "astronaut": ("resize", lambda im: im.resize((im.width // 3, im.height // 3), Image.BILINEAR), 90),
    "coffee": ("crop", _crop, 90),
    "chelsea": ("flip", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT), 90),
    "rocket": ("jpeg", lambda im: im, 15),
    "china": ("colour", _jitter, 90),
    "retina": ("crop", _crop, 90),
    "hopper": ("crop", _off_grid_crop, 85),
}
POOL_ONLY = ["hubble_deep_field", "immunohistochemistry", "camera", "page"]
# test images that are crops of a larger pool photo: found through the pool's stored centre
# crop (embedder.pool_views) and crops of the pool image (pool_align.py)
REVERSE = {
    "camera_centre80": ("camera", lambda im: im.crop((round(0.1 * im.width), round(0.1 * im.height),
                                                      round(0.9 * im.width), round(0.9 * im.height)))),
    "immuno_offcentre80": ("immunohistochemistry",
                           lambda im: im.crop((round(0.04 * im.width), round(0.06 * im.height),
                                               round(0.84 * im.width), round(0.86 * im.height)))),
}
TEST_ONLY = ["coins", "moon", "flower"]   # distinct photos with no copy in the pool


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    photos = {k: Image.fromarray(v) for k, v in _photos().items()}
    pool_dir, test_dir = root / "pool_images" / "photo", root / "testset"
    pool_dir.mkdir(parents=True)
    test_dir.mkdir()
    for name, (_, transform, quality) in COPIES.items():
        (pool_dir / f"copy_{name}.jpg").write_bytes(_jpeg(transform(photos[name]), quality))
    for name in POOL_ONLY:
        (pool_dir / f"{name}.jpg").write_bytes(_jpeg(photos[name]))
        # its halves are distinct pool images too: same photographer, other content
        w, h = photos[name].size
        (pool_dir / f"{name}_left.jpg").write_bytes(_jpeg(photos[name].crop((0, 0, w // 2, h))))
    for name in [*COPIES, *TEST_ONLY]:
        (test_dir / f"{name}.jpg").write_bytes(_jpeg(photos[name], 95))
    for name, (source, crop) in REVERSE.items():
        (test_dir / f"{name}.jpg").write_bytes(_jpeg(crop(photos[source]), 95))
    assert main(["-q", "shards", "write", str(root / "pool_images"), "--out", str(root / "shards"),
                 "--set", "samples_per_shard=5", "--set", "workers=1"]) == 0
    assert main(["-q", "dedup", "index", str(root / "shards"), "--out", str(root / "index"),
                 "-c", "dedup/tiny"]) == 0
    assert main(["-q", "dedup", "audit", str(root / "index"), "--testset", f"photos={test_dir}",
                 "--out", str(root / "audit"), "-c", "dedup/tiny"]) == 0
    return root / "audit" / "photos"


def test_every_copy_is_found_with_its_pool_key(audited):
    table = pd.read_parquet(audited / "duplicates.parquet")
    best = table[table["rank"] == 1].set_index("test_id")
    for name, (transform, _, _) in COPIES.items():
        row = best.loc[f"{name}.jpg"]
        assert row["pretrain_key"] == sanitize_key(f"photo/copy_{name}"), (name, transform)
        assert row["is_duplicate"], f"{transform} copy of {name} scored {row['score']:.3f}"
    # the off-grid crop is found only through crop alignment, which names its box
    threshold = json.loads((audited / "summary.json").read_text())["threshold"]
    hopper = best.loc["hopper.jpg"]
    assert hopper["retrieval_score"] < threshold <= hopper["score"]
    assert hopper["view"].startswith("aligned0.7")


def test_a_test_image_cropped_from_a_larger_pool_photo_is_found(audited):
    table = pd.read_parquet(audited / "duplicates.parquet")
    best = table[table["rank"] == 1].set_index("test_id")
    for name, (source, _) in REVERSE.items():
        row = best.loc[f"{name}.jpg"]
        assert row["pretrain_key"] == sanitize_key(f"photo/{source}") and row["is_duplicate"], (name, row)
    # the off-centre crop needed the pool image's own crop box
    assert best.loc["immuno_offcentre80.jpg", "view"].startswith("pool-aligned")


def test_distinct_photos_are_not_flagged(audited):
    table = pd.read_parquet(audited / "duplicates.parquet")
    flagged = set(table.loc[table["is_duplicate"], "test_id"])
    assert flagged == {f"{name}.jpg" for name in [*COPIES, *REVERSE]}
    summary = json.loads((audited / "summary.json").read_text())
    assert summary["images_with_duplicate"] == len(COPIES) + len(REVERSE)
    # the margin: every copy scores above every distinct photo's best match
    best = table[table["rank"] == 1].set_index("test_id")["score"]
    copies = best[[f"{n}.jpg" for n in COPIES]]
    distinct = best[[f"{n}.jpg" for n in TEST_ONLY]]
    assert copies.min() > distinct.max() + 0.05


def test_cleaned_folder_holds_only_the_distinct_photos(audited):
    kept = sorted(p.name for p in (audited / "clean" / "testset").iterdir())
    assert kept == sorted(f"{name}.jpg" for name in TEST_ONLY)
