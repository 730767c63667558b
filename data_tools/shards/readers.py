"""The input readers of ``datascale shards write`` by format name, and ``format: auto``."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Callable, Iterator

from datascale.errors import DataError
from data_tools.shards.samples import looks_like_files, read_files, read_wds
from data_tools.shards.sources import SourceRecord, read_folder, read_manifest, read_world

READERS: dict[str, Callable[[Path, Any, collections.Counter], Iterator[SourceRecord]]] = {
    "folder": read_folder,
    "manifest": read_manifest,
    "wds": read_wds,
    "files": read_files,
    "world": read_world,
}


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
