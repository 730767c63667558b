"""Checkpoints of a pretraining run: save, resume, prune, export.

Layout inside a run folder::

    checkpoints/latest                    tag of the newest complete checkpoint (DeepSpeed's)
    checkpoints/step_00000200/...         DeepSpeed model/optimizer/scheduler states
    checkpoints/step_00000200/position-rank0.json   this rank's data position and RNG

DeepSpeed writes the client state from data-parallel rank 0 only, but every
rank has its own place in its own share of the data, so each rank writes its
position file itself. DeepSpeed moves ``latest`` only after the states are
written, so a run killed during a save resumes from the previous checkpoint.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from datascale.atomic import write_json
from datascale.errors import DataError

log = logging.getLogger(__name__)

_TAG = re.compile(r"^step_(\d{8})$")


@dataclass
class DataPosition:
    """Where a rank is in its data: the epoch and the samples it consumed in it."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(checkpoint_dir: Path) -> str | None:
    """The tag DeepSpeed's ``latest`` file names, if it and its folder exist."""
    latest = checkpoint_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (checkpoint_dir / tag).is_dir() else None


def _rng_state() -> dict:
    return {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2])}


def _set_rng_state(state: dict) -> None:
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    keys = np.asarray(state["numpy"], dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))


def save(engine, checkpoint_dir: Path, position: DataPosition, rank: int, keep_last: int) -> str:
    """Save a checkpoint of the DeepSpeed ``engine`` plus this rank's data position.

    Collective: every rank must call it. Returns the tag. Older checkpoints
    beyond ``keep_last`` are removed by rank 0 (never the one just written).
    """
    tag = tag_for(position.step)
    # Position first: it is only read for a tag that `latest` names, which
    # DeepSpeed writes after its own files.
    write_json(checkpoint_dir / tag / f"position-rank{rank}.json",
               {**asdict(position), "rng": _rng_state()})
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"step": position.step})
    if rank == 0:
        prune(checkpoint_dir, keep_last, protect=tag)
    return tag


def prune(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    """Remove all but the newest ``keep_last`` checkpoint folders."""
    tags = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _TAG.match(p.name))
    for tag in tags[:-keep_last] if keep_last > 0 else []:
        if tag != protect:
            shutil.rmtree(checkpoint_dir / tag, ignore_errors=True)


def resume(engine, checkpoint_dir: Path, rank: int) -> DataPosition | None:
    """Load the newest checkpoint into ``engine``; returns this rank's position or None.

    Collective: every rank must call it.
    """
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        return None
    position_file = checkpoint_dir / tag / f"position-rank{rank}.json"
    if not position_file.is_file():
        raise DataError(f"checkpoint {checkpoint_dir / tag} has no data position for rank {rank}: "
                        "it was written with another number of ranks; resume with the same --nproc")
    load_path, _ = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    if load_path is None:
        raise DataError(f"DeepSpeed could not load checkpoint {checkpoint_dir / tag}")
    record = json.loads(position_file.read_text())
    _set_rng_state(record.pop("rng"))
    position = DataPosition(**record)
    log.info("resumed from %s (step %d, epoch %d)", tag, position.step, position.epoch)
    return position


def fp32_state_dict(engine, checkpoint_dir: Path, tag: str | None, zero_stage: int) -> dict:
    """The consolidated fp32 weights of the whole model.

    With ZeRO the fp32 master weights are partitioned over ranks (and the
    module may hold bf16 copies), so they are gathered from the saved
    checkpoint with DeepSpeed's zero_to_fp32; without ZeRO and in fp32 the
    module's own weights are the master weights.
    """
    module = engine.module
    low_precision = any(p.dtype != torch.float32 for p in module.parameters())
    if (zero_stage > 0 or low_precision) and tag is not None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
        # Buffers (BN running stats) are not in the optimizer's partitions.
        for name, buf in module.named_buffers():
            state.setdefault(name, buf.detach().float().cpu())
        return state
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
