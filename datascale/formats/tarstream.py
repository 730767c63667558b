"""A fast sequential reader of the regular members of a tar stream.

The loader reads every shard once an epoch and parses one 512-byte header per
member; with 64 px images, Python's ``tarfile`` spent more time on those headers
(``TarInfo.frombuf`` and the stream layer around it) than PIL spent decoding
the JPEGs (docs/benchmarks.md). This reader parses the same formats that
``tarfile`` writes: ustar (with its name prefix), GNU long names (``L``) and
pax extended headers (``x``, a ``path`` record), with octal or base-256 sizes,
and yields ``(name, data)`` for every regular file, skipping directories,
links and other entries as ``TarInfo.isreg()`` would.

It is stricter than ``tarfile`` where ``tarfile`` is silent: a header whose
checksum is wrong, or a header cut short, past the first member ends a
``tarfile`` iteration without an error (the rest of the shard is lost unseen);
here both raise :class:`tarfile.ReadError`, as a member whose data is cut short
does, so callers count the damage.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO, Iterator

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\x00", b"7")  # REGTYPE, AREGTYPE, CONTTYPE (tarfile.REGULAR_TYPES less sparse)
_SPARSE = b"S"
_LONG_NAME, _PAX, _PAX_GLOBAL = b"L", b"x", b"g"
_CHECKSUM_SPACES = 8 * ord(" ")
_POSIX_MAGIC = b"ustar\x0000"


def _number(field: bytes, offset: int) -> int:
    """A header's numeric field: octal digits, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[0] == 0o377 else value
    digits = field.split(b"\x00", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise tarfile.ReadError(f"invalid header at byte {offset}: bad number {field!r}") from None


def _check_header(header: bytes, offset: int) -> None:
    stored = _number(header[148:156], offset)
    unsigned = sum(header) - sum(header[148:156]) + _CHECKSUM_SPACES
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    if stored != signed:
        raise tarfile.ReadError(f"invalid header at byte {offset}: bad checksum")


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, offset: int) -> dict[bytes, bytes]:
    """The records of a pax extended header (each ``LEN key=value\\n``)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\x00":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise tarfile.ReadError(f"invalid pax header at byte {offset}") from None
        if length <= 0 or space < 0:
            raise tarfile.ReadError(f"invalid pax header at byte {offset}")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


def _read_exactly(handle: BinaryIO, size: int, offset: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data at byte {offset + len(data)}")
    return data


def iter_regular_members(handle: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular member of the tar read from ``handle``, in order.

    Ends at the end-of-archive block or at the end of the stream on a block
    boundary. Raises :class:`tarfile.ReadError` on an empty stream, a damaged
    or truncated header, or truncated data, after yielding every member before
    the damage. Memory: one member.
    """
    offset, pending = 0, {}  # a GNU long name or pax records, for the next member
    while True:
        header = handle.read(BLOCK)
        if not header:
            if offset == 0:
                raise tarfile.ReadError("empty file")
            return
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"truncated header at byte {offset}")
        if header == _ZERO_BLOCK:
            return
        _check_header(header, offset)
        kind = header[156:157]
        size = _number(header[124:136], offset)
        if kind in _REGULAR and b"size" in pending:  # pax sizes are decimal (files over 8 GiB)
            try:
                size = int(pending[b"size"])
            except ValueError:
                raise tarfile.ReadError(f"invalid pax size at byte {offset}") from None
        padded = -(-size // BLOCK) * BLOCK
        offset += BLOCK
        if kind in _REGULAR:
            if b"path" in pending:
                name = pending[b"path"].decode("utf-8", "surrogateescape")
            else:
                name = _text(header[:100])
                prefix = _text(header[345:500]) if header[257:265] == _POSIX_MAGIC else ""
                if prefix:
                    name = f"{prefix}/{name}"
            pending = {}
            data = _read_exactly(handle, size, offset)
            _read_exactly(handle, padded - size, offset + size)
            yield name, data
        elif kind == _LONG_NAME:
            pending[b"path"] = _text(_read_exactly(handle, padded, offset)[:size]).encode(
                "utf-8", "surrogateescape")
        elif kind == _PAX:
            pending.update(_pax_records(_read_exactly(handle, padded, offset)[:size], offset))
        elif kind == _SPARSE:
            raise tarfile.ReadError(f"GNU sparse member at byte {offset - BLOCK} is not supported")
        else:  # directories, links, devices, global pax headers, GNU long link names: no file
            if kind != _PAX_GLOBAL:
                pending = {}
            _read_exactly(handle, padded, offset)
        offset += padded
