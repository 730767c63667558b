"""Checkpoints of a pretraining run: save, resume, prune, export.

Layout inside a run folder::

    checkpoints/latest                    tag of the newest complete checkpoint (DeepSpeed's)
    checkpoints/step_00000200/...         DeepSpeed model/optimizer/scheduler states
    checkpoints/step_00000200/position-rank0.json   this rank's data position and RNG

DeepSpeed writes the client state from data-parallel rank 0 only, but every
rank has its own place in its own share of the data, so each rank writes its
position file itself, after DeepSpeed returned: a rank's position file says
that its part of the checkpoint is complete.

Safe loading. DeepSpeed reads its files with ``torch.load(weights_only=False)``,
which runs any code a tampered file carries. Every read of a checkpoint here
(:func:`resume`, :func:`fp32_state_dict`) happens inside :func:`safe_loading`,
which forces ``weights_only=True`` (PyTorch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``)
and allows only the few plain classes DeepSpeed stores (:func:`deepspeed_safe_globals`).

Resume walks back. Each rank first checks the newest checkpoint's files that
it will read (position file present, every state file loads under the safe
loader); the ranks agree, and a checkpoint that fails on any rank is skipped
(with the reason in the log), moved to ``checkpoints/skipped/`` and the next
older one is tried. Only then does DeepSpeed load it, so ranks never disagree
inside DeepSpeed's collective load.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
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
INTERRUPTED = "the save was interrupted"  # such a folder never was a checkpoint


@dataclass
class DataPosition:
    """Where a rank is in its data: the epoch and the samples it consumed in it."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0


@dataclass
class Resumed:
    """What :func:`resume` loaded: this rank's position, the tag, and the tags it skipped (why)."""

    position: DataPosition
    tag: str
    skipped: dict


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


def save(engine, checkpoint_dir: Path, position: DataPosition, rank: int, keep_last: int,
         world_size: int = 1) -> str:
    """Save a checkpoint of the DeepSpeed ``engine`` plus this rank's data position.

    Collective: every rank must call it. Returns the tag. Older checkpoints
    beyond ``keep_last`` are removed by rank 0 (never the one just written).
    """
    tag = tag_for(position.step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"step": position.step})
    # After DeepSpeed's files: the position file marks this rank's part complete.
    write_json(checkpoint_dir / tag / f"position-rank{rank}.json",
               {**asdict(position), "world_size": world_size, "rng": _rng_state()})
    if rank == 0:
        prune(checkpoint_dir, keep_last, protect=tag)
    return tag


def prune(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    """Remove all but the newest ``keep_last`` checkpoint folders."""
    tags = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _TAG.match(p.name))
    for tag in tags[:-keep_last] if keep_last > 0 else []:
        if tag != protect:
            shutil.rmtree(checkpoint_dir / tag, ignore_errors=True)


# --------------------------------------------------------------------------- safe loading


def deepspeed_safe_globals() -> list:
    """The classes DeepSpeed 0.19 pickles into its checkpoints besides tensors and containers
    (found by loading its ZeRO-0/2, fp32/bf16/fp16 files with ``weights_only=True``)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def safe_loading():
    """Inside the block every ``torch.load`` is ``weights_only=True``, DeepSpeed's included."""
    saved = {name: os.environ.pop(name, None)
             for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def check_checkpoint(tag_dir: Path, rank: int, world_size: int) -> str | None:
    """Why this rank cannot resume from ``tag_dir`` (None: it can). Reads every state file the
    rank will read with the safe loader; raises DataError for another number of ranks."""
    position_file = tag_dir / f"position-rank{rank}.json"
    others = sorted(tag_dir.glob("position-rank*.json"))
    for file in [position_file] if position_file.is_file() else others[:1]:
        try:
            saved_world = json.loads(file.read_text()).get("world_size", world_size)
        except (OSError, ValueError) as exc:
            return f"{file.name} is unreadable ({exc})"
        if saved_world != world_size:
            raise DataError(f"checkpoint {tag_dir} was written by {saved_world} ranks, this run has "
                            f"{world_size}; resume with --nproc {saved_world}")
    if not position_file.is_file():
        return f"no {position_file.name}: {INTERRUPTED}"
    if not list(tag_dir.glob("*model_states.pt")):
        return f"no model states file: {INTERRUPTED}"
    mine = [p for p in sorted(tag_dir.glob("*.pt")) if "pp_rank_" not in p.name
            or f"pp_rank_{rank}_" in p.name]
    for file in mine:
        try:
            with safe_loading():
                torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            reason = next((l for l in first if "Unsupported" in l or "GLOBAL" in l), first[0] if first else "")
            return f"{file.name} holds more than weights, refused unread ({reason.strip()[:200]})"
        except Exception as exc:  # truncated zip, EOF, I/O error: the file is damaged
            return f"{file.name} is damaged ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _checkpoint_tags(checkpoint_dir: Path) -> list[str]:
    """Checkpoint tags, newest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted((p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _TAG.match(p.name)),
                  reverse=True)


def _all_ranks_agree(ok: bool) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([0.0 if ok else 1.0])
    dist.all_reduce(flag)
    return flag.item() == 0


def _set_aside(checkpoint_dir: Path, tags: list[str]) -> None:
    """Move skipped checkpoints to checkpoints/skipped/ (kept for a look, out of the way)."""
    aside = checkpoint_dir / "skipped"
    for tag in tags:
        target, n = aside / tag, 1
        while target.exists():
            target, n = aside / f"{tag}.{n}", n + 1
        aside.mkdir(exist_ok=True)
        os.replace(checkpoint_dir / tag, target)


def resume(engine, checkpoint_dir: Path, rank: int, world_size: int = 1) -> Resumed | None:
    """Load the newest checkpoint that loads into ``engine``; None if there is none at all.

    Collective: every rank must call it. Checkpoints that fail the check on
    any rank are skipped, logged and set aside; if every finished one fails,
    DataError (folders of interrupted saves alone mean: start from step 0).
    """
    skipped: dict[str, str] = {}
    for tag in _checkpoint_tags(checkpoint_dir):
        problem = check_checkpoint(checkpoint_dir / tag, rank, world_size)
        if not _all_ranks_agree(problem is None):
            skipped[tag] = problem or "refused on another rank (see its log)"
            log.warning("resume: skipping checkpoint %s: %s", checkpoint_dir / tag, skipped[tag])
            continue
        try:
            with safe_loading():
                load_path, _ = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
        except Exception as exc:
            raise DataError(f"DeepSpeed could not load checkpoint {checkpoint_dir / tag} ({exc}); "
                            "move that folder away to resume from an older one") from exc
        if load_path is None:
            raise DataError(f"DeepSpeed could not load checkpoint {checkpoint_dir / tag}")
        record = json.loads((checkpoint_dir / tag / f"position-rank{rank}.json").read_text())
        record.pop("world_size", None)
        _set_rng_state(record.pop("rng"))
        position = DataPosition(**record)
        if skipped and rank == 0:
            _set_aside(checkpoint_dir, list(skipped))
        log.info("resumed from %s (step %d, epoch %d)", tag, position.step, position.epoch)
        return Resumed(position, tag, skipped)
    if all(why.endswith(INTERRUPTED) for why in skipped.values()):
        if skipped and rank == 0:
            _set_aside(checkpoint_dir, list(skipped))
        return None
    if skipped:
        raise DataError(f"no checkpoint in {checkpoint_dir} can be resumed from: "
                        + "; ".join(f"{t}: {why}" for t, why in skipped.items())
                        + ". Move the folder away (or pass --force) to start the run again")
    return None


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

        with safe_loading():  # zero_to_fp32 reads with weights_only=False too
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
        # Buffers (BN running stats) are not in the optimizer's partitions.
        for name, buf in module.named_buffers():
            state.setdefault(name, buf.detach().float().cpu())
        return state
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
