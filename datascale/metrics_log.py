"""metrics.jsonl, the run's own record, optionally mirrored to TensorBoard or Weights & Biases.

Every training stage writes one JSON line per logging step (``{"step": ...,
**metrics}``, big_vision's convention) through :class:`MetricsLog`. With
``logging.tensorboard: true`` the same numbers go to ``RUN/tensorboard/``
(``tensorboard --logdir RUN``); with ``logging.wandb: true`` to a W&B run
when the ``wandb`` package is installed. JSONL stays the source analysis reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from datascale.atomic import append_jsonl
from datascale.errors import ConfigError


@dataclass
class LoggingSection:
    """Where metrics go besides metrics.jsonl (``--set logging.tensorboard=true``)."""

    tensorboard: bool = False   # RUN/tensorboard/ event files (needs the tensorboard package)
    wandb: bool = False         # a Weights & Biases run (needs the wandb package; WANDB_MODE=offline works)
    wandb_project: str = "datascale"


class MetricsLog:
    """Appends records to ``path`` (JSONL) and mirrors their numbers to the configured loggers."""

    def __init__(self, path: Path, cfg: LoggingSection | None = None, run_name: str = "",
                 enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        self._tensorboard = self._wandb = None
        cfg = cfg or LoggingSection()
        if not enabled:  # e.g. ranks other than 0
            return
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency
            except ImportError:
                raise ConfigError("logging.tensorboard: the tensorboard package is not installed "
                                  "(pip install tensorboard, or datascale[tensorboard])") from None
            self._tensorboard = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb  # optional dependency
            except ImportError:
                raise ConfigError("logging.wandb: the wandb package is not installed (pip install wandb)") from None
            self._wandb = wandb.init(project=cfg.wandb_project, name=run_name or self.path.parent.name,
                                     dir=str(self.path.parent), reinit=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        step = int(record.get("step", 0))
        numbers = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
