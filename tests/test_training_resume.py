"""Training: exact resume, atomic checkpoints, a killed run leaves a loadable checkpoint, CLI end to end."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dhumandiff.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from dhumandiff.training.config import TrainConfig
from dhumandiff.training.trainer import DiffusionTrainer

from training_fixtures import random_tiny, small_world, tensors_for


def _losses(path: Path) -> list[float]:
    with open(path / "metrics.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("w"))


def _trainer(world, out, steps, **kw):
    model = random_tiny(seed=0)
    data = tensors_for(model, world)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=3, log_every=1, warmup_steps=2,
                      seed=1, **kw)
    return DiffusionTrainer(model, data, cfg, out)


def test_resume_continues_with_the_same_loss_curve(world, tmp_path):
    full = _trainer(world, tmp_path / "full", steps=6)
    full.train()
    first = _trainer(world, tmp_path / "split", steps=6)
    first.train(until=3)  # an interrupted run: same config, stopped at step 3
    second = _trainer(world, tmp_path / "split", steps=6)
    assert second.resume() == 3
    second.train()
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7), f"resumed curve differs: {a} vs {b}"
    wa = full.modules.state_dict()
    wb = second.modules.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_checkpoints_are_complete_folders_and_rotate(world, tmp_path):
    t = _trainer(world, tmp_path / "run", steps=9, keep_checkpoints=2)
    t.train()
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-6", "checkpoint-9"]
    weights, ema, opt, state = load_checkpoint(ckpts[-1])
    assert state["step"] == 9 and ema and "optimizer" in opt and weights


KILL_SCRIPT = r"""
import sys, time
sys.path.insert(0, {tests!r})
from training_fixtures import random_tiny, tensors_for
from dhumandiff.training.config import TrainConfig
from dhumandiff.training.trainer import DiffusionTrainer
from pathlib import Path
model = random_tiny()
data = tensors_for(model, Path({world!r}))
cfg = TrainConfig(steps=10_000, batch_size=4, checkpoint_every=2, log_every=1, warmup_steps=2)
t = DiffusionTrainer(model, data, cfg, Path({out!r}))
t.train(progress=lambda s, n, m: print("step", s, flush=True))
"""


def test_sigkill_midway_leaves_the_last_checkpoint_loadable(world, tmp_path):
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), world=str(world), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1]) >= 7:
                break
            assert time.time() < deadline, "training did not start in time"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None
    weights, _, _, state = load_checkpoint(ckpt)
    assert state["step"] >= 6 and weights
    # a resumed trainer picks it up
    t = _trainer(world, out, steps=state["step"] + 1)
    assert t.resume() == state["step"]
