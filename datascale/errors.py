"""Project exceptions: errors a user can cause, printed by the CLI without a traceback.

Also the one way to skip a bad item and count it (:func:`count_skip`), so that
nothing is dropped silently: every stage reports its skip counts.
"""

from __future__ import annotations

import collections
import logging

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
