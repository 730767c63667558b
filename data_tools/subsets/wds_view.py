"""A subset as plain WebDataset reads it: a URL list, a brace pattern, sizes.json, one cut shard.

The loader reads a subset through ``subset.json`` (full shards, then the
boundary shard with a rank filter). ``webdataset`` and open_clip know no rank
filter, so each subset also gets a folder of shards that holds exactly its
samples::

    SUBSET/shards/shard-000000.tar -> ../../../shards/shard-000000.tar   (relative links)
                  shard-000004.tar     the boundary shard cut to the subset's samples (a real file)
                  sizes.json           {"shard-000000.tar": 1000, ..., "shard-000004.tar": 120}
    SUBSET/urls.txt                    one absolute shard path per line, in rank order

The shards' names stay consecutive, so ``subset.json`` also records one brace
pattern (``.../shards/shard-{000000..000004}.tar``) and open_clip, which
reads ``sizes.json`` beside the first shard, counts the subset's samples.
The cut shard holds the boundary shard's members with rank < max_rank,
copied byte for byte, under the fixed tar headers of
:func:`datascale.formats.wds.write_members`, so a rerun writes the same bytes.

A class-restricted subset has no such view: which of its samples belong to it
depends on their labels in every shard, and its stored labels are source ids,
so plain WebDataset would read other images and other label ids; it is read
through the datascale loader only (``subset.json`` says ``"webdataset": null``).

Cost: one symlink per full shard and one read of the boundary shard.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from datascale.atomic import atomic_path, write_json, write_text
from datascale.errors import DataError
from datascale.formats.wds import iter_member_groups, write_members
from data_tools.subsets.subset import Subset

log = logging.getLogger(__name__)
SHARDS_DIR = "shards"
URLS_FILE = "urls.txt"
SIZES_FILE = "sizes.json"
_NUMBERED = re.compile(r"(.*?)(\d+)(\D*)")


def brace_pattern(paths: list[str]) -> str | None:
    """One brace pattern that expands (braceexpand, as webdataset does) to exactly ``paths``.

    Needs one folder and names PREFIX + consecutive same-width numbers + SUFFIX
    (``shard-{000000..000004}.tar``); None when the names do not allow it.
    """
    if not paths or any(c in p for p in paths for c in "{},") or any("::" in p for p in paths):
        return None
    if len(paths) == 1:
        return paths[0]
    folders = {os.path.dirname(p) for p in paths}
    parts = [_NUMBERED.fullmatch(os.path.basename(p)) for p in paths]
    if len(folders) != 1 or not all(parts):
        return None
    prefix, first, suffix = parts[0].groups()
    for i, part in enumerate(parts):
        if (part.group(1), part.group(3)) != (prefix, suffix) or len(part.group(2)) != len(first) \
                or int(part.group(2)) != int(first) + i:
            return None
    return os.path.join(folders.pop(), f"{prefix}{{{first}..{parts[-1].group(2)}}}{suffix}")


def cut_boundary_shard(source: Path, target: Path, max_rank: float) -> int:
    """Write to ``target`` the samples of ``source`` whose KEY.json rank is < ``max_rank``.

    Members are copied as stored (names and bytes), in tar order; a sample
    without a readable rank is left out, as the loader's rank filter leaves
    it out. Atomic; returns the number of samples written. Memory: one sample.
    """
    def kept():
        for _, members in iter_member_groups(source):
            meta = next((data for name, data in members if name.endswith(".json")), None)
            try:
                rank = json.loads(meta)["rank"] if meta is not None else None
            except (ValueError, KeyError, TypeError):
                rank = None
            if isinstance(rank, (int, float)) and rank < max_rank:
                yield members

    with atomic_path(target) as tmp:
        return write_members(tmp, kept())


def _link(link_text: str, target: Path) -> None:
    """Make ``target`` a symlink holding ``link_text``; a rerun keeps a right one, replaces a
    wrong one atomically. (os.symlink is atomic itself: 0.03 ms a link, not 0.25.)"""
    try:
        os.symlink(link_text, target)
    except FileExistsError:
        if target.is_symlink() and os.readlink(target) == link_text:
            return
        with atomic_path(target) as tmp:
            tmp.unlink()
            os.symlink(link_text, tmp)


def write_wds_view(subset: Subset, folder: Path) -> dict | None:
    """Write ``folder``/shards/ (links + the cut boundary shard + sizes.json) and urls.txt.

    Returns the ``webdataset`` record of subset.json (file names relative to
    ``folder``), or None for a class-restricted subset (module docstring) and
    when shard tars are missing (a manifest-only shards folder; logged, and
    the next ``subsets make`` tries again). Raises DataError when the boundary
    shard does not hold the samples the manifest counts (a damaged or replaced shard).
    """
    if subset.classes is not None:
        return None
    missing = [p for e, p in zip(subset.shards, subset.shard_paths()) if e.samples and not p.is_file()]
    if missing:
        log.warning("%s: %d of the subset's shard tars are missing (%s); no urls.txt written",
                    folder, len(missing), missing[0])
        return None
    shard_dir = Path(folder) / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    urls, sizes, boundary, linked = [], {}, None, True
    to_root = os.path.relpath(subset.shards_root, shard_dir.resolve())
    for entry, source in zip(subset.shards, subset.shard_paths()):
        name = Path(entry.path).name
        if entry.samples == 0:
            continue
        if name in sizes:
            raise DataError(f"{subset.shards_root}: two shards named {name}; "
                            "a subset's shard folder needs distinct names")
        target = shard_dir / name
        if entry.filter:
            written = cut_boundary_shard(source, target, subset.max_rank)
            if written != entry.samples:
                raise DataError(f"{source}: {written} samples below rank {subset.max_rank:.6g}, "
                                f"the manifest counts {entry.samples}; run `datascale shards verify`")
            boundary = {"shard": f"{SHARDS_DIR}/{name}", "samples": written, "source": entry.path}
        else:
            try:
                _link(os.path.join(to_root, entry.path), target)
            except OSError as exc:  # a file system without symlinks: list the shard itself
                if linked:
                    log.warning("%s: cannot make symlinks (%s); urls.txt lists the shards folder's "
                                "own paths and no brace pattern", shard_dir, exc)
                linked = False
                urls.append(os.path.abspath(source))
                sizes[name] = entry.samples
                continue
        urls.append(os.path.abspath(target))
        sizes[name] = entry.samples
    write_json(shard_dir / SIZES_FILE, sizes)
    write_text(Path(folder) / URLS_FILE, "".join(f"{url}\n" for url in urls))
    return {"urls": URLS_FILE, "pattern": brace_pattern(urls) if linked else None,
            "sizes": f"{SHARDS_DIR}/{SIZES_FILE}", "shards": len(urls),
            "samples": sum(sizes.values()), "boundary": boundary}
