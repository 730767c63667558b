"""One writer per output folder: an exclusive ``fcntl`` lock held while a stage writes it.

A stage takes the lock on its folder (``FOLDER/.datascale.lock``) before it
reads or writes anything there, and holds it until it returns. A second
process that asks for the same folder fails at once with a message naming
the holder, instead of interleaving its writes. The lock belongs to the
process: the operating system releases it when the process ends, kill -9
included, so a stale lock file never blocks a rerun.

``datascale.cli.main`` takes the lock for every subcommand that declares an
output folder (:func:`datascale.cli.locks_output`), so every stage run from
the command line or by ``datascale study`` is covered. Under the DeepSpeed
launcher only one process per run holds it: the ``--nproc`` parent that
started the ranks (the ranks on its machine inherit ``DATASCALE_LOCKED`` and
skip the lock), or rank 0 when the ranks were started by ``datascale launch``.

The lock file is hidden, so it is left out of content hashes, and
``prepare_output_dir`` neither counts it as content nor deletes it on
``--force`` (deleting it would let a second process lock a new file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from datascale.console_log import CONSOLE_LOG
from datascale.errors import DataError

LOCK_FILE = ".datascale.lock"
ENV_HELD = "DATASCALE_LOCKED"   # folders locked by an ancestor process, os.pathsep-separated

HOUSEKEEPING = (LOCK_FILE, CONSOLE_LOG)  # files of a folder that are not its content

_held: dict[str, int] = {}      # folder -> how many nested holds in this process
_fds: set[int] = set()          # this process's open lock files


def _drop_in_child() -> None:
    """A forked child (a DataLoader worker, a fork pool) closes its copies of the lock files.

    An flock belongs to the open file, shared by every forked copy of its descriptor: a
    loader worker that outlived a kill -9 of its parent kept the folder locked against the
    rerun until it noticed. Closing the copies leaves the parent's lock as it is.
    """
    for fd in _fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class FolderLocked(DataError):
    """Another process is writing the folder."""


def _key(folder: str | Path) -> str:
    return str(Path(folder).resolve())


def _inherited() -> set[str]:
    return {p for p in os.environ.get(ENV_HELD, "").split(os.pathsep) if p}


def _must_lock() -> bool:
    """False in a DeepSpeed rank other than 0: rank 0 (or the launching parent) holds the lock."""
    launched = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    return not launched or os.environ.get("RANK", "0") == "0"


def holder(folder: str | Path) -> str:
    """What the lock file says about the process that holds it (for messages)."""
    try:
        return (Path(folder) / LOCK_FILE).read_text(encoding="utf-8").strip() or "unknown process"
    except OSError:
        return "unknown process"


@contextlib.contextmanager
def hold(folder: str | Path | None, what: str = "this stage") -> Iterator[None]:
    """Hold the exclusive lock on ``folder`` (created if needed) for the ``with`` block.

    Raises :class:`FolderLocked` at once if another process holds it.
    Re-entrant within one process; a no-op for ``None``.
    """
    if folder is None:
        yield
        return
    key = _key(folder)
    if key in _held or key in _inherited() or not _must_lock():
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    path = Path(folder)
    created = not path.exists()
    fd = _acquire(path, folder, what)
    _fds.add(fd)
    previous = os.environ.get(ENV_HELD)
    os.environ[ENV_HELD] = os.pathsep.join(sorted(_inherited() | {key}))
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if previous is None:
            os.environ.pop(ENV_HELD, None)
        else:
            os.environ[ENV_HELD] = previous
        if created:  # a stage that stopped before writing anything leaves no folder behind
            _remove_if_only_lock(path)
        if fd in _fds:  # (a forked child closed its copy already)
            _fds.discard(fd)
            os.close(fd)  # releases the lock; the file stays (see the module docstring)


def _acquire(path: Path, folder, what: str) -> int:
    """Open and lock ``path/LOCK_FILE``; the descriptor, or FolderLocked."""
    while True:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(
                f"{folder} is being written by another datascale process ({holder(folder)}); "
                "wait for it to finish or stop it, or choose another output folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path / LOCK_FILE).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{what}\n".encode())
        return fd


def _remove_if_only_lock(path: Path) -> None:
    """Remove a folder this process created if it holds nothing but the lock and the console
    log (lock still held): a stage that stopped before writing anything leaves nothing behind."""
    try:
        files = list(path.iterdir())
        if all(f.is_file() and f.name in HOUSEKEEPING for f in files):
            for f in sorted(files, key=lambda f: f.name == LOCK_FILE):  # the lock goes last
                f.unlink()
            path.rmdir()
    except OSError:
        pass


def command_line() -> str:
    """This process's command line, shortened, for the lock file."""
    text = " ".join(["datascale", *sys.argv[1:]])
    return text if len(text) <= 300 else text[:297] + "..."
