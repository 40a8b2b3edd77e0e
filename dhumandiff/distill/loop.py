"""The optimisation loop every distiller runs: seeded loss, clipped step, optional after-step hook, time limit.

One loop so that each student (cascade folding, consistency, ...) differs only in its loss: the batch drawn at
step ``n`` depends only on ``(seed, n)``, so a run continued with ``--init-student`` or resumed draws the same
batches it would have drawn uninterrupted.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import torch


class Distiller(Protocol):
    """What :func:`optimise` drives: a config with ``steps``, ``seed``, ``max_minutes``; params; optimiser."""

    cfg: Any
    step: int
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer

    def loss(self, generator: torch.Generator) -> torch.Tensor: ...


def optimise(trainer: Distiller, progress: Callable[[int, int, dict], None] | None = None,
             after_step: Callable[[], None] | None = None) -> tuple[list[float], float]:
    """Run ``trainer`` from its current step to ``cfg.steps`` (or ``cfg.max_minutes``); returns (losses, minutes)."""
    cfg = trainer.cfg
    t0 = time.time()
    hist: list[float] = []
    while trainer.step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + trainer.step * 7919)
        loss = trainer.loss(g)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
        trainer.opt.step()
        if after_step is not None:
            after_step()
        trainer.step += 1
        hist.append(float(loss.detach()))
        if progress is not None:
            progress(trainer.step, cfg.steps, {"loss": hist[-1]})
        if cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes:
            break
    return hist, (time.time() - t0) / 60


def mean_of(values: list[float]) -> float:
    """The mean of a (possibly empty) window of losses."""
    return sum(values) / max(1, len(values))
