"""The world config schema (``configs/world/*.yaml``), checked by ``datascale.config``.

Every size, rate and count of the synthetic world is a key here, so a study can
shrink or grow the world with ``--set`` alone. ``validate()`` turns impossible
values into a ConfigError that names the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datascale.config import require

# Catalogue sizes the vocabulary draws from (data_tools.synth.vocab). They are
# repeated here as plain numbers so that validating a config needs no numpy.
MAX_SHAPE_FAMILIES = 18
MAX_FIGURE_FAMILIES = 4
MAX_COLOURS = 8
MAX_TEXTURES = 8
MAX_VARIANTS = 6
TRANSFORM_NAMES = ("resize", "crop", "flip", "jpeg", "colour", "rotate")
MIN_IMAGE_SIZE = 32


@dataclass
class ClassesConfig:
    """The class hierarchy: group -> family -> colour band -> texture -> variant (leaf)."""

    shape_families: int = 17
    figure_families: int = 3
    colours: int = 2
    textures: int = 3
    variants: int = 3
    depth: int = 5
    zipf_exponent: float = 1.0

    @property
    def families(self) -> int:
        return self.shape_families + self.figure_families

    @property
    def leaves(self) -> int:
        return self.families * self.colours * self.textures * self.variants

    def validate(self) -> None:
        require(0 <= self.shape_families <= MAX_SHAPE_FAMILIES, "shape_families",
                f"must be in 0..{MAX_SHAPE_FAMILIES} (the shape catalogue), got {self.shape_families}")
        require(0 <= self.figure_families <= MAX_FIGURE_FAMILIES, "figure_families",
                f"must be in 0..{MAX_FIGURE_FAMILIES} (the figure catalogue), got {self.figure_families}")
        require(self.families >= 1, "shape_families",
                "the world needs at least one class: shape_families + figure_families must be >= 1")
        for key, value, top in (("colours", self.colours, MAX_COLOURS),
                                ("textures", self.textures, MAX_TEXTURES),
                                ("variants", self.variants, MAX_VARIANTS)):
            require(1 <= value <= top, key, f"must be in 1..{top}, got {value}")
        require(1 <= self.depth <= 5, "depth",
                f"hierarchy depth must be in 1..5 (group, family, colour, texture, leaf), got {self.depth}")
        require(self.zipf_exponent >= 0, "zipf_exponent",
                f"must be >= 0 (0 = uniform class frequency), got {self.zipf_exponent}")


@dataclass
class LabelsConfig:
    """Objects per image and the label-noise model of the pretraining pool."""

    cardinality: float = 1.26
    max_objects: int = 4
    noise_rate: float = 0.2
    missing_rate: float = 0.1
    confusion_share: float = 0.3
    # JFT-like by default: every image keeps at least one (possibly wrong) label.
    allow_unlabelled: bool = False

    def validate(self) -> None:
        require(self.max_objects >= 1, "max_objects", f"must be >= 1, got {self.max_objects}")
        require(1.0 <= self.cardinality <= self.max_objects, "cardinality",
                f"mean labels per image must be in [1, max_objects={self.max_objects}], "
                f"got {self.cardinality}")
        require(0.0 <= self.noise_rate < 1.0, "noise_rate",
                f"fraction of given labels that are wrong must be in [0, 1), got {self.noise_rate}")
        require(0.0 <= self.missing_rate < 1.0, "missing_rate",
                f"fraction of true labels left out must be in [0, 1), got {self.missing_rate}")
        require(0.0 <= self.confusion_share <= 1.0, "confusion_share",
                f"share of wrong labels that are look-alike swaps must be in [0, 1], "
                f"got {self.confusion_share}")


@dataclass
class PoolConfig:
    """A labelled image pool (pretraining or the dense eval set)."""

    images: int = 24000
    image_size: int = 64

    def validate(self) -> None:
        require(self.images >= 1, "images", f"must be >= 1, got {self.images}")
        require(self.image_size >= MIN_IMAGE_SIZE, "image_size",
                f"must be >= {MIN_IMAGE_SIZE} pixels for objects to be recognisable, got {self.image_size}")


@dataclass
class EvalConfig(PoolConfig):
    """The dense, clean eval set (FastEval14K's role), sampled to cover many classes."""

    images: int = 1500
    # Class sampling weights are zipf_weight ** class_temperature:
    # 0 = class-balanced, 1 = as skewed as the pretraining pool.
    class_temperature: float = 0.3

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.class_temperature <= 1.0, "class_temperature",
                f"must be in [0, 1], got {self.class_temperature}")


@dataclass
class DownstreamConfig:
    """One downstream dataset: split sizes, image size and objects per image."""

    train: int = 400
    val: int = 150
    test: int = 150
    image_size: int = 96
    max_objects: int = 4

    def validate(self) -> None:
        for key in ("train", "val", "test"):
            require(getattr(self, key) >= 1, key, f"every split needs >= 1 image, got {getattr(self, key)}")
        require(self.image_size >= MIN_IMAGE_SIZE, "image_size",
                f"must be >= {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        require(self.max_objects >= 1, "max_objects", f"must be >= 1, got {self.max_objects}")


@dataclass
class SegmentationConfig(DownstreamConfig):
    """VOC-style segmentation; ``void_border`` is the width in pixels of a 255 (void)
    band along class borders; 0 (default) = no void pixels: masks are exact because
    rendering is not antialiased."""

    void_border: int = 0

    def validate(self) -> None:
        super().validate()
        require(0 <= self.void_border <= 4, "void_border", f"must be in 0..4 pixels, got {self.void_border}")


@dataclass
class PoseConfig(DownstreamConfig):
    """Articulated figures; ``max_objects`` counts figures, ``occluders`` shapes drawn over them."""

    max_objects: int = 3
    occluders: int = 2

    def validate(self) -> None:
        super().validate()
        require(0 <= self.occluders <= 6, "occluders", f"must be in 0..6, got {self.occluders}")


@dataclass
class DuplicatesConfig:
    """Planted near-duplicates: copies of downstream test images in the pretraining pool."""

    fraction: float = 0.1
    transforms: list[str] = field(default_factory=lambda: list(TRANSFORM_NAMES))

    def validate(self) -> None:
        require(0.0 <= self.fraction <= 1.0, "fraction",
                f"fraction of each test set to copy must be in [0, 1], got {self.fraction}")
        require(bool(self.transforms) or self.fraction == 0, "transforms",
                "needs at least one transform when fraction > 0")
        for name in self.transforms:
            require(name in TRANSFORM_NAMES, "transforms",
                    f"unknown transform {name!r}; valid: {', '.join(TRANSFORM_NAMES)}")
        require(len(set(self.transforms)) == len(self.transforms), "transforms", "lists a transform twice")


@dataclass
class RenderConfig:
    """Drawing: JPEG quality, background clutter, how much of an object may be hidden."""

    jpeg_quality: int = 90
    clutter: int = 4
    min_visible: float = 0.5
    pixel_noise: float = 4.0

    def validate(self) -> None:
        require(30 <= self.jpeg_quality <= 100, "jpeg_quality", f"must be in 30..100, got {self.jpeg_quality}")
        require(0 <= self.clutter <= 20, "clutter", f"must be in 0..20 strokes, got {self.clutter}")
        require(0.1 <= self.min_visible <= 1.0, "min_visible",
                f"visible fraction of an occluded object must be in [0.1, 1], got {self.min_visible}")
        require(0.0 <= self.pixel_noise <= 30.0, "pixel_noise", f"must be in [0, 30], got {self.pixel_noise}")


@dataclass
class WorldConfig:
    """``datascale synth`` config: the whole synthetic world, from one seed.

    Run: ``datascale synth --config world/demo --out WORLD`` (``world/tiny`` for tests).
    """

    seed: int = 0
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    pretrain: PoolConfig = field(default_factory=PoolConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    detection: DownstreamConfig = field(default_factory=DownstreamConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    duplicates: DuplicatesConfig = field(default_factory=DuplicatesConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def validate(self) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.classes.figure_families >= 1, "classes.figure_families",
                "the pose dataset needs at least one figure family")
        planted = sum(round(self.duplicates.fraction * d.test)
                      for d in (self.detection, self.segmentation, self.pose))
        require(planted <= self.pretrain.images // 2, "duplicates.fraction",
                f"plants {planted} copies, more than half of the {self.pretrain.images} pretraining images; "
                "lower the fraction or raise pretrain.images")
        for name in ("detection", "segmentation", "pose"):
            task = getattr(self, name)
            require(task.image_size >= self.pretrain.image_size or self.duplicates.fraction == 0,
                    f"{name}.image_size",
                    f"planted copies are downscaled to pretrain.image_size={self.pretrain.image_size}; "
                    f"the downstream image size must not be smaller, got {task.image_size}")
