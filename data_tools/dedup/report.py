"""The human side of an audit: ``gallery.png`` of pairs to eyeball and ``report.md``.

The gallery has three sections, each a grid of (test image | pool image)
pairs with the exact cosine and the query view that matched:

* the highest-scoring pairs (what the audit is surest about);
* the flagged pairs closest to the threshold (are these really copies?);
* the unflagged pairs closest to the threshold (did we miss copies?).

A reviewer who disagrees with the borderline pairs moves ``--threshold``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from datascale.atomic import atomic_path, write_text
from datascale.errors import DataError

log = logging.getLogger(__name__)

THUMB = 128
PAIRS_PER_ROW = 3
_PAD, _CAPTION, _HEADER = 8, 34, 28


def gallery_sections(best, threshold: float, per_section: int) -> list[tuple[str, object]]:
    """[(title, rows)] of the best-neighbour table ``best`` (one row per test image)."""
    ranked = best.sort_values("score", ascending=False)
    flagged = ranked[ranked["score"] >= threshold]
    top = flagged.head(per_section)
    above = flagged[~flagged["test_id"].isin(top["test_id"])].tail(per_section)
    below = ranked[ranked["score"] < threshold].head(per_section)
    return [("Highest scores", top),
            (f"Just above the threshold {threshold:.3f} (flagged)", above),
            (f"Just below the threshold {threshold:.3f} (kept)", below)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _thumb(data: bytes | None) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    if data is None:
        ImageDraw.Draw(tile).text((8, THUMB // 2 - 6), "not available", fill=(90, 90, 90), font=_font(12))
        return tile
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, ValueError):
        return _thumb(None)
    scale = THUMB / max(image.size)  # small images are enlarged too, so details are visible
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def draw_gallery(sections: list[tuple[str, list[dict]]], path: Path) -> None:
    """Draw the sections (each a list of {test, pool, caption}) into a PNG at ``path``."""
    cell_w, cell_h = 2 * THUMB + 3 * _PAD, THUMB + _CAPTION + _PAD
    width = PAIRS_PER_ROW * cell_w + _PAD
    heights = [_HEADER + (-(-len(items) // PAIRS_PER_ROW) * cell_h if items else 24) for _, items in sections]
    canvas = Image.new("RGB", (width, sum(heights) + _PAD), "white")
    draw, small, big = ImageDraw.Draw(canvas), _font(11), _font(15)
    y = _PAD
    for (title, items), height in zip(sections, heights):
        draw.text((_PAD, y + 6), title, fill=(20, 20, 20), font=big)
        if not items:
            draw.text((_PAD, y + _HEADER + 8), "(no pairs)", fill=(120, 120, 120), font=small)
        for i, item in enumerate(items):
            x0 = _PAD + (i % PAIRS_PER_ROW) * cell_w
            y0 = y + _HEADER + (i // PAIRS_PER_ROW) * cell_h
            canvas.paste(_thumb(item["test"]), (x0, y0))
            canvas.paste(_thumb(item["pool"]), (x0 + THUMB + _PAD, y0))
            for line, text in enumerate(item["caption"]):
                draw.text((x0, y0 + THUMB + 3 + 13 * line), text, fill=(30, 30, 30), font=small)
        y += height
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _shorten(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def pool_bytes(index, rows) -> tuple[dict[str, bytes], str | None]:
    from data_tools.dedup.pool import open_pool
    numbers = {name: i for i, name in enumerate(index.meta["pool"]["shard_names"])}
    wanted: dict[int, set[str]] = {}
    for key, shard in zip(rows["pretrain_key"], rows["pool_shard"]):
        if shard in numbers:
            wanted.setdefault(numbers[shard], set()).add(str(key))
    try:
        return open_pool(index.meta["pool"]["path"]).fetch(wanted), None
    except DataError as exc:
        return {}, f"pool images not shown: {exc}"


def write_gallery(out_dir: Path, table, testset, index, threshold: float, per_section: int) -> dict:
    """Pick the gallery pairs from ``table`` (duplicates.parquet rows) and draw gallery.png."""
    import pandas as pd
    best = table[table["rank"] == 1]
    sections = gallery_sections(best, threshold, per_section)
    chosen = pd.concat([rows for _, rows in sections]) if sections else best.head(0)
    pool, note = pool_bytes(index, chosen)
    images = {im.test_id: im for im in testset.images}
    drawn = []
    for title, rows in sections:
        items = []
        for row in rows.itertuples():
            try:
                test_bytes = testset.read(images[row.test_id])
            except OSError:
                test_bytes = None
            items.append({"test": test_bytes, "pool": pool.get(row.pretrain_key),
                          "caption": [f"cos {row.score:.3f}  view {row.view}",
                                      f"{_shorten(row.test_image)} | {_shorten(row.pretrain_key)}"]})
        drawn.append((title, items))
    draw_gallery(drawn, out_dir / "gallery.png")
    return {"path": str(out_dir / "gallery.png"), "pairs": int(len(chosen)), "note": note,
            "sections": {title: [str(t) for t in rows["test_id"]] for title, rows in sections}}


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _calibration_lines(cal: dict, title: str) -> list[str]:
    at = cal["at_threshold"]
    lines = [f"## {title}", "",
             f"Ground truth: `{cal['source']}`: {cal['true_pairs']} true pairs for the audited images "
             f"with the pool image in the index ({cal['pairs_not_in_index']} pairs name pool images "
             f"not in this index; {cal['unknown_test_ids']} rows name test images not in this test set). "
             f"{cal['positives']} test images have a duplicate in the index, {cal['negatives']} do not"
             f"{'' if cal['exhaustive'] else ' (labelled images only)'}.", "",
             f"Calibrated threshold for precision >= {cal['target_precision']}: "
             + (f"**{cal['calibrated_threshold']:.4f}**." if cal["calibrated_threshold"] is not None
                else "**none reaches it**."), "",
             f"At the threshold used ({at['threshold']:.3f}), on the images it was chosen on: "
             f"precision **{at['precision']:.3f}** {_span(at.get('precision_interval'))}, "
             f"recall **{at['recall']:.3f}** {_span(at.get('recall_interval'))}, "
             f"{at['flagged']} images flagged.", ""]
    lines += _table(["threshold", "precision", "recall", "flagged"],
                    [[f"{c['threshold']:.3f}", f"{c['precision']:.3f}", f"{c['recall']:.3f}", c["flagged"]]
                     for c in cal["curve"]])
    lines += ["Recall per transform of the planted copy, at the threshold used:", ""]
    lines += _table(["transform", "pairs", "found", "recall"],
                    [[name, e["pairs"], e["found"], f"{e['recall']:.3f}"]
                     for name, e in sorted(cal["per_transform"].items())])
    for label, ids in (("False positives (flagged, no known duplicate)", at["false_positives"]),
                       ("Missed (known duplicate not flagged)", at["missed"])):
        shown = ", ".join(f"`{i}`" for i in ids[:50]) + (" ..." if len(ids) > 50 else "")
        lines += [f"{label}: {shown or 'none'}", ""]
    return lines


def _span(interval) -> str:
    return "(interval n/a)" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def held_out_lines(held: dict | None) -> list[str]:
    """report.md's section on the cross-validated (held-out) precision and recall."""
    if not held:
        return []
    lines = ["## Held-out precision and recall", "", f"{held['method']}."]
    if "precision" not in held:
        return lines + [""]
    p, r = held["precision"], held["recall"]
    level = f"{100 * held['confidence']:g}%"
    value = (lambda x: "n/a" if x["value"] is None else f"**{x['value']:.3f}**")
    lines += [f"Precision {value(p)} {_span(p['interval'])} ({p['successes']:g} of {p['trials']:g} "
              f"flagged held-out images are copies), recall {value(r)} {_span(r['interval'])} "
              f"({r['successes']:g} of {r['trials']:g} copies found); {level} Clopper-Pearson "
              "intervals" + (" on Kish effective counts (weighted sample)" if held["weighted"] else "")
              + ". These are the figures to quote: the threshold was not tuned on the images they "
              "count.", ""]
    if held.get("fold_thresholds"):
        lines += [f"Thresholds chosen per fold: {', '.join(f'{t:.3f}' for t in held['fold_thresholds'])}"
                  + (f" ({held['folds_without_threshold']} folds reached no threshold and used the "
                     "embedder's default)" if held["folds_without_threshold"] else "") + ".", ""]
    return lines


def remaining_lines(remaining: dict | None) -> list[str]:
    """report.md's estimate of the copies left in clean/ (from a marked `dedup label` sample)."""
    if not remaining:
        return []
    low, high = remaining["interval"]
    lines = ["## Copies remaining in the cleaned test set", "",
             f"Of the {remaining['kept_images']} images kept, an estimated **{remaining['estimate']:g}** "
             f"still have a copy as their best pool neighbour ({100 * remaining['confidence']:g}% "
             f"interval [{low:g}, {high:g}]; {remaining['method']}).", ""]
    lines += _table(["band", "images kept", "marked", "copies among marked"],
                    [[b["stratum"], b["kept_images"], b["marked"], b["copies"]] for b in remaining["bands"]])
    return lines


def _aligned_sentence(aligned: dict | None) -> str:
    if not aligned:
        return " Crop alignment was off."
    return (f" Crop alignment searched the best crop box for {aligned['pairs_aligned']} borderline "
            f"pairs of {aligned['images_aligned']} test images and raised {aligned['pairs_raised']} "
            "of them (view `alignedWxH@X,Y` names the box).")


def write_report(out_dir: Path, summary: dict, table, testset, index, cfg) -> dict:
    """Write gallery.png and report.md for one audited test set; returns the gallery record."""
    threshold = summary["threshold"]
    gallery = write_gallery(out_dir, table, testset, index, threshold, cfg.gallery_pairs)
    ts, ix, clean = summary["testset"], summary["index"], summary["cleaned"]
    lines = [f"# Near-duplicate audit: {ts['name']}", "",
             f"Test set `{ts['path']}` ({ts['kind']}, {ts['images']} images) against the pool index "
             f"`{ix['path']}` ({ix['factory']}, {ix.get('pool_images', ix['vectors']):,} pool images, "
             f"stored as {', '.join(ix.get('pool_views', ['identity']))}; embedder "
             f"`{ix['embedder']['name']}`). Scores are exact cosines of the stored vectors; a test "
             "image is flagged when its best pool neighbour (over the query views "
             f"{', '.join(summary['view_specs'])}) scores at least the threshold."
             + _aligned_sentence(summary.get("aligned")), ""]
    lines += _table(["", ""], [
        ["threshold", f"{threshold:.4f} ({summary['threshold_source']})"],
        ["test images", summary["test_images"]],
        ["unreadable (kept, not checked)", summary["unreadable_images"]],
        ["with a near-duplicate", f"{summary['images_with_duplicate']} "
                                  f"({100 * summary['fraction_with_duplicate']:.1f}% of readable)"],
        ["cleaned test set", f"`{clean['path']}` ({clean['images_kept']} kept, "
                             f"{clean['images_removed']} removed"
                             + (f", {clean['annotations_removed']} annotations removed" if
                                "annotations_removed" in clean else "") + ")"]])
    lines += ["## Threshold sweep", ""]
    lines += _table(["threshold", "images with a near-duplicate", "fraction"],
                    [[f"{s['threshold']:.3f}", s["images_with_duplicate"], f"{s['fraction']:.3f}"]
                     for s in summary["sweep"]])
    lines += held_out_lines(summary.get("held_out"))
    lines += remaining_lines(summary.get("remaining_duplicates"))
    if summary["calibration"]:
        lines += _calibration_lines(summary["calibration"], "Calibration against known duplicates")
    joint = summary.get("joint_calibration")
    if joint and len(joint.get("testsets", [])) > 1:
        lines += _calibration_lines(joint, f"Joint calibration over {', '.join(joint['testsets'])}")
    lines += ["## Gallery", "", "![pairs for review](gallery.png)", "",
              "Left of each pair the test image, right the pool image. Check the two lower sections: "
              "flagged pairs that are not copies mean the threshold is too low; kept pairs that are "
              "copies mean it is too high.", ""]
    if gallery["note"]:
        lines += [f"Note: {gallery['note']}", ""]
    flagged = table[(table["rank"] == 1) & table["is_duplicate"]].sort_values("score", ascending=False)
    lines += [f"## Flagged test images ({len(flagged)})", ""]
    lines += _table(["test id", "image", "pool key", "cosine", "view"],
                    [[r.test_id, r.test_image, r.pretrain_key, f"{r.score:.3f}", r.view]
                     for r in flagged.head(100).itertuples()])
    if len(flagged) > 100:
        lines += [f"... {len(flagged) - 100} more in duplicates.parquet", ""]
    if summary["unreadable"]:
        lines += [f"## Unreadable test images ({summary['unreadable_images']})", ""]
        lines += _table(["test id", "image", "error"],
                        [[u["test_id"], u["image"], u["error"]] for u in summary["unreadable"][:200]])
    write_text(out_dir / "report.md", "\n".join(lines))
    return gallery
