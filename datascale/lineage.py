"""Lineage and output folders (rules 4 and 5 of the design).

Every output folder holds ``config.yaml``: the resolved config, the stage that
wrote it, and each input's path and content hash, so a results row can be
traced back to the shards it came from. A stage that finished also writes
``complete.json``; a folder with the same config and that marker is skipped,
a folder with another config is refused unless the user passes ``--force``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from datascale import __version__
from datascale.atomic import write_json, write_text
from datascale.config import config_defaults, dump_yaml, flatten, to_dict
from datascale.errors import SKIP_LOG_FILE, DataError, OutputExistsError
from datascale.lock import HOUSEKEEPING

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# In a record in memory only, never written: the defaults of the config's schema, so that a folder
# written before a setting existed still matches while that setting is at its default.
_DEFAULTS = "_schema_defaults"
COMPLETE_FILE = "complete.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
    except FileNotFoundError:
        raise DataError(f"input not found: {path}") from None
    return digest.hexdigest()


def content_hash(path: str | Path) -> str:
    """Content hash of a file, or of a folder (relative paths + file hashes, sorted).

    Hashing a folder reads every byte in it: for large collections pass the
    small file that pins the content instead (``manifest.parquet``).
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise DataError(f"input not found: {path}")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or Path(rel).name in HOUSEKEEPING:
            continue
        digest.update(rel.encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def child_folder(parent: str | Path, name: str, what: str = "name") -> Path:
    """``parent/name`` for a user-given ``name``, checked to stay inside ``parent``.

    The name must be one plain folder name: not empty, no ``/`` or ``\\``, not
    ``.``, ``..`` or hidden, no control characters; and ``parent/name`` must not
    resolve (through a symlink) outside ``parent``. Any other Unicode is fine.
    """
    text = str(name)
    bad = (not text.strip() or text in (".", "..") or text.startswith(".") or "/" in text
           or "\\" in text or any(ord(c) < 32 for c in text) or Path(text).is_absolute())
    root = Path(parent).resolve()
    if not bad:
        target = (root / text).resolve()
        bad = target.parent != root
    if bad:
        raise DataError(f"{what} {text!r} cannot be a folder inside {parent}: give a plain name "
                        "(no '/', '..', leading '.' or control characters)")
    return Path(parent) / text


def config_record(stage: str, config: Any, inputs: Mapping[str, str | Path] | None = None,
                  extra: Mapping[str, Any] | None = None) -> dict:
    """The lineage record written as config.yaml (see module docstring)."""
    record: dict[str, Any] = {
        "stage": stage,
        "datascale_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(config),
        "inputs": {
            name: {"path": str(Path(p).resolve()), "sha256": content_hash(p)}
            for name, p in (inputs or {}).items()
        },
    }
    if extra:
        record.update(to_dict(dict(extra)))
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        record[_DEFAULTS] = {"defaults": config_defaults(type(config)), "off": _off_sections(config)}
    return record


def _off_sections(config: Any, prefix: str = "") -> list[str]:
    """Dotted names of the config's sections that are switched off (``enabled`` is False, as
    ``curriculum`` with name none): settings inside them change nothing a run does."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            dotted = f"{prefix}.{f.name}" if prefix else f.name
            if getattr(value, "enabled", True) is False:
                found.append(dotted)
            else:
                found.extend(_off_sections(value, dotted))
    return found


def write_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Write a lineage record as YAML (atomically), without its in-memory-only keys."""
    write_text(path, dump_yaml({k: v for k, v in record.items() if k != _DEFAULTS}))


def read_config_record(out_dir: str | Path, record_file: str = CONFIG_FILE) -> dict | None:
    """The config.yaml (or ``record_file``) record of an output folder, or None if it has none."""
    path = Path(out_dir) / record_file
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def same_lineage(record: dict | None, new: dict) -> bool:
    """True when two lineage records have the same stage, config and inputs (times may differ).

    A folder written by an older datascale, before some settings existed, still matches when
    ``new`` has each setting that ``record`` lacks at its schema default (a new setting's default
    keeps the old behaviour), or inside a section that ``record`` lacks whole and ``new`` leaves
    switched off. A setting that was removed, or one off its default, is a change."""
    if record is None or any(record.get(k) != new.get(k) for k in ("stage", "inputs")):
        return False
    old_config, new_config = record.get("config"), new.get("config")
    if old_config == new_config:
        return True
    schema = new.get(_DEFAULTS)
    if not schema or not isinstance(old_config, dict) or not isinstance(new_config, dict):
        return False
    old, now = flatten(old_config), flatten(new_config)
    defaults = schema["defaults"]
    new_and_off = [s for s in schema["off"] if not any(k == s or k.startswith(s + ".") for k in old)]

    def predates(key: str, value: Any) -> bool:
        return (key in defaults and defaults[key] == value) or any(key.startswith(s + ".") for s in new_and_off)
    return set(old) <= set(now) and all(old[key] == value if key in old else predates(key, value)
                                        for key, value in now.items())


def _short(value: Any, width: int = 60) -> str:
    text = "(not set)" if value is _MISSING else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


_MISSING = object()


def lineage_differences(old: dict, new: dict, limit: int = 12) -> list[str]:
    """The settings and inputs where two lineage records differ, one ``key: old -> new`` line
    each (``config.train.steps: 60 -> 200``, ``inputs.data.sha256: ...``), at most ``limit``."""
    flat_old = flatten({k: old.get(k) for k in ("config", "inputs")})
    flat_new = flatten({k: new.get(k) for k in ("config", "inputs")})
    keys = sorted(set(flat_old) | set(flat_new))
    lines = [f"{key}: {_short(flat_old.get(key, _MISSING))} -> {_short(flat_new.get(key, _MISSING))}"
             for key in keys if flat_old.get(key, _MISSING) != flat_new.get(key, _MISSING)]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def is_up_to_date(out_dir: str | Path, record: dict, *, record_file: str = CONFIG_FILE,
                  marker: str = COMPLETE_FILE, outputs: tuple | list = ()) -> bool:
    """True when ``out_dir`` holds finished output of ``record``: the stage's record file has the
    same stage, config and inputs, its completion ``marker`` exists and so does every one of
    ``outputs`` (paths). The one answer to "can this stage be skipped?" for every stage.

    Stages that share a folder (``fit`` and ``plot`` in results/) name their own
    ``record_file`` and ``marker``.
    """
    out_dir = Path(out_dir)
    if not (out_dir / marker).is_file() or not all(Path(p).exists() for p in outputs):
        return False
    return same_lineage(read_config_record(out_dir, record_file), record)


def prepare_output_dir(out_dir: str | Path, record: dict, force: bool = False
                       ) -> Literal["new", "resume", "complete"]:
    """Get an output folder ready for a stage whose lineage record is ``record``.

    Returns ``"complete"`` if the folder already holds finished output of the
    same config (the caller skips the stage), ``"resume"`` if it holds
    unfinished output of the same config, else ``"new"`` (folder created,
    config.yaml written). A folder made with another config raises
    OutputExistsError unless ``force``, which empties it first. ``force``
    only ever replaces output of the same stage: a non-empty folder that
    datascale did not write, or that another stage wrote, is never deleted.
    The folder's lock file (:mod:`datascale.lock`) is neither content nor deleted.
    """
    out_dir = Path(out_dir)
    existing = read_config_record(out_dir)
    if existing is not None:
        if same_lineage(existing, record):
            if existing.get("config") != record.get("config"):  # written before some settings existed
                added = [line.split(":", 1)[0] for line in lineage_differences(existing, record)]
                log.info("%s: same run; its config.yaml gains the settings it predates, at their "
                         "defaults: %s", out_dir, ", ".join(added))
                write_record(out_dir / CONFIG_FILE, {**record, "created": existing.get("created")})
            return "complete" if is_complete(out_dir) else "resume"
        if existing.get("stage") != record.get("stage"):
            raise OutputExistsError(
                f"{out_dir} holds the output of `datascale {existing.get('stage')}`, not of "
                f"`datascale {record.get('stage')}`; choose another output folder "
                "(--force only replaces output of the same stage)")
        if not force:
            changed = "".join(f"\n  {line}" for line in lineage_differences(existing, record))
            raise OutputExistsError(
                f"{out_dir} holds output made with a different config or inputs; "
                f"choose another output folder, or pass --force to replace it. What differs "
                f"(folder's record -> this command):{changed}"
            )
        log.warning("--force: replacing %s", out_dir)
        _empty_folder(out_dir)
    elif out_dir.is_dir() and any(p.name not in HOUSEKEEPING for p in out_dir.iterdir()):
        raise OutputExistsError(
            f"{out_dir} exists, is not empty and was not written by datascale; "
            "choose an empty or new output folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_record(out_dir / CONFIG_FILE, record)
    return "new"


def abandon_output_dir(out_dir: str | Path) -> None:
    """Undo :func:`prepare_output_dir` after a start that failed before writing any output.

    Empties the folder (config.yaml, work files, skipped.tsv; never the lock
    file), so that a corrected command with another config is not refused as
    "a different config". Call it only for a folder that holds nothing but
    this attempt's (or an earlier failed attempt's) files of the same stage.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        _empty_folder(out_dir)


def _empty_folder(out_dir: Path) -> None:
    """Delete everything in ``out_dir`` but its lock file (which another process may be waiting on)
    and its console log (the folder's history, being written by this very command)."""
    for child in out_dir.iterdir():
        if child.name in HOUSEKEEPING and child.is_file():
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def mark_complete(out_dir: str | Path, summary: Mapping[str, Any] | None = None,
                  marker: str = COMPLETE_FILE) -> None:
    """Mark a stage's output folder finished (atomically), with an optional summary.

    If the stage skipped items, ``skipped.tsv`` names every one (reason, item;
    repeats from a resumed attempt removed) and the marker says so."""
    named = {}
    skip_log = Path(out_dir) / SKIP_LOG_FILE
    if skip_log.is_file():
        lines = list(dict.fromkeys(skip_log.read_text(encoding="utf-8").splitlines()))
        write_text(skip_log, "".join(line + "\n" for line in lines))
        named = {"skipped_items_file": SKIP_LOG_FILE, "skipped_items_named": len(lines)}
    write_json(Path(out_dir) / marker, {
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        **to_dict(dict(summary or {})),
        **named,
    })


def is_complete(out_dir: str | Path) -> bool:
    """True when the folder's stage finished (``complete.json`` present)."""
    return (Path(out_dir) / COMPLETE_FILE).is_file()
