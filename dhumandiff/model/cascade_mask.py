"""Cascade stage 1's mask: where the ID tokens were attended at stage 1's last step, as stage 2's mixing mask.

Three recipes (``contract/recipe.py``'s ``cascade_mask``):

* ``official`` -- as the official inference code computes it. Per cross-attention layer and person, the map
  ``query @ softmax_over_tokens(k_ip^T)`` (``[heads, N, 16]``, no 1/sqrt(d), softmax over the 16 ID tokens of each
  key channel) on the *unconditional* half of the CFG batch, averaged over heads, bilinearly upsampled to the
  latent size, softmax over the 16 tokens; averaged over layers; token 0 kept. The official code then adds
  person 1's map to person 1's map again (it reads ``vis_map1_mean`` twice: person 2's map is never used),
  scales the sum to 0..255, truncates to uint8, zeroes the cells below its 90th percentile (NumPy's linear
  percentile) and stage 2 keeps every cell above zero.
* ``two-person`` -- the same with person 2's map where the official code reads person 1's again.
* ``attention-mass`` -- this project's: the probability mass one softmax over all 77 + 32 context tokens puts on
  each person's tokens (conditional half), averaged over layers and persons; each image's top 10 %
  (``torch.quantile``), the cascade-fold students' target.

Every function returns ``[B, 1, h, w]`` float32 holding 0 or 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SettingsError


def _side(n: int, h: int, w: int) -> int:
    """Rows of a layer's ``n`` tokens laid out with the latent's aspect ratio."""
    return int(round((n * h / w) ** 0.5))


def attention_mass_mask(store: list[torch.Tensor], h: int, w: int, per_pass: int) -> torch.Tensor:
    """The project's mask from ``[P*B, 2, N]`` maps per layer (with CFG, P = 2; the conditional half is second)."""
    maps = []
    for a in store:
        a = a[a.shape[0] // 2:] if per_pass == 2 else a
        n = a.shape[-1]
        side_h = _side(n, h, w)
        a = a.reshape(a.shape[0], 2, side_h, n // side_h)
        maps.append(F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False).mean(dim=1))
    avg = torch.stack(maps).mean(dim=0)  # [B, h, w]
    thr = torch.quantile(avg.flatten(1), 0.9, dim=1)
    return (avg >= thr[:, None, None]).float()[:, None]


def _token_maps(store: list[tuple[torch.Tensor, torch.Tensor]], person: int, h: int, w: int,
                per_pass: int) -> torch.Tensor:
    """One person's ``[B, 16, h, w]`` token maps, softmaxed over tokens and averaged over layers."""
    maps = []
    for pair in store:
        a = pair[person]  # [P*B, N, 16], already averaged over heads
        a = a[:a.shape[0] // 2] if per_pass == 2 else a  # the unconditional half, as the official code reads it
        n = a.shape[1]
        side_h = _side(n, h, w)
        a = a.permute(0, 2, 1).reshape(a.shape[0], a.shape[2], side_h, n // side_h).float()
        a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False)
        maps.append(torch.softmax(a, dim=1))
    return torch.stack(maps).mean(dim=0)


def official_mask(store: list[tuple[torch.Tensor, torch.Tensor]], h: int, w: int, per_pass: int,
                  two_person: bool = False, top: float = 90.0) -> torch.Tensor:
    """The official stage-1 mask (``two_person``: person 2's map counted as the official code meant)."""
    m1 = _token_maps(store, 0, h, w, per_pass)[:, 0]
    m2 = _token_maps(store, 1, h, w, per_pass)[:, 0] if two_person else m1
    out = []
    for vis in (m1 + m2).cpu().numpy().astype(np.float32):
        if not np.max(vis) > np.min(vis):  # a flat map (the official code would divide by zero): no cell stands out
            out.append(np.zeros_like(vis))
            continue
        norm = (vis - np.min(vis)) / (np.max(vis) - np.min(vis)) * 255
        norm = norm.astype(np.uint8)
        norm[norm < np.percentile(norm, top)] = 0
        out.append((norm > 0).astype(np.float32))
    return torch.from_numpy(np.stack(out))[:, None]


def cascade_mask(store: list, recipe_mask: str, h: int, w: int, per_pass: int) -> torch.Tensor:
    """Stage 2's mask by the recipe's name (``official``, ``two-person`` or ``attention-mass``)."""
    if recipe_mask == "attention-mass":
        return attention_mass_mask(store, h, w, per_pass)
    if recipe_mask in ("official", "two-person"):
        return official_mask(store, h, w, per_pass, two_person=recipe_mask == "two-person")
    raise SettingsError(f"unknown cascade mask {recipe_mask!r}: use official, two-person or attention-mass")
