"""Reading and writing WebDataset tar shards, one sample (``KEY.jpg`` + ``KEY.json``) at a time.

The tars follow WebDataset conventions (members grouped by key, the key is
the member name up to the first dot of its base name), so ``webdataset`` and
img2dataset tools read them; written tars are byte-for-byte deterministic
(fixed mtime, owner and mode), so re-running a stage reproduces its hashes.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from PIL import Image

from datascale.errors import DataError, count_skip
from datascale.formats.tarstream import iter_regular_members

log = logging.getLogger(__name__)

# Formats that WebDataset consumers (e.g. open_clip's "jpg;png;webp" selector)
# decode as they are; anything else PIL can read is re-encoded to JPEG.
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
IMAGE_MEMBER_EXTS = ("jpg", "png", "webp", "jpeg")
REENCODE_QUALITY = 95
_TAR_MTIME = 0


class ShardSample(NamedTuple):
    """One sample read from a shard: encoded image bytes plus its parsed ``KEY.json``."""

    key: str
    image: bytes
    ext: str
    meta: dict
    shard: str


class ImageCheckError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated or not an image)."""


def check_image(data: bytes, decode: bool = True) -> tuple[bytes, str, bool]:
    """Validate encoded image bytes; return (bytes to store, extension, re-encoded?).

    JPEG, PNG and WebP bytes are returned unchanged. With ``decode`` the
    whole compressed stream is decoded (JPEG in PIL's draft mode at 1/8
    scale, which still reads every entropy-coded byte, so truncation is
    caught at a fraction of the cost of a full decode). Raises ImageCheckError.
    """
    try:
        image = Image.open(io.BytesIO(data))
        fmt = image.format
        if fmt in KEPT_FORMATS:
            if decode:
                if fmt == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            return data, KEPT_FORMATS[fmt], False
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=REENCODE_QUALITY)
        return out.getvalue(), "jpg", True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageCheckError(f"not a decodable image ({exc})") from None


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member name, by WebDataset's first-dot rule."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(path: Path, samples: Iterable[tuple]) -> int:
    """Write ``(key, ext, image bytes, meta[, {ext: bytes}])`` samples to a tar at ``path``.

    Each sample becomes ``KEY.EXT`` + ``KEY.json`` (``meta``), then any extra
    members in extension order (``KEY.txt`` for a caption); returns the count.
    The caller renames the file into place (see :mod:`datascale.atomic`);
    this function only writes. Streaming: one sample in memory at a time.
    """
    count = 0
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, image, meta, *extra in samples:
            text = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
            tar.addfile(_tarinfo(f"{key}.{ext}", len(image)), io.BytesIO(image))
            tar.addfile(_tarinfo(f"{key}.json", len(text)), io.BytesIO(text))
            for member, data in sorted((extra[0] if extra else {}).items()):
                tar.addfile(_tarinfo(f"{key}.{member}", len(data)), io.BytesIO(data))
            count += 1
    return count


def iter_member_groups(path: str | Path) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(member name, bytes), ...]) per sample of a tar, in tar order, as stored.

    For copying samples byte for byte (a subset's boundary shard). Members
    are grouped by WebDataset's key rule. Memory: one sample. Raises
    DataError when the tar is missing or damaged.
    """
    key, members = None, []
    try:
        with open(path, "rb") as handle:
            for name, data in iter_regular_members(handle):
                member_key = split_member(name)[0]
                if members and member_key != key:
                    yield key, members
                    members = []
                key = member_key
                members.append((name, data))
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the tar ({exc}); run `datascale shards verify`") from None
    if members:
        yield key, members


def write_members(path: Path, samples: Iterable[list[tuple[str, bytes]]]) -> int:
    """Write samples given as [(member name, bytes), ...] to a tar at ``path``, with the same
    fixed headers as :func:`write_tar` (same input, same bytes). Returns the sample count."""
    count = 0
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            count += 1
    return count


def _finish(group: dict | None, shard: str, skipped: collections.Counter | None
            ) -> ShardSample | None:
    if group is None:
        return None
    key = group["__key__"]
    image_ext = next((e for e in IMAGE_MEMBER_EXTS if e in group), None)
    if image_ext is None:
        count_skip(skipped, "missing_image_member", f"{shard}:{key}")
        return None
    if "json" not in group:
        count_skip(skipped, "missing_json_member", f"{shard}:{key}")
        return None
    try:
        meta = json.loads(group["json"].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        count_skip(skipped, "bad_json_member", f"{shard}:{key}: {exc}")
        return None
    return ShardSample(key, group[image_ext], "jpg" if image_ext == "jpeg" else image_ext,
                       meta, shard)


def read_shard(path: str | Path, skipped: collections.Counter | None = None
               ) -> Iterator[ShardSample]:
    """Stream one tar shard as ShardSamples in tar order.

    Missing or unreadable members, bad JSON and a truncated tar are counted in
    ``skipped`` (by reason) and logged; the shard is read up to the damage and
    the generator ends normally. With ``skipped=None`` damage raises DataError.
    Memory: one sample. The image bytes are not decoded here.
    """
    path = Path(path)
    name = path.name
    group: dict | None = None
    try:
        with open(path, "rb") as handle:
            for member, data in iter_regular_members(handle):
                key, ext = split_member(member)
                if group is not None and key != group["__key__"]:
                    sample = _finish(group, name, skipped)
                    group = None
                    if sample is not None:
                        yield sample
                if group is None:
                    group = {"__key__": key}
                if ext in group:
                    count_skip(skipped, "duplicate_member", f"{name}:{member}")
                    continue
                group[ext] = data
    except FileNotFoundError:
        count_skip(skipped, "missing_shard", str(path))
        return
    except (tarfile.TarError, OSError, EOFError) as exc:
        # The group being read when the tar broke off may be incomplete: drop it.
        count_skip(skipped, "truncated_tar", f"{name}: {exc}")
        if group is not None:
            count_skip(skipped, "truncated_sample", f"{name}:{group['__key__']}")
        return
    sample = _finish(group, name, skipped)
    if sample is not None:
        yield sample


def iter_shard_samples(shard_paths: Iterable[str | Path], *, max_rank: float | None = None,
                       skipped: collections.Counter | None = None,
                       verify_images: bool = False) -> Iterator[ShardSample]:
    """Stream the samples of several shards in order, optionally only those with rank < max_rank.

    Corrupt or truncated members are skipped, counted in ``skipped`` (a
    Counter by reason; one is made if None, so damage never raises) and
    logged. ``verify_images`` also decodes each image (costly) and skips
    undecodable ones as ``corrupt_image``. Memory: one sample at a time.
    """
    skipped = collections.Counter() if skipped is None else skipped
    for path in shard_paths:
        for sample in read_shard(path, skipped):
            rank = sample.meta.get("rank")
            if max_rank is not None:
                if not isinstance(rank, (int, float)):
                    count_skip(skipped, "missing_rank", f"{sample.shard}:{sample.key}")
                    continue
                if rank >= max_rank:
                    continue
            if verify_images:
                try:
                    check_image(sample.image)
                except ImageCheckError as exc:
                    count_skip(skipped, "corrupt_image", f"{sample.shard}:{sample.key}: {exc}")
                    continue
            yield sample
