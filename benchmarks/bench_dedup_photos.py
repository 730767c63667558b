"""Benchmark: the audit's precision and recall per transform on real photos, at the default threshold.

For each transform, a small pool and test set of real photos (scikit-image,
scikit-learn and matplotlib sample photos) go through the real commands
(shards write -> dedup index -> dedup audit, no ground truth, so the
embedder's default threshold):

* ``copies``: 8 photos, each with one copy related by the transform: either
  the pool copy is the transformed test photo (``pool = T(test)``: resize,
  crop, flip, JPEG, colour), or the test image is the transformed pool photo
  (``test = T(pool)``: a crop of a larger pool photo);
* look-alike distinct photos: for 4 more photos the test set holds the right
  half and the pool the left half (same scene and camera, other content),
  3 test photos have nothing in the pool, 4 pool photos nothing in the test set.

A copy is found when its pool key is among the test image's neighbours with
score >= the threshold; precision counts every flagged test image.

    .venv/bin/python benchmarks/bench_dedup_photos.py --workdir /tmp/photos
    .venv/bin/python benchmarks/bench_dedup_photos.py --workdir /tmp/photos --set embedder.pool_views=[identity]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from datascale.cli import main as datascale

COPIES = ["astronaut", "coffee", "chelsea", "rocket", "china", "retina", "hopper", "immunohistochemistry"]
HALVES = ["hubble_deep_field", "camera", "page", "flower"]     # test: right half, pool: left half
TEST_ONLY = ["coins", "moon", "clock"]
POOL_ONLY = ["brick", "grass", "colorwheel", "horse"]


def photos() -> dict[str, Image.Image]:
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images
    names = {*COPIES, *HALVES, *TEST_ONLY, *POOL_ONLY} - {"china", "flower", "hopper"}
    arrays = {name: getattr(skimage.data, name)() for name in names}
    arrays["china"], arrays["flower"] = load_sample_images().images
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        arrays["hopper"] = np.asarray(Image.open(handle).convert("RGB"))
    out = {}
    for name, a in arrays.items():
        a = (a * 255).astype(np.uint8) if a.dtype == bool else a
        out[name] = Image.fromarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    return out


def _box(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))


def _centre(size: float):
    return lambda im: _box(im, (1 - size) / 2, (1 - size) / 2, (1 + size) / 2, (1 + size) / 2)


def _jitter(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(1.15)
    image = ImageEnhance.Contrast(image).enhance(0.85)
    image = ImageEnhance.Color(image).enhance(1.3)
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 6) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


# name -> (which side is transformed, transform, JPEG quality of the transformed image)
TRANSFORMS = {
    "resize 1/3": ("pool", lambda im: im.resize((im.width // 3, im.height // 3), Image.BILINEAR), 90),
    "pool crop 75% off-centre": ("pool", lambda im: _box(im, 0.12, 0.02, 0.98, 0.89), 90),
    "pool crop 61% off-grid": ("pool", lambda im: _box(im, 0.21, 0.03, 0.93, 0.88), 85),
    "mirror": ("pool", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT), 90),
    "JPEG q15": ("pool", lambda im: im, 15),
    "colour jitter": ("pool", _jitter, 90),
    "test = 90% centre crop of pool": ("test", _centre(0.9), 90),
    "test = 80% centre crop of pool": ("test", _centre(0.8), 90),
    "test = 70% centre crop of pool": ("test", _centre(0.7), 90),
    "test = 80% off-centre crop of pool": ("test", lambda im: _box(im, 0.04, 0.06, 0.84, 0.86), 90),
}


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def build_case(root: Path, pics: dict, side: str, transform, quality: int) -> None:
    pool, test = root / "pool_images" / "photo", root / "testset"
    pool.mkdir(parents=True)
    test.mkdir()
    for name in COPIES:
        original = pics[name]
        if side == "pool":
            (pool / f"copy_{name}.jpg").write_bytes(_jpeg(transform(original), quality))
            (test / f"{name}.jpg").write_bytes(_jpeg(original, 95))
        else:
            (pool / f"copy_{name}.jpg").write_bytes(_jpeg(original))
            (test / f"{name}.jpg").write_bytes(_jpeg(transform(original), quality))
    for name in HALVES:
        (pool / f"{name}_left.jpg").write_bytes(_jpeg(_box(pics[name], 0, 0, 0.5, 1)))
        (test / f"{name}_right.jpg").write_bytes(_jpeg(_box(pics[name], 0.5, 0, 1, 1), 95))
    for name in TEST_ONLY:
        (test / f"{name}.jpg").write_bytes(_jpeg(pics[name], 95))
    for name in POOL_ONLY:
        (pool / f"{name}.jpg").write_bytes(_jpeg(pics[name]))


def run_case(root: Path, sets: list[str]) -> dict:
    extra = [a for s in sets for a in ("--set", s)]
    quiet = ["--set", "embedder.workers=0"]
    assert datascale(["-q", "shards", "write", str(root / "pool_images"), "--out", str(root / "shards"),
                      "--set", "samples_per_shard=8", "--set", "workers=1"]) == 0
    assert datascale(["-q", "dedup", "index", str(root / "shards"), "--out", str(root / "index"),
                      "-c", "dedup/demo", *quiet, *extra]) == 0
    started = time.perf_counter()
    assert datascale(["-q", "dedup", "audit", str(root / "index"), "--testset", f"photos={root / 'testset'}",
                      "--out", str(root / "audit"), "-c", "dedup/demo", "--set", "audit.workers=0",
                      *quiet, *extra]) == 0
    seconds = time.perf_counter() - started
    folder = root / "audit" / "photos"
    summary = json.loads((folder / "summary.json").read_text())
    table = pd.read_parquet(folder / "duplicates.parquet")
    threshold = summary["threshold"]
    best = table[table["rank"] == 1].set_index("test_id")
    hits = table[table["score"] >= threshold]
    found = [name for name in COPIES
             if ((hits["test_id"] == f"{name}.jpg") & hits["pretrain_key"].str.endswith(f"copy_{name}")).any()]
    copy_scores = [table[(table["test_id"] == f"{n}.jpg") & table["pretrain_key"].str.endswith(f"copy_{n}")]
                   ["score"].max() for n in COPIES]
    distinct = [t for t in best.index if t.removesuffix(".jpg") not in COPIES]
    flagged = set(best.index[best["score"] >= threshold])
    return {"threshold": threshold, "found": len(found), "copies": len(COPIES),
            "flagged_copies": len(flagged & {f"{n}.jpg" for n in COPIES}),
            "flagged_distinct": len(flagged & set(distinct)), "distinct": len(distinct),
            "lowest_copy": float(np.nan_to_num(np.nanmin(copy_scores), nan=-1)),
            "highest_distinct": float(best.loc[distinct, "score"].max()), "seconds": seconds,
            "aligned": summary["aligned"]}


def main() -> None:
    from data_tools.dedup.heldout import clopper_pearson
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="scratch folder (emptied)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dedup config override")
    args = parser.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    pics = photos()
    print("| transform | copies found | recall [95% CI] | flagged distinct | precision [95% CI] | "
          "lowest copy | highest distinct | audit s |")
    print("|---|---|---|---|---|---|---|---|")
    total = {"found": 0, "copies": 0, "tp": 0, "flagged": 0}
    for i, (name, (side, transform, quality)) in enumerate(TRANSFORMS.items()):
        case = root / f"case{i:02d}"
        build_case(case, pics, side, transform, quality)
        r = run_case(case, args.sets)
        tp, flagged = r["flagged_copies"], r["flagged_copies"] + r["flagged_distinct"]
        rec, prec = clopper_pearson(r["found"], r["copies"]), clopper_pearson(tp, flagged)
        print(f"| {name} | {r['found']}/{r['copies']} | {r['found'] / r['copies']:.3f} "
              f"[{rec[0]:.3f}, {rec[1]:.3f}] | {r['flagged_distinct']}/{r['distinct']} | "
              + (f"{tp / flagged:.3f} [{prec[0]:.3f}, {prec[1]:.3f}]" if flagged else "n/a")
              + f" | {r['lowest_copy']:.3f} | {r['highest_distinct']:.3f} | {r['seconds']:.1f} |", flush=True)
        total["found"] += r["found"]
        total["copies"] += r["copies"]
        total["tp"] += tp
        total["flagged"] += flagged
    rec = clopper_pearson(total["found"], total["copies"])
    prec = clopper_pearson(total["tp"], total["flagged"])
    print(f"| **all** | {total['found']}/{total['copies']} | {total['found'] / total['copies']:.3f} "
          f"[{rec[0]:.3f}, {rec[1]:.3f}] | {total['flagged'] - total['tp']} | "
          f"{total['tp'] / max(total['flagged'], 1):.3f} [{prec[0]:.3f}, {prec[1]:.3f}] | | | |")
    print(f"threshold {r['threshold']:.3f} (the embedder's default); overrides: {args.sets or 'none'}")


if __name__ == "__main__":
    main()
