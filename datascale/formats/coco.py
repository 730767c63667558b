"""COCO JSON (detection boxes, person keypoints): the one reader and writer of the files.

Used by the dedup audit (which reads a test set's images and writes it back
without its duplicates) and by fine-tuning (which checks every record for
training and evaluation in :mod:`scaling.tasks.coco_data`), so that both
see the same images of the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

from datascale.atomic import write_json
from datascale.errors import DataError

#: The lists a COCO file has; a test set to audit needs only "images".
COCO_LISTS = ("images", "annotations", "categories")


def load_coco(path: str | Path, required: tuple[str, ...] = COCO_LISTS) -> dict:
    """The parsed file; DataError when it is unreadable, not JSON or lacks a ``required`` list.

    Every image record must have ``id`` and ``file_name`` and ids are unique.
    Memory: the whole JSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in required):
        raise DataError(f"{path} is not COCO JSON: it needs the lists {', '.join(repr(k) for k in required)}")
    seen = set()
    for record in data.get("images", []):
        if not isinstance(record, dict) or "id" not in record or "file_name" not in record:
            raise DataError(f"{path}: every image needs 'id' and 'file_name', got {record!r:.80}")
        if record["id"] in seen:
            raise DataError(f"{path}: image id {record['id']} appears twice")
        seen.add(record["id"])
    return data


def image_path(images_dir: Path, record: dict) -> Path:
    """Where an image record's file is: ``images_dir / file_name``."""
    return Path(images_dir) / str(record["file_name"])


def split_of(path: Path) -> str:
    """The split a COCO file name says (``instances_test.json`` -> ``test``)."""
    return Path(path).stem.rsplit("_", 1)[-1]


def dataset_dir(path: Path) -> Path:
    """The dataset folder of a COCO file: above ``annotations/``, else the file's folder."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "annotations" else path.parent


def find_images_dir(path: Path, records: list[dict]) -> Path:
    """The folder holding a COCO file's images when none is given.

    Tries DATASET/images/SPLIT/, DATASET/images/, DATASET/ and the file's
    folder, and picks the first where the first records' files exist.
    """
    path = Path(path)
    root = dataset_dir(path)
    candidates = [root / "images" / split_of(path), root / "images", root, path.parent]
    probe = [r for r in records[:20]]
    for base in candidates:
        if any(image_path(base, r).is_file() for r in probe):
            return base
    example = probe[0]["file_name"] if probe else "?"
    raise DataError(f"{path}: cannot find its images (e.g. {example}) in "
                    f"{', '.join(str(c) for c in candidates)}; put them in DATASET/images/SPLIT/")


def write_coco_without(data: dict, removed_ids: set[str], out: Path) -> int:
    """Write ``data`` without the images whose id (as text) is in ``removed_ids`` and their
    annotations (other keys kept). Returns the number of annotations removed."""
    kept = dict(data)
    kept["images"] = [im for im in data["images"] if str(im["id"]) not in removed_ids]
    annotations = data.get("annotations", [])
    kept["annotations"] = [a for a in annotations if str(a.get("image_id")) not in removed_ids]
    write_json(out, kept, indent=None)
    return len(annotations) - len(kept["annotations"])
