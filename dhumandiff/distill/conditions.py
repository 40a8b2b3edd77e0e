"""The conditioning of a batch of training records, as every distillation objective feeds it to a UNet."""

from __future__ import annotations

import torch

from ..model.dhumandiff_model import DHumanDiff
from ..training.tensors import TrainingTensors


@torch.no_grad()
def batch_conditions(model: DHumanDiff, data: TrainingTensors, idx: torch.Tensor, views: torch.Tensor,
                     uncond_ids: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompt context (conditional and empty), both persons' ID tokens, layout masks and added-time inputs.

    ``views``: ``[B, 2]`` which reference view of each person to use (random in training, fixed where a cached
    quantity such as a cascade mask must match the conditioning it was computed with).
    """
    b = idx.shape[0]
    pid = data.person_ids[idx]
    feats, embeds = data.view_feats[pid, views], data.view_embeds[pid, views]
    ip = model.resampler(feats.flatten(0, 1)).unflatten(0, (b, 2)).flatten(1, 2)
    face_tok = model.face_proj(embeds.flatten(0, 1), feats.flatten(0, 1)).unflatten(0, (b, 2))[:, :, 0]
    ctx, pooled = model.encode_prompt(data.input_ids[idx], face_tok, data.positions[idx])
    uctx, upooled = model.encode_prompt(uncond_ids[None].repeat(b, 1), torch.zeros_like(face_tok),
                                        torch.full((b, 2), -1, dtype=torch.long))
    return {"ctx": ctx, "uctx": uctx, "pooled": pooled, "upooled": upooled, "ip": ip, "mask": masks[idx],
            "time_ids": model.time_ids(b)}
