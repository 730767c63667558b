"""Input readers for ``datascale shards write``: every kind of input as one record stream.

A reader turns an input (an image folder tree, a CSV/Parquet/JSONL manifest,
or a synthetic world here; WebDataset tars and img2dataset folders in
:mod:`data_tools.shards.samples`) into
:class:`SourceRecord` s: a key, raw labels (names or ids), optional true
labels, and a reference to the encoded image bytes (a file path, or a byte
range inside a tar). Readers never load image bytes, so the first pass over a
300M-image input costs metadata only. Readers are registered by name in
:data:`data_tools.shards.readers.READERS`; ``detect_format`` there picks one
for ``format: auto``.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow.parquet as pq

from datascale.errors import DataError, count_skip
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
    kept: dict | None = None  # caption, url, sha256 carried to the output sample (tar/files input)


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
    total = 0
    for class_dir in class_folders(root):
        for record in read_class_folder(root, class_dir, skipped):
            total += 1
            yield record
    if total == 0:
        raise DataError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")


def class_folders(root: Path) -> list[Path]:
    """The class folders of a folder tree, in reading order (each a part of the input)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected ROOT/CLASS_NAME/IMAGE.jpg")
    return class_dirs


def read_class_folder(root: Path, class_dir: Path, skipped: collections.Counter) -> Iterator[SourceRecord]:
    """The images of one class folder, in name order."""
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


@dataclass(frozen=True)
class Piece:
    """A contiguous piece of one manifest in reading order, readable on its own.

    Parquet: ``row_groups`` (indices), whose first row is row ``first_row``
    of the file; JSONL: the lines that start in bytes [``start``, ``end``).
    """

    row_groups: tuple[int, ...] | None = None
    first_row: int = 1
    start: int = 0
    end: int | None = None


def manifest_pieces(path: Path, pieces: int) -> list[Piece] | None:
    """``path`` cut into pieces for ranks to read apart, in reading order; None for a CSV.

    Parquet splits at row groups (one piece each: the metadata says where
    they are); JSONL into ``pieces`` byte ranges that start at line starts. A
    CSV cannot be cut by bytes (a quoted field may hold a newline), so every
    rank reads all of it: convert it to Parquet for a split read.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        meta = pq.ParquetFile(path).metadata
        out, first = [], 1
        for group in range(meta.num_row_groups):
            out.append(Piece(row_groups=(group,), first_row=first))
            first += meta.row_group(group).num_rows
        return out
    if suffix in (".jsonl", ".ndjson"):
        size = path.stat().st_size
        starts = {0}
        with open(path, "rb") as handle:
            for k in range(1, max(1, pieces)):
                cut = size * k // pieces
                if cut <= 0:
                    continue
                handle.seek(cut - 1)  # from the byte before, so that a cut on a line start stays
                handle.readline()
                starts.add(min(handle.tell(), size))
        cuts = sorted(starts) + [size]
        return [Piece(start=a, end=b) for a, b in zip(cuts, cuts[1:]) if b > a] or [Piece(end=0)]
    return None


def manifest_rows(path: Path, batch_rows: int = 65536, piece: Piece | None = None) -> Iterator[dict]:
    """The rows of a manifest (or of one :class:`Piece` of it) as dicts."""
    for _, row in located_rows(path, batch_rows, piece):
        yield row


def located_rows(path: Path, batch_rows: int = 65536, piece: Piece | None = None
                 ) -> Iterator[tuple[int, dict]]:
    """(position, row) for each row; :func:`row_name` turns the position into words."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        number = piece.first_row if piece else 1
        groups = list(piece.row_groups) if piece and piece.row_groups is not None else None
        for batch in iter_parquet_batches(path, batch_rows=batch_rows, row_groups=groups):
            for row in batch.to_pylist():
                yield number, row
                number += 1
    elif suffix == ".csv":
        number = 1
        for chunk in pd.read_csv(path, chunksize=batch_rows, dtype=str, keep_default_na=False):
            for row in chunk.to_dict("records"):
                yield number, row
                number += 1
    elif suffix in (".jsonl", ".ndjson"):
        start = piece.start if piece else 0
        end = piece.end if piece else None
        by_offset = not _whole(piece)
        with open(path, "rb") as handle:
            handle.seek(start)
            offset, number = start, 0
            for raw in handle:
                if end is not None and offset >= end:
                    break
                number += 1
                if raw.strip():
                    try:
                        yield (offset if by_offset else number), json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        where = row_name(path, piece, offset if by_offset else number)
                        raise DataError(f"{path}, {where}: not valid JSON "
                                        f"({getattr(exc, 'msg', exc)})") from None
                offset += len(raw)
    else:
        raise DataError(f"{path}: manifest must be .csv, .parquet or .jsonl")


def _whole(piece: Piece | None) -> bool:
    """True when line numbers count from the file's start (the whole file, or its first piece)."""
    return piece is None or piece.start == 0


def row_name(path: Path, piece: Piece | None, position: int) -> str:
    """A row's position from :func:`located_rows` in words: "row 12", "line 3", "the line at byte 80"."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return f"line {position}" if _whole(piece) else f"the line at byte {position}"
    return f"row {position}"


def manifest_columns(path: Path) -> list[str] | None:
    """Column names without reading the data (None for JSONL, checked per row)."""
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).schema_arrow.names
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    return None


def missing_column(path: Path, column: str, option: str, available: list[str]) -> DataError:
    return DataError(f"{path}: no column '{column}' (columns: {', '.join(map(str, available))}); "
                     f"name the right one with --set {option}=COLUMN")


def read_manifest(path: Path, options: Any, skipped: collections.Counter,
                  source_tag: str = "manifest", piece: Piece | None = None) -> Iterator[SourceRecord]:
    """A manifest with an image path and a list of labels per row (paths relative to its folder);
    ``piece``: only that piece of it (:func:`manifest_pieces`)."""
    image_col, labels_col = options.image_column, options.labels_column
    columns = manifest_columns(path)
    for column, option in ((image_col, "image_column"), (labels_col, "labels_column")):
        if columns is not None and column not in columns:
            raise missing_column(path, column, option, columns)
    base = path.parent
    for position, row in located_rows(path, piece=piece):
        for column, option in ((image_col, "image_column"), (labels_col, "labels_column")):
            if column not in row:
                raise DataError(f"{path}: {row_name(path, piece, position)} has no '{column}' field (fields: "
                                f"{', '.join(row)}); name the right one with --set {option}=FIELD")
        rel = str(row[image_col])
        key = row.get(options.key_column) or rel.rsplit(".", 1)[0]
        true = row.get("true_labels")
        yield SourceRecord(sanitize_key(str(key)), parse_labels(row[labels_col]),
                           None if true is None else parse_labels(true),
                           f"{source_tag}:{rel}", str(base / rel),
                           rel.rsplit(".", 1)[-1].lower() if "." in rel else "")


# --------------------------------------------------------------------------- synthetic world


def world_manifest(root: Path, split: str) -> Path:
    """The labels.jsonl of a synthetic world's split (``pretrain`` or ``eval``)."""
    path = root / split / "labels.jsonl"
    if not path.is_file():
        raise DataError(f"{root}: no {split}/labels.jsonl; is this a world made by `datascale synth`?")
    return path


def read_world(root: Path, options: Any, skipped: collections.Counter,
               piece: Piece | None = None) -> Iterator[SourceRecord]:
    """A synthetic world: ``WORLD/{split}/labels.jsonl`` (+ true labels) and ``WORLD/classes.json``."""
    return read_manifest(world_manifest(root, options.split), options, skipped,
                         source_tag=f"world:{options.split}", piece=piece)
