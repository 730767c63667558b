"""Downstream tasks for ``datascale finetune``: the registry ``TASKS``, the only list of tasks.

Each task module (``detection``, ``segmentation``, ``pose``) defines a
:class:`scaling.tasks.common.Task` with the data reader, the model builder,
the loss and the evaluation; ``scaling.finetune.loop`` runs the one training
loop over whichever task is named. Modules are imported on first use, so
that ``datascale --help`` does not import torch. The config schema, the
``--task`` choices and the study's plan all read their task names from here.

Add a task: write ``scaling/tasks/NAME.py`` exposing ``TASK``, give it a
config section in :mod:`scaling.tasks.config`, and add one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datascale.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from scaling.tasks.common import Task


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its module and where its data lives in a synthetic world."""

    module: str        # scaling.tasks.<module> exposes TASK
    world_data: str    # the task's dataset folder inside a world made by `datascale synth`
    world_test: str    # its test set inside the world (what the dedup audit reads)

    def load(self) -> "Task":
        return importlib.import_module(f"scaling.tasks.{self.module}").TASK


#: Task name -> registry entry.
TASKS: dict[str, TaskEntry] = {
    "detection": TaskEntry("detection", "detection", "detection/annotations/instances_test.json"),
    "segmentation": TaskEntry("segmentation", "segmentation", "segmentation/ImageSets/Segmentation/test.txt"),
    "pose": TaskEntry("pose", "pose", "pose/annotations/person_keypoints_test.json"),
}


def check_task(name: str) -> TaskEntry:
    """The registry entry of ``name``; ConfigError listing the registered names otherwise."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]


def get_task(name: str) -> "Task":
    """The task object registered as ``name`` (imports its module, and torch)."""
    return check_task(name).load()
