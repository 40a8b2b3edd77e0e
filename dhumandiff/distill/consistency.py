"""Few-step students by latent consistency distillation (LCM-style), with classifier-free guidance folded in.

The student starts as a copy of the teacher's UNet and learns to map any point of a teacher ODE trajectory to its
end point in one evaluation. Following the LCM recipe (docs/design.md 5): a skipping-step DDIM teacher solver over 50
timesteps (k = 1000/50), the teacher's two CFG branches combined with a fixed guidance scale ``w`` (so the student
runs at batch 1 with no CFG), LCM's boundary scalings ``c_skip``/``c_out`` (timestep scaling 10, sigma_data 0.5), a
pseudo-Huber loss (c = 0.001) and an EMA target network (decay 0.95). One trained student serves 1, 2 and 4 steps
through diffusers' ``LCMScheduler``, whose boundary scalings are the same formulas.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from diffusers import DDPMScheduler

from ..model.dhumandiff_model import DHumanDiff
from ..training.objectives import identity_loss
from ..training.tensors import TrainingTensors, empty_prompt_ids
from ..utils.regions import region_mask
from .conditions import batch_conditions
from .loop import mean_of, optimise
from .lora import add_lora, fuse_lora, has_lora, save_lora


@dataclass
class ConsistencyConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    guidance_scale: float = 3.0
    num_ddim_timesteps: int = 50
    ema_decay: float = 0.95
    huber_c: float = 0.001
    timestep_scaling: float = 10.0
    seed: int = 0
    max_minutes: float | None = None
    lora_rank: int = 0     # > 0: train a LoRA adapter of this rank on the frozen UNet (fused into it at the end)
    # Identity loss on the student's one-step output (its clean-image estimate), as in the training objective:
    # the student is judged on faces too, not only on matching the teacher's trajectory.
    identity_loss_weight: float = 0.0
    identity_loss_batch: int = 4
    # Continue an earlier distillation: the student and its EMA target start from this student model's UNet
    # (a folder written by ``dhumandiff distill``; same architecture as the teacher's) instead of the teacher's.
    init_student: str | None = None


def boundary_scalings(t: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """LCM's ``(c_skip, c_out)`` at integer timesteps ``t`` (diffusers' LCMScheduler uses the same formulas)."""
    s = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / (s**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _student_unet_weights(folder: str, teacher: DHumanDiff) -> dict[str, torch.Tensor]:
    """The UNet weights of an earlier student, checked against the teacher's architecture."""
    from ..errors import DHumanDiffError
    from ..model.registry import resolve_model

    earlier = DHumanDiff.from_pretrained(resolve_model(folder))
    if not earlier.config.defaults.get("distilled_from"):
        raise DHumanDiffError(f"--init-student {folder} is not a distilled student (no 'distilled_from' in its "
                              f"config): pass a folder written by `dhumandiff distill`")
    state = earlier.unet.state_dict()
    mine = teacher.unet.state_dict()
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise DHumanDiffError(f"--init-student {folder} has another UNet architecture than the teacher's: "
                              f"distil it from the same teacher")
    return state


def _expand(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 1, 1, 1)


class ConsistencyDistiller:
    """Distils a trained :class:`DHumanDiff` into a CFG-free few-step student UNet."""

    def __init__(self, teacher: DHumanDiff, data: TrainingTensors, config: ConsistencyConfig) -> None:
        if data.latents is None:
            raise ValueError("encode latents first (training.tensors.encode_latents)")
        self.cfg = config
        self.data = data
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        sched_cfg = {k: v for k, v in teacher.config.scheduler.items() if not k.startswith("_")}
        self.noise_sched = DDPMScheduler.from_config(sched_cfg)
        self.pred_type = self.noise_sched.config.prediction_type
        ac = self.noise_sched.alphas_cumprod
        self.alpha = ac.sqrt()
        self.sigma = (1 - ac).sqrt()
        n_train = self.noise_sched.config.num_train_timesteps
        self.k = n_train // config.num_ddim_timesteps
        # DDIM solver timesteps k-1, 2k-1, ..., n_train-1 (the LCM example's convention)
        self.ddim_t = (torch.arange(1, config.num_ddim_timesteps + 1) * self.k - 1).long()
        # the student: a deep copy of the teacher's UNet (same processors), trained; its EMA copy is the target
        self.student = copy.deepcopy(teacher.identity_unet).train()
        if config.init_student:
            self.student.unet.load_state_dict(_student_unet_weights(config.init_student, teacher))
        if config.lora_rank > 0:
            self.params = add_lora(self.student.unet, config.lora_rank, seed=config.seed)
        else:
            for p in self.student.parameters():
                p.requires_grad_(True)
            self.params = list(self.student.parameters())
        self.target = copy.deepcopy(self.student).eval()
        # the EMA target follows only what trains (all weights, or just the LoRA factors)
        self._ema_pairs = [(pt, ps) for pt, ps in zip(self.target.parameters(), self.student.parameters())
                           if ps.requires_grad]
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        h, w = data.latents.shape[-2:]
        self.masks = torch.from_numpy(region_mask(data.boxes.numpy(), h, w))
        self.scaling = float(teacher.vae.config.scaling_factor)
        self.uncond_ids = empty_prompt_ids(teacher)
        self.step = 0

    # --------------------------------------------------------------------------------------------- helpers
    def _x0_eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = _expand(self.alpha[t]), _expand(self.sigma[t])
        if self.pred_type == "v_prediction":
            return a * x - s * out, s * x + a * out
        if self.pred_type == "epsilon":
            return (x - s * out) / a, out
        return out, (x - a * out) / s  # "sample"

    def _student_denoise(self, net, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        out = net(x, t.float(), cond["ctx"], cond["ip"], cond["mask"], 1.0, cond["pooled"], cond["time_ids"])
        x0, _ = self._x0_eps(out, x, t)
        c_skip, c_out = boundary_scalings(t, self.cfg.timestep_scaling)
        return _expand(c_skip) * x + _expand(c_out) * x0

    def _conditions(self, idx: torch.Tensor, g: torch.Generator) -> dict:
        views = torch.randint(0, self.data.view_feats.shape[1], (idx.shape[0], 2), generator=g)
        return batch_conditions(self.teacher, self.data, idx, views, self.uncond_ids, self.masks)

    # --------------------------------------------------------------------------------------------- step
    def loss(self, g: torch.Generator) -> torch.Tensor:
        cfg, d = self.cfg, self.data
        idx = torch.randint(0, len(d), (cfg.batch_size,), generator=g)
        x0 = d.latents[idx] * self.scaling
        noise = torch.randn(x0.shape, generator=g)
        n = torch.randint(1, cfg.num_ddim_timesteps, (cfg.batch_size,), generator=g)
        t_start, t_prev = self.ddim_t[n], self.ddim_t[n - 1]
        x_t = _expand(self.alpha[t_start]) * x0 + _expand(self.sigma[t_start]) * noise
        cond = self._conditions(idx, g)
        pred = self._student_denoise(self.student, x_t, t_start, cond)
        with torch.no_grad():
            tu = self.teacher.identity_unet
            b = x_t.shape[0]
            two = torch.cat([x_t, x_t])
            out = tu(two, torch.cat([t_start, t_start]).float(), torch.cat([cond["uctx"], cond["ctx"]]),
                     torch.cat([torch.zeros_like(cond["ip"]), cond["ip"]]), torch.cat([cond["mask"], cond["mask"]]),
                     1.0, None if cond["pooled"] is None else torch.cat([cond["upooled"], cond["pooled"]]),
                     self.teacher.time_ids(2 * b))
            u, c = out.chunk(2)
            guided = u + cfg.guidance_scale * (c - u)
            x0_t, eps_t = self._x0_eps(guided, x_t, t_start)
            x_prev = _expand(self.alpha[t_prev]) * x0_t + _expand(self.sigma[t_prev]) * eps_t  # DDIM step
            target = self._student_denoise(self.target, x_prev, t_prev, cond)
        loss = torch.mean(torch.sqrt((pred.float() - target.float()) ** 2 + cfg.huber_c**2) - cfg.huber_c)
        if cfg.identity_loss_weight > 0 and self.teacher.identity_encoder is not None:
            n = min(cfg.identity_loss_batch, cfg.batch_size)
            images = self.teacher.vae.decode(pred[:n] / self.scaling).sample
            reference = d.view_embeds[d.person_ids[idx[:n]]].mean(2)
            ident = identity_loss(self.teacher.identity_encoder, images, d.face_boxes[idx[:n]], reference,
                                  torch.ones(n, 2))
            loss = loss + cfg.identity_loss_weight * ident
        return loss

    @torch.enable_grad()
    def train(self, progress: Callable[[int, int, dict], None] | None = None) -> dict:
        cfg = self.cfg

        @torch.no_grad()
        def ema() -> None:
            for pt, ps in self._ema_pairs:
                pt.mul_(cfg.ema_decay).add_(ps.detach(), alpha=1 - cfg.ema_decay)

        hist, minutes = optimise(self, progress, after_step=ema)
        return {"steps": self.step, "final_loss": mean_of(hist[-50:]), "minutes": minutes, "config": asdict(cfg)}

    def student_model(self) -> DHumanDiff:
        """The teacher's model folder contents with the student's UNet (the target/EMA network) swapped in.

        Defaults become the LCM sampler at 4 steps with no CFG (``guidance_scale`` 1.0 -> batch-1 UNet).
        """
        student = copy.deepcopy(self.teacher)
        unet = self.target.unet
        if has_lora(unet):  # fuse into a copy: exporters must see a plain UNet with the usual keys
            unet = fuse_lora(copy.deepcopy(unet))
        student.unet.load_state_dict(unet.state_dict())
        student.config.scheduler = {**student.config.scheduler, "_class_name": "LCMScheduler"}
        student.config.defaults = {**student.config.defaults, "steps": 4, "guidance_scale": 1.0, "sampler": "lcm",
                                   "ip_scale": 1.0, "distilled_from": student.config.name,
                                   "distill_guidance": self.cfg.guidance_scale,
                                   "lora_rank": self.cfg.lora_rank}
        return student

    def save_adapter(self, folder) -> None:
        """The un-fused LoRA adapter in diffusers' format (only for ``lora_rank > 0``)."""
        if not has_lora(self.target.unet):
            raise ValueError("this student was trained without LoRA")
        save_lora(self.target.unet, folder)
