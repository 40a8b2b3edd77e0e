"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint folder holds ``model.safetensors`` (trainable weights), ``ema.safetensors``, ``optimizer.pt``
(optimizer + LR scheduler state, loaded with ``weights_only=True``), and ``state.json`` (step, seeds, config).
It is built under a temporary name and renamed, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..utils.atomic import atomic_dir

_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(folder: Path, step: int, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
                    optimizer_state: dict[str, Any], state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``folder/checkpoint-{step}`` atomically and keep only the newest ``keep`` checkpoints."""
    target = Path(folder) / f"checkpoint-{step}"
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    for old in list_checkpoints(folder)[:-keep]:
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (temporary ``.partial`` folders never match), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()
             and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    ckpts = list_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict, dict]:
    """``(weights, ema, optimizer_state, state)`` of a checkpoint folder."""
    path = Path(path)
    if not (path / "state.json").is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint; pass a checkpoint-N folder or the run "
                              f"folder to --resume")
    weights = load_file(str(path / "model.safetensors"))
    ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return weights, ema, opt, json.loads((path / "state.json").read_text())
