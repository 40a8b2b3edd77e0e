"""LoRA students (LCM-LoRA style): train low-rank adapters on a frozen UNet, then fuse them into its weights.

The adapters go on the UNet's own linear/conv layers through diffusers' PEFT integration (``add_adapter``), not
on the dual-attention processors' ``to_k_ip*`` projections, which stay as they are. ``fuse_lora`` + ``unload_lora``
merge them so every exporter sees a plain UNet with the usual keys; the un-fused adapter is also kept in
diffusers' LoRA file format (``pytorch_lora_weights.safetensors``) for those who want to load it on a teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The layers LCM-LoRA adapts in SD-style UNets: attention projections, feed-forward, transformer in/out.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj")


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and give it a LoRA adapter of ``rank``; returns the adapter's (trainable) parameters."""
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - peft is in the [train] extra
        from ..errors import DHumanDiffError

        raise DHumanDiffError("LoRA students need peft: pip install 'dhumandiff[train]'") from None
    for p in unet.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                     target_modules=list(LORA_TARGETS))
    unet.add_adapter(cfg)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def save_lora(unet: torch.nn.Module, folder: str | Path) -> Path:
    """Write the un-fused adapter in diffusers' LoRA format (safetensors) into ``folder``."""
    unet.save_lora_adapter(str(folder), weight_name="pytorch_lora_weights.safetensors")
    return Path(folder) / "pytorch_lora_weights.safetensors"


def fuse_lora(unet: torch.nn.Module) -> torch.nn.Module:
    """Merge the adapter into the base weights and remove the PEFT layers: a plain UNet again."""
    unet.fuse_lora()
    unet.unload_lora()
    return unet


def has_lora(unet: torch.nn.Module) -> bool:
    return any("lora_" in n for n, _ in unet.named_parameters())
