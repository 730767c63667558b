"""Typed settings of the analysis commands (``datascale fit``, ``datascale plot``).

They live apart from the code that uses them and import nothing heavy, so
that registering the commands (and ``datascale --help``, which lists their
keys) does not pay for importing pandas, scipy or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from datascale.config import require

PLOT_FORMATS = ("png", "svg", "pdf")

# Shown by `datascale fit --help`; FitModel.fit_sizes in analysis.fit_models holds the numbers.
MODEL_CHOICE_RULE = """\
Intervals are over pretraining runs (results column pretrain_run): the fine-tuning runs of
one backbone are averaged first; log-linear intervals are t intervals on n_backbones - 2
degrees of freedom, power-law ones a bootstrap over backbones (docs/uncertainty.md).

Model choice: the log-linear baseline is fitted from min_sizes (3) data sizes up; any other
model with k parameters only from k + 3 sizes (the 3-parameter power law: 6), the fewest for
which its AICc with one pretraining run per size is defined and the held-out refit keeps two
spare sizes. It replaces the baseline only if it has both the smaller AICc (on the backbone
means) and the smaller error predicting the largest size from the smaller ones
(choose_by=both); on fewer sizes the baseline is kept. A pure-error lack-of-fit F test is
reported for each curve where some size has two or more pretraining runs."""


@dataclass
class FitConfig:
    """Settings of ``datascale fit`` (``--set key=value``).

    ``where``: COLUMN=VALUE filters on the results table; ``group_by``: curve
    keys added to task, metric, test_set, mode, arch, init; ``choose_by``:
    "both" keeps the simpler model unless the other has both the smaller
    held-out extrapolation error and the smaller AICc (on the backbone means);
    "heldout" or "aicc" use one criterion (AICc wherever a held-out error
    cannot be computed). A model is fitted, and so can be chosen, only on
    enough data sizes (MODEL_CHOICE_RULE); ``predict_images`` / ``target``:
    extrapolate to that many images / solve for the images reaching that value.
    ``bootstrap``: resamples for the power law's intervals (and draws for the
    log-linear target interval; its other intervals are exact t intervals).
    """

    where: list[str] = field(default_factory=list)
    group_by: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["loglinear", "powerlaw"])
    bootstrap: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    choose_by: Literal["both", "heldout", "aicc"] = "both"
    min_sizes: int = 3
    predict_images: float | None = None
    target: float | None = None
    curve_points: int = 60

    def validate(self) -> None:
        from analysis.fit_models import FIT_MODELS  # numpy: only when a config is built

        require(self.bootstrap >= 50, "bootstrap", f"needs at least 50 resamples, got {self.bootstrap}")
        require(0.5 <= self.ci_level < 1, "ci_level", f"must be in [0.5, 1), got {self.ci_level}")
        require(self.min_sizes >= 3, "min_sizes", "a curve needs at least 3 data sizes")
        require(bool(self.models), "models", f"name at least one of {', '.join(FIT_MODELS)}")
        for name in self.models:
            require(name in FIT_MODELS, "models", f"unknown model {name!r}; known: {', '.join(FIT_MODELS)}")
        require(self.predict_images is None or self.predict_images > 0, "predict_images", "must be > 0")
        require(self.curve_points >= 2, "curve_points", "must be at least 2")


@dataclass
class PlotConfig:
    """Settings of ``datascale plot`` (``--set key=value``).

    ``curve``: which fitted model is drawn (``chosen`` per curve, or one model
    everywhere); panel sizes are in inches.
    """

    where: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=lambda: ["png", "svg"])
    curve: str = "chosen"  # "chosen", or a model name registered in analysis.fit_models.FIT_MODELS
    dpi: int = 130
    panel_width: float = 4.6
    panel_height: float = 3.6
    columns: int = 3

    def validate(self) -> None:
        from analysis.fit_models import FIT_MODELS  # numpy: only when a config is built

        require(self.curve == "chosen" or self.curve in FIT_MODELS, "curve",
                f"unknown curve {self.curve!r}; use chosen or one of {', '.join(FIT_MODELS)}")
        require(bool(self.formats), "formats", f"name at least one of {', '.join(PLOT_FORMATS)}")
        for fmt in self.formats:
            require(fmt in PLOT_FORMATS, "formats", f"{fmt!r} is not one of {', '.join(PLOT_FORMATS)}")
        require(self.dpi >= 30, "dpi", f"must be at least 30, got {self.dpi}")
        require(self.columns >= 1, "columns", "must be at least 1")
        require(self.panel_width > 0 and self.panel_height > 0, "panel_width", "panel sizes must be > 0")
