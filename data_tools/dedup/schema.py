"""Typed configuration of the dedup stage (``configs/dedup/*.yaml``).

One file configures both commands::

    datascale dedup index POOL --out INDEX -c dedup/demo      # reads embedder + index
    datascale dedup audit INDEX --testset T --out AUDIT -c dedup/demo   # reads audit

Each command records only its own sections in its folder's lineage, so
changing an audit setting never invalidates a finished index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datascale.config import require
from datascale.errors import ConfigError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str, key: str = "index.max_memory") -> int:
    """Bytes from a size such as ``2GB``, ``512MiB`` or ``1e9``; ConfigError naming ``key`` if not."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"{key}: cannot read {text!r} as a size; write e.g. 2GB, 512MB or 64GiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    require(value > 0, key, "must be more than 0 bytes")
    return value


@dataclass
class PixelsConfig:
    """The model-free ``pixels`` descriptor (see embedders.PixelsEmbedder)."""

    thumb_size: int = 32            # grey/colour thumbnail side the DCT is taken of
    gray_coefficients: int = 96     # lowest DCT frequencies kept (zig-zag order, DC dropped)
    frequency_weight: float = 1.0   # coefficient (u, v) is scaled by |(u, v)|**w: flattens 1/f spectra
    colour_grid: int = 4            # coarse colour layout: grid x grid cells x 2 opponent channels
    colour_weight: float = 0.4      # share of the colour part in the unit vector

    def validate(self) -> None:
        require(8 <= self.thumb_size <= 256, "thumb_size", "must be between 8 and 256")
        require(1 <= self.gray_coefficients < self.thumb_size ** 2, "gray_coefficients",
                "must be at least 1 and less than thumb_size**2")
        require(0.0 <= self.frequency_weight <= 3.0, "frequency_weight", "must be in [0, 3]")
        require(self.colour_grid >= 0 and (self.colour_grid == 0 or self.thumb_size % self.colour_grid == 0),
                "colour_grid", "must be 0 (no colour) or divide thumb_size")
        require(self.colour_weight >= 0.0, "colour_weight", "must be >= 0")


@dataclass
class BackboneConfig:
    """The ``backbone`` embedder: pooled features of a pretrained checkpoint."""

    checkpoint: str = ""            # backbone.pt (or its folder) written by pretraining
    arch: str | None = None         # default: the arch named in backbone.json
    image_size: int = 128           # images are resized (whole, not cropped) to this square
    pca_dim: int = 0                # 0 = keep all features; else PCA-reduce to this many
    pca_fit_images: int = 20000     # pool images the PCA is fitted on (the first shards: a random sample)

    def validate(self) -> None:
        require(16 <= self.image_size <= 1024, "image_size", "must be between 16 and 1024")
        require(self.pca_dim >= 0, "pca_dim", "must be 0 (no PCA) or positive")
        require(self.pca_fit_images >= 2 * max(self.pca_dim, 1), "pca_fit_images",
                "must be at least twice pca_dim")


@dataclass
class EmbedderConfig:
    """Which embedder turns images into vectors, and how the work is batched."""

    name: str = "pixels"
    batch_size: int = 256
    workers: int = 2                # decode/prepare processes; 0 = in the main process
    # Vectors stored per pool image (views.py specs; the first must be identity). A centre
    # crop finds test images that are crops of a larger pool photo; each view adds one
    # vector per pool image to the store and the index.
    pool_views: list[str] = field(default_factory=lambda: ["identity", "centre:0.8"])
    pixels: PixelsConfig = field(default_factory=PixelsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def validate(self) -> None:
        from data_tools.dedup.embedders import EMBEDDERS
        require(self.name in EMBEDDERS, "name",
                f"unknown embedder {self.name!r}; registered: {', '.join(EMBEDDERS)}")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.workers >= 0, "workers", "must be 0 or more")
        from data_tools.dedup.views import parse_views
        require(bool(self.pool_views) and self.pool_views[0] == "identity", "pool_views",
                "must start with identity (the whole pool image), e.g. [identity, 'centre:0.8']")
        parse_views(self.pool_views)
        if self.name == "backbone":
            require(bool(self.backbone.checkpoint), "backbone.checkpoint",
                    "the backbone embedder needs a checkpoint: --checkpoint RUN/backbone.pt")


@dataclass
class IndexConfig:
    """How the FAISS index is shaped from the pool size and the memory budget."""

    max_memory: str = "2GB"         # RAM the loaded index may take (codes + ids + coarse quantizer)
    flat_max_vectors: int = 200_000  # up to this many vectors: exact IndexFlatIP
    max_code_bytes: int = 32        # PQ code size cap (bytes per vector, ids excluded)
    opq: bool = False               # rotate with OPQ before PQ (slower training, better codes)
    lists_per_sqrt: float = 4.0     # nlist ~ this * sqrt(pool size), a power of two
    train_points_per_list: int = 40  # k-means training points per inverted list
    max_train_points: int = 4_000_000  # 40 x 65,536 lists fits under it
    part_vectors: int = 20_000_000  # vectors per build part (parts are merged on disk)
    nprobe: int = 16                # inverted lists visited per query (audit may override)
    seed: int = 0

    def validate(self) -> None:
        parse_bytes(self.max_memory)
        require(self.flat_max_vectors >= 0, "flat_max_vectors", "must be >= 0")
        require(self.max_code_bytes >= 4, "max_code_bytes", "must be at least 4")
        require(self.lists_per_sqrt > 0, "lists_per_sqrt", "must be positive")
        require(self.train_points_per_list >= 1, "train_points_per_list", "must be at least 1")
        require(self.max_train_points >= 256, "max_train_points", "must be at least 256")
        require(self.part_vectors >= 1, "part_vectors", "must be at least 1")
        require(self.nprobe >= 1, "nprobe", "must be at least 1")


def _default_sweep() -> list[float]:
    return [round(0.5 + 0.05 * i, 2) for i in range(10)]


@dataclass
class AlignConfig:
    """Crop alignment of borderline neighbours (see data_tools/dedup/align.py)."""

    enabled: bool = True
    min_score: float = 0.5          # neighbours scoring below this are not aligned
    skip_above: float = 0.97        # ... nor those already this close
    max_pairs: int = 3              # at most this many per test image (its best in the band)
    min_crop: float = 0.6           # smallest crop side searched, a fraction of the test image's
    sizes: int = 5                  # crop sides per dimension on the coarse grid
    max_aspect: float = 1.35        # largest aspect-ratio change of a crop
    starts: int = 2                 # best grid boxes refined per pair
    pool_pairs: int = 1             # ... then this many per test image against crops of the pool image
                                    # (pool_align.py: reads their pool pixels; 0 = off)
    pool_min_score: float = 0.35    # ... scoring in [pool_min_score, skip_above) (real photos: a crop of
                                    # a larger pool photo scored 0.39-0.71 before; distinct photos <= 0.79)

    def validate(self) -> None:
        require(-1.0 <= self.min_score <= 1.0, "min_score", "is a cosine and must be in [-1, 1]")
        require(self.min_score <= self.skip_above <= 1.0, "skip_above",
                f"must be in [min_score, 1] (min_score is {self.min_score})")
        require(self.max_pairs >= 1, "max_pairs", "must be at least 1")
        require(0.0 < self.min_crop < 1.0, "min_crop", "must be in (0, 1)")
        require(self.sizes >= 2, "sizes", "must be at least 2")
        require(self.max_aspect >= 1.0, "max_aspect", "must be at least 1")
        require(self.starts >= 1, "starts", "must be at least 1")
        require(self.pool_pairs >= 0, "pool_pairs", "must be 0 (off) or more")
        require(-1.0 <= self.pool_min_score <= self.skip_above, "pool_min_score",
                "is a cosine and must be in [-1, skip_above]")


@dataclass
class AuditConfig:
    """How test images are searched, thresholded, calibrated and shown."""

    threshold: float | None = None  # cosine; None: calibrated (with ground truth) or the embedder's default
    target_precision: float = 0.95  # calibration picks the lowest threshold reaching this precision
    cv_folds: int = 5               # held-out precision/recall: folds over the labelled test images
    cv_seed: int = 0                # ... their random assignment
    confidence: float = 0.95        # Clopper-Pearson intervals of precision, recall, remaining copies
    k: int = 10                     # neighbours kept per test image
    candidates: int = 64            # index candidates per query view, re-scored exactly
    nprobe: int | None = None       # None: the index's own setting
    views: list[str] = field(default_factory=lambda: ["identity", "mirror"])
    sweep: list[float] = field(default_factory=_default_sweep)
    gallery_pairs: int = 6          # pairs per gallery section (top, just above, just below)
    embedder: str | None = None     # the embedder you expect the index to use (checked)
    align: AlignConfig = field(default_factory=AlignConfig)
    batch_size: int = 64
    workers: int = 2

    def validate(self) -> None:
        from data_tools.dedup.views import parse_views
        if self.threshold is not None:
            require(-1.0 <= self.threshold <= 1.0, "threshold",
                    f"is a cosine similarity and must be in [-1, 1], got {self.threshold}")
        require(0.0 < self.target_precision <= 1.0, "target_precision", "must be in (0, 1]")
        require(self.cv_folds >= 2, "cv_folds", "must be at least 2")
        require(0.5 <= self.confidence < 1.0, "confidence", "must be in [0.5, 1), e.g. 0.95")
        require(self.k >= 1, "k", "must be at least 1")
        require(self.candidates >= self.k, "candidates", "must be at least k")
        require(self.nprobe is None or self.nprobe >= 1, "nprobe", "must be at least 1")
        require(all(-1.0 <= t <= 1.0 for t in self.sweep), "sweep", "thresholds must be in [-1, 1]")
        require(self.gallery_pairs >= 0, "gallery_pairs", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.workers >= 0, "workers", "must be 0 or more")
        parse_views(self.views)


@dataclass
class LabelConfig:
    """The sample of pairs ``dedup label`` exports for a person to mark (see labels.py)."""

    pairs: int = 120                # pairs to mark, over all audited test sets
    seed: int = 0
    # score bands: [-1, t-0.15), [t-0.15, t-0.08), ..., [t+0.08, 1] around the audit's threshold t
    band_offsets: list[float] = field(default_factory=lambda: [-0.15, -0.08, -0.03, 0.0, 0.03, 0.08])
    # pairs per band ~ weight x sqrt(images in it): most near the threshold
    band_weights: list[float] = field(default_factory=lambda: [1.0, 1.5, 3.0, 4.0, 4.0, 3.0, 1.0])

    def validate(self) -> None:
        require(self.pairs >= 1, "pairs", "must be at least 1")
        require(all(-1.0 < o < 1.0 for o in self.band_offsets), "band_offsets",
                "are cosine offsets from the threshold and must be in (-1, 1)")
        require(len(self.band_weights) == len(self.band_offsets) + 1, "band_weights",
                f"needs one weight per band: {len(self.band_offsets) + 1} for "
                f"{len(self.band_offsets)} band_offsets")
        require(all(w >= 0 for w in self.band_weights), "band_weights", "must be >= 0")


@dataclass
class DedupConfig:
    """The whole dedup config: ``embedder`` + ``index`` (for index), ``audit`` (for audit), ``label``."""

    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
