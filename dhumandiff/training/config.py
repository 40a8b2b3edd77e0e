"""Training configuration: one dataclass, saved with every checkpoint so a resumed run checks it matches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainConfig:
    """Hyper-parameters of the DHumanDiff diffusion objective (see README 'Training')."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    # Which parameters train: "all" (tiny: UNet, text encoder, projections, adapters) or "adapters"
    # (SDXL / SD1.5: dual-attention K/V, Resampler, ProjPlus and subject MLP over a frozen base).
    trainable: str = "all"
    cond_dropout: float = 0.1      # drop prompt + identities together (classifier-free guidance)
    id_dropout: float = 0.05       # drop only the identities
    use_region_masks: bool = True
    # Share of samples trained without region masks (the cascade mode's stage 1 and mask-free inference): the
    # region loss then has to keep identities apart through attention alone.
    mask_dropout: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    # Extra terms of the full objective (identity and region losses): weights 0 disable them.
    identity_loss_weight: float = 0.0
    region_loss_weight: float = 0.0
    identity_loss_max_t: int = 600     # the identity loss sees only timesteps below this (x0 is a blur above)
    identity_loss_batch: int = 8       # how many of the batch's images are decoded for the identity loss
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0
    mixed_precision: str = "no"    # "no" on CPU; "bf16"/"fp16" on GPU through accelerate
    gradient_checkpointing: bool = False
    max_minutes: float | None = None  # stop (and checkpoint) after this wall time
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
