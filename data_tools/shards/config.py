"""Typed configuration of ``datascale shards write``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datascale.config import require
from data_tools.ranks import DEFAULT_SALT


@dataclass
class ShardsConfig:
    """How ``datascale shards write`` reads its input and cuts shards.

    Run: ``datascale shards write INPUT --out SHARDS [--set samples_per_shard=500]``.
    """

    format: Literal["auto", "folder", "manifest", "wds", "files", "world"] = "auto"
    split: Literal["pretrain", "eval"] = "pretrain"   # which part of a synthetic world
    classes: str | None = None          # classes.json for ids/names; built from the input if None
    salt: str = DEFAULT_SALT            # the hash-rank salt: same salt, same subsets
    samples_per_shard: int = 1000
    workers: int = 0                    # shard-writing processes; 0 = one per CPU core
    bucket_records: int = 200_000       # memory cap of the external shuffle (records held at once)
    image_column: str = "image"         # manifest columns
    labels_column: str = "labels"       # manifest column; KEY.json field or sidecar column for tars
    key_column: str = "key"             # optional; the image path (no extension) if absent
    # Tar ("wds") and img2dataset "files" input: where labels come from (label_source.py).
    labels_from: Literal["auto", "cls", "json", "manifest"] = "auto"
    labels_manifest: str | None = None  # sidecar .parquet/.csv/.jsonl: key_column + labels_column
    unknown_labels: Literal["error", "drop"] = "error"
    image_check: Literal["decode", "header"] = "decode"
    # "jpeg": every image member is KEY.jpg (PNG, WebP, ... re-encoded at jpeg_quality, alpha
    # composited on white), so one extension reads a whole shard set; "original" keeps the bytes.
    image_format: Literal["original", "jpeg"] = "original"
    jpeg_quality: int = 95              # quality of every re-encode to JPEG (PIL scale, 1-100)

    def validate(self) -> None:
        require(self.samples_per_shard >= 1, "samples_per_shard", "must be at least 1")
        require(self.workers >= 0, "workers", "must be 0 (auto) or more")
        require(self.bucket_records >= 100, "bucket_records", "must be at least 100")
        require(bool(self.salt), "salt", "must not be empty")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be between 1 and 100")
