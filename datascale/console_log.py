"""Every run folder keeps its console log: ``FOLDER/console.log``.

``datascale.cli.main`` opens it for each subcommand that declares an output
folder (the same declaration that takes the folder's lock), appends a header
with the time and the command line, then every log record at INFO and above
(whatever ``-q`` shows on the terminal), and the error that ended the command,
if one did. Reruns append, so the file is the folder's history. Under the
DeepSpeed launcher only rank 0 writes it.

The log is housekeeping, not output: it is left out of content hashes and
input listings, ``prepare_output_dir`` does not count it as content (a start
that failed leaves nothing that blocks the retry) and keeps it on ``--force``,
and a folder that holds nothing else is removed when the stage stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

CONSOLE_LOG = "console.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def keep(folder: str | Path | None, command: str) -> Iterator[None]:
    """Append the command's log records (and the error that ends it) to ``folder/console.log``."""
    if folder is None or not _rank_zero():
        yield
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path / CONSOLE_LOG, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level or logging.WARNING, logging.INFO))  # INFO reaches the file under -q
    root.addHandler(handler)
    handler.stream.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
    try:
        yield
    except BaseException as exc:
        handler.stream.write(f"== stopped: {type(exc).__name__}: {exc}\n")
        raise
    else:
        handler.stream.write("== done\n")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
