"""Decoding and preparing images in worker processes, then embedding them in batches.

:class:`PreparePool` decodes encoded bytes (:func:`decode_image`), applies
query views and the embedder's picklable ``preparer`` in worker processes;
:func:`embed_prepared` batches the results through ``embedder.embed`` in the
main process (where the model or the DCT lives). Items that fail to decode
travel with the batch as (id, reason), so callers count and list them.
"""

from __future__ import annotations

import io
import multiprocessing
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from data_tools.dedup.embedders import Embedder


class ImageDecodeError(ValueError):
    """Bytes that PIL cannot decode into an RGB image."""


def decode_image(data: bytes, min_side: int = 0) -> Image.Image:
    """Decode encoded bytes into an RGB image; ImageDecodeError with the reason if impossible.

    ``min_side``: JPEGs are decoded in draft mode at the smallest DCT scale
    that still keeps both sides >= min_side (up to 8x less work for thumbnails).
    The whole stream is decoded, so truncated files fail here, not later.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            if image.mode != "RGB":
                # Grey, palette, CMYK and alpha images all become plain RGB
                # (alpha is dropped), the same way on the pool and the query side.
                image = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from None
    if min(image.size) < 1:
        raise ImageDecodeError(f"empty image of size {image.size}")
    return image


_WORKER: dict[str, Any] = {}


def _init_worker(prepare: Callable, views: tuple, side: int) -> None:
    _WORKER.update(prepare=prepare, views=views, side=side)


def _prepare_one(item: tuple[Any, bytes]) -> tuple[Any, np.ndarray | None, str | None]:
    ident, data = item
    try:
        image = decode_image(data, _WORKER["side"])
        arrays = [_WORKER["prepare"](view(image)) for view in _WORKER["views"]]
    except ImageDecodeError as exc:
        return ident, None, str(exc)
    return ident, np.stack(arrays), None


class PreparePool:
    """Decode + prepare images in ``workers`` processes (0: in this process), in input order.

    ``views`` are callables image -> image (identity if None); each item
    yields an array (V, ...) with one prepared view per row, or a failure
    reason. Input is consumed in windows of ``64 * workers`` items, so memory
    holds at most one window of encoded images whatever the stream length.
    """

    def __init__(self, embedder: Embedder, views: Iterable[Callable] | None = None,
                 workers: int = 0) -> None:
        from data_tools.dedup.views import View
        self._args = (embedder.preparer(), tuple(views or (View("identity"),)), embedder.decode_side())
        self.workers = workers
        self._pool = None

    def __enter__(self) -> "PreparePool":
        if self.workers > 0:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=self._args)
        else:
            _init_worker(*self._args)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def map(self, items: Iterable[tuple[Any, bytes]]) -> Iterator[tuple[Any, np.ndarray | None, str | None]]:
        if self._pool is None:
            yield from map(_prepare_one, items)
            return
        window: list = []
        for item in items:
            window.append(item)
            if len(window) >= 64 * self.workers:
                yield from self._pool.imap(_prepare_one, window, chunksize=8)
                window = []
        if window:
            yield from self._pool.imap(_prepare_one, window, chunksize=8)


@dataclass
class EmbeddedBatch:
    """One batch: ids of the decodable items, their vectors (B, V, dim), and failures."""

    ids: list
    vectors: np.ndarray
    failures: list[tuple[Any, str]]


def embed_prepared(embedder: Embedder, prepared: Iterable[tuple[Any, np.ndarray | None, str | None]],
                   batch_size: int) -> Iterator[EmbeddedBatch]:
    """Batch the output of :meth:`PreparePool.map` through ``embedder.embed``.

    Memory: one batch of prepared arrays. Failures travel with the batch
    they were met in, so callers can count and list them in order.
    """
    ids, arrays, failures = [], [], []

    def flush() -> EmbeddedBatch:
        if arrays:
            stacked = np.stack(arrays)                     # (B, V, ...)
            b, v = stacked.shape[:2]
            vectors = embedder.embed(stacked.reshape(b * v, *stacked.shape[2:])).reshape(b, v, -1)
        else:
            vectors = np.zeros((0, 1, embedder.dim), dtype=np.float32)
        return EmbeddedBatch(list(ids), vectors, list(failures))

    for ident, array, error in prepared:
        if error is not None:
            failures.append((ident, error))
        else:
            ids.append(ident)
            arrays.append(array)
        if len(arrays) >= batch_size:
            yield flush()
            ids, arrays, failures = [], [], []
    if ids or failures:
        yield flush()

