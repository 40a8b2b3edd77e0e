"""Cascade folding: a single-pass UNet (layout masks) trained to reproduce the cascade teacher's predictions.

The paper's cascade costs, per step, two conditional evaluations (IP scale 1.0 and 0.7, mixed by a mask read from
stage 1's attention) after a whole stage-1 run. The folded student makes ONE conditional evaluation with the
layout's region masks and learns to output what the cascade would::

    target(x_t, t) = M * eps_teacher(x_t, t; ip 1.0) + (1 - M) * eps_teacher(x_t, t; ip 0.7)

where ``M`` is the stage-1 attention mask of that record (computed once per record by a real stage-1 run from a
fixed noise, with the teacher's sampler and CFG). The unconditional branch carries no identity tokens, so it is
the same for teacher and student and needs no training: matching the conditional branch folds the whole cascade.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..model.attention import AttentionStore
from ..model.cascade_mask import attention_mass_mask
from ..model.dhumandiff_model import DHumanDiff
from ..model.sampler import ReferenceSampler, make_scheduler
from ..training.tensors import TrainingTensors, empty_prompt_ids
from ..utils.regions import region_mask
from .conditions import batch_conditions
from .loop import mean_of, optimise
from .lora import add_lora, fuse_lora, has_lora


@dataclass
class CascadeFoldConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-5
    stage1_steps: int = 20          # teacher's stage-1 sampling steps when computing the masks
    guidance_scale: float = 3.0     # CFG of the teacher's stage 1 (as the cascade runs it)
    mask_records: int = 256         # training records whose cascade masks are computed (and trained on)
    mask_batch: int = 32
    lora_rank: int = 0
    seed: int = 0
    max_minutes: float | None = None


class CascadeFolder:
    """Trains a single-pass student UNet on the cascade teacher's mixed predictions."""

    def __init__(self, teacher: DHumanDiff, data: TrainingTensors, config: CascadeFoldConfig) -> None:
        if data.latents is None:
            raise ValueError("encode latents first (training.tensors.encode_latents)")
        self.teacher, self.data, self.cfg = teacher.eval(), data, config
        for p in teacher.parameters():
            p.requires_grad_(False)
        sched_cfg = {k: v for k, v in teacher.config.scheduler.items() if not k.startswith("_")}
        self.noise_sched = DDPMScheduler.from_config(sched_cfg)
        h, w = data.latents.shape[-2:]
        self.layout = torch.from_numpy(region_mask(data.boxes.numpy(), h, w))
        self.uncond_ids = empty_prompt_ids(teacher)
        self.scaling = float(teacher.vae.config.scaling_factor)
        g = torch.Generator().manual_seed(config.seed)
        n = min(config.mask_records, len(data))
        self.records = torch.randperm(len(data), generator=g)[:n]
        self.views = torch.zeros(len(data), 2, dtype=torch.long)   # the view each cached mask was computed with
        self.cascade_masks: torch.Tensor | None = None
        self.student = copy.deepcopy(teacher.identity_unet).train()
        if config.lora_rank > 0:
            self.params = add_lora(self.student.unet, config.lora_rank, seed=config.seed)
        else:
            for p in self.student.parameters():
                p.requires_grad_(True)
            self.params = list(self.student.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.step = 0

    def _conditions(self, idx: torch.Tensor) -> dict:
        return batch_conditions(self.teacher, self.data, idx, self.views[idx], self.uncond_ids, self.layout)

    @torch.no_grad()
    def compute_masks(self, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Run the teacher's stage 1 (IP 0.7, no masks, CFG) per record; keep its last-step attention mask."""
        cfg, tu = self.cfg, self.teacher.identity_unet
        h, w = self.data.latents.shape[-2:]
        out = torch.zeros(len(self.data), 1, h, w)
        chunks = self.records.split(cfg.mask_batch)
        for k, idx in enumerate(chunks):
            b = idx.shape[0]
            cond = self._conditions(idx)
            sched = make_scheduler(self.teacher, "ddim")
            sched.set_timesteps(cfg.stage1_steps)
            noise = torch.randn((b, 4, h, w), generator=torch.Generator().manual_seed(cfg.seed + 7919 * k))
            latents = noise * sched.init_noise_sigma
            store = AttentionStore()
            for i, t in enumerate(sched.timesteps):
                last = i == len(sched.timesteps) - 1
                x = sched.scale_model_input(latents, t)
                eps = tu(torch.cat([x, x]), torch.full((2 * b,), float(t)), torch.cat([cond["uctx"], cond["ctx"]]),
                         torch.cat([torch.zeros_like(cond["ip"]), cond["ip"]]), None, 0.7,
                         None if cond["pooled"] is None else torch.cat([cond["upooled"], cond["pooled"]]),
                         self.teacher.time_ids(2 * b), attn_store=store if last else None)
                u, c = eps.chunk(2)
                latents = sched.step(u + cfg.guidance_scale * (c - u), t, latents).prev_sample
            out[idx] = attention_mass_mask(list(store), h, w, per_pass=2)
            if progress:
                progress(k + 1, len(chunks))
        self.cascade_masks = out
        return out

    def loss(self, g: torch.Generator) -> torch.Tensor:
        cfg, d = self.cfg, self.data
        idx = self.records[torch.randint(0, len(self.records), (cfg.batch_size,), generator=g)]
        x0 = d.latents[idx] * self.scaling
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        x_t = self.noise_sched.add_noise(x0, noise, t)
        cond = self._conditions(idx)
        tu = self.teacher.identity_unet
        args = (x_t, t.float(), cond["ctx"], cond["ip"])
        with torch.no_grad():
            hi = tu(*args, None, 1.0, cond["pooled"], cond["time_ids"])
            lo = tu(*args, None, 0.7, cond["pooled"], cond["time_ids"])
            m = self.cascade_masks[idx]
            target = m * hi + (1 - m) * lo
        pred = self.student(*args, cond["mask"], 1.0, cond["pooled"], cond["time_ids"])
        return F.mse_loss(pred.float(), target.float())

    @torch.enable_grad()
    def train(self, progress: Callable[[int, int, dict], None] | None = None) -> dict:
        cfg = self.cfg
        if self.cascade_masks is None:
            self.compute_masks()
        hist, minutes = optimise(self, progress)
        return {"steps": self.step, "first_loss": mean_of(hist[:20]), "final_loss": mean_of(hist[-50:]),
                "minutes": minutes,
                "config": asdict(cfg)}

    def student_model(self) -> DHumanDiff:
        """The teacher with the folded UNet: runs in ``single`` mode, one conditional pass per step."""
        student = copy.deepcopy(self.teacher)
        unet = self.student.unet
        if has_lora(unet):
            unet = fuse_lora(copy.deepcopy(unet))
        student.unet.load_state_dict(unet.state_dict())
        student.config.defaults = {**student.config.defaults, "mode": "single", "folded_from": "cascade",
                                   "distilled_from": student.config.name}
        return student
