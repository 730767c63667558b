"""The fast tar member reader against Python's tarfile, and what it does with damage."""

from __future__ import annotations

import collections
import io
import tarfile

import numpy as np
import pytest

from datascale.formats.tarstream import BLOCK, iter_regular_members
from datascale.formats.wds import read_shard, write_tar


def _tar(fmt: int) -> bytes:
    """A tar in ``fmt`` with every kind of entry and name the formats encode differently."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), link
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("dir", kind=tarfile.DIRTYPE)
        for size in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 70_000):
            add(f"dir/{size:06d}.jpg", rng.bytes(size))
        add("dir/000001.lnk", kind=tarfile.SYMTYPE, link="000001.jpg")
        add("a" * 60 + "/" + "b" * 90 + ".json", b'{"labels": [1]}')  # ustar: split into prefix
        if fmt != tarfile.USTAR_FORMAT:
            add("c" * 150 + ".json", b"{}")  # GNU: an L record; pax: a path record
        if fmt == tarfile.PAX_FORMAT:
            add("caf\u00e9/\u00fcber.txt", "non-ascii".encode())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_same_members_as_tarfile(fmt):
    data = _tar(fmt)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    got = list(iter_regular_members(io.BytesIO(data)))
    assert got == expected
    assert len(got) >= 7 and any(len(name) > 100 for name, _ in got)


def test_a_stream_cut_short_raises_after_the_whole_members():
    data = _tar(tarfile.USTAR_FORMAT)
    whole = list(iter_regular_members(io.BytesIO(data)))
    for cut in (BLOCK * 3 + 100, BLOCK * 3 + 10, len(data) // 2, BLOCK + 7):
        got = []
        with pytest.raises(tarfile.ReadError):
            for member in iter_regular_members(io.BytesIO(data[:cut])):
                got.append(member)
        assert got == whole[:len(got)]  # every member yielded before the cut is whole
    with pytest.raises(tarfile.ReadError, match="empty"):
        list(iter_regular_members(io.BytesIO(b"")))


def test_a_damaged_header_past_the_first_member_is_an_error_not_an_end(tmp_path):
    """tarfile ends the iteration quietly at a bad header past the first member (the rest of
    the shard lost unseen); the reader raises, so read_shard counts it."""
    path = tmp_path / "shard.tar"
    write_tar(path, [(f"{i:04d}", "jpg", bytes([i]) * 700, {"labels": [i]}) for i in range(4)])
    raw = bytearray(path.read_bytes())
    third = 2 * 5 * BLOCK  # a sample is 5 blocks: jpg header + 2 data blocks, json header + 1
    assert raw[third:third + 8] == b"0002.jpg"
    raw[third + 2] ^= 0x04  # one byte of sample 2's name: its checksum no longer holds
    path.write_bytes(bytes(raw))
    with tarfile.open(path, mode="r|") as tar:
        assert len([m for m in tar]) == 4  # tarfile: two samples, no error
    skipped = collections.Counter()
    samples = list(read_shard(path, skipped))
    # Sample 1 was open when the damage came (more of its members could have followed): dropped.
    assert [s.key for s in samples] == ["0000"]
    assert skipped["truncated_tar"] == 1 and skipped["truncated_sample"] == 1
    with pytest.raises(Exception, match="checksum"):
        list(read_shard(path))


def test_read_shard_reads_what_write_tar_wrote(tmp_path):
    path = tmp_path / "shard.tar"
    samples = [(f"k{i:03d}", "jpg", np.random.default_rng(i).bytes(100 * i), {"labels": [i]},
                {"txt": f"caption {i}".encode()}) for i in range(30)]
    write_tar(path, samples)
    read = list(read_shard(path))
    assert [(s.key, s.image, s.meta) for s in read] == [(k, b, m) for k, _, b, m, _ in samples]
