"""The DHumanDiff diffusion training loop, driven by `accelerate` (one CPU, one GPU, or many GPUs).

Every random choice of a step (batch indices, timesteps, noise, dropout, reference views) comes from a generator
seeded by ``(seed, step, process index)``, so a run resumed from a checkpoint produces the same loss curve as one
that never stopped. Checkpoints are atomic folders (see ``checkpoint.py``); metrics go to ``metrics.csv`` and, when
installed, TensorBoard.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from ..errors import CheckpointError
from ..model.attention import AttentionStore
from ..model.dhumandiff_model import DHumanDiff
from ..utils.regions import region_mask
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .objectives import identity_loss, predicted_x0, region_loss
from .tensors import TrainingTensors, empty_prompt_ids


def trainable_modules(model: DHumanDiff, mode: str) -> torch.nn.ModuleDict:
    """The parts that learn. Adapters always; the base UNet and text encoder only for ``mode == "all"``."""
    mods = {"ip_processors": model.ip_processors, "resampler": model.resampler, "face_proj": model.face_proj,
            "subject_mlp": model.subject_mlp}
    if mode == "all":
        mods.update(unet=model.unet, text_encoder=model.text_encoder)
    elif mode != "adapters":
        raise ValueError(f"trainable must be 'all' or 'adapters', got {mode!r}")
    return torch.nn.ModuleDict(mods)


def trainable_parameters(mods: torch.nn.ModuleDict) -> list[torch.nn.Parameter]:
    """Each trainable parameter once, in a fixed order (the EMA's shadow list is stored in this order)."""
    return list({id(p): p for p in mods.parameters()}.values())


def _state(mods: torch.nn.ModuleDict) -> dict[str, torch.Tensor]:
    # The UNet's state dict also holds the processors; keep each tensor once under the first name it has.
    seen, out = set(), {}
    for k, v in mods.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out


class DiffusionTrainer:
    """Trains a :class:`DHumanDiff` on :class:`TrainingTensors`."""

    def __init__(self, model: DHumanDiff, data: TrainingTensors, config: TrainConfig, out_dir: str | Path) -> None:
        from accelerate import Accelerator

        if data.latents is None:
            raise ValueError("encode latents first (training.tensors.encode_latents)")
        self.model, self.data, self.cfg = model, data, config
        self.out_dir = Path(out_dir)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
        self.noise_scheduler = DDPMScheduler.from_config(
            {k: v for k, v in model.config.scheduler.items() if not k.startswith("_")})
        for p in model.parameters():
            p.requires_grad_(False)
        for frozen in (model.vae, model.identity_encoder, model.image_encoder):
            if frozen is not None:  # BatchNorm/Dropout of the frozen judges must not change with training
                frozen.eval()
        self.modules = trainable_modules(model, config.trainable)
        for p in self.modules.parameters():
            p.requires_grad_(True)
        if config.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        params = trainable_parameters(self.modules)
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warm = max(1, config.warmup_steps)
        total = max(1, config.steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine down to 10%
            self.optimizer,
            lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, total) / total))))
        self.ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=config.ema_warmup)
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.optimizer, self.lr_scheduler)
        self.step = 0
        self.uncond_ids = empty_prompt_ids(model)
        h, w = data.latents.shape[-2:]
        self.masks = torch.from_numpy(region_mask(data.boxes.numpy(), h, w))
        self.scaling = float(model.vae.config.scaling_factor)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        self.ema.store(self.params)
        ema_state = {f"ema.{i}": p.detach().clone() for i, p in enumerate(self.ema.shadow_params)}
        return save_checkpoint(
            self.out_dir / "checkpoints", self.step, _state(self.modules), ema_state,
            {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
             "ema_step": self.ema.optimization_step},
            {"config": self.cfg.to_dict(), "backbone": self.model.config.name}, keep=self.cfg.keep_checkpoints)

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from ``path`` (a checkpoint or the run folder's newest). Returns the step resumed at."""
        path = Path(path) if path else self.out_dir / "checkpoints"
        ckpt = path if (path / "state.json").is_file() else latest_checkpoint(path if path.name == "checkpoints"
                                                                             else path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"no complete checkpoint under {path}; start without --resume")
        weights, ema, opt, state = load_checkpoint(ckpt)
        self.modules.load_state_dict(weights, strict=False)
        missing = set(_state(self.modules)) - set(weights)
        if missing:
            raise CheckpointError(f"checkpoint {ckpt} lacks {sorted(missing)[:3]}: it was made with another "
                                  f"--trainable setting or backbone")
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
        if ema is not None:
            for i, p in enumerate(self.ema.shadow_params):
                p.data.copy_(ema[f"ema.{i}"])
            self.ema.optimization_step = opt["ema_step"]
        self.step = int(state["step"])
        return self.step

    # ------------------------------------------------------------------ one step
    def _generator(self) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + self.step * 7919 + self.accelerator.process_index * 104_729) % (2**63)
        return torch.Generator().manual_seed(seed)

    def loss(self, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        d, m, cfg = self.data, self.model, self.cfg
        b = cfg.batch_size
        idx = torch.randint(0, len(d), (b,), generator=g)
        latents = d.latents[idx] * self.scaling
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        pred_type = self.noise_scheduler.config.prediction_type
        target = self.noise_scheduler.get_velocity(latents, noise, t) if pred_type == "v_prediction" else noise
        views = torch.randint(0, d.view_feats.shape[1], (b, 2), generator=g)
        pid = d.person_ids[idx]
        feats = d.view_feats[pid, views]            # [B, 2, T, H]
        embeds = d.view_embeds[pid, views]          # [B, 2, 512]
        ip = m.resampler(feats.flatten(0, 1)).unflatten(0, (b, 2))          # [B, 2, 16, C]
        face_tok = m.face_proj(embeds.flatten(0, 1), feats.flatten(0, 1)).unflatten(0, (b, 2))[:, :, 0]
        r = torch.rand(b, generator=g)
        drop_all = r < cfg.cond_dropout
        drop_id = drop_all | (r > 1 - cfg.id_dropout)
        ids = torch.where(drop_all[:, None], self.uncond_ids[None], d.input_ids[idx])
        pos = torch.where(drop_id[:, None], torch.full_like(d.positions[idx], -1), d.positions[idx])
        ip = ip * (~drop_id).float()[:, None, None, None]
        ctx, pooled = m.encode_prompt(ids, face_tok, pos)
        mask = self.masks[idx] if cfg.use_region_masks else None
        if mask is not None and cfg.mask_dropout > 0:  # all-ones mask == no masking for those samples
            free = torch.rand(b, generator=g) < cfg.mask_dropout
            mask = torch.where(free[:, None, None, None], torch.ones_like(mask), mask)
        store = AttentionStore(keep_grad=True) if cfg.region_loss_weight > 0 else None
        pred = m.identity_unet(noisy, t, ctx, ip.flatten(1, 2), mask, 1.0, pooled, m.time_ids(b), attn_store=store)
        diffusion = F.mse_loss(pred.float(), target.float())
        loss, metrics = diffusion, {"loss": 0.0, "diffusion": float(diffusion.detach())}
        keep = (~drop_id).float()
        if store is not None:
            reg = region_loss(list(store), self.masks[idx], keep)
            loss = loss + cfg.region_loss_weight * reg
            metrics["region"] = float(reg.detach())
        if cfg.identity_loss_weight > 0 and m.identity_encoder is not None:
            n = min(b, cfg.identity_loss_batch)
            alpha_bar = self.noise_scheduler.alphas_cumprod[t[:n]]
            weight = (alpha_bar * (t[:n] < cfg.identity_loss_max_t) * keep[:n])[:, None].expand(n, 2)
            if float(weight.sum()) > 0:
                x0 = predicted_x0(pred[:n].float(), noisy[:n], alpha_bar, pred_type)
                images = m.vae.decode(x0 / self.scaling).sample
                reference = d.view_embeds[pid[:n]].mean(2)                   # [n, 2, D] over the views
                ident = identity_loss(m.identity_encoder, images, d.face_boxes[idx[:n]], reference, weight)
                loss = loss + cfg.identity_loss_weight * ident
                metrics["identity"] = float(ident.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    @torch.enable_grad()
    def train(self, progress: Callable[[int, int, dict], None] | None = None, until: int | None = None) -> dict:
        """Run to ``config.steps`` (or ``until``, or ``max_minutes``), checkpointing every ``checkpoint_every``."""
        cfg, acc = self.cfg, self.accelerator
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / "metrics.csv"
        new_log = not log_path.exists() or self.step == 0
        log = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "lr", "steps_per_s", "minutes"])
        tb = _tensorboard(self.out_dir / "tb") if acc.is_main_process else None
        self.modules.train()
        t0, last = time.time(), time.time()
        history: list[float] = []
        try:
            stop = cfg.steps if until is None else min(until, cfg.steps)
            while self.step < stop:
                g = self._generator()
                with acc.accumulate(self.modules):
                    loss, metrics = self.loss(g)
                    acc.backward(loss)
                    if acc.num_processes > 1:
                        _allreduce_grads(self.params)
                    acc.clip_grad_norm_(self.params, 1.0)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.ema.step(self.params)
                self.step += 1
                history.append(metrics["loss"])
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.time()
                    sps = cfg.log_every / max(now - last, 1e-9)
                    last = now
                    mean = sum(history[-cfg.log_every:]) / len(history[-cfg.log_every:])
                    writer.writerow([self.step, f"{mean:.6f}", f"{self.lr_scheduler.get_last_lr()[0]:.3e}",
                                     f"{sps:.3f}", f"{(now - t0) / 60:.2f}"])
                    log.flush()
                    if tb is not None:
                        tb.add_scalar("loss", mean, self.step)
                if progress is not None:
                    progress(self.step, cfg.steps, metrics)
                timed_out = cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes
                if acc.is_main_process and (self.step % cfg.checkpoint_every == 0 or timed_out):
                    self.save()
                if timed_out:
                    break
        finally:
            log.close()
            if tb is not None:
                tb.close()
        if acc.is_main_process and self.step % cfg.checkpoint_every != 0:
            self.save()
        return {"steps": self.step, "final_loss": sum(history[-50:]) / max(1, len(history[-50:])),
                "minutes": (time.time() - t0) / 60}

    def apply_ema(self) -> None:
        """Copy the EMA weights into the model (what gets shipped)."""
        self.ema.copy_to(self.params)


def _allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients across processes (data parallel without wrapping the composite model in DDP)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional ([train] extra)
        return None
    return SummaryWriter(str(path))

