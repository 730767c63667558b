"""Project exceptions: errors a user can cause, printed by the CLI without a traceback.

Also the one way to skip a bad item and count it (:func:`count_skip`), so that
nothing is dropped silently: every stage reports its skip counts.
"""

from __future__ import annotations

import collections
import logging
import os

log = logging.getLogger(__name__)

# Per reason, the first few skips are logged as warnings, the rest at debug level.
LOGGED_PER_REASON = 5


class DatascaleError(Exception):
    """An error the user can fix (bad input, bad config, missing file).

    The CLI prints ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 1


class ConfigError(DatascaleError):
    """An invalid configuration: unknown key, wrong type, missing or impossible value."""

    exit_code = 2


class DataError(DatascaleError):
    """Input data that cannot be used as given (corrupt, missing, inconsistent)."""


class ConfigPrinted(Exception):
    """Raised after ``--print-config`` printed the resolved config: the command stops with exit 0."""


class OutputExistsError(DatascaleError):
    """An output folder already holds results made with a different config."""


def count_skip(skipped: collections.Counter | None, reason: str, detail: str) -> None:
    """Count one skipped item under ``reason`` and log it (the first few per reason as warnings).

    With ``skipped=None`` the caller tolerates no bad item: the skip becomes a DataError.
    """
    if skipped is None:
        raise DataError(f"{reason}: {detail}")
    skipped[reason] += 1
    level = logging.WARNING if skipped[reason] <= LOGGED_PER_REASON else logging.DEBUG
    log.log(level, "skipped (%s): %s", reason, detail)
    _name_in_skip_log(reason, detail)


# Every skip is also named, one line each, in the running stage's SKIP_LOG_FILE:
# datascale.cli.main points SKIP_LOG_ENV at it, so worker processes and DeepSpeed
# ranks (which inherit the environment) add their skips to the same file, and
# mark_complete records it in complete.json.
SKIP_LOG_ENV = "DATASCALE_SKIP_LOG"
SKIP_LOG_FILE = "skipped.tsv"


def _name_in_skip_log(reason: str, detail: str) -> None:
    path = os.environ.get(SKIP_LOG_ENV)
    if not path:
        return
    text = " ".join(str(detail).split())
    try:  # one O_APPEND write per line: lines from several processes do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, f"{reason}\t{text}\n".encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:  # the folder is not there (yet): the log line above still says it
        pass


# --------------------------------------------------------------------------- a full disk

# What a write to a full disk looks like when it does not arrive as OSError(ENOSPC):
# torch.save's C++ writer raises RuntimeError with these texts.
_WRITE_FAILURE_TEXTS = ("iostream error", "PytorchStreamWriter failed", "file write failed")
_LOW_SPACE_BYTES = 64 << 20


def _free_bytes(folder) -> int | None:
    import shutil
    from pathlib import Path

    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def out_of_space(exc: BaseException, folder) -> DataError | None:
    """A DataError saying the disk of ``folder`` is full, if ``exc`` (or its cause) is that."""
    import errno

    seen, current, full = set(), exc, False
    while current is not None and id(current) not in seen and not full:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            full = True
        elif isinstance(current, RuntimeError) and any(t in str(current) for t in _WRITE_FAILURE_TEXTS):
            free = _free_bytes(folder)
            full = free is not None and free < _LOW_SPACE_BYTES
        current = current.__cause__ or current.__context__
    if not full:
        return None
    free = _free_bytes(folder)
    shown = f"{free / 2**20:,.0f} MiB free" if free is not None else "free space unknown"
    return DataError(f"no space left on the device of {folder} ({shown}): free some space or choose "
                     "another output folder, then run the same command again to resume. Files "
                     "already in the folder are complete (each is written under a temporary name "
                     "and renamed); the half-written one was discarded.")
