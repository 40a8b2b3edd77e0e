"""Structurally smaller UNets in BK-SDM's pattern, initialised from the teacher they are cut from.

BK-SDM (Kim et al., 2023: "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion") removes whole
blocks of a trained UNet and distils the rest back; we apply the same cuts to DHumanDiff's identity-conditioned
UNet, keeping every remaining cross-attention's dual-identity processor and its region masks:

* ``base``:  one residual + attention pair fewer per stage (down blocks keep their first pair; up blocks drop the
  middle one, so each kept pair still receives the skip connection it was trained with);
* ``small``: ``base`` and no mid block (diffusers' ``mid_block_type=None``);
* ``tiny``:  ``small`` and no innermost stage (its down block, and the up block that mirrors it).

A level that has nothing to remove (``base`` on a UNet that already has one pair per stage, as ``tiny`` does) is
applied as far as it can be; a level that removes nothing at all is refused. The result is an ordinary diffusers
``UNet2DConditionModel`` config, so every exporter, runtime and ``from_pretrained`` handles a pruned student like
any other UNet.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from diffusers import UNet2DConditionModel

from ..errors import DHumanDiffError

if TYPE_CHECKING:
    from .dhumandiff_model import DHumanDiff

#: BK-SDM's three sizes, smallest last.
PRUNE_LEVELS = ("base", "small", "tiny")

#: per-stage config entries that have one value per down block (cut with the innermost stage)
_PER_STAGE = ("block_out_channels", "layers_per_block", "attention_head_dim", "num_attention_heads",
              "transformer_layers_per_block", "cross_attention_dim")


def _per_stage(value: Any, stages: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


def pruned_unet_config(config: dict[str, Any], level: str) -> dict[str, Any]:
    """The diffusers UNet config of ``config`` cut to BK-SDM ``level``; refuses a cut that removes nothing."""
    if level not in PRUNE_LEVELS:
        raise DHumanDiffError(f"unknown pruning level {level!r}: choose one of {', '.join(PRUNE_LEVELS)}")
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    stages = len(cfg["down_block_types"])
    layers = _per_stage(cfg.get("layers_per_block", 2), stages)
    removed: list[str] = []
    if any(n > 1 for n in layers):
        cfg["layers_per_block"] = [max(1, n - 1) for n in layers]
        removed.append("one residual/attention pair per stage")
    if PRUNE_LEVELS.index(level) >= 1 and cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None:
        cfg["mid_block_type"] = None
        removed.append("the mid block")
    if level == "tiny":
        if stages < 2:
            raise DHumanDiffError("a one-stage UNet has no innermost stage to remove: use --method prune-small")
        cfg["down_block_types"] = list(cfg["down_block_types"])[:-1]
        cfg["up_block_types"] = list(cfg["up_block_types"])[1:]
        for key in _PER_STAGE:
            if isinstance(cfg.get(key), (list, tuple)) and len(cfg[key]) == stages:
                cfg[key] = list(cfg[key])[:-1]
        for key in ("reverse_transformer_layers_per_block",):
            if isinstance(cfg.get(key), (list, tuple)):
                cfg[key] = list(cfg[key])[1:]
        removed.append("the innermost stage")
    if not removed:
        raise DHumanDiffError(f"pruning level {level!r} removes nothing from this UNet (it has one pair per "
                              f"stage already): use prune-small or prune-tiny")
    if not any("CrossAttn" in b for b in (*cfg["down_block_types"], *cfg["up_block_types"])) \
            and cfg.get("mid_block_type") is None:
        raise DHumanDiffError(f"pruning level {level!r} would leave this UNet no cross-attention for the identity "
                              f"tokens: choose a larger level ({', '.join(PRUNE_LEVELS[:PRUNE_LEVELS.index(level)])})")
    if isinstance(cfg.get("layers_per_block"), list) and len(set(cfg["layers_per_block"])) == 1:
        cfg["layers_per_block"] = cfg["layers_per_block"][0]  # the usual spelling when every stage agrees
    cfg["sample_size"] = config.get("sample_size")
    return cfg


@dataclass
class PruneReport:
    """How the student's weights were initialised: which teacher tensor each came from."""

    level: str
    teacher_params: int
    student_params: int
    copied: int = 0
    partly: list[str] = field(default_factory=list)  # student keys filled in part (trailing channels aligned)
    fresh: list[str] = field(default_factory=list)   # student keys left at their random initialisation

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "teacher_params": self.teacher_params, "student_params": self.student_params,
                "params_ratio": round(self.student_params / max(1, self.teacher_params), 4),
                "copied_tensors": self.copied, "partly_copied": self.partly, "fresh": self.fresh}


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")
_UP_SAMPLER = re.compile(r"^up_blocks\.(\d+)\.(.*)$")


def teacher_key(key: str, teacher: dict[str, Any], student: dict[str, Any]) -> str:
    """The teacher's state-dict key a student key is initialised from (block indices remapped by the cut)."""
    dropped = len(teacher["up_block_types"]) - len(student["up_block_types"])
    t_layers = _per_stage(teacher.get("layers_per_block", 2), len(teacher["down_block_types"]))
    s_layers = _per_stage(student.get("layers_per_block", 2), len(student["down_block_types"]))
    m = _BLOCK.match(key)
    if m:
        kind, block, part, index, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            return key  # the first pairs are kept
        t_block = block + dropped
        n_t = list(reversed(t_layers))[t_block] + 1
        n_s = list(reversed(s_layers))[block] + 1
        # the last pair of an up block takes the skip from the level above: it maps onto the teacher's last pair
        t_index = n_t - 1 if index == n_s - 1 else index
        return f"up_blocks.{t_block}.{part}.{t_index}.{rest}"
    m = _UP_SAMPLER.match(key)
    if m:
        return f"up_blocks.{int(m.group(1)) + dropped}.{m.group(2)}"
    return key


def _fill(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Copy ``src`` into a ``dst`` that differs only in its input channels (dim 1): the trailing channels are
    aligned, because an up block's first resnet takes ``[hidden | skip]`` and only the hidden part shrank."""
    if dst.ndim == 1:  # the GroupNorm over those input channels
        n = min(dst.shape[0], src.shape[0])
        dst[dst.shape[0] - n:] = src[src.shape[0] - n:]
        return True
    if dst.shape[0] != src.shape[0] or dst.shape[2:] != src.shape[2:]:
        return False
    n = min(dst.shape[1], src.shape[1])
    dst[:, dst.shape[1] - n:] = src[:, src.shape[1] - n:]
    return True


@torch.no_grad()
def init_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module, level: str) -> PruneReport:
    """Load the teacher's weights into the pruned ``student`` UNet (dual processors included, as both carry
    them as submodules); returns what was copied, partly copied and left fresh."""
    t_state, s_state = teacher.state_dict(), student.state_dict()
    t_cfg, s_cfg = dict(teacher.config), dict(student.config)
    report = PruneReport(level, sum(p.numel() for p in teacher.parameters()),
                         sum(p.numel() for p in student.parameters()))
    for key, dst in s_state.items():
        src = t_state.get(teacher_key(key, t_cfg, s_cfg))
        if src is not None and src.shape == dst.shape:
            dst.copy_(src)
            report.copied += 1
        elif src is not None and _fill(dst, src):
            report.partly.append(key)
        else:
            report.fresh.append(key)
    student.load_state_dict(s_state)
    return report


def prune_model(model: "DHumanDiff", level: str) -> tuple["DHumanDiff", PruneReport]:
    """A copy of ``model`` whose UNet is cut to ``level`` and initialised from ``model``'s (dual processors
    included); every other component is shared with ``model``, not copied."""
    from .dhumandiff_model import DHumanDiff

    unet = UNet2DConditionModel(**pruned_unet_config(dict(model.unet.config), level))
    cfg = copy.deepcopy(model.config)
    cfg.unet = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    student = DHumanDiff(cfg, unet, model.vae, model.text_encoder, model.image_encoder, model.resampler,
                         model.face_proj, model.subject_mlp, model.tokenizer, model.text_encoder_2,
                         model.tokenizer_2, model.identity_encoder, model.vae_tiny)
    student.ip_processors.to(next(model.unet.parameters()).dtype)
    report = init_from_teacher(student.unet, model.unet, level)
    student.config.defaults = {**student.config.defaults, "pruned_from": model.config.name, "pruned_level": level}
    return student.eval(), report
