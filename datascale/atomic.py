"""Atomic file output: write to a temporary name in the same folder, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete
new one, never a half-written file, even after kill -9.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    The file gets the permissions a plain ``open`` would give it (0666 less
    the umask), so a cluster group can read what a stage writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _create_temporary(path: Path) -> Path:
    """A new empty file ``.NAME.RANDOM.tmp`` beside ``path``, created with mode 0666 & ~umask.

    ``tempfile.mkstemp`` would make it 0600 whatever the umask; ``O_EXCL``
    keeps the same guarantee that no other writer shares the name.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Atomically write ``data`` as JSON (NaN is refused: it is not JSON)."""
    write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it: metrics files survive a crash line by line."""
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
