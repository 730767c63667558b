"""Input readers for ``datascale shards write``: every kind of input as one record stream.

A reader turns an input (an image folder tree, a CSV/Parquet/JSONL manifest,
existing WebDataset/img2dataset shards, or a synthetic world) into
:class:`SourceRecord` s: a key, raw labels (names or ids), optional true
labels, and a reference to the encoded image bytes (a file path, or a byte
range inside a tar). Readers never load image bytes, so the first pass over a
300M-image input costs metadata only. Readers are registered by name in
:data:`READERS`; ``detect_format`` picks one for ``format: auto``.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow.parquet as pq

from datascale.errors import DataError, count_skip
from datascale.formats.wds import split_member
from data_tools.ranks import sanitize_key

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"}


@dataclass
class SourceRecord:
    """One input image before sharding (no pixel data)."""

    key: str
    labels: list            # raw labels: ids (int) or class names (str)
    true_labels: list | None
    source: str             # where it came from, for people (relative path or tar member)
    ref: str                # how to fetch the bytes: see :func:`read_ref`
    ext: str                # extension as named by the input (the writer re-detects the format)


def read_ref(ref: str) -> bytes:
    """The encoded bytes a record refers to: ``PATH`` or ``tar:OFFSET:SIZE:PATH``."""
    if ref.startswith("tar:"):
        _, offset, size, path = ref.split(":", 3)
        with open(path, "rb") as handle:
            handle.seek(int(offset))
            data = handle.read(int(size))
        if len(data) != int(size):
            raise OSError(f"{path}: member at byte {offset} is cut short (truncated tar)")
        return data
    with open(ref, "rb") as handle:
        return handle.read()


def parse_labels(value: Any) -> list:
    """Raw labels from a manifest cell: a list, one id/name, JSON text, or 'a;b' / 'a|b' text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None and v != ""]
    if hasattr(value, "tolist"):  # numpy arrays from pandas/pyarrow
        return parse_labels(value.tolist())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return parse_labels(json.loads(text))
        except json.JSONDecodeError:
            raise DataError(f"labels {text!r} look like JSON but do not parse") from None
    for sep in (";", "|", ","):
        if sep in text:
            return [t.strip() for t in text.split(sep) if t.strip()]
    return [text]


# --------------------------------------------------------------------------- folders


def read_folder(root: Path, options: Any, skipped: collections.Counter) -> Iterator[SourceRecord]:
    """An image folder tree ``ROOT/CLASS/**/IMAGE``: the class is the top folder name."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected ROOT/CLASS_NAME/IMAGE.jpg")
    total = 0
    for class_dir in class_dirs:
        found = 0
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            ext = path.suffix.lower().lstrip(".")
            rel = path.relative_to(root).as_posix()
            if ext not in IMAGE_EXTENSIONS:
                count_skip(skipped, "not_an_image_file", rel)
                continue
            found += 1
            yield SourceRecord(sanitize_key(rel.rsplit(".", 1)[0]), [class_dir.name], None,
                               rel, str(path), ext)
        if not found:
            count_skip(skipped, "empty_class_folder", class_dir.name)
        total += found
    if total == 0:
        raise DataError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")


def folder_class_names(root: Path) -> list[str]:
    """Class names of a folder tree: its sorted top-level folder names."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------- manifests


def iter_parquet_batches(path: str | Path, columns: list[str] | None = None,
                         batch_rows: int = 65536, row_groups=None) -> Iterator:
    """Stream a Parquet file as record batches in constant memory.

    ``pre_buffer=False`` matters: with pyarrow's default the reader caches the
    column chunks it has read, and memory grows with the file (measured:
    760 MB after a 10M-row manifest, 41 MB with this setting). ``row_groups``
    (indices) reads only those groups.
    """
    reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    return reader.iter_batches(batch_size=batch_rows, columns=columns, row_groups=row_groups)


def _manifest_rows(path: Path, batch_rows: int = 65536) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for batch in iter_parquet_batches(path, batch_rows=batch_rows):
            yield from batch.to_pylist()
    elif suffix == ".csv":
        for chunk in pd.read_csv(path, chunksize=batch_rows, dtype=str, keep_default_na=False):
            yield from chunk.to_dict("records")
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    else:
        raise DataError(f"{path}: manifest must be .csv, .parquet or .jsonl")


def _manifest_columns(path: Path) -> list[str] | None:
    """Column names without reading the data (None for JSONL, checked per row)."""
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).schema_arrow.names
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    return None


def _missing_column(path: Path, column: str, option: str, available: list[str]) -> DataError:
    return DataError(f"{path}: no column '{column}' (columns: {', '.join(map(str, available))}); "
                     f"name the right one with --set {option}=COLUMN")


def read_manifest(path: Path, options: Any, skipped: collections.Counter,
                  source_tag: str = "manifest") -> Iterator[SourceRecord]:
    """A manifest with an image path and a list of labels per row (paths relative to its folder)."""
    image_col, labels_col = options.image_column, options.labels_column
    columns = _manifest_columns(path)
    for column, option in ((image_col, "image_column"), (labels_col, "labels_column")):
        if columns is not None and column not in columns:
            raise _missing_column(path, column, option, columns)
    base = path.parent
    for number, row in enumerate(_manifest_rows(path), 1):
        for column, option in ((image_col, "image_column"), (labels_col, "labels_column")):
            if column not in row:
                raise DataError(f"{path}: row {number} has no '{column}' field (fields: "
                                f"{', '.join(row)}); name the right one with --set {option}=FIELD")
        rel = str(row[image_col])
        key = row.get(options.key_column) or rel.rsplit(".", 1)[0]
        true = row.get("true_labels")
        yield SourceRecord(sanitize_key(str(key)), parse_labels(row[labels_col]),
                           None if true is None else parse_labels(true),
                           f"{source_tag}:{rel}", str(base / rel),
                           rel.rsplit(".", 1)[-1].lower() if "." in rel else "")


# --------------------------------------------------------------------------- tars


def _labels_from_members(members: dict[str, bytes]) -> tuple[list, list | None]:
    if "json" in members:
        meta = json.loads(members["json"].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"KEY.json holds a JSON {type(meta).__name__}, not an object "
                             'with "labels"')
        raw = meta.get("labels", meta.get("label"))
        true = meta.get("true_labels")
        return parse_labels(raw), (None if true is None else parse_labels(true))
    if "cls" in members:
        return parse_labels(members["cls"].decode("utf-8").replace("\n", ";")), None
    if "txt" in members:
        return parse_labels(members["txt"].decode("utf-8").strip().replace("\n", ";")), None
    return [], None


def _tar_groups(path: Path, skipped: collections.Counter) -> Iterator[tuple[str, dict, dict]]:
    """(key, {ext: (offset, size)} of images, {ext: bytes} of label members) per sample."""
    size_on_disk = path.stat().st_size
    current, images, small = None, {}, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or "." not in info.name.rsplit("/", 1)[-1]:
                    continue
                prefix, ext = split_member(info.name)
                if prefix != current:
                    if current is not None:
                        yield current, images, small
                    current, images, small = prefix, {}, {}
                if info.offset_data + info.size > size_on_disk:
                    count_skip(skipped, "truncated_member", f"{path.name}:{info.name}")
                elif ext in IMAGE_EXTENSIONS:
                    images[ext] = (info.offset_data, info.size)
                elif ext in ("json", "cls", "txt"):
                    small[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        count_skip(skipped, "truncated_tar", f"{path.name}: {exc}")
    if current is not None:
        yield current, images, small


def read_wds(root: Path, options: Any, skipped: collections.Counter) -> Iterator[SourceRecord]:
    """Existing WebDataset / img2dataset shards: image (jpg/png/webp/...) + json, cls or txt."""
    tars = sorted(root.rglob("*.tar")) if root.is_dir() else [root]
    if not tars:
        raise DataError(f"{root}: no .tar shards found")
    for tar_path in tars:
        for key, images, small in _tar_groups(tar_path, skipped):
            where = f"{tar_path.name}:{key}"
            if not images:
                count_skip(skipped, "no_image_member", where)
                continue
            try:
                labels, true = _labels_from_members(small)
            except (ValueError, TypeError, DataError) as exc:  # undecodable, not JSON, not labels
                count_skip(skipped, "bad_label_member", f"{where}: {exc}")
                continue
            ext = sorted(images)[0]
            offset, size = images[ext]
            yield SourceRecord(sanitize_key(key), labels, true, where,
                               f"tar:{offset}:{size}:{tar_path}", ext)


# --------------------------------------------------------------------------- synthetic world


def world_manifest(root: Path, split: str) -> Path:
    """The labels.jsonl of a synthetic world's split (``pretrain`` or ``eval``)."""
    path = root / split / "labels.jsonl"
    if not path.is_file():
        raise DataError(f"{root}: no {split}/labels.jsonl; is this a world made by `datascale synth`?")
    return path


def read_world(root: Path, options: Any, skipped: collections.Counter) -> Iterator[SourceRecord]:
    """A synthetic world: ``WORLD/{split}/labels.jsonl`` (+ true labels) and ``WORLD/classes.json``."""
    return read_manifest(world_manifest(root, options.split), options, skipped,
                         source_tag=f"world:{options.split}")


READERS: dict[str, Callable[[Path, Any, collections.Counter], Iterator[SourceRecord]]] = {
    "folder": read_folder,
    "manifest": read_manifest,
    "wds": read_wds,
    "world": read_world,
}


def detect_format(path: Path) -> str:
    """Guess the input format of ``path`` for ``format: auto``."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".tar":
            return "wds"
        if path.suffix.lower() in (".csv", ".parquet", ".jsonl", ".ndjson"):
            return "manifest"
        raise DataError(f"{path}: cannot tell the input format; pass --set format=...")
    if (path / "classes.json").is_file() and (path / "pretrain" / "labels.jsonl").is_file():
        return "world"
    if any(path.glob("*.tar")):
        return "wds"
    if not any(path.iterdir()):
        raise DataError(f"{path}: the input folder is empty")
    return "folder"
