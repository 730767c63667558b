"""Dedup embedders and query views: the pixels descriptor's invariances, decoding, the backbone embedder."""

import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance

from datascale.config import load_config
from datascale.errors import ConfigError
from data_tools.dedup.embedders import EMBEDDERS, make_embedder
from data_tools.dedup.prepare import ImageDecodeError, PreparePool, decode_image, embed_prepared
from data_tools.dedup.schema import DedupConfig
from data_tools.dedup.views import parse_views
from datascale.cli import main


def _embed(embedder, images, views=None, workers=0):
    items = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        items.append((i, buffer.getvalue()))
    with PreparePool(embedder, views, workers) as pool:
        batches = list(embed_prepared(embedder, pool.map(items), batch_size=3))
    return np.concatenate([b.vectors for b in batches]), [f for b in batches for f in b.failures]


@pytest.fixture(scope="module")
def pixels():
    return make_embedder(load_config(DedupConfig, "dedup/tiny").embedder)


def test_pixels_vectors_are_unit_and_ignore_brightness_and_size(pixels):
    photo = Image.fromarray(skimage.data.astronaut())
    other = Image.fromarray(skimage.data.coffee())
    brighter = ImageEnhance.Brightness(photo).enhance(1.2)
    smaller = photo.resize((200, 200), Image.BILINEAR)
    vectors, failures = _embed(pixels, [photo, brighter, smaller, other])
    v = vectors[:, 0]
    assert not failures and v.shape == (4, pixels.dim) and pixels.dim == 128
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.97 and v[0] @ v[2] > 0.97 and v[0] @ v[3] < 0.5


def test_the_mirror_view_matches_a_flipped_copy(pixels):
    photo = Image.fromarray(skimage.data.chelsea())
    flipped = photo.transpose(Image.FLIP_LEFT_RIGHT)
    queries, _ = _embed(pixels, [photo], parse_views(["identity", "mirror"]))
    pool, _ = _embed(pixels, [flipped])
    assert queries[0, 1] @ pool[0, 0] > 0.99 > queries[0, 0] @ pool[0, 0] + 0.2


def test_worker_processes_give_the_same_vectors(pixels):
    images = [Image.fromarray(skimage.data.rocket()), Image.fromarray(skimage.data.coffee())]
    inline, _ = _embed(pixels, images, parse_views(["identity", "crop:0.8"]))
    pooled, _ = _embed(pixels, images, parse_views(["identity", "crop:0.8"]), workers=2)
    np.testing.assert_array_equal(inline, pooled)
    assert inline.shape[1] == 10  # identity + a 3 x 3 grid of crops


def test_undecodable_bytes_are_failures_with_a_reason(pixels):
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        decode_image(b"no image here")
    good = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(good, format="JPEG")
    truncated = good.getvalue()[:400]
    with pytest.raises(ImageDecodeError):
        decode_image(truncated)
    with PreparePool(pixels) as pool:
        results = list(pool.map([("ok", good.getvalue()), ("cut", truncated)]))
    assert results[0][2] is None and results[1][1] is None and results[1][2]


def test_unknown_views_and_embedders_are_config_errors():
    with pytest.raises(ConfigError, match="unknown view 'zoom'"):
        parse_views(["identity", "zoom"])
    with pytest.raises(ConfigError, match=r"crop needs a linear size in \(0, 1\)"):
        parse_views(["crop:1.5"])
    wide = parse_views(["crop:0.9x0.8"])
    assert len(wide) == 9 and wide[0].name == "crop0.9x0.8@0,0"
    assert wide[0](Image.new("RGB", (100, 50))).size == (90, 40)
    with pytest.raises(ConfigError, match="registered: pixels, backbone"):
        load_config(DedupConfig, "dedup/tiny", ["embedder.name=sift"])
    with pytest.raises(ConfigError, match="backbone.checkpoint"):
        load_config(DedupConfig, "dedup/tiny", ["embedder.name=backbone"])
    assert set(EMBEDDERS) == {"pixels", "backbone"}


def test_backbone_embedder_with_pca_builds_an_index_and_guards_its_checkpoint(tmp_path, capsys):
    from scaling.models.backbones import build_backbone
    from scaling.models.files import save_backbone
    from data_tools.shards.write import ShardsConfig, write_shards
    import torch
    torch.manual_seed(0)
    save_backbone(build_backbone("resnet_demo"), tmp_path / "run", {"num_classes": 3})
    photo = skimage.data.astronaut()
    (tmp_path / "images" / "crops").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    for i in range(24):
        crop = Image.fromarray(photo[16 * i:16 * i + 96, 12 * i:12 * i + 96])
        crop.save(tmp_path / "images" / "crops" / f"c{i:02d}.jpg", quality=92)
        if i in (5, 17):
            crop.save(tmp_path / "test" / f"c{i:02d}.jpg", quality=92)
    write_shards(tmp_path / "images", tmp_path / "shards", ShardsConfig(samples_per_shard=8, workers=1),
                 progress=False)
    common = ["-c", "dedup/tiny", "--set", "embedder.backbone.pca_dim=8",
              "--set", "embedder.backbone.pca_fit_images=20", "--set", "embedder.backbone.image_size=64"]
    assert main(["-q", "dedup", "index", str(tmp_path / "shards"), "--out", str(tmp_path / "index"),
                 "--embedder", "backbone", "--checkpoint", str(tmp_path / "run" / "backbone.pt"),
                 *common]) == 0
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["embedder"]["name"] == "backbone" and meta["embedder"]["dim"] == 8
    assert (tmp_path / "index" / "pca.npz").is_file()
    assert main(["-q", "dedup", "audit", str(tmp_path / "index"), "--testset", str(tmp_path / "test"),
                 "--out", str(tmp_path / "audit"), "--threshold", "0.99", *common]) == 0
    summary = json.loads((tmp_path / "audit" / "test" / "summary.json").read_text())
    assert summary["images_with_duplicate"] == 2
    # another checkpoint at the same path: queries would not be comparable with the index
    save_backbone(build_backbone("resnet_demo"), tmp_path / "run", {"num_classes": 3})
    capsys.readouterr()
    assert main(["-q", "dedup", "audit", str(tmp_path / "index"), "--testset", str(tmp_path / "test"),
                 "--out", str(tmp_path / "audit2"), *common]) == 1
    assert "checkpoint_sha256" in capsys.readouterr().err
