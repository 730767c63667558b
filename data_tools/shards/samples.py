"""WebDataset-style inputs: tar shards and img2dataset ``files`` folders, as source records.

Both hold samples as members that share a key: ``KEY.jpg`` (or another image
format) beside ``KEY.json``, ``KEY.cls``, ``KEY.txt``. A tar is
WebDataset's (and img2dataset's ``output_format=tar``); a ``files`` folder is
img2dataset's ``output_format=files``: ``00000/000000001.jpg`` + ``.json`` +
``.txt`` in one subfolder per shard, with per-shard metadata
(``00000.parquet``, ``00000_stats.json``) at the top, which is not read. A
``files`` sample's key is its file name up to the first dot, as in the tar
img2dataset would have written, so both outputs of one download give the
same keys, ranks and subsets.

Labels come from one source (:mod:`data_tools.shards.label_source`); the
caption, url and sha256 travel with the record to the output sample.
Memory: one sample's small members at a time (plus a sidecar label table).
"""

from __future__ import annotations

import collections
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

from datascale.errors import DataError, count_skip
from datascale.formats.wds import split_member
from data_tools.ranks import sanitize_key
from data_tools.shards.label_source import (SMALL_MEMBERS, LabelSource, MissingLabel,
                                            NoLabelSource, kept_fields)
from data_tools.shards.sources import IMAGE_EXTENSIONS, SourceRecord

# A group: (key, where, {image ext: ref}, {small member ext: bytes})
Group = tuple[str, str, dict, dict]


def _tar_groups(path: Path, skipped: collections.Counter) -> Iterator[Group]:
    """One group per sample of a tar, in member order (byte ranges, not image bytes)."""
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
                        yield current, f"{path.name}:{current}", images, small
                    current, images, small = prefix, {}, {}
                if info.offset_data + info.size > size_on_disk:
                    count_skip(skipped, "truncated_member", f"{path.name}:{info.name}")
                elif ext in IMAGE_EXTENSIONS:
                    images[ext] = f"tar:{info.offset_data}:{info.size}:{path}"
                elif ext in SMALL_MEMBERS:
                    small[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        count_skip(skipped, "truncated_tar", f"{path.name}: {exc}")
    if current is not None:
        yield current, f"{path.name}:{current}", images, small


def _files_groups(root: Path, skipped: collections.Counter, part: str | None = None) -> Iterator[Group]:
    """One group per sample of an img2dataset ``files`` folder, folder by folder in name order.

    ``part``: only that piece of the walk (:func:`files_parts`): ``""`` the
    top folder's own files, or a top-level subfolder's name (walked whole).
    """
    if part is None:
        walk = os.walk(root)
    elif part == "":
        folder, _, files = next(os.walk(root))
        walk = iter([(folder, [], files)])
    else:
        walk = os.walk(root / part)
    for folder, dirs, files in walk:
        dirs.sort()
        top = Path(folder) == root
        groups: dict[str, tuple[dict, dict]] = {}
        for name in sorted(files):
            if name.startswith(".") or "." not in name:
                continue
            key, ext = split_member(name)
            images, small = groups.setdefault(key, ({}, {}))
            path = Path(folder) / name
            if ext in IMAGE_EXTENSIONS:
                images[ext] = str(path)
            elif ext in SMALL_MEMBERS:
                small[ext] = path.read_bytes()
        for key, (images, small) in groups.items():
            if top and not images:
                continue  # img2dataset's per-shard metadata (00000_stats.json), not a sample
            yield key, (Path(folder) / key).relative_to(root).as_posix(), images, small


def files_parts(root: Path) -> list[str]:
    """The pieces of a ``files`` folder in the order :func:`_files_groups` walks it: the top
    folder's own files, then each top-level subfolder (img2dataset's shard folders)."""
    if not root.is_dir():
        raise DataError(f"{root}: 'files' input must be a folder")
    return [""] + sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _records(groups: Iterator[Group], options: Any, skipped: collections.Counter,
             source: LabelSource | None = None) -> Iterator[SourceRecord]:
    source = source or LabelSource(options)
    for key, where, images, small in groups:
        if not images:
            count_skip(skipped, "no_image_member", where)
            continue
        try:
            labels, true = source.labels(key, small, where)
        except MissingLabel as exc:
            count_skip(skipped, "missing_label", f"{where}: {exc}")
            continue
        except NoLabelSource:
            raise
        except (ValueError, TypeError, DataError) as exc:  # undecodable, not JSON, not labels
            count_skip(skipped, "bad_label_member", f"{where}: {exc}")
            continue
        ext = sorted(images)[0]
        yield SourceRecord(sanitize_key(key), labels, true, where, images[ext], ext,
                           kept_fields(small) or None)


def wds_tars(root: Path) -> list[Path]:
    """The tars of a WebDataset input in reading order (a .tar, or a folder searched recursively)."""
    tars = sorted(root.rglob("*.tar")) if root.is_dir() else [root]
    if not tars:
        raise DataError(f"{root}: no .tar shards found")
    return tars


def read_wds(root: Path, options: Any, skipped: collections.Counter,
             tars: list[Path] | None = None, source: LabelSource | None = None) -> Iterator[SourceRecord]:
    """WebDataset / img2dataset tar shards (a .tar or a folder of them, searched recursively).

    ``tars``: only these of them; ``source``: the label source to use (one
    per process, so that a sidecar table is loaded once for all its parts).
    """
    source = source or LabelSource(options)
    for tar_path in wds_tars(root) if tars is None else tars:
        yield from _records(_tar_groups(tar_path, skipped), options, skipped, source)


def read_files(root: Path, options: Any, skipped: collections.Counter,
               part: str | None = None, source: LabelSource | None = None) -> Iterator[SourceRecord]:
    """An img2dataset ``files`` folder: SUBFOLDER/KEY.jpg + KEY.json (+ KEY.txt, KEY.cls);
    ``part``: only that piece of it (:func:`files_parts`), ``source`` as for :func:`read_wds`."""
    if not root.is_dir():
        raise DataError(f"{root}: 'files' input must be a folder")
    yield from _records(_files_groups(root, skipped, part), options, skipped, source)


def looks_like_files(root: Path, probe: int = 200) -> bool:
    """True when the first images of a folder have a same-key ``.json`` or ``.cls`` beside them.

    Looks at no more than ``probe`` files, so detection costs nothing on a big tree.
    """
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        keys = collections.defaultdict(set)
        for name in sorted(files)[:probe]:
            key, ext = split_member(name)
            keys[key].add(ext)
        for exts in keys.values():
            if exts & IMAGE_EXTENSIONS:
                if exts & {"json", "cls"}:
                    return True
                seen += 1
        if seen >= probe:
            return False
    return False
