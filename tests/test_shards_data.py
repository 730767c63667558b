"""Test inputs for the shards, subsets and loader tests, made on the fly from real photos.

Other test files import the helpers (``from test_shards_data import ...``);
the two tests here check that the inputs really are distinct decodable photos.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# A small hierarchy: two roots with leaves, like classes.json of a synthetic world.
CLASSES = [
    {"id": 0, "name": "animal", "parent": None},
    {"id": 1, "name": "cat", "parent": 0},
    {"id": 2, "name": "person", "parent": None},
    {"id": 3, "name": "astronaut", "parent": 2},
    {"id": 4, "name": "object", "parent": None},
    {"id": 5, "name": "cup", "parent": 4},
    {"id": 6, "name": "rocket", "parent": 4},
]
PHOTO_LABEL = {"astronaut": 3, "coffee": 5, "chelsea": 1, "rocket": 6}


def photo(name: str) -> np.ndarray:
    """A real RGB photo from scikit-image by name."""
    return getattr(skdata, name)()


def photo_bytes(index: int, size: int = 48, fmt: str = "JPEG") -> bytes:
    """Encoded bytes of a distinct small crop of one of the real photos."""
    rgb = photo(PHOTOS[index % len(PHOTOS)])
    h, w = rgb.shape[:2]
    step = index // len(PHOTOS)
    top, left = (7 * step) % (h // 2), (11 * step) % (w // 2)
    crop = rgb[top: top + h // 2, left: left + w // 2]
    out = io.BytesIO()
    Image.fromarray(crop).resize((size + step % 5, size)).save(out, format=fmt)
    return out.getvalue()


def make_folder_tree(root: Path, per_class: int = 6) -> Path:
    """ROOT/CLASS/img.N.jpg for the four photo classes (dots in names on purpose)."""
    for c, name in enumerate(PHOTOS):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"img.{i}.jpg").write_bytes(photo_bytes(c + len(PHOTOS) * i))
    return root


def make_world(root: Path, images: int = 40, split_images: dict | None = None) -> Path:
    """A synthetic-world layout: classes.json, {pretrain,eval}/labels.jsonl, images/BBBB/KEY.jpg.

    Pretrain labels are noisy (every 5th image gets a wrong extra label).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    counts = split_images or {"pretrain": images, "eval": max(4, images // 4)}
    for split, n in counts.items():
        lines = []
        for i in range(n):
            key = f"{split[:2]}{i:07d}"
            rel = f"images/{i // 100:04d}/{key}.jpg"
            path = root / split / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo_bytes(i + (1000 if split == "eval" else 0)))
            true = [PHOTO_LABEL[PHOTOS[i % len(PHOTOS)]]]
            noisy = true + ([0] if split == "pretrain" and i % 5 == 0 else [])
            lines.append(json.dumps({"key": key, "image": rel, "labels": noisy,
                                     "true_labels": true}))
        (root / split / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """Rows as CSV, Parquet or JSONL depending on the suffix of ``path``."""
    import pandas as pd
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame([{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()}
                      for r in rows]).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def small_shards(tmp: Path, images: int = 40, per_shard: int = 8, name: str = "shards",
                 **settings) -> Path:
    """Shards of a small synthetic world (with a class hierarchy) in ``tmp/name``."""
    from data_tools.shards.write import ShardsConfig, write_shards
    world = make_world(tmp / f"{name}_world", images=images)
    cfg = ShardsConfig(samples_per_shard=per_shard, workers=1, **settings)
    write_shards(world, tmp / name, cfg, progress=False)
    return tmp / name


def test_photo_bytes_are_distinct_decodable_photos():
    blobs = [photo_bytes(i) for i in range(12)]
    assert len(set(blobs)) == 12
    for blob in blobs:
        image = Image.open(io.BytesIO(blob))
        image.load()
        assert image.mode == "RGB" and min(image.size) >= 48
        assert np.asarray(image).std() > 10  # a photo, not a flat colour


def test_world_layout_matches_formats(tmp_path):
    world = make_world(tmp_path / "w", images=10)
    rows = [json.loads(line) for line in (world / "pretrain" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all((world / "pretrain" / r["image"]).is_file() for r in rows)
    assert {"key", "image", "labels", "true_labels"} <= set(rows[0])


def test_card_shows_label_noise_before_and_after_hierarchy_closure(tmp_path):
    """A wrong extra "animal" on a cat photo is right once labels are closed over the hierarchy."""
    shards = small_shards(tmp_path, images=40)
    card = (shards / "card.md").read_text()
    # 8 of 40 images get a wrong "animal": 8 wrong of 48 given labels. After closure every image
    # has leaf + root (80 true labels); the extra is wrong on 6 of them (right on the 2 cats).
    assert "measured label noise (given labels that are wrong): 16.7%" in card
    assert "after hierarchy closure" in card and "noise 7.0%" in card
