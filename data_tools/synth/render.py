"""Procedural drawing: shape masks, textures, colours and backgrounds (numpy + PIL).

Everything here is a registry (name -> function) so a new shape, texture or
background is one entry. Coordinates are COCO's continuous image coordinates
(pixel (i, j) covers [i, i+1) x [j, j+1)); drawing is not antialiased, so an
object's mask is exactly the pixels painted with its colours. A 64x64 image
with two objects takes well under a millisecond to draw.
"""

from __future__ import annotations

import colorsys
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

Polygon = list[tuple[np.ndarray, int]]  # (N x 2 unit-circle vertices, fill 1 or 0)


def _regular(n: int, start: float = -np.pi / 2, radius: float = 1.0) -> np.ndarray:
    t = start + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 28) -> np.ndarray:
    return _regular(n, 0.0, radius) + np.array([cx, cy])


def _star(points: int, inner: float) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, -np.pi / 2 + np.pi / points, inner)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _teardrop() -> np.ndarray:
    t = np.radians(np.linspace(-25, 205, 20))
    arc = np.stack([0.62 * np.cos(t), 0.3 + 0.62 * np.sin(t)], axis=1)
    return np.vstack([arc, [[0.0, -1.0]]])


# Unit-size outlines in image orientation (y grows downwards), radius about 1.
SHAPES: dict[str, Callable[[], Polygon]] = {
    "triangle": lambda: [(_regular(3), 1)],
    "square": lambda: [(_regular(4, np.pi / 4), 1)],
    "pentagon": lambda: [(_regular(5), 1)],
    "hexagon": lambda: [(_regular(6), 1)],
    "diamond": lambda: [(_poly(0, -1, 0.6, 0, 0, 1, -0.6, 0), 1)],
    "trapezoid": lambda: [(_poly(-1, 0.6, 1, 0.6, 0.5, -0.6, -0.5, -0.6), 1)],
    "circle": lambda: [(_circle(), 1)],
    "ellipse": lambda: [(_circle() * np.array([1.0, 0.55]), 1)],
    "crescent": lambda: [(_circle(), 1), (_circle(0.85, 0.45, -0.2), 0)],
    "ring": lambda: [(_circle(), 1), (_circle(0.55), 0)],
    "semicircle": lambda: [(np.vstack([_circle()[:15], [[-1.0, 0.0]]]) - np.array([0, 0.45]), 1)],
    "teardrop": lambda: [(_teardrop(), 1)],
    "star": lambda: [(_star(5, 0.42), 1)],
    "cross": lambda: [(_poly(-0.3, -1, 0.3, -1, 0.3, -0.3, 1, -0.3, 1, 0.3, 0.3, 0.3,
                             0.3, 1, -0.3, 1, -0.3, 0.3, -1, 0.3, -1, -0.3, -0.3, -0.3), 1)],
    "arrow": lambda: [(_poly(-1, -0.25, 0.1, -0.25, 0.1, -0.65, 1, 0, 0.1, 0.65, 0.1, 0.25, -1, 0.25), 1)],
    "chevron": lambda: [(_poly(-0.8, -0.9, -0.2, -0.9, 0.8, 0, -0.2, 0.9, -0.8, 0.9, 0.2, 0), 1)],
    "bolt": lambda: [(_poly(-0.2, -1, 0.55, -1, 0.12, -0.2, 0.6, -0.2, -0.35, 1, -0.05, 0.15, -0.5, 0.15), 1)],
    "sparkle": lambda: [(_star(4, 0.28), 1)],
}


def shape_mask(shape: str, size_hw: tuple[int, int], center: tuple[float, float], radius: float,
               aspect: float, angle: float) -> np.ndarray:
    """Boolean (H, W) mask of a shape: ``radius`` in pixels, ``aspect`` = width/height, ``angle`` in radians."""
    scale = np.array([radius * np.sqrt(aspect), radius / np.sqrt(aspect)])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    # PIL addresses pixel centres; shift by half a pixel to continuous coordinates.
    offset = np.asarray(center) - 0.5
    for outline, fill in SHAPES[shape]():
        pts = (outline * scale) @ rot.T + offset
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255 * fill)
    return np.asarray(canvas) > 0


def border(mask: np.ndarray) -> np.ndarray:
    """Pixels of a full-image ``mask`` with a 4-neighbour outside it (a 1-pixel outline).

    Beyond the image edge the object is taken to continue (edge padding), so
    an object cut by the frame gets no outline along the frame.
    """
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


# Texture mix factors in [0, 1] (0 = base colour, 1 = trim colour) over object-local
# coordinates (u, v), rotated with the object and scaled so its radius is 1.
TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.zeros_like(u),
    "stripes": lambda u, v: (np.floor(u * 2.5) % 2).astype(np.float32),
    "dots": lambda u, v: ((((u * 2.2) % 1 - 0.5) ** 2 + ((v * 2.2) % 1 - 0.5) ** 2) < 0.09).astype(np.float32),
    "checker": lambda u, v: ((np.floor(u * 2) + np.floor(v * 2)) % 2).astype(np.float32),
    "rings": lambda u, v: (np.floor(np.hypot(u, v) * 3.5) % 2).astype(np.float32),
    "gradient": lambda u, v: np.clip((u + 1) / 2, 0, 1).astype(np.float32),
    "halves": lambda u, v: (v > 0).astype(np.float32),
    "waves": lambda u, v: (np.floor(v * 2.5 + 0.35 * np.sin(u * 6)) % 2).astype(np.float32),
}


def paint(canvas: np.ndarray, mask: np.ndarray, texture: str, base: np.ndarray, trim: np.ndarray,
          center: tuple[float, float], radius: float, angle: float) -> None:
    """Fill ``mask`` of the float (H, W, 3) ``canvas`` in place with a textured object.

    The texture pattern is computed only over the mask's bounding box. A solid
    texture shows its trim colour as a 1-pixel outline so that variants differ.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - center[0], yy + 0.5 - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / radius
    v = (-dx * sin + dy * cos) / radius
    mix = TEXTURES[texture](u, v)
    local = mask[y0:y1, x0:x1]
    if texture == "solid":
        mix = border(mask)[y0:y1, x0:x1].astype(np.float32)
    colour = base[None, None, :] * (1 - mix[..., None]) + trim[None, None, :] * mix[..., None]
    region = canvas[y0:y1, x0:x1]
    region[local] = colour[local]


def band_colour(rng: np.random.Generator, hue_degrees: float) -> np.ndarray:
    """An RGB colour (floats 0..255) inside a named hue band, with per-instance jitter."""
    hue = ((hue_degrees + rng.uniform(-9, 9)) % 360) / 360
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    return np.asarray(rgb, dtype=np.float32) * 255


def trim_colour(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A near-white (``light``) or near-black (``dark``) trim colour."""
    level = rng.uniform(0.82, 0.98) if kind == "light" else rng.uniform(0.04, 0.18)
    tint = rng.uniform(-0.04, 0.04, size=3)
    return np.clip(level + tint, 0, 1).astype(np.float32) * 255


def _muted(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.85))
    return np.asarray(rgb, dtype=np.float32) * 255


def _flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(_muted(rng), (h, w, 3)).copy()


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = _muted(rng), _muted(rng)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(theta) * xx / w + np.sin(theta) * yy / h)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return a * (1 - t[..., None]) + b * t[..., None]


def _blotches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = np.stack([_muted(rng) for _ in range(16)]).reshape(4, 4, 3).astype(np.uint8)
    big = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "flat": _flat, "gradient": _gradient, "blotches": _blotches,
}


def background(rng: np.random.Generator, h: int, w: int, clutter: int) -> np.ndarray:
    """A float (H, W, 3) background with up to ``clutter`` thin unlabelled strokes and specks.

    Clutter is thin and desaturated so it never looks like a class, but it
    keeps a model from solving the task by "anything that is not flat".
    """
    names = sorted(BACKGROUNDS)
    canvas = BACKGROUNDS[names[int(rng.integers(len(names)))]](rng, h, w)
    strokes = int(rng.integers(0, clutter + 1))
    if strokes:
        img = Image.fromarray(canvas.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(strokes):
            colour = tuple(int(c) for c in _muted(rng))
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            if rng.random() < 0.6:
                x1, y1 = x0 + rng.uniform(-w / 2, w / 2), y0 + rng.uniform(-h / 2, h / 2)
                draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
            else:
                r = rng.uniform(0.8, 1.8)
                draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        canvas = np.asarray(img, dtype=np.float32)
    return canvas


def finish(canvas: np.ndarray, rng: np.random.Generator, pixel_noise: float) -> np.ndarray:
    """Add sensor-like Gaussian noise and quantise to uint8."""
    if pixel_noise > 0:
        canvas = canvas + rng.normal(0.0, pixel_noise, size=canvas.shape).astype(np.float32)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
