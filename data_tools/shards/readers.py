"""The input readers of ``datascale shards write`` by format name, ``format: auto``, and the
input cut into parts that ranks read apart (:func:`input_parts`)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from datascale.errors import DataError
from data_tools.shards.label_source import SAMPLE_FORMATS, LabelSource
from data_tools.shards.samples import (files_parts, looks_like_files, read_files, read_wds,
                                       wds_tars)
from data_tools.shards.sources import (SourceRecord, class_folders, manifest_pieces,
                                       read_class_folder, read_folder, read_manifest, read_world,
                                       world_manifest)

READERS: dict[str, Callable[[Path, Any, collections.Counter], Iterator[SourceRecord]]] = {
    "folder": read_folder,
    "manifest": read_manifest,
    "wds": read_wds,
    "files": read_files,
    "world": read_world,
}


@dataclass(frozen=True)
class InputPart:
    """A contiguous piece of the input, in reading order, that one rank reads alone.

    ``read(skipped, labels)`` gives its records; ``labels`` is the process's
    :class:`LabelSource` for tar and ``files`` input (None elsewhere).
    """

    number: int
    name: str
    read: Callable[[collections.Counter, Any], Iterator[SourceRecord]]


def input_parts(fmt: str, source: Path, options: Any, pieces: int) -> list[InputPart] | None:
    """The input cut into parts for ranks to read apart, in reading order; None when it cannot
    be cut (a CSV manifest: every rank then reads all of it and keeps every W-th record).

    Parts are class folders (``folder``), tars (``wds``), the top folder's own
    files then each subfolder (``files``), row groups (Parquet manifest) or
    ``pieces`` byte ranges of the lines (JSONL manifest, ``world``). Reading
    the parts one after another gives the records in the order of the
    format's whole-input reader, so a record's place is (part, position in
    the part) on any number of ranks.
    """
    if fmt == "folder":
        return [InputPart(i, d.name, lambda skipped, _, d=d: read_class_folder(source, d, skipped))
                for i, d in enumerate(class_folders(source))]
    if fmt == "wds":
        return [InputPart(i, t.name, lambda skipped, labels, t=t:
                          read_wds(source, options, skipped, [t], labels))
                for i, t in enumerate(wds_tars(source))]
    if fmt == "files":
        return [InputPart(i, p or ".", lambda skipped, labels, p=p:
                          read_files(source, options, skipped, p, labels))
                for i, p in enumerate(files_parts(source))]
    manifest = world_manifest(source, options.split) if fmt == "world" else source
    cut = manifest_pieces(manifest, pieces)
    if cut is None:
        return None
    read = read_world if fmt == "world" else read_manifest
    return [InputPart(i, f"{manifest.name}[{i}]", lambda skipped, _, piece=piece:
                      read(source, options, skipped, piece=piece))
            for i, piece in enumerate(cut)]


def label_source(fmt: str, options: Any) -> LabelSource | None:
    """The one label source a process shares across its parts (tar and ``files`` input)."""
    return LabelSource(options) if fmt in SAMPLE_FORMATS else None


def detect_format(path: Path) -> str:
    """Guess the input format of ``path`` for ``format: auto``.

    A .tar or a folder with .tar files is ``wds``; a folder whose images have a
    same-key .json/.cls beside them is img2dataset's ``files``; a folder with
    ``classes.json`` and ``pretrain/labels.jsonl`` is a ``world``; any other
    folder is a class-folder tree (``folder``).
    """
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
    if looks_like_files(path):
        return "files"
    return "folder"
