"""Query views: the test image as shown, mirrored, cropped or slightly rotated.

A leaked copy of a test image in a web-scale pool is often mirrored, cropped
or rotated. The pool side is embedded once (one vector per image, so the
index does not grow); the test side is small, so each test image is queried
through several views and a pool image's score is the best over views.

Spec strings (``audit.views``):

* ``identity``: the image as is;
* ``mirror``: left-right flipped;
* ``crop:S`` / ``crop:SXxSY``: crops of linear size S (or width SX and
  height SY; each in (0, 1)) at a 3 x 3 grid of positions (finds a pool copy
  that shows a part of the test image, also with a changed aspect ratio);
* ``rotate:A``: rotated by +A and -A degrees;
* ``centre:S``: one crop of linear size S at the centre. Used on the pool
  side (``embedder.pool_views``): a test image that is a crop of a larger
  pool photo matches the pool photo's stored centre crop, which no view of
  the test image can reproduce (it cannot show what was cut away).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image

from datascale.errors import ConfigError


@dataclass(frozen=True)
class View:
    """One picklable image transform applied to a test image before embedding."""

    kind: str
    amount: float = 0.0           # crop width fraction, or rotation angle
    amount_y: float | None = None  # crop height fraction (None: as the width)
    x: float = 0.5                 # crop position in the free margin, 0 = left, 1 = right
    y: float = 0.5

    @property
    def name(self) -> str:
        if self.kind == "crop":
            size = f"{self.amount:g}" if self.amount_y is None else f"{self.amount:g}x{self.amount_y:g}"
            return f"crop{size}@{self.x:g},{self.y:g}"
        if self.kind == "rotate":
            return f"rotate{self.amount:+g}"
        return self.kind

    def __call__(self, image: Image.Image) -> Image.Image:
        return _APPLY[self.kind](self, image)


def _identity(view: View, image: Image.Image) -> Image.Image:
    return image


def _mirror(view: View, image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _crop(view: View, image: Image.Image) -> Image.Image:
    w, h = image.size
    height = view.amount if view.amount_y is None else view.amount_y
    cw, ch = max(1, round(w * view.amount)), max(1, round(h * height))
    x0, y0 = round((w - cw) * view.x), round((h - ch) * view.y)
    return image.crop((x0, y0, x0 + cw, y0 + ch))


def _rotate(view: View, image: Image.Image) -> Image.Image:
    # Fill the corners with the mean colour so they do not add hard black edges.
    fill = tuple(int(c) for c in image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))
    return image.rotate(view.amount, resample=Image.Resampling.BILINEAR, fillcolor=fill)


_APPLY: dict[str, Callable[[View, Image.Image], Image.Image]] = {
    "identity": _identity, "mirror": _mirror, "crop": _crop, "rotate": _rotate,
}


def _number(text: str, spec: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        raise ConfigError(f"audit.views: cannot read the amount in {spec!r}") from None


def _expand_identity(text: str, spec: str) -> list[View]:
    return [View("identity")]


def _expand_mirror(text: str, spec: str) -> list[View]:
    return [View("mirror")]


def _expand_crop(text: str, spec: str) -> list[View]:
    width_text, _, height_text = text.partition("x")
    width, height = _number(width_text, spec), _number(height_text, spec)
    if width is None or not 0.0 < width < 1.0 or (height is not None and not 0.0 < height < 1.0):
        raise ConfigError(f"audit.views: crop needs a linear size in (0, 1), e.g. crop:0.85 or "
                          f"crop:0.9x0.8; got {spec!r}")
    grid = (0.0, 0.5, 1.0)
    return [View("crop", width, height, x, y) for y in grid for x in grid]


def _expand_centre(text: str, spec: str) -> list[View]:
    size = _number(text, spec)
    if size is None or not 0.0 < size < 1.0:
        raise ConfigError(f"views: centre needs a linear size in (0, 1), e.g. centre:0.8; got {spec!r}")
    return [View("crop", size)]


def _expand_rotate(text: str, spec: str) -> list[View]:
    angle = _number(text, spec)
    if angle is None or not 0.0 < angle <= 45.0:
        raise ConfigError(f"audit.views: rotate needs an angle in (0, 45] degrees, e.g. rotate:6; "
                          f"got {spec!r}")
    return [View("rotate", angle), View("rotate", -angle)]


# Spec name -> the views it expands to (a registry: add a kind here and in _APPLY).
VIEW_KINDS: dict[str, Callable[[str, str], list[View]]] = {
    "identity": _expand_identity, "mirror": _expand_mirror,
    "crop": _expand_crop, "rotate": _expand_rotate, "centre": _expand_centre,
}


def parse_views(specs: list[str]) -> list[View]:
    """Expand view specs (``["identity", "mirror", "crop:0.85"]``) into views, in order.

    The first view should be ``identity`` (reports name the view that matched);
    unknown kinds or bad amounts raise ConfigError naming the valid kinds.
    """
    if not specs:
        raise ConfigError("audit.views: give at least one view, e.g. [identity, mirror]")
    views: list[View] = []
    for spec in specs:
        kind, _, amount_text = str(spec).partition(":")
        kind = kind.strip()
        if kind not in VIEW_KINDS:
            raise ConfigError(f"audit.views: unknown view {spec!r}; kinds: {', '.join(VIEW_KINDS)} "
                              "(crop:S, crop:SXxSY and rotate:A take an amount)")
        views.extend(v for v in VIEW_KINDS[kind](amount_text, str(spec)) if v not in views)
    return views
