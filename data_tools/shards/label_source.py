"""Where the labels of a WebDataset-style sample come from, and what else of it is kept.

Tar shards and img2dataset ``files`` folders hold samples as members that share
a key (``KEY.jpg``, ``KEY.json``, ``KEY.txt``, ``KEY.cls``). Their labels come
from exactly one source per run (``labels_from``):

- ``cls``: the ``KEY.cls`` member, integer class id(s) as text (the WebDataset
  convention; several ids separated by spaces, commas or new lines);
- ``json``: the ``labels_column`` field of ``KEY.json`` (a list, one id/name,
  or ``"a;b"`` text, as in manifests);
- ``manifest``: a sidecar table (``labels_manifest``: .parquet/.csv/.jsonl)
  with a ``key_column`` and a ``labels_column``, joined on the sample key;
- ``auto`` (the default): ``manifest`` if ``labels_manifest`` is set; else,
  per sample, its ``.cls`` member if it has one, else the ``labels_column``
  field of its ``KEY.json``. If the first sample has neither, the input has
  no label source and the run stops with an error that names the three
  options and the members that sample has.

Captions (``KEY.txt``, ``KEY.caption``, the json ``caption``) are never labels.
Any other sample the source has no label for is a counted skip
(``missing_label``). The caption, url and sha256 of a sample are kept
(:func:`kept_fields`) and written to the output sample.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from datascale.errors import ConfigError, DataError
from data_tools.shards.sources import manifest_columns, manifest_rows, missing_column, parse_labels

log = logging.getLogger(__name__)

SAMPLE_FORMATS = ("wds", "files")        # the inputs whose labels come from a label source
LABEL_MEMBERS = ("json", "cls")
CAPTION_MEMBERS = ("txt", "caption")
SMALL_MEMBERS = LABEL_MEMBERS + CAPTION_MEMBERS   # the members a reader loads besides the image
KEPT_FIELDS = ("caption", "url", "sha256")       # copied from the input to the output KEY.json
CAPTION_FIELD = "caption"


class MissingLabel(Exception):
    """The chosen label source has nothing for this sample (a counted ``missing_label`` skip)."""


class NoLabelSource(DataError):
    """``labels_from=auto`` found no label in the first sample: the run stops."""


def check_label_config(fmt: str, cfg: Any) -> None:
    """Refuse label-source keys that cannot apply to input format ``fmt`` (before any output)."""
    sidecar = getattr(cfg, "labels_manifest", None)
    if fmt not in SAMPLE_FORMATS:
        if cfg.labels_from != "auto" or sidecar:
            raise ConfigError(f"labels_from / labels_manifest apply to tar ('wds') and img2dataset "
                              f"'files' input only; this input is '{fmt}' (its labels come from "
                              "its own labels_column or class folders)")
        return
    if cfg.labels_from == "manifest" and not sidecar:
        raise ConfigError("labels_from=manifest needs --set labels_manifest=PATH "
                          "(a .parquet/.csv/.jsonl with key and labels columns)")
    if sidecar and cfg.labels_from not in ("auto", "manifest"):
        raise ConfigError(f"labels_manifest is set but labels_from={cfg.labels_from}; "
                          "drop one of the two")
    if cfg.labels_column == CAPTION_FIELD and cfg.labels_from in ("auto", "json"):
        raise ConfigError("labels_column=caption: captions are never labels; name the KEY.json "
                          "field that holds class ids or names")
    if sidecar and not Path(sidecar).is_file():
        raise DataError(f"labels_manifest not found: {sidecar}")


def load_sidecar(path: Path, key_column: str, labels_column: str) -> dict[str, list]:
    """``{key: raw labels}`` of a sidecar label table.

    Memory: the whole table as a dict, about 150 bytes per row (plus labels);
    for very large collections put the labels in each sample's KEY.json instead.
    """
    columns = manifest_columns(path)
    for column, option in ((key_column, "key_column"), (labels_column, "labels_column")):
        if columns is not None and column not in columns:
            raise missing_column(path, column, option, columns)
    table: dict[str, list] = {}
    for number, row in enumerate(manifest_rows(path), 1):
        if key_column not in row or labels_column not in row:
            raise DataError(f"{path}: row {number} lacks '{key_column}' or '{labels_column}'")
        key = str(row[key_column])
        if key in table:
            raise DataError(f"{path}: key {key!r} appears twice; give each sample one row")
        table[key] = parse_labels(row[labels_column])
    log.info("labels from %s: %d keys", path, len(table))
    return table


def _json_object(members: dict[str, bytes]) -> dict | None:
    if "json" not in members:
        return None
    meta = json.loads(members["json"].decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"KEY.json holds a JSON {type(meta).__name__}, not an object")
    return meta


def parse_cls(data: bytes) -> list[int]:
    """Class ids of a ``.cls`` member: integers separated by spaces, commas, ';' or new lines."""
    tokens = [t for t in re.split(r"[\s,;|]+", data.decode("utf-8")) if t]
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise ValueError(f".cls holds {data[:40]!r}, not integer class ids") from None


class LabelSource:
    """The labels (and true labels) of each sample under one configured source.

    ``labels(key, members, where)`` returns ``(labels, true_labels)``; it raises
    MissingLabel when the source has nothing for the sample, ValueError for an
    undecodable member, NoLabelSource when ``auto`` cannot pick a source.
    """

    def __init__(self, cfg: Any) -> None:
        self.field, self.key_column = cfg.labels_column, cfg.key_column
        self.sidecar: dict[str, list] | None = None
        self.sidecar_path = getattr(cfg, "labels_manifest", None)
        self.chosen = cfg.labels_from
        self.first = True
        if self.sidecar_path:
            self.chosen = "manifest"
            self.sidecar = load_sidecar(Path(self.sidecar_path), self.key_column, self.field)

    def hint(self, members: dict[str, bytes], meta: dict | None, where: str) -> str:
        """The error for a sample that has no label under any source: the options and what it has."""
        found = ", ".join(f".{m}" for m in sorted(members)) or "no other member"
        fields = f" (KEY.json fields: {', '.join(sorted(meta))})" if meta else ""
        return (f"{where}: no label source: besides the image this sample has {found}{fields}. "
                "Give labels one of three ways: --set labels_column=FIELD (a KEY.json field "
                "with class ids or names), KEY.cls members (integer class ids), or --set "
                "labels_manifest=PATH (a .parquet/.csv with key and labels columns, joined by "
                "key). Captions (.txt, .caption, json 'caption') are never used as labels. "
                "If only some samples lack labels (this one came first), name the source "
                "(--set labels_from=json or cls) and those are counted skips")

    def labels(self, key: str, members: dict[str, bytes], where: str) -> tuple[list, list | None]:
        meta = _json_object(members)
        first, self.first = self.first, False
        chosen = self.chosen
        if chosen == "auto":
            chosen = "cls" if "cls" in members else "json"
            if first and chosen == "json" and (meta is None or self.field not in meta):
                raise NoLabelSource(self.hint(members, meta, where))
        true = meta.get("true_labels") if meta is not None else None
        true = None if true is None else parse_labels(true)
        if chosen == "manifest":
            if key not in self.sidecar:
                raise MissingLabel(f"no row with {self.key_column}={key!r} in {self.sidecar_path}")
            return self.sidecar[key], true
        if chosen == "cls":
            if "cls" not in members:
                raise MissingLabel("no .cls member")
            return parse_cls(members["cls"]), true
        if meta is None or self.field not in meta:
            missing = f"KEY.json has no '{self.field}' field" if meta is not None else "no KEY.json"
            raise MissingLabel(missing + (" and no .cls member" if self.chosen == "auto" else ""))
        return parse_labels(meta[self.field]), true


def kept_fields(members: dict[str, bytes]) -> dict:
    """The caption, url and sha256 of a sample, where it has them.

    The caption is the ``.txt`` (or ``.caption``) member, else the json
    ``caption``; url and sha256 (img2dataset's hash of the downloaded bytes)
    come from ``KEY.json``. A json that does not parse keeps nothing from it.
    """
    kept: dict = {}
    try:
        meta = _json_object(members) or {}
    except (ValueError, UnicodeDecodeError):
        meta = {}
    for name in KEPT_FIELDS:
        value = meta.get(name)
        if isinstance(value, str) and value:
            kept[name] = value
    for member in CAPTION_MEMBERS:
        if member in members:
            text = members[member].decode("utf-8", errors="replace").strip()
            if text:
                kept[CAPTION_FIELD] = text
                break
    return kept
