"""Pruned students (BK-SDM's recipe) for the identity-conditioned UNet: cut blocks, then distil them back.

The student is the teacher's UNet with whole blocks removed (``model/pruning.py``: ``base`` / ``small`` /
``tiny``), initialised from the teacher's weights, dual-attention processors and region masks intact. It learns
from the teacher with BK-SDM's two knowledge-distillation terms:

* output KD: MSE between the student's and the teacher's UNet outputs on the same noisy latents and conditioning;
* feature KD: MSE between the outputs of every stage the two still share (each down block's hidden states and
  each up block's, matched from the outside in; a stage whose output shape changed with the cut is skipped).

BK-SDM adds the denoising (task) loss; here the teacher is usually a few-step consistency student whose output
*is* the target the sampler needs, so matching it is the task (``task_loss_weight`` adds the v/epsilon loss to the
data for a full teacher). A CFG teacher's unconditional branch is learnt too (``uncond_prob`` of the samples use
the empty prompt and no identity tokens); a CFG-free student teacher is only ever run conditionally. Timesteps: half
of the samples at the teacher's own sampling timesteps (those its default sampler visits at 1, 2 and 4 steps),
half uniform over training time, so the student is best where it will be run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..model.dhumandiff_model import DHumanDiff
from ..model.pruning import prune_model
from ..model.sampler import make_scheduler
from ..training.objectives import identity_loss
from ..training.tensors import TrainingTensors, empty_prompt_ids
from ..utils.regions import region_mask
from .conditions import batch_conditions
from .loop import mean_of, optimise


@dataclass
class PruneConfig:
    level: str = "tiny"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    feature_loss_weight: float = 1.0
    task_loss_weight: float = 0.0      # > 0: BK-SDM's denoising loss on the data as well
    uncond_prob: float = 0.1           # for a CFG teacher: share of samples on the unconditional branch
    identity_loss_weight: float = 0.0  # identity loss on the student's clean-image estimate (as lcm's)
    identity_loss_batch: int = 4
    seed: int = 0
    max_minutes: float | None = None
    # Continue an earlier pruned student of the same teacher and level (a folder written by ``distill``).
    init_student: str | None = None


class _StageOutputs:
    """Forward hooks that keep the hidden states each down / up block returns."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        for kind in ("down_blocks", "up_blocks"):
            for i, block in enumerate(getattr(unet, kind)):
                self.handles.append(block.register_forward_hook(self._keep(f"{kind}.{i}")))

    def _keep(self, name: str):
        def hook(module, args, output):
            self.values[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def matched_stages(teacher: torch.nn.Module, student: torch.nn.Module) -> list[tuple[str, str]]:
    """(student block, teacher block) pairs compared by the feature loss: down blocks from the first, up blocks
    from the last (the cut removes the innermost ones)."""
    pairs = [(f"down_blocks.{i}", f"down_blocks.{i}") for i in range(len(student.down_blocks))]
    offset = len(teacher.up_blocks) - len(student.up_blocks)
    pairs += [(f"up_blocks.{i}", f"up_blocks.{i + offset}") for i in range(len(student.up_blocks))]
    return pairs


def sampling_timesteps(model: DHumanDiff, counts: tuple[int, ...] = (1, 2, 4)) -> torch.Tensor:
    """The timesteps the model's own default sampler visits at each of ``counts`` steps."""
    seen: set[int] = set()
    for n in counts:
        sched = make_scheduler(model, model.config.defaults.get("sampler", "ddim"))
        sched.set_timesteps(n)
        seen.update(int(t) for t in sched.timesteps)
    return torch.tensor(sorted(seen), dtype=torch.long)


def _earlier_student(folder: str, fresh: DHumanDiff) -> dict[str, torch.Tensor]:
    """The UNet (and processor) weights of an earlier pruned student, checked against this cut."""
    from ..errors import DHumanDiffError
    from ..model.registry import resolve_model

    earlier = DHumanDiff.from_pretrained(resolve_model(folder))
    level = fresh.config.defaults.get("pruned_level")
    if earlier.config.defaults.get("pruned_level") != level:
        raise DHumanDiffError(f"--init-student {folder} is not a prune-{level} student: pass a folder written by "
                              f"`dhumandiff distill --method prune-{level}` from the same teacher")
    state, mine = earlier.unet.state_dict(), fresh.unet.state_dict()
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise DHumanDiffError(f"--init-student {folder} has another UNet architecture than this cut of the teacher")
    return state


class PruneDistiller:
    """Distils ``teacher`` into a BK-SDM-pruned copy of itself."""

    def __init__(self, teacher: DHumanDiff, data: TrainingTensors, config: PruneConfig) -> None:
        if data.latents is None:
            raise ValueError("encode latents first (training.tensors.encode_latents)")
        self.cfg, self.data = config, data
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.model, self.init_report = prune_model(teacher, config.level)
        if config.init_student:
            self.model.unet.load_state_dict(_earlier_student(config.init_student, self.model))
        self.student = self.model.identity_unet.train()
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.params = list(self.student.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        sched_cfg = {k: v for k, v in teacher.config.scheduler.items() if not k.startswith("_")}
        noise = DDPMScheduler.from_config(sched_cfg)
        self.pred_type = noise.config.prediction_type
        ac = noise.alphas_cumprod
        self.alpha, self.sigma = ac.sqrt(), (1 - ac).sqrt()
        self.n_train = noise.config.num_train_timesteps
        self.own_t = sampling_timesteps(teacher)
        self.cfg_teacher = float(teacher.config.defaults.get("guidance_scale", 1.0)) > 1.0
        h, w = data.latents.shape[-2:]
        self.masks = torch.from_numpy(region_mask(data.boxes.numpy(), h, w))
        self.scaling = float(teacher.vae.config.scaling_factor)
        self.uncond_ids = empty_prompt_ids(teacher)
        self.pairs = matched_stages(teacher.unet, self.model.unet)
        self.t_hooks = _StageOutputs(teacher.unet)
        self.s_hooks = _StageOutputs(self.model.unet)
        self.step = 0

    def _timesteps(self, b: int, g: torch.Generator) -> torch.Tensor:
        uniform = torch.randint(0, self.n_train, (b,), generator=g)
        own = self.own_t[torch.randint(0, len(self.own_t), (b,), generator=g)]
        return torch.where(torch.rand(b, generator=g) < 0.5, own, uniform)

    def _x0(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
        if self.pred_type == "v_prediction":
            return a * x - s * out
        if self.pred_type == "epsilon":
            return (x - s * out) / a
        return out

    def loss(self, g: torch.Generator) -> torch.Tensor:
        cfg, d = self.cfg, self.data
        idx = torch.randint(0, len(d), (cfg.batch_size,), generator=g)
        views = torch.randint(0, d.view_feats.shape[1], (cfg.batch_size, 2), generator=g)
        cond = batch_conditions(self.teacher, d, idx, views, self.uncond_ids, self.masks)
        ctx, ip = cond["ctx"], cond["ip"]
        if self.cfg_teacher and cfg.uncond_prob > 0:
            drop = (torch.rand(cfg.batch_size, generator=g) < cfg.uncond_prob).view(-1, 1, 1)
            ctx = torch.where(drop, cond["uctx"], ctx)
            ip = torch.where(drop, torch.zeros_like(ip), ip)
        x0 = d.latents[idx] * self.scaling
        noise = torch.randn(x0.shape, generator=g)
        t = self._timesteps(cfg.batch_size, g)
        x_t = self.alpha[t].view(-1, 1, 1, 1) * x0 + self.sigma[t].view(-1, 1, 1, 1) * noise
        args = (x_t, t.float(), ctx, ip, cond["mask"], 1.0, cond["pooled"], cond["time_ids"])
        with torch.no_grad():
            target = self.teacher.identity_unet(*args)
        out = self.student(*args)
        loss = F.mse_loss(out.float(), target.float())
        if cfg.feature_loss_weight > 0:
            feats = [F.mse_loss(self.s_hooks.values[s].float(), self.t_hooks.values[t_].float())
                     for s, t_ in self.pairs if self.s_hooks.values[s].shape == self.t_hooks.values[t_].shape]
            if feats:
                loss = loss + cfg.feature_loss_weight * torch.stack(feats).sum()
        if cfg.task_loss_weight > 0:
            a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
            goal = {"v_prediction": a * noise - s * x0, "epsilon": noise}.get(self.pred_type, x0)
            loss = loss + cfg.task_loss_weight * F.mse_loss(out.float(), goal.float())
        if cfg.identity_loss_weight > 0 and self.teacher.identity_encoder is not None:
            n = min(cfg.identity_loss_batch, cfg.batch_size)
            images = self.teacher.vae.decode(self._x0(out[:n], x_t[:n], t[:n]) / self.scaling).sample
            reference = d.view_embeds[d.person_ids[idx[:n]]].mean(2)
            loss = loss + cfg.identity_loss_weight * identity_loss(
                self.teacher.identity_encoder, images, d.face_boxes[idx[:n]], reference, torch.ones(n, 2))
        return loss

    @torch.enable_grad()
    def train(self, progress: Callable[[int, int, dict], None] | None = None) -> dict:
        hist, minutes = optimise(self, progress)
        self.t_hooks.remove()
        self.s_hooks.remove()
        return {"steps": self.step, "final_loss": mean_of(hist[-50:]), "minutes": minutes,
                "config": asdict(self.cfg), "init": self.init_report.to_dict(),
                "feature_pairs": [list(p) for p in self.pairs]}

    def student_model(self) -> DHumanDiff:
        """The pruned model (UNet and processors trained; every other component the teacher's)."""
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model

