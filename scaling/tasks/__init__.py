"""Downstream tasks for ``datascale finetune``: a registry of name -> task factory.

Each task module (``detection``, ``segmentation``, ``pose``) defines a
:class:`scaling.tasks.common.Task` with the data reader, the model builder,
the loss and the evaluation; ``scaling.finetune`` runs the one training loop
over whichever task is named. Modules are imported on first use, so that
``datascale --help`` does not import torch.

Add a task: write ``scaling/tasks/NAME.py`` exposing ``TASK``, add it here and
to ``scaling.tasks.config.TASK_NAMES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from datascale.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from scaling.tasks.common import Task


def _lazy(module: str) -> Callable[[], "Task"]:
    return lambda: importlib.import_module(f"scaling.tasks.{module}").TASK


#: Task name -> factory returning the task object.
TASKS: dict[str, Callable[[], "Task"]] = {
    "detection": _lazy("detection"),
    "segmentation": _lazy("segmentation"),
    "pose": _lazy("pose"),
}


def get_task(name: str) -> "Task":
    """The registered task ``name``; ConfigError listing the registered names otherwise."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]()
