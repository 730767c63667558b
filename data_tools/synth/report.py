"""The world's metadata files: labels.jsonl, COCO/VOC indexes, planted.csv, world.json, card.md.

world.json holds the statistics a study needs to trust the world (measured
noise and missing rates next to the configured ones, the long tail, planted
copies per transform); card.md says the same for people.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from datascale.atomic import write_json, write_text
from datascale.errors import DataError
from data_tools.labels import class_frequencies, noise_stats, tail_summary
from data_tools.synth.downstream import (SPLITS, detection_categories, pose_categories,
                                         segmentation_labels, write_coco, write_planted)
from data_tools.synth.duplicates import DATASETS
from data_tools.synth.items import WorldPlan, coco_file_name, pool_key, voc_id
from data_tools.synth.noise import OUTCOMES

Records = dict[tuple[str, str], list[dict]]
Stats = dict[tuple[str, str], Counter]


def _jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def write_outputs(plan: WorldPlan, records: Records, stats: Stats, out_dir: Path) -> dict:
    """Write every metadata file of the world from the gathered records; returns world.json's content."""
    classes = plan.classes
    classes.vocabulary.save(out_dir / "classes.json")
    _jsonl(out_dir / "pretrain" / "labels.jsonl", records[("pretrain", "all")])
    _jsonl(out_dir / "eval" / "labels.jsonl", records[("eval", "all")])
    for split in SPLITS:
        det = records[("detection", split)]
        write_coco(out_dir / "detection" / "annotations" / f"instances_{split}.json",
                   [r["image"] for r in det], [a for r in det for a in r["annotations"]],
                   detection_categories(classes), f"synthetic world detection {split}")
        pose = records[("pose", split)]
        write_coco(out_dir / "pose" / "annotations" / f"person_keypoints_{split}.json",
                   [r["image"] for r in pose], [a for r in pose for a in r["annotations"]],
                   pose_categories(), f"synthetic world pose {split}")
        ids = [r["id"] for r in records[("segmentation", split)]]
        write_text(out_dir / "segmentation" / "ImageSets" / "Segmentation" / f"{split}.txt",
                   "".join(f"{i}\n" for i in ids))
    write_text(out_dir / "segmentation" / "labels.txt",
               "".join(f"{name}\n" for name in segmentation_labels(classes)))
    write_planted(out_dir / "duplicates" / "planted.csv", planted_rows(plan))
    summary = world_summary(plan, records, stats)
    write_json(out_dir / "world.json", summary)
    write_text(out_dir / "card.md", world_card(summary))
    return summary


def planted_rows(plan: WorldPlan) -> list[dict]:
    """planted.csv rows, ordered by dataset then test image."""
    rows = []
    for copy in sorted(plan.planted.values(), key=lambda c: (DATASETS.index(c.dataset), c.test_index)):
        if copy.dataset == "segmentation":
            test_id: int | str = voc_id("test", copy.test_index)
            test_image = f"JPEGImages/{test_id}.jpg"
        else:
            test_id = copy.test_index + 1
            test_image = f"images/test/{coco_file_name(copy.test_index)}"
        rows.append({"dataset": copy.dataset, "split": "test", "test_image": test_image, "test_id": test_id,
                     "pretrain_key": pool_key("pretrain", copy.pool_index)[0], "transform": copy.transform})
    return rows


def _r(value: float) -> float:
    return round(float(value), 6)


def _pool_stats(rows: list[dict], num_classes: int) -> dict:
    true = [r["true_labels"] for r in rows]
    noisy = [r["labels"] for r in rows]
    return {"images": len(rows),
            "labels_per_image_true": _r(np.mean([len(t) for t in true])),
            "labels_per_image_noisy": _r(np.mean([len(n) for n in noisy])),
            "images_without_noisy_labels": sum(1 for n in noisy if not n),
            "tail_true": tail_summary(class_frequencies(true, num_classes)),
            "tail_noisy": tail_summary(class_frequencies(noisy, num_classes))}


def _confusion_share(counts: Counter) -> float:
    """Share of wrong labels that are look-alikes (swaps and fills) rather than spurious extras."""
    look_alike = counts.get("swapped", 0) + counts.get("filled", 0)
    wrong = look_alike + counts.get("spurious", 0)
    return look_alike / wrong if wrong else 0.0


def world_summary(plan: WorldPlan, records: Records, stats: Stats) -> dict:
    """The world.json statistics (see docs/formats.md)."""
    cfg, classes = plan.config, plan.classes
    num_classes = len(classes.vocabulary)
    pretrain = records[("pretrain", "all")]
    measured = noise_stats((r["labels"], r["true_labels"]) for r in pretrain)
    counts = stats[("pretrain", "all")]
    pool = _pool_stats(pretrain, num_classes)
    pool.update({
        "noise_rate_configured": cfg.labels.noise_rate, "noise_rate_measured": _r(measured.noise_rate),
        "missing_rate_configured": cfg.labels.missing_rate, "missing_rate_measured": _r(1 - measured.recall),
        "confusion_share_configured": cfg.labels.confusion_share,
        "confusion_share_measured": _r(_confusion_share(counts)),
        "noise": {k: (_r(v) if isinstance(v, float) else v) for k, v in measured.as_dict().items()},
        "label_outcomes": {k: int(counts.get(k, 0)) for k in OUTCOMES},
        "noise_rates_feasible": plan.noise.feasible,
        "objects_dropped": int(counts.get("dropped_objects", 0)),
        "planted_copies": int(counts.get("planted", 0))})
    eval_rows = records[("eval", "all")]
    eval_stats = _pool_stats(eval_rows, num_classes)
    eval_stats = {k: v for k, v in eval_stats.items() if k not in ("labels_per_image_noisy", "tail_noisy",
                                                                  "images_without_noisy_labels")}
    leaves_present = len({c for r in eval_rows for c in r["true_labels"]})
    eval_stats.update({"leaf_classes_present": leaves_present, "leaf_classes": classes.num_leaves,
                       "objects_dropped": int(stats[("eval", "all")].get("dropped_objects", 0))})
    downstream = {d: {split: {"images": len(records[(d, split)]), **dict(sorted(stats[(d, split)].items()))}
                      for split in SPLITS} for d in DATASETS}
    downstream["detection"]["categories"] = len(classes.family_names)
    downstream["segmentation"]["classes"] = len(classes.family_names) + 1
    downstream["segmentation"]["void_border"] = cfg.segmentation.void_border
    downstream["pose"]["keypoints"] = len(pose_categories()[0]["keypoints"])
    transforms = Counter(c.transform for c in plan.planted.values())
    per_dataset = Counter(c.dataset for c in plan.planted.values())
    total = len(pretrain) + len(eval_rows) + sum(len(records[(d, s)]) for d in DATASETS for s in SPLITS)
    return {
        "seed": cfg.seed,
        "classes": {"total": num_classes, "leaves": classes.num_leaves, "families": len(classes.family_names),
                    "figure_families": int(sum(classes.family_is_figure)),
                    "hierarchy_depth": classes.vocabulary.max_depth(), "zipf_exponent": cfg.classes.zipf_exponent},
        "images": {"total": total, "pretrain": len(pretrain), "eval": len(eval_rows),
                   **{d: {s: len(records[(d, s)]) for s in SPLITS} for d in DATASETS}},
        "pretrain": pool, "eval": eval_stats, **downstream,
        "duplicates": {"total": len(plan.planted), "fraction": cfg.duplicates.fraction,
                       "per_transform": {t: transforms.get(t, 0) for t in cfg.duplicates.transforms},
                       "per_dataset": {d: per_dataset.get(d, 0) for d in DATASETS}},
    }


def read_summary(out_dir: Path) -> dict:
    """world.json of a finished world."""
    path = Path(out_dir) / "world.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the world summary ({exc}); regenerate with --force") from None


def world_card(s: dict) -> str:
    """card.md: the world.json numbers as a short human-readable data card."""
    p, e, d = s["pretrain"], s["eval"], s["duplicates"]
    lines = [
        "# Synthetic world", "",
        f"Seed {s['seed']}. {s['classes']['total']} classes in a {s['classes']['hierarchy_depth']}-level "
        f"hierarchy, {s['classes']['leaves']} leaf classes in {s['classes']['families']} families "
        f"({s['classes']['figure_families']} of them articulated figures); class frequency Zipf-like "
        f"with exponent {s['classes']['zipf_exponent']}.", "",
        "| split | images | labels/image (true) | labels/image (given) |", "|---|---|---|---|",
        f"| pretrain | {p['images']} | {p['labels_per_image_true']:.3f} | {p['labels_per_image_noisy']:.3f} |",
        f"| eval (dense, clean) | {e['images']} | {e['labels_per_image_true']:.3f} | "
        f"{e['labels_per_image_true']:.3f} |", "",
        "## Label noise (pretraining pool)", "",
        "| | configured | measured |", "|---|---|---|",
        f"| noise rate (1 - precision) | {p['noise_rate_configured']:.3f} | {p['noise_rate_measured']:.3f} |",
        f"| missing rate (1 - recall) | {p['missing_rate_configured']:.3f} | {p['missing_rate_measured']:.3f} |",
        f"| look-alike share of wrong labels | {p['confusion_share_configured']:.3f} | "
        f"{p['confusion_share_measured']:.3f} |", "",
        "Label outcomes: " + ", ".join(f"{k} {v}" for k, v in p["label_outcomes"].items())
        + f"; {p['images_without_noisy_labels']} images without any given label. A fill gives an image "
        "whose labels were all dropped one look-alike label, as JFT has no unlabelled images."
        + ("" if p["noise_rates_feasible"] else " The configured noise and missing rates cannot both hold "
           "with one label per image: the measured noise rate is higher."), "",
        "## Long tail", "",
        "| | classes present | < 20 images | < 100 images | max | median |", "|---|---|---|---|---|---|",
    ]
    for name, tail in (("pretrain (true)", p["tail_true"]), ("pretrain (given)", p["tail_noisy"]),
                       ("eval", e["tail_true"])):
        lines.append(f"| {name} | {tail['classes_present']} | {tail['classes_lt_20']} | {tail['classes_lt_100']} "
                     f"| {tail['max_class_images']} | {tail['median_class_images']:g} |")
    lines += ["", f"Eval covers {e['leaf_classes_present']} of {e['leaf_classes']} leaf classes.", "",
              "## Downstream", "", "| dataset | train | val | test |", "|---|---|---|---|"]
    for dataset in ("detection", "segmentation", "pose"):
        lines.append(f"| {dataset} | " + " | ".join(str(s[dataset][k]["images"]) for k in SPLITS) + " |")
    lines += ["", f"Detection: {s['detection']['categories']} categories (the families), COCO JSON with RLE masks. "
              f"Segmentation: {s['segmentation']['classes']} classes with background, palette PNG, "
              f"void border {s['segmentation']['void_border']} px. "
              f"Pose: {s['pose']['keypoints']} keypoints per figure.", "",
              "## Planted near-duplicates", "",
              f"{d['total']} copies of downstream test images ({d['fraction']:.0%} of each test set) "
              "hide in the pretraining pool; ground truth in duplicates/planted.csv.", "",
              "| transform | copies |", "|---|---|"]
    lines += [f"| {t} | {n} |" for t, n in d["per_transform"].items()]
    return "\n".join(lines) + "\n"
