"""Finishing and checking a shards folder: manifest assembly, sizes.json, card.md, ``verify``."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datascale.atomic import atomic_path, write_json, write_text
from datascale.errors import DataError
from data_tools.shards.manifest import (MANIFEST_ROW_GROUP, MANIFEST_WRITE_OPTIONS, WORK_DIR, manifest_schema,
                                       shard_name)
from data_tools.labels import Vocabulary, noise_stats, tail_summary
from datascale.formats.wds import ImageCheckError, check_image, read_shard
from data_tools.shards.sources import iter_parquet_batches

log = logging.getLogger(__name__)
NOT_CHECKED = ("quick check: members, keys and counts against manifest.parquet and sizes.json, and the "
               "first image of each shard decoded. Not checked: the other images, image bytes against "
               "the manifest's sha1, labels against the manifest; run with --full for those.")


class LabelTally:
    """Streaming label statistics over manifest batches: O(classes) memory."""

    def __init__(self, num_classes: int, vocabulary: Vocabulary | None = None) -> None:
        self.images = 0
        self.labels = 0
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.noise_pairs: list[tuple[int, int, int]] = []
        # Noise as training sees it with hierarchy closure on: closed given vs closed true labels.
        self.vocabulary = vocabulary if vocabulary is not None and vocabulary.max_depth() > 1 else None
        self.closed_pairs: list[tuple[int, int, int]] = []

    def add(self, table) -> None:
        """Add a pyarrow table/batch with a ``labels`` (and maybe ``true_labels``) column."""
        column = table.column("labels") if hasattr(table, "column") else table["labels"]
        flat = np.asarray(column.combine_chunks().flatten() if hasattr(column, "combine_chunks")
                          else column.flatten(), dtype=np.int64)
        self.images += len(table)
        self.labels += len(flat)
        if len(flat):
            self.counts += np.bincount(flat, minlength=len(self.counts))
        if "true_labels" in table.column_names:
            given, true = column.to_pylist(), table.column("true_labels").to_pylist()
            stats = noise_stats(zip(given, true))
            self.noise_pairs.append((stats.noisy_labels, stats.true_labels, stats.correct_labels))
            if self.vocabulary is not None:
                close = self.vocabulary.close
                stats = noise_stats((close(g), close(t)) for g, t in zip(given, true))
                self.closed_pairs.append((stats.noisy_labels, stats.true_labels, stats.correct_labels))

    def summary(self) -> dict:
        out = {"images": self.images,
               "labels_per_image": self.labels / self.images if self.images else 0.0,
               "tail": tail_summary(self.counts)}
        if self.noise_pairs:
            out["noise"] = _noise_summary(self.noise_pairs)
        if self.closed_pairs:
            out["noise"]["after_closure"] = _noise_summary(self.closed_pairs)
        return out


def _noise_summary(pairs: list[tuple[int, int, int]]) -> dict:
    noisy, true, correct = (int(sum(v)) for v in zip(*pairs))
    return {"noisy_labels": noisy, "true_labels": true, "correct_labels": correct,
            "noise_rate": 1.0 - correct / noisy if noisy else 0.0, "recall": correct / true if true else 0.0}


def finalize_shards(out: Path, total: int, vocab: Vocabulary, state: dict, salt: str,
                    image_format: str = "original", jpeg_quality: int = 95) -> dict:
    """Assemble manifest.parquet from the shard parts, then sizes.json, classes.json and card.md.

    Streams one part (one shard's rows) at a time. Returns the summary; its
    ``reencoded`` counts images stored as a re-encoded JPEG (``reencoded_from``
    by source format) under ``image_format`` at ``jpeg_quality``.
    """
    parts = out / WORK_DIR / "parts"
    sizes: dict[str, int] = {}
    skipped = collections.Counter(state["skipped"])
    kept: collections.Counter = collections.Counter()  # samples that kept a caption, url, sha256
    reencoded: collections.Counter = collections.Counter()
    total_bytes = 0
    tally = LabelTally(len(vocab), vocab)
    with atomic_path(out / "manifest.parquet") as tmp:
        with pq.ParquetWriter(tmp, manifest_schema(state["has_true"]),
                              **MANIFEST_WRITE_OPTIONS) as writer:
            group: list = []  # parts gathered into row groups of MANIFEST_ROW_GROUP rows
            for index in range(total):
                name = shard_name(index)
                stats = json.loads((parts / f"{name}.json").read_text(encoding="utf-8"))
                table = pq.read_table(parts / f"{name}.parquet")
                group.append(table)
                if sum(len(t) for t in group) >= MANIFEST_ROW_GROUP or index == total - 1:
                    writer.write_table(pa.concat_tables(group),
                                       row_group_size=MANIFEST_ROW_GROUP)
                    group = []
                tally.add(table)
                sizes[name] = stats["samples"]
                skipped.update(stats["skipped"])
                kept.update(stats.get("kept", {}))
                # Parts written before reencoded_from existed have only the total.
                reencoded.update(stats.get("reencoded_from", {"other": stats["reencoded"]}))
                total_bytes += stats["bytes"]
    write_json(out / "sizes.json", sizes)
    vocab.save(out / "classes.json")
    stats = tally.summary()
    summary = {"images": stats["images"], "shards": total, "salt": salt, "bytes": total_bytes,
               "image_format": image_format, "jpeg_quality": jpeg_quality,
               "reencoded": sum(reencoded.values()), "reencoded_from": dict(sorted((+reencoded).items())),
               "kept": dict(sorted(kept.items())),
               "skipped": dict(sorted(skipped.items())), "stats": stats}
    write_text(out / "card.md", card_markdown(summary, len(vocab)))
    return summary


def _reencoded_line(summary: dict) -> str:
    sources = ", ".join(f"{n:,} {fmt.upper()}" for fmt, n in summary.get("reencoded_from", {}).items())
    why = ("`image_format=jpeg`: every image stored as JPEG"
           if summary.get("image_format") == "jpeg" else "formats WebDataset readers do not take as is")
    return (f"- re-encoded to JPEG at quality {summary.get('jpeg_quality', 95)} ({why}): "
            f"{summary['reencoded']:,}" + (f" ({sources})" if sources else ""))


def card_markdown(summary: dict, num_classes: int) -> str:
    """The human-readable data card of a shards folder."""
    stats, tail = summary["stats"], summary["stats"]["tail"]
    lines = [
        "# Data card", "",
        f"- images: {summary['images']:,} in {summary['shards']:,} shards "
        f"({summary['bytes'] / 2**20:,.1f} MiB of encoded images)",
        f"- labels per image: {stats['labels_per_image']:.3f}",
        f"- classes: {num_classes:,}, of which {tail['classes_present']:,} have images",
        f"- long tail: {tail['classes_lt_20']:,} classes have fewer than 20 images, "
        f"{tail['classes_lt_100']:,} fewer than 100 (median {tail['median_class_images']:g}, "
        f"max {tail['max_class_images']:,})",
        f"- hash-rank salt: `{summary['salt']}`; shards are in increasing rank",
        _reencoded_line(summary),
    ]
    if summary.get("kept"):
        lines.append("- kept from the input (KEY.json fields; the caption also as KEY.txt): "
                     + ", ".join(f"{name} {count:,}" for name, count in summary["kept"].items()))
    if "noise" in stats:
        noise = stats["noise"]
        lines.append(f"- measured label noise (given labels that are wrong): "
                     f"{noise['noise_rate']:.1%}; recall of true labels {noise['recall']:.1%}")
        if "after_closure" in noise:
            closed = noise["after_closure"]
            lines.append(f"- after hierarchy closure (what training sees with closure on; a wrong leaf often "
                         f"has a right parent): noise {closed['noise_rate']:.1%}, recall {closed['recall']:.1%}")
    lines += ["", "## Skipped inputs", ""]
    if summary["skipped"]:
        lines += ["| reason | count |", "|---|---|"]
        lines += [f"| {reason} | {count:,} |" for reason, count in summary["skipped"].items()]
        lines += ["", "Every skipped input is named in `skipped.tsv` (reason, input), one per line."]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- verify


def _check_shard(path: Path, expected: int | None, manifest: list[tuple], full: bool) -> dict:
    """Problems of one shard against its manifest rows ``(key, sha1, labels)``.

    Always: every member parses, keys and count match, the first image decodes.
    With ``full``: every image decodes, its bytes hash to the manifest's sha1,
    and the labels in its KEY.json equal the manifest's.
    """
    skipped: collections.Counter = collections.Counter()
    manifest_keys = [row[0] for row in manifest]
    rows = {row[0]: row for row in manifest} if full else {}
    seen: list[str] = []
    corrupt: list[str] = []
    mismatched: collections.defaultdict = collections.defaultdict(list)
    for sample in read_shard(path, skipped):
        if full or not seen:
            try:
                check_image(sample.image)
            except ImageCheckError as exc:
                corrupt.append(f"{sample.key}: {exc}")
        row = rows.get(sample.key)
        if row is not None:
            if row[1] is not None and hashlib.sha1(sample.image).hexdigest() != row[1]:
                mismatched["image bytes differ from the manifest's sha1"].append(sample.key)
            if sample.meta.get("labels") != list(row[2] or []):
                mismatched["labels in KEY.json differ from the manifest's"].append(sample.key)
        seen.append(sample.key)
    problems = [f"{reason}: {count}" for reason, count in skipped.items()]
    problems += [f"corrupt image {c}" for c in corrupt]
    problems += [f"{what}: {len(keys)} samples ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in mismatched.items()]
    if expected is not None and len(seen) != expected:
        problems.append(f"{len(seen)} samples, sizes.json says {expected}")
    if seen != manifest_keys:
        missing = sorted(set(manifest_keys) - set(seen))
        extra = sorted(set(seen) - set(manifest_keys))
        problems.append(f"keys differ from manifest.parquet: {len(missing)} missing "
                        f"{missing[:3]}, {len(extra)} not in manifest {extra[:3]}")
    return {"samples": len(seen), "problems": problems}


def _manifest_keys_by_shard(path: Path, full: bool = False) -> Iterator[tuple[str, list[tuple]]]:
    """(shard, [(key, sha1, labels)]) in manifest order; the manifest lists shards one after
    another. Without ``full`` only the keys are read (sha1 and labels are None)."""
    columns = ["key", "shard", "sha1", "labels"] if full else ["key", "shard"]
    current, rows = None, []
    for batch in iter_parquet_batches(path, columns):
        keys, shards = batch.column("key").to_pylist(), batch.column("shard").to_pylist()
        sha1s = batch.column("sha1").to_pylist() if full else [None] * len(keys)
        labels = batch.column("labels").to_pylist() if full else [None] * len(keys)
        for key, shard, sha1, label in zip(keys, shards, sha1s, labels):
            if shard != current:
                if current is not None:
                    yield current, rows
                current, rows = shard, []
            rows.append((key, sha1, label))
    if current is not None:
        yield current, rows


def verify_shards(shards_dir: str | Path, full: bool = False, progress: bool = True) -> dict:
    """Open every shard of a shards folder and compare it with manifest.parquet and sizes.json.

    Decodes the first image of each shard; with ``full`` decodes every image
    and checks its bytes against the manifest's sha1 and its KEY.json labels
    against the manifest's (``NOT_CHECKED`` says what the quick mode skips).
    Returns ``{"ok", "shards", "samples", "full", "problems": {shard: [..]}}``.
    Memory: the keys of one shard at a time (the manifest is streamed).
    """
    root = Path(shards_dir)
    for name in ("manifest.parquet", "sizes.json"):
        if not (root / name).is_file():
            raise DataError(f"{root}: no {name}; is this a shards folder that finished writing?")
    sizes = json.loads((root / "sizes.json").read_text(encoding="utf-8"))
    report: dict = {"ok": True, "shards": len(sizes), "samples": 0, "full": full, "problems": {}}
    checked: set[str] = set()
    bar = tqdm(total=len(sizes), desc="verify", unit=" shard", disable=not progress)

    def check(name: str, keys: list[str]) -> None:
        if name in checked:
            report["problems"].setdefault(name, []).append("rows of this shard are not together "
                                                            "in manifest.parquet")
            return
        checked.add(name)
        if name not in sizes:
            report["problems"].setdefault(name, []).append("in manifest.parquet, not in sizes.json")
            return
        result = _check_shard(root / name, sizes[name], keys, full)
        report["samples"] += result["samples"]
        if result["problems"]:
            report["problems"][name] = result["problems"]
        bar.update()

    for name, keys in _manifest_keys_by_shard(root / "manifest.parquet", full):
        check(name, keys)
    for name in sorted(set(sizes) - checked):  # shards without manifest rows (empty ones)
        check(name, [])
    for path in sorted(root.glob("*.tar")):
        if path.name not in sizes:
            report["problems"].setdefault(path.name, []).append("tar not listed in sizes.json")
    bar.close()
    report["ok"] = not report["problems"]
    return report


def print_verify_report(report: dict) -> None:
    """Print what ``verify_shards`` found, one line per problem."""
    for shard, problems in sorted(report["problems"].items()):
        for problem in problems:
            print(f"{shard}: {problem}")
    status = "OK" if report["ok"] else f"FAILED ({len(report['problems'])} shards with problems)"
    print(f"{report['shards']} shards, {report['samples']} samples: {status}")
    if not report.get("full"):
        print(NOT_CHECKED)
