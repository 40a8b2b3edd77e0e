"""The two extra terms of the full DHumanDiff objective, beside the diffusion loss.

* **Identity loss**: the predicted clean image (``x0`` from the v-prediction, decoded by the frozen VAE) is cropped
  at each person's face box, embedded by the frozen identity encoder (the tiny world's ArcFace stand-in, or
  ArcFace itself) and pulled towards that person's reference embedding: ``1 - cos``. Only low-noise timesteps
  count, weighted by ``alpha_bar_t``, since at high noise ``x0`` is a blur whose face says nothing (the
  PhotoMaker / PuLID practice).
* **Region loss**: each identity's share of the cross-attention (the mass on its ID tokens, the same maps the
  cascade mode reads) should sit inside its own person box: mean mass outside minus mean mass inside, per layer
  (FastComposer's balanced localisation loss). This is what lets the mask-free cascade mode place identities.

Both are differentiable functions of tensors only, so the trainer stays a loop and these stay testable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.attention import resize_region_mask


def face_crop_grid(images: torch.Tensor, boxes: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Differentiable square crops ``[B, 3, size, size]`` of ``images`` ``[B, 3, H, W]`` at normalised ``boxes``.

    The square has the box's longer side and centre (the crop the face analyzers use), sampled bilinearly;
    outside the image is black (``-1``), like :func:`~dhumandiff.data.dataset.crop_square`.
    """
    b, _, h, w = images.shape
    x0, y0, x1, y1 = boxes.unbind(-1)
    side_x = torch.maximum((x1 - x0) * w, (y1 - y0) * h) / w
    side_y = side_x * w / h
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = side_x
    theta[:, 1, 1] = side_y
    theta[:, 0, 2] = x0 + x1 - 1.0     # centre in [-1, 1]: 2 * (x0 + x1) / 2 - 1
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0


def identity_loss(encoder: torch.nn.Module, images: torch.Tensor, face_boxes: torch.Tensor,
                  reference: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * (1 - cos(E(crop), ref))) / sum(w)`` over the two persons of each image.

    ``images``: decoded predictions in ``[-1, 1]`` ``[B, 3, H, W]``; ``face_boxes``: ``[B, 2, 4]`` normalised;
    ``reference``: ``[B, 2, D]`` reference embeddings; ``weight``: ``[B, 2]`` (0 drops a person, e.g. when its
    identity was dropped for classifier-free guidance or the timestep is too noisy). The encoder takes ArcFace
    input, ``(x - 127.5) / 127.5`` of 0..255 pixels — which is exactly the ``[-1, 1]`` range of ``images``.
    """
    b = images.shape[0]
    crops = face_crop_grid(images.repeat_interleave(2, dim=0), face_boxes.reshape(b * 2, 4))
    emb = F.normalize(encoder(crops).float(), dim=-1).reshape(b, 2, -1)
    cos = (emb * F.normalize(reference.float(), dim=-1)).sum(-1)
    w = weight.float()
    return ((1.0 - cos) * w).sum() / w.sum().clamp_min(1e-6)


def region_loss(attention_maps: list[torch.Tensor], masks: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Balanced localisation loss of the ID tokens' attention, averaged over layers.

    ``attention_maps``: per cross-attention layer ``[B, 2, N]`` (mass of each person's ID tokens at each of the
    layer's N positions); ``masks``: latent-resolution person boxes ``[B, 2, h, w]``; ``weight``: ``[B]``.
    Per person: mean mass outside its box minus mean mass inside it, so pushing mass inside lowers the loss.
    """
    if not attention_maps:
        raise ValueError("no attention maps were recorded: the UNet has no DualIPAttnProcessor")
    w = weight.float()
    total = 0.0
    for maps in attention_maps:
        m = resize_region_mask(masks.to(maps.dtype), maps.shape[-1]).transpose(1, 2)  # [B, 2, N]
        inside = (maps * m).sum(-1) / m.sum(-1).clamp_min(1e-6)
        outside = (maps * (1 - m)).sum(-1) / (1 - m).sum(-1).clamp_min(1e-6)
        total = total + ((outside - inside).mean(-1).float() * w).sum() / w.sum().clamp_min(1e-6)
    return total / len(attention_maps)


def predicted_x0(out: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean latent the UNet's output implies (``alpha_bar``: ``[B]`` cumulative alphas of each sample)."""
    a = alpha_bar.sqrt().view(-1, 1, 1, 1)
    s = (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return a * noisy - s * out
    if prediction_type == "epsilon":
        return (noisy - s * out) / a
    return out
