"""Consistency distillation: the student trains, saves as a CFG-free LCM model and samples in 1/2/4 steps."""

import numpy as np
import torch

from dhumandiff.distill.consistency import ConsistencyConfig, ConsistencyDistiller, boundary_scalings
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.face_inputs import FaceInput
from dhumandiff.model.sampler import ReferenceSampler
from dhumandiff.utils.prompt import person_positions
from dhumandiff.utils.regions import default_boxes

from training_fixtures import random_tiny, small_world, tensors_for


def test_boundary_scalings_match_diffusers_lcm():
    from diffusers import LCMScheduler

    sched = LCMScheduler(timestep_scaling=10.0)
    for t in (0, 19, 259, 999):
        ref = sched.get_scalings_for_boundary_condition_discrete(t)
        got = boundary_scalings(torch.tensor([t]))
        assert abs(float(got[0]) - ref[0]) < 1e-6 and abs(float(got[1]) - ref[1]) < 1e-6


def test_consistency_distillation_produces_a_few_step_student(tmp_path):
    world = small_world(tmp_path, count=12)
    teacher = random_tiny()
    data = tensors_for(teacher, world)
    d = ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=3, batch_size=2, lr=1e-3))
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    report = d.train()
    assert report["steps"] == 3 and np.isfinite(report["final_loss"])
    changed = sum(not torch.equal(before[k], v) for k, v in d.student.state_dict().items())
    assert changed > 0, "the student did not learn"
    student = d.student_model()
    assert student.config.defaults["sampler"] == "lcm" and student.config.defaults["guidance_scale"] == 1.0
    path = student.save_pretrained(tmp_path / "student")
    loaded = DHumanDiff.from_pretrained(path)
    ids, pos = person_positions(loaded.tokenizer.backend_tokenizer, "a man and a woman on the beach")
    rng = np.random.default_rng(0)
    faces = tuple(FaceInput(np.zeros((112, 112, 3), np.uint8), rng.standard_normal(512).astype(np.float32),
                            rng.standard_normal((3, 56, 56)).astype(np.float32), (0, 0, 112, 112)) for _ in range(2))
    sampler = ReferenceSampler(loaded)
    for steps in (1, 2, 4):
        out = sampler.sample(faces, torch.from_numpy(ids)[None], torch.from_numpy(pos)[None], default_boxes(),
                             steps=steps, seed=0, guidance=1.0, sampler="lcm")
        assert out.unet_passes == steps, "a CFG-free student runs one batch-1 UNet pass per step"
        assert torch.isfinite(out.image).all()
