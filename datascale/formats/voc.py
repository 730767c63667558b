"""VOC segmentation layout: image lists, images, palette PNG masks, class names.

    ROOT/ImageSets/Segmentation/SPLIT.txt   one image id per line
    ROOT/JPEGImages/ID.jpg|.jpeg|.png       the image (any of these extensions)
    ROOT/SegmentationClass/ID.png           palette or grey PNG of class indices (255 = ignore)
    ROOT/labels.txt                         line i names class i

The one reader of the layout, used by the dedup audit and by fine-tuning
alike: an id resolves to the same image file in both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datascale.atomic import write_text
from datascale.errors import DataError

LIST_PATTERN = "ImageSets/Segmentation/{split}.txt"
IMAGES_DIR = "JPEGImages"
MASKS_DIR = "SegmentationClass"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IGNORE = 255


def read_image_list(path: str | Path) -> list[str]:
    """The ids of an image list (blank lines skipped); DataError when it cannot be read."""
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the image list ({exc})") from None


def write_image_list(path: Path, ids: list[str]) -> None:
    write_text(path, "".join(f"{i}\n" for i in ids))


def find_root(list_path: Path) -> Path:
    """The VOC root above an image list: the first parent holding JPEGImages/."""
    root = next((p for p in Path(list_path).parents if (p / IMAGES_DIR).is_dir()), None)
    if root is None:
        raise DataError(f"{list_path}: no {IMAGES_DIR} folder above the list; expected the VOC layout "
                        f"ROOT/{LIST_PATTERN.format(split='SPLIT')} + ROOT/{IMAGES_DIR}/ID.jpg")
    return root


def image_path(images_dir: Path, image_id: str) -> Path | None:
    """The image file of ``image_id`` (.jpg, .jpeg or .png, in that order), None when missing."""
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(images_dir) / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def mask_path(images_dir: Path, image_id: str) -> Path:
    """Where the mask of ``image_id`` is: SegmentationClass/ beside the image folder."""
    return Path(images_dir).parent / MASKS_DIR / f"{image_id}.png"


def read_class_names(root: Path) -> list[str]:
    """Class names from ROOT/labels.txt ([] when there is none)."""
    labels = Path(root) / "labels.txt"
    if not labels.is_file():
        return []
    return [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """Class indices (H, W) uint8 from a palette or grey PNG; DataError for colour masks or bad values."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise DataError(f"{path}: mask mode {img.mode}; masks must be palette (P) or grey (L) PNGs "
                            f"whose pixel values are class indices ({IGNORE} = ignore)")
        mask = np.asarray(img, dtype=np.uint8)
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes), IGNORE])
    if bad.size:
        raise DataError(f"{path}: values {bad[:5].tolist()} are neither a class (0..{num_classes - 1}) "
                        f"nor {IGNORE} (ignore)")
    return mask
