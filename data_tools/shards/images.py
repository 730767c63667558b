"""How an input image is stored in a shard: original bytes where WebDataset readers take them,
else (or with ``image_format=jpeg``) re-encoded as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from datascale.formats.wds import ImageCheckError, check_image


def to_jpeg(data: bytes, quality: int) -> bytes:
    """Encoded image bytes re-encoded as an RGB JPEG at ``quality``.

    Transparency (RGBA, LA, palette with a transparent colour) is composited
    on white, not dropped (dropping alpha shows whatever colour the
    transparent pixels happen to hold); 16-bit images are scaled to 8 bits;
    the ICC profile is kept. Raises ImageCheckError for undecodable bytes.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grey: scale, not clip
            grey = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0 if image.mode != "F" else 1)
            image = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=quality,
                                  icc_profile=image.info.get("icc_profile"))
        return out.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageCheckError(f"not a decodable image ({exc})") from None


def stored_image(raw: bytes, decode: bool, image_format: str, quality: int
                 ) -> tuple[bytes, str, str | None]:
    """(bytes to store, member extension, source format if re-encoded else None).

    JPEG/PNG/WebP bytes are kept unless ``image_format`` is ``"jpeg"``; any
    format WebDataset readers do not take as is is always re-encoded to JPEG,
    at ``quality``. Raises ImageCheckError for bytes that are not an image.
    """
    data, ext, changed = check_image(raw, decode=decode)
    if not changed and (image_format != "jpeg" or ext == "jpg"):
        return data, ext, None
    # Re-encode from the original bytes (check_image's own re-encode has a fixed quality
    # and drops alpha), so every re-encoded member is made the same way.
    source = (ext if not changed else str(Image.open(io.BytesIO(raw)).format)).lower()
    return to_jpeg(raw, quality), "jpg", source
