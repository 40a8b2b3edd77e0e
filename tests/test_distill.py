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
    for name in ("lcm", "tcd"):
        for steps in (1, 2, 4):
            out = sampler.sample(faces, torch.from_numpy(ids)[None], torch.from_numpy(pos)[None], default_boxes(),
                                 steps=steps, seed=0, guidance=1.0, sampler=name)
            assert out.unet_passes == steps, "a CFG-free student runs one batch-1 UNet pass per step"
            assert torch.isfinite(out.image).all()

    # a second distillation continues from this student (--init-student), not from the teacher's UNet
    d2 = ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=1, batch_size=2, init_student=str(path)))
    saved = loaded.unet.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in d2.student.unet.state_dict().items())
    assert all(torch.equal(v, saved[k]) for k, v in d2.target.unet.state_dict().items()), "EMA target too"
    assert any(not torch.equal(v, saved[k]) for k, v in teacher.unet.state_dict().items())
    import pytest

    from dhumandiff.errors import DHumanDiffError

    teacher_dir = teacher.save_pretrained(tmp_path / "teacher")
    with pytest.raises(DHumanDiffError, match="not a distilled student"):
        ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=1, batch_size=2, init_student=str(teacher_dir)))


def test_lora_student_trains_only_adapters_and_fuses_into_a_plain_unet(tmp_path):
    from dhumandiff.distill.lora import has_lora

    world = small_world(tmp_path, count=12)
    teacher = random_tiny()
    data = tensors_for(teacher, world)
    d = ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=3, batch_size=2, lr=1e-2, lora_rank=4,
                                                              ema_decay=0.0))
    assert d.params and all("lora_" in n for n, p in d.student.named_parameters() if p.requires_grad)
    base_before = {k: v.clone() for k, v in d.student.state_dict().items() if "lora_" not in k}
    d.train()
    base_after = {k: v for k, v in d.student.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "LoRA must not touch the base"
    student = d.student_model()
    assert not has_lora(student.unet)
    assert set(student.unet.state_dict()) == set(teacher.unet.state_dict()), "fused UNet keeps the plain keys"
    changed = [k for k, v in student.unet.state_dict().items() if not torch.equal(v, teacher.unet.state_dict()[k])]
    assert changed, "the fused adapter changed no weight"
    # the fused UNet computes what base + adapter computed
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500.0])
    cond = d._conditions(torch.tensor([0]), torch.Generator().manual_seed(0))
    args = (x, t, cond["ctx"], cond["ip"], cond["mask"], 1.0, cond["pooled"], cond["time_ids"])
    with torch.no_grad():
        assert torch.allclose(student.identity_unet(*args), d.target(*args), atol=1e-4)
    d.save_adapter(tmp_path / "lora")
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert sd and all("lora" in k for k in sd)


def test_cascade_folding_learns_the_cascade_teachers_mixed_prediction(tmp_path):
    from dhumandiff.distill.cascade_fold import CascadeFoldConfig, CascadeFolder

    world = small_world(tmp_path, count=12)
    teacher = random_tiny()
    data = tensors_for(teacher, world)
    cfg = CascadeFoldConfig(steps=30, batch_size=6, lr=5e-5, stage1_steps=3, mask_records=6, mask_batch=4)
    folder = CascadeFolder(teacher, data, cfg)
    masks = folder.compute_masks()
    kept = masks[folder.records]
    # the cascade keeps the top 10 % of each image's attention map
    share = kept.flatten(1).mean(1)
    assert torch.all((share >= 0.09) & (share <= 0.35)), share
    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(float(folder.loss(torch.Generator().manual_seed(100 + k))) for k in range(4)) / 4

    before = held_out_loss()
    report = folder.train()
    after = held_out_loss()
    assert report["steps"] == 30 and after < 0.8 * before, (before, after)
    student = folder.student_model()
    assert student.config.defaults["folded_from"] == "cascade"


def test_student_identity_loss_adds_a_face_term(tmp_path):
    world = small_world(tmp_path, count=12)
    teacher = random_tiny()
    data = tensors_for(teacher, world)
    plain = ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=1, batch_size=2))
    withid = ConsistencyDistiller(teacher, data, ConsistencyConfig(steps=1, batch_size=2, identity_loss_weight=1.0))
    a = float(plain.loss(torch.Generator().manual_seed(5)))
    b = float(withid.loss(torch.Generator().manual_seed(5)))
    # 1 - cos of a random student's faces against the references is well above 0
    assert b > a + 0.05, (a, b)
