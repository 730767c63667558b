"""The streaming pretraining loader: WebDataset shards -> batches, with exact resume.

Pipeline, in this order (each stage in :mod:`data_tools.loader.streams` or below):
shards -> deterministic shuffle by (seed, shard cycle) -> split by node ->
split by worker -> samples (corrupt or missing ones counted, never fatal) ->
shuffle buffer -> decode -> augment -> batch. It is a ``webdataset``
``DataPipeline`` run under a torch ``DataLoader``.

Training streams are endless per worker (the shard order is reshuffled at
every pass over the shards); an *epoch* is a fixed number of batches per
rank, ``ceil(images / (batch_size * world_size))``, identical on every rank,
so distributed ranks never wait on each other, and every sample is seen once
per pass of its worker (counts differ by at most one between samples). Every
batch spans exactly ``batch_size`` stream positions (fewer images only where
samples were corrupt), and the DataLoader takes batches from its workers
round-robin, so the position of every worker is a function of (epoch,
samples_seen): resuming from a checkpoint's ``loader.state_dict()``
continues exactly where the uninterrupted run would be, with any number of
workers. One loader object keeps its workers streaming across epochs.

``samples_seen`` must be read from the loader (``loader.samples_seen``) or
summed from ``batch.positions``, not counted from ``len(batch.images)``:
the two differ when a corrupt sample was dropped from a batch.

Use::

    loader = make_train_loader("subsets/10M", cfg, num_classes=C,
                               epoch=state["epoch"], samples_seen=state["samples_seen"])
    for batch in loader:          # the rest of the current epoch, then epoch += 1
        loss = step(batch.images, batch.targets)
        state = loader.state_dict()   # save this with the checkpoint
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import webdataset as wds

from datascale.errors import ConfigError, DataError, count_skip
from data_tools.labels import Vocabulary
from data_tools.loader.config import LoaderConfig
from data_tools.loader.curriculum import CurriculumAugment, CurriculumSchedule, StageSetting
from data_tools.loader.streams import (SampleFilter, ShardItem, ShuffleBuffer, WorkerShards, exact_items,
                                shuffled_items)
from data_tools.subsets.subset import Subset, as_subset
from data_tools.loader.transforms import TRANSFORMS, batch_tensor, to_planar_uint8, to_unit_range

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """One batch: images (N, 3, H, W) float32 in [-1, 1] (uint8 0..255 with ``pixels: uint8``:
    scale with ``transforms.model_input``); targets (N, C) float32, dense or
    sparse COO; labels and keys per image; positions: stream positions this batch used
    (what ``samples_seen`` counts); skipped: corrupt/missing samples in it, by reason."""

    images: torch.Tensor
    targets: torch.Tensor
    labels: list
    keys: list
    positions: int
    skipped: dict

    @property
    def label_lists(self) -> list:
        """Alias of ``labels``: the label index list of each image."""
        return self.labels


class LabelEncoder:
    """Stored label ids -> the model's targets: closure, subset renumbering, multi-hot."""

    def __init__(self, num_classes: int, label_map: np.ndarray | None,
                 vocabulary: Vocabulary | None, sparse: bool) -> None:
        self.num_classes, self.vocabulary, self.sparse = num_classes, vocabulary, sparse
        self.label_map = label_map

    def ids(self, stored: list) -> list[int]:
        labels = [int(x) for x in stored]
        if self.vocabulary is not None:
            labels = self.vocabulary.close(labels)
        if self.label_map is not None:
            labels = sorted({int(self.label_map[x]) for x in labels if self.label_map[x] >= 0})
        if labels and (labels[-1] >= self.num_classes or labels[0] < 0):
            raise DataError(f"label id {labels[-1]} does not fit num_classes={self.num_classes}; "
                            "pass the source's class count (Subset.num_classes)")
        return labels

    def targets(self, label_lists: list[list[int]]) -> torch.Tensor:
        rows = [r for r, ids in enumerate(label_lists) for _ in ids]
        cols = [c for ids in label_lists for c in ids]
        shape = (len(label_lists), self.num_classes)
        if self.sparse:
            index = torch.tensor([rows, cols], dtype=torch.int64).reshape(2, -1)
            return torch.sparse_coo_tensor(index, torch.ones(len(cols)), shape).coalesce()
        dense = batch_tensor(shape).zero_()
        dense[rows, cols] = 1.0
        return dense


class _Pipeline(wds.DataPipeline):
    """Base of the train/eval pipelines: worker identity and batch assembly."""

    def __init__(self, source: Subset, cfg: LoaderConfig, encoder: LabelEncoder, rank: int,
                 world_size: int, train: bool) -> None:
        self.shards = [ShardItem(str(p), e.samples, e.filter)
                       for p, e in zip(source.shard_paths(), source.shards)]
        table = None if source.keep_unlabelled else source.label_map()  # which images belong
        self.accept = SampleFilter(source.max_rank,
                                   None if table is None else tuple(int(v) for v in table))
        self.cfg, self.encoder, self.rank, self.world_size = cfg, encoder, rank, world_size
        self.transform = TRANSFORMS[cfg.transform](cfg.image_size, train)
        self.skipped: collections.Counter = collections.Counter()
        self._reported: collections.Counter = collections.Counter()  # skips already in a batch
        super().__init__(self._items, self._batches)

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _make_batch(self, items: list, seeds: list[list[int]] | None,
                    setting: StageSetting | None = None) -> Batch:
        arrays, labels, keys, rngs = [], [], [], []
        for i, item in enumerate(items):
            if item is None:
                continue
            try:
                image = self.transform.decode(item.image)
            except Exception as exc:  # PIL raises many types on corrupt bytes
                count_skip(self.skipped, "corrupt_image", f"{item.shard}:{item.key}: {exc}")
                continue
            rng = np.random.default_rng(seeds[i]) if seeds else None
            arrays.append(self.transform(image, rng))
            rngs.append(rng)
            labels.append(self.encoder.ids(item.meta.get("labels", [])))
            keys.append(item.key)
        if setting is not None:  # the curriculum's RandAugment and crop, batched (each image's own rng)
            arrays = self.augment.batch(arrays, setting, rngs)
        crop = self.transform.crop if setting is None else setting.band
        stacked = np.stack(arrays) if arrays else np.zeros((0, crop, crop, 3), dtype=np.uint8)
        # Skips found while reading shards (before this call) are reported here too.
        new_skips, self._reported = self.skipped - self._reported, collections.Counter(self.skipped)
        pixels = to_planar_uint8(stacked) if self.cfg.pixels == "uint8" else to_unit_range(stacked)
        return Batch(pixels, self.encoder.targets(labels), labels, keys,
                     len(items), dict(new_skips))


class TrainPipeline(_Pipeline):
    """Endless shuffled, augmented batches of one rank, starting after ``start_batch`` batches.

    With a ``curriculum``, batch k (of this rank, since training began) gets the
    stage of its optimizer step: its images are RandAugment-ed and cropped to
    the stage's band (:mod:`data_tools.loader.curriculum`).
    """

    def __init__(self, source, cfg, encoder, rank, world_size, start_batch: int,
                 curriculum: CurriculumSchedule | None = None) -> None:
        super().__init__(source, cfg, encoder, rank, world_size, train=True)
        self.start_batch, self.curriculum = start_batch, curriculum
        self.augment = CurriculumAugment(curriculum.config) if curriculum else None

    def _start(self) -> tuple[int, int, int]:
        """(logical worker, workers, positions that worker emitted before the start)."""
        physical, workers = self._worker()
        # The DataLoader hands out batches round-robin, and one loader iterator
        # runs on across epochs: this rank's batch k is logical worker k % workers'.
        # A loader started at batch k0 begins its round at physical worker 0,
        # which therefore plays logical worker k0 % workers.
        worker = (physical + self.start_batch) % workers
        done = max(0, -(-(self.start_batch - worker) // workers))
        return worker, workers, done * self.cfg.batch_size

    def _items(self) -> Iterator:
        worker, workers, start = self._start()
        shards = WorkerShards(self.shards, self.cfg.seed, offset=self.rank + self.world_size * worker,
                              stride=self.world_size * workers)
        buffer = ShuffleBuffer(self.cfg.shuffle_buffer,
                               [self.cfg.seed, self.rank, self.world_size, worker, workers, 0xB0F])
        return shuffled_items(shards, self.accept, buffer, start, self.skipped)

    def _batches(self, items: Iterator) -> Iterator[Batch]:
        worker, workers, position = self._start()
        size = self.cfg.batch_size
        while True:
            chunk = list(itertools.islice(items, size))
            seeds = [[self.cfg.seed, self.rank, worker, position + i, 0xA06] for i in range(size)]
            # This worker's j-th batch is the rank's batch worker + workers * j (round-robin).
            setting = (self.curriculum.at_batch(worker + workers * (position // size))
                       if self.curriculum else None)
            yield self._make_batch(chunk, seeds, setting)
            position += size


class EvalPipeline(_Pipeline):
    """Every sample of the source exactly once, in shard order, centre-cropped."""

    def _items(self) -> Iterator:
        worker, workers = self._worker()
        mine = self.shards[self.rank:: self.world_size][worker:: workers]
        for shard in mine:
            yield from (s for s in exact_items(shard, self.accept, self.skipped) if s is not None)

    def _batches(self, items: Iterator) -> Iterator[Batch]:
        while True:
            chunk = list(itertools.islice(items, self.cfg.batch_size))
            if not chunk:
                break
            yield self._make_batch(chunk, None)
        if self.skipped != self._reported:
            yield self._make_batch([], None)  # carries the last skips to the main process


class StreamingLoader:
    """Iterable over batches with the read position (``epoch``, ``samples_seen``) for checkpoints.

    Training: each ``iter()`` yields the rest of the current epoch, then
    advances ``epoch``. Eval: each ``iter()`` yields every sample once.
    ``skipped`` accumulates corrupt/missing samples by reason.
    """

    def __init__(self, make_pipeline, cfg: LoaderConfig, batches_per_epoch: int, epoch: int,
                 samples_seen: int, train: bool) -> None:
        self._make_pipeline, self.cfg, self.train = make_pipeline, cfg, train
        self.batches_per_epoch, self.epoch, self.samples_seen = batches_per_epoch, epoch, samples_seen
        self.skipped: collections.Counter = collections.Counter()
        self._live: tuple | None = None   # (next batch index of this rank, DataLoader iterator)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict:
        """What a checkpoint stores to resume exactly here (plus settings that must not change)."""
        return {"epoch": self.epoch, "samples_seen": self.samples_seen,
                "batch_size": self.cfg.batch_size, "num_workers": self.cfg.num_workers,
                "seed": self.cfg.seed, "shuffle_buffer": self.cfg.shuffle_buffer}

    def _loader(self, pipeline) -> torch.utils.data.DataLoader:
        workers = self.cfg.num_workers
        return torch.utils.data.DataLoader(
            pipeline, batch_size=None, num_workers=workers, in_order=True, collate_fn=_as_built,
            prefetch_factor=self.cfg.prefetch_factor if workers else None,
            persistent_workers=False)

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            for batch in self._loader(self._make_pipeline(0)):
                self.skipped.update(batch.skipped)
                if batch.keys:  # a batch whose images were all corrupt only reports skips
                    yield batch
            return
        done = self.samples_seen // self.cfg.batch_size
        start = self.epoch * self.batches_per_epoch + done
        if self._live is None or self._live[0] != start:
            # Workers are started once and keep streaming across epochs; a new
            # iterator is made only on the first call or after a position change.
            self._live = (start, iter(self._loader(self._make_pipeline(start))))
        batches = self._live[1]
        for _ in range(self.batches_per_epoch - done):
            batch = next(batches)
            self.samples_seen += batch.positions
            self.skipped.update(batch.skipped)
            self._live = (self._live[0] + 1, batches)
            yield batch
        self.epoch += 1
        self.samples_seen = 0

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is deleted)."""
        self._live = None


def _as_built(batch: Batch) -> Batch:
    """The DataLoader's collate step: a pipeline's batches are tensors already. (Its default,
    default_convert, walks every label list of every batch: ~10% of a 64 px batch's CPU.)"""
    return batch


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def _check_config(cfg: LoaderConfig) -> None:
    cfg.validate()
    if cfg.batch_size is None:
        raise ConfigError("loader.batch_size is unset: give the per-rank batch size")


def _encoder(source: Subset, cfg: LoaderConfig, num_classes: int, vocabulary) -> LabelEncoder:
    if num_classes < source.num_classes:
        raise DataError(f"num_classes={num_classes} but {source.name} has {source.num_classes} "
                        "classes; pass Subset.num_classes")
    closure = None
    if cfg.hierarchy_closure:
        closure = vocabulary if vocabulary is not None else source.source_vocabulary()
    return LabelEncoder(num_classes, source.label_map(), closure, cfg.targets == "sparse")


def make_train_loader(source: Any, cfg: LoaderConfig, *, num_classes: int,
                      vocabulary: Vocabulary | None = None, epoch: int = 0, samples_seen: int = 0,
                      rank: int | None = None, world_size: int | None = None,
                      curriculum: CurriculumSchedule | None = None) -> StreamingLoader:
    """Shuffled, augmented training batches from a Subset, subset folder or shards folder.

    ``samples_seen`` is this rank's count within ``epoch`` (``loader.samples_seen``,
    a multiple of batch_size, equal on all ranks). ``vocabulary`` is the
    source (shards) vocabulary used for hierarchy closure (default: the
    shards' classes.json). rank/world_size default to torch.distributed's.
    ``curriculum`` (EfficientTrain++) sizes and augments each batch by its
    optimizer step; its ``crop`` must be this config's crop size.
    Memory per worker: shuffle_buffer encoded samples + prefetch batches.
    Resume cost: numpy replay of the shuffle picks plus reading the shards
    that still hold buffered samples (about shuffle_buffer * ln(shuffle_buffer) items).
    """
    _check_config(cfg)
    subset = as_subset(source)
    rank, world_size = _distributed(rank, world_size)
    if samples_seen % cfg.batch_size:
        raise DataError(f"samples_seen={samples_seen} is not a multiple of batch_size="
                        f"{cfg.batch_size}; resume from loader.state_dict() at a batch boundary")
    if subset.images == 0:
        raise DataError(f"{subset.name} has no images")
    per_epoch = math.ceil(subset.images / (cfg.batch_size * world_size))
    if samples_seen // cfg.batch_size > per_epoch:
        raise DataError(f"samples_seen={samples_seen} is beyond an epoch of {per_epoch} batches")
    encoder = _encoder(subset, cfg, num_classes, vocabulary)

    if curriculum is not None and curriculum.crop != cfg.crop_size:
        raise ConfigError(f"curriculum: its full size {curriculum.crop} px is not data.loader's crop "
                          f"{cfg.crop_size} px")

    def pipeline(start_batch: int) -> TrainPipeline:
        return TrainPipeline(subset, cfg, encoder, rank, world_size, start_batch, curriculum)
    return StreamingLoader(pipeline, cfg, per_epoch, epoch, samples_seen, train=True)


def make_eval_loader(source: Any, cfg: LoaderConfig, *, num_classes: int,
                     vocabulary: Vocabulary | None = None, rank: int | None = None,
                     world_size: int | None = None) -> StreamingLoader:
    """Every sample exactly once, in a deterministic order, centre-cropped, no augmentation.

    Shards are split by node then by worker; ``len()`` is approximate with
    several workers (each worker's last batch may be partial).
    """
    _check_config(cfg)
    subset = as_subset(source)
    rank, world_size = _distributed(rank, world_size)
    encoder = _encoder(subset, cfg, num_classes, vocabulary)
    mine = subset.images // world_size
    batches = max(1, math.ceil(mine / cfg.batch_size))

    def pipeline(_: int) -> EvalPipeline:
        return EvalPipeline(subset, cfg, encoder, rank, world_size, train=False)
    return StreamingLoader(pipeline, cfg, batches, 0, 0, train=False)
