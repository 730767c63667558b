"""A subset as plain WebDataset reads it: URL list, brace pattern, sizes.json, cut or own shards.

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

A class-restricted subset (``--classes``, ``--top-classes``) is a
label-dependent selection of every shard of its prefix, and its tars store
source label ids, so links cannot serve it: its view is materialised::

    SUBSET/shards/shard-000000.tar ...  real tars, consecutive names, the subset's samples in
                                        rank order, as many per tar as the source's largest shard
                  sizes.json            {"shard-000000.tar": 1000, ...}
    SUBSET/urls.txt                     one absolute shard path per line

Every member is copied byte for byte except ``KEY.json``, whose ``labels``
become the subset's class ids (``classes.json`` of the subset) and which
keeps the stored ids as ``source_labels``, as ``Subset.iter_samples`` yields
them (re-encoded as the shard writer encodes it: sorted keys). A sample that
the loader skips (no image or JSON member, bad JSON, no rank at the
boundary) is left out as well, and the written count must match the
manifest's. Headers are fixed, so a rerun writes the same bytes.

Cost: an unrestricted subset costs one symlink per full shard and one read of
the boundary shard. A class-restricted subset costs one read of every shard
of its prefix and a full copy of its samples on disk (its images' bytes,
about images x mean sample size); nested restricted subsets each hold their
own copy, so a ladder of them costs the sum of their sizes (e.g. 10M + 30M +
100M of 300M: about 0.47x the collection). Memory: one sample.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from pathlib import Path

from datascale.atomic import atomic_path, write_json, write_text
from datascale.errors import DataError
from datascale.formats.wds import IMAGE_MEMBER_EXTS, iter_member_groups, split_member, write_members
from data_tools.subsets.subset import Subset, subset_labels

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


def _shards_present(subset: Subset, folder: Path) -> bool:
    missing = [p for e, p in zip(subset.shards, subset.shard_paths()) if e.samples and not p.is_file()]
    if missing:
        log.warning("%s: %d of the subset's shard tars are missing (%s); no urls.txt written",
                    folder, len(missing), missing[0])
    return not missing


def relabelled_members(members: list[tuple[str, bytes]], table, keep_unlabelled: bool = False,
                       max_rank: float | None = None) -> list[tuple[str, bytes]] | None:
    """One stored sample as the class-restricted subset holds it, or None when it is not in it.

    ``KEY.json`` gets ``labels`` = subset ids (``table``: Subset.label_map) and
    ``source_labels`` = the stored ids; other members are returned as stored.
    None, as the loader skips them: no image or JSON member, JSON that is not
    an object, rank missing or >= ``max_rank`` (when given), no kept label.
    """
    exts = [split_member(name)[1] for name, _ in members]
    if "json" not in exts or not any(ext in IMAGE_MEMBER_EXTS for ext in exts):
        return None
    index = exts.index("json")
    try:
        meta = json.loads(members[index][1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if max_rank is not None:
        rank = meta.get("rank")
        if not isinstance(rank, (int, float)) or rank >= max_rank:
            return None
    stored = meta.get("labels", [])
    labels = subset_labels(stored if isinstance(stored, list) else [], table)
    if not labels and not keep_unlabelled:
        return None
    meta["source_labels"], meta["labels"] = stored, labels
    text = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")  # as write_tar encodes
    return [(name, text if i == index else data) for i, (name, data) in enumerate(members)]


def _per_shard(subset: Subset) -> int:
    """Samples per materialised tar: the source's largest shard (its samples_per_shard)."""
    try:
        sizes = json.loads((subset.shards_root / SIZES_FILE).read_text(encoding="utf-8"))
        return max(1, max(int(v) for v in sizes.values()))
    except (OSError, ValueError, TypeError, AttributeError):
        return max([e.samples for e in subset.shards] + [1])


def write_materialised_view(subset: Subset, folder: Path) -> dict:
    """Write a class-restricted subset's own tars, sizes.json and urls.txt (module docstring).

    Reads every shard of the prefix once; writes the subset's samples in rank
    order, ``_per_shard`` to a tar, atomically, and removes older
    ``shard-N.tar`` files beyond them. Raises DataError when a source shard
    does not hold the samples the manifest counts. Memory: one sample.
    """
    shard_dir = Path(folder) / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    table, found = subset.label_map(), {}

    def kept():
        for entry, source in zip(subset.shards, subset.shard_paths()):
            if entry.samples == 0:
                continue
            max_rank = subset.max_rank if entry.filter else None
            found[entry.path] = 0
            for _, members in iter_member_groups(source):
                out = relabelled_members(members, table, subset.keep_unlabelled, max_rank)
                if out is not None:
                    found[entry.path] += 1
                    yield out

    stream, per_shard = kept(), _per_shard(subset)
    urls, sizes = [], {}
    for first in stream:
        name = f"shard-{len(sizes):06d}.tar"
        with atomic_path(shard_dir / name) as tmp:
            sizes[name] = write_members(tmp, itertools.chain([first], itertools.islice(stream, per_shard - 1)))
        urls.append(os.path.abspath(shard_dir / name))
    wrong = [(e.path, found.get(e.path, 0), e.samples) for e in subset.shards
             if found.get(e.path, 0) != e.samples]
    if wrong:
        path, got, counted = wrong[0]
        raise DataError(f"{subset.shards_root / path}: {got} samples of class-restricted subset "
                        f"{subset.name}, the manifest counts {counted}; run `datascale shards verify`")
    for stale in shard_dir.glob("shard-*.tar"):
        if stale.name not in sizes and _NUMBERED.fullmatch(stale.name):
            stale.unlink()
    write_json(shard_dir / SIZES_FILE, sizes)
    write_text(Path(folder) / URLS_FILE, "".join(f"{url}\n" for url in urls))
    return {"urls": URLS_FILE, "pattern": brace_pattern(urls), "sizes": f"{SHARDS_DIR}/{SIZES_FILE}",
            "shards": len(urls), "samples": sum(sizes.values()), "boundary": None,
            "materialised": True}


def write_wds_view(subset: Subset, folder: Path) -> dict | None:
    """Write ``folder``/shards/ (links + the cut boundary shard + sizes.json) and urls.txt.

    Returns the ``webdataset`` record of subset.json (file names relative to
    ``folder``; a class-restricted subset gets :func:`write_materialised_view`'s),
    or None when shard tars are missing (a manifest-only shards folder; logged, and
    the next ``subsets make`` tries again). Raises DataError when the boundary
    shard does not hold the samples the manifest counts (a damaged or replaced shard).
    """
    if not _shards_present(subset, folder):
        return None
    if subset.classes is not None:
        return write_materialised_view(subset, folder)
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
