"""Backbone files: ``backbone.pt`` (a plain state_dict of the trunk) + ``backbone.json``.

Written by pretraining (:func:`save_backbone`), read by fine-tuning and the
dedup ``backbone`` embedder (:func:`load_backbone`), always with
``torch.load(weights_only=True)``. Any checkpoint of a registered
architecture loads too; a file of another architecture is a clear error
naming both (:func:`guess_arch`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from datascale.atomic import atomic_path, write_json
from datascale.errors import DataError
from scaling.models.registry import BACKBONES
from scaling.models.backbones import IMAGE_MEAN, IMAGE_STD, Backbone, MultiLabelClassifier, build_backbone

log = logging.getLogger(__name__)


def backbone_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths: a folder holds backbone.pt + backbone.json; X.pt pairs with X.json."""
    path = Path(path)
    if path.suffix != ".pt":
        path = path / "backbone.pt"
    return path, path.with_suffix(".json")


def save_backbone(backbone: Backbone | MultiLabelClassifier, path: str | Path, meta: dict) -> Path:
    """Write backbone.pt (a plain state_dict of the trunk) and backbone.json, each atomically.

    ``path`` is a folder (files ``backbone.pt``/``backbone.json`` inside) or a
    ``.pt`` file (metadata beside it as ``.json``). ``meta`` may hold
    ``num_classes``, ``classes_file``, ``lineage`` (a mapping; pretraining puts
    ``pretrain_run``, ``subset_name``, ``subset_images``, ``steps`` there) and
    any other JSON-safe keys; ``arch`` and ``feature_dim`` come from the model.
    A classifier is exported without its ``fc`` head. Returns the .pt path.
    """
    trunk = backbone.backbone if isinstance(backbone, MultiLabelClassifier) else backbone
    if not isinstance(trunk, Backbone):
        raise TypeError(f"save_backbone expects a Backbone or MultiLabelClassifier, got {type(trunk).__name__}")
    if meta.get("arch", trunk.arch) != trunk.arch:
        raise DataError(f"meta says arch {meta['arch']!r} but the model is {trunk.arch!r}")
    weights, meta_path = backbone_paths(path)
    # clone(): a parameter may be a view into a larger flat buffer (DeepSpeed, FSDP);
    # torch.save would otherwise write the whole buffer.
    state = {k: v.detach().cpu().clone() for k, v in trunk.state_dict().items()}
    record = {
        **{k: v for k, v in meta.items() if k not in ("arch", "feature_dim")},
        "arch": trunk.arch,
        "num_classes": meta.get("num_classes"),
        "feature_dim": trunk.feature_dim,
        "classes_file": meta.get("classes_file"),
        "lineage": dict(meta.get("lineage") or {}),
        "image_mean": list(meta.get("image_mean", IMAGE_MEAN)),
        "image_std": list(meta.get("image_std", IMAGE_STD)),
    }
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    write_json(meta_path, record)
    return weights


def _extract_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """The trunk's tensors from a plain state_dict or a common checkpoint wrapper."""
    if isinstance(raw, dict):
        for wrapper in ("module", "state_dict", "model"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    state = {}
    for key, value in raw.items():
        if not torch.is_tensor(value):
            continue
        for prefix in ("module.", "backbone."):  # DDP/DeepSpeed and MultiLabelClassifier prefixes
            key = key.removeprefix(prefix)
        if not key.startswith("fc."):
            state[key] = value
    return state


_SIGNATURES: dict[str, dict[str, tuple[int, ...]]] = {}


def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of an architecture, built on the meta device (no memory)."""
    if arch not in _SIGNATURES:
        with torch.device("meta"):
            model = build_backbone(arch)
        _SIGNATURES[arch] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SIGNATURES[arch]


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose names and shapes match ``state`` exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for arch in BACKBONES:
        if _signature(arch) == shapes:
            return arch
    return None


def load_backbone(path: str | Path, arch: str | None = None, *,
                  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
                  ) -> tuple[Backbone, dict]:
    """Load a backbone written by :func:`save_backbone` or any checkpoint of the same arch.

    ``path``: a backbone folder, a ``backbone.pt``, or another checkpoint file
    (a plain state_dict, possibly wrapped in ``module``/``state_dict``/``model``
    and prefixed ``module.``/``backbone.``; ``fc.*`` is dropped). ``arch``
    defaults to the one in the metadata beside the file. Returns
    ``(backbone, meta)``; ``meta`` is ``{}`` plus ``arch`` without a .json.
    Reads the file once with ``torch.load(weights_only=True)`` on CPU.
    Raises DataError when the file holds another architecture, naming both.
    """
    weights, meta_path = backbone_paths(path)
    if not weights.is_file():
        raise DataError(f"backbone file not found: {weights}")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    file_arch = meta.get("arch")
    if arch and file_arch and arch != file_arch:
        raise DataError(f"{weights} holds a {file_arch} backbone (per {meta_path.name}), "
                        f"but {arch} was asked for; use a {arch} backbone or set arch: {file_arch}")
    target = arch or file_arch
    if not target:
        raise DataError(f"{weights} has no {meta_path.name} naming its architecture; "
                        f"say which it is (one of: {', '.join(BACKBONES)})")
    try:
        raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on a truncated zip, ...
        raise DataError(f"cannot read {weights} as a weights-only torch file: {exc}") from None
    state = _extract_state_dict(raw, weights)
    backbone = build_backbone(target, replace_stride_with_dilation=replace_stride_with_dilation)
    expected = _signature(target)
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        held = guess_arch(state)
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        example = (missing + wrong + extra)[0]
        raise DataError(
            f"{weights} holds {'a ' + held if held else 'an unrecognised'} backbone, but {target} "
            f"was asked for ({len(missing)} tensors missing, {len(extra)} unexpected, "
            f"{len(wrong)} of another shape, e.g. {example}); "
            "use a checkpoint of the same architecture")
    backbone.load_state_dict(state, strict=True)
    meta = {**meta, "arch": target}
    log.info("loaded %s backbone from %s", target, weights)
    return backbone, meta
