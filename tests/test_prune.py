"""BK-SDM-style pruned students: the cuts, the teacher initialisation, distillation, and export of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from dhumandiff.distill.block_prune import PruneConfig, PruneDistiller, matched_stages
from dhumandiff.errors import DHumanDiffError
from dhumandiff.model.attention import install_dual_processors
from dhumandiff.model.configs import get_backbone_config
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.pruning import init_from_teacher, prune_model, pruned_unet_config, teacher_key

from training_fixtures import random_tiny, small_world, tensors_for


def _count(unet: UNet2DConditionModel, part: str) -> int:
    return sum(len(getattr(b, part, None) or []) for b in (*unet.down_blocks, *unet.up_blocks))


def test_sd15_cuts_follow_bk_sdm():
    sd15 = get_backbone_config("sd15").unet
    base = pruned_unet_config(sd15, "base")
    small = pruned_unet_config(sd15, "small")
    tiny = pruned_unet_config(sd15, "tiny")
    assert base["layers_per_block"] == 1 and base.get("mid_block_type", "x") is not None
    assert small["layers_per_block"] == 1 and small["mid_block_type"] is None
    assert tiny["block_out_channels"] == [320, 640, 1280] and tiny["mid_block_type"] is None
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    assert tiny["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    # BK-SDM's parameter counts (UNet without the identity processors): base 0.58 B, small 0.49 B, tiny 0.33 B
    # against SD1.5's 0.86 B; the same cuts here give the same sizes within a few percent
    counts = {}
    for k, c in (("base", base), ("small", small), ("tiny", tiny)):
        with torch.device("meta"):  # shapes only: no memory, no random init
            counts[k] = sum(p.numel() for p in UNet2DConditionModel(**c).parameters()) / 1e9
    assert abs(counts["base"] - 0.58) < 0.03 and abs(counts["small"] - 0.49) < 0.03
    assert abs(counts["tiny"] - 0.33) < 0.03


def test_a_cut_that_removes_nothing_is_refused():
    tiny = get_backbone_config("tiny").unet  # one pair per stage already
    with pytest.raises(DHumanDiffError, match="removes nothing.*prune-small or prune-tiny"):
        pruned_unet_config(tiny, "base")
    with pytest.raises(DHumanDiffError, match="unknown pruning level"):
        pruned_unet_config(tiny, "huge")


@pytest.mark.parametrize("backbone", ["sd15-test", "xl-test"])
def test_sd15_and_xl_structures_prune_and_run(backbone):
    from dhumandiff.export.specs import get_spec

    teacher = DHumanDiff.from_backbone(backbone, seed=0).eval()
    student, report = prune_model(teacher, "small")
    assert student.unet.mid_block is None and not report.fresh and not report.partly
    spec = get_spec("unet", student)
    with torch.no_grad():
        out = spec.build(student).eval()(*spec.example(student, 2).values())
    assert torch.isfinite(out).all() and out.shape[0] == 2
    # xl-test's innermost stage is its only cross-attention stage: cutting it would drop the identity tokens
    if backbone == "xl-test":
        with pytest.raises(DHumanDiffError, match="no cross-attention"):
            prune_model(teacher, "tiny")
    assert get_backbone_config(f"{backbone}-prune-small").unet["mid_block_type"] is None


def test_up_blocks_drop_their_middle_pair_and_keep_the_skip_pairing():
    teacher = {"down_block_types": ["CrossAttnDownBlock2D"] * 2, "up_block_types": ["CrossAttnUpBlock2D"] * 2,
               "layers_per_block": 2}
    student = pruned_unet_config(teacher, "base")
    assert teacher_key("up_blocks.1.resnets.0.conv1.weight", teacher, student) == "up_blocks.1.resnets.0.conv1.weight"
    assert teacher_key("up_blocks.1.resnets.1.conv1.weight", teacher, student) == "up_blocks.1.resnets.2.conv1.weight"
    assert teacher_key("up_blocks.0.attentions.1.proj_in.weight", teacher, student) == \
        "up_blocks.0.attentions.2.proj_in.weight"
    assert teacher_key("down_blocks.1.resnets.0.conv1.weight", teacher, student) == "down_blocks.1.resnets.0.conv1.weight"
    cut = pruned_unet_config(teacher, "tiny")  # the innermost up block is gone: indices shift by one
    assert teacher_key("up_blocks.0.upsamplers.0.conv.weight", teacher, cut) == "up_blocks.1.upsamplers.0.conv.weight"


def test_base_cut_of_a_two_pair_unet_copies_every_tensor():
    cfg = dict(get_backbone_config("tiny").unet, layers_per_block=2)
    teacher = UNet2DConditionModel(**cfg)
    install_dual_processors(teacher, 77, 16)
    student = UNet2DConditionModel(**pruned_unet_config(dict(teacher.config), "base"))
    install_dual_processors(student, 77, 16)
    report = init_from_teacher(student, teacher, "base")
    assert not report.fresh and not report.partly, "every kept tensor has an exact teacher counterpart"
    assert _count(student, "resnets") == 3 * 1 + 3 * 2 and _count(teacher, "resnets") == 3 * 2 + 3 * 3
    t = teacher.state_dict()
    s = student.state_dict()
    key = "up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor.to_k_ip2.weight"
    assert torch.equal(s[key], t[key.replace("attentions.1", "attentions.2")]), "identity K/V follow their layer"


def test_tiny_cut_keeps_the_dual_processors_and_aligns_the_skip_channels():
    teacher = random_tiny()
    student, report = prune_model(teacher, "tiny")
    assert student.unet.mid_block is None and len(student.unet.down_blocks) == 2
    assert report.student_params < 0.3 * report.teacher_params
    assert not report.fresh
    # the first up block's first resnet takes [hidden | skip]: only the hidden part shrank (128 -> 64 channels)
    assert "up_blocks.0.resnets.0.conv1.weight" in report.partly
    s = student.unet.up_blocks[0].resnets[0].conv1.weight
    t = teacher.unet.up_blocks[1].resnets[0].conv1.weight
    assert s.shape[1] == 128 and t.shape[1] == 192
    assert torch.equal(s[:, 64:], t[:, 128:]), "the skip connection's channels come across unchanged"
    n_cross = sum(1 for name in student.unet.attn_processors if name.endswith("attn2.processor"))
    assert n_cross == len(student.ip_processors) // 2 == 2 * 1 + 2 * 2, "a dual processor per cross-attention"
    # the student shares everything but the UNet with the teacher, and says where it came from
    assert student.text_encoder is teacher.text_encoder and student.vae is teacher.vae
    assert student.config.defaults["pruned_level"] == "tiny"
    assert student.config.unet["mid_block_type"] is None


def test_prune_distillation_trains_saves_and_samples(tmp_path):
    from dhumandiff.model.face_inputs import FaceInput
    from dhumandiff.model.sampler import ReferenceSampler
    from dhumandiff.utils.prompt import person_positions
    from dhumandiff.utils.regions import default_boxes

    world = small_world(tmp_path, count=12)
    teacher = random_tiny()
    data = tensors_for(teacher, world)
    d = PruneDistiller(teacher, data, PruneConfig(level="tiny", steps=3, batch_size=2, lr=1e-3,
                                                  identity_loss_weight=0.05))
    assert ("up_blocks.0", "up_blocks.1") in matched_stages(teacher.unet, d.model.unet)
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    report = d.train()
    assert report["steps"] == 3 and np.isfinite(report["final_loss"])
    assert sum(not torch.equal(before[k], v) for k, v in d.student.state_dict().items()) > 0, "the student learnt"
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.unet.state_dict().items()), "teacher frozen"
    path = d.student_model().save_pretrained(tmp_path / "student")
    loaded = DHumanDiff.from_pretrained(path)
    assert loaded.unet.mid_block is None and len(loaded.unet.down_blocks) == 2
    for k, v in d.model.ip_state_dict().items():
        assert torch.equal(v, loaded.ip_state_dict()[k]), "the student's identity K/V are saved with it"
    # a second run continues from this student (--init-student), and refuses another cut's student
    d2 = PruneDistiller(teacher, data, PruneConfig(level="tiny", steps=1, batch_size=2, init_student=str(path)))
    saved = loaded.unet.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in d2.model.unet.state_dict().items())
    with pytest.raises(DHumanDiffError, match="not a prune-small student"):
        PruneDistiller(teacher, data, PruneConfig(level="small", steps=1, batch_size=2, init_student=str(path)))
    ids, pos = person_positions(loaded.tokenizer.backend_tokenizer, "a man and a woman on the beach")
    rng = np.random.default_rng(0)
    faces = tuple(FaceInput(np.zeros((112, 112, 3), np.uint8), rng.standard_normal(512).astype(np.float32),
                            rng.standard_normal((3, 56, 56)).astype(np.float32), (0, 0, 112, 112)) for _ in range(2))
    out = ReferenceSampler(loaded).sample(faces, torch.from_numpy(ids)[None], torch.from_numpy(pos)[None],
                                          default_boxes(), steps=2, seed=0, guidance=3.0)
    assert torch.isfinite(out.image).all()


def test_pruned_unet_exports_and_matches_torch(tmp_path):
    """No mid block, fewer stages: still the contract's UNet graph (ONNX here; benchmarks/pruned_students.py
    runs the same student through OpenVINO bundles too)."""
    from dhumandiff.export import onnx_export
    from dhumandiff.export.artifacts import GraphJob
    from dhumandiff.export.specs import get_spec

    student, _ = prune_model(random_tiny(), "tiny")
    spec = get_spec("unet")
    module = spec.build(student).eval()
    example = spec.example(student, 2, seed=3)
    with torch.no_grad():
        ref = module(*example.values()).numpy()
    for backend in (onnx_export,):
        out = tmp_path / backend.__name__.rsplit(".", 1)[1]
        job = GraphJob("unet", module, tuple(example), spec.outputs, example, {}, out, "fp32")
        with torch.no_grad():
            files = backend.export(job)
        got = backend.run(out, files, {k: v.numpy() for k, v in example.items()}, spec.outputs)["noise_pred"]
        assert np.abs(got - ref).max() <= 1e-4, backend.__name__


def test_the_shipped_pruned_student_is_a_smaller_four_step_student():
    """``tiny-pruned`` (BENCHMARKS.md "Pruned students"): the prune-tiny cut of ``tiny-lcm``, shipped as its UNet
    and identity K/V beside ``tiny``; it generates with the LCM sampler in 4 CFG-free steps."""
    from dhumandiff.model.generate import generate_portrait, load_model

    pruned, full = load_model("tiny-pruned"), load_model("tiny-lcm")
    assert pruned.unet.mid_block is None and len(pruned.unet.down_blocks) == len(full.unet.down_blocks) - 1
    n_pruned = sum(p.numel() for p in pruned.unet.parameters())
    assert n_pruned < 0.25 * sum(p.numel() for p in full.unet.parameters())
    assert pruned.config.defaults["sampler"] == "lcm" and pruned.config.defaults["guidance_scale"] == 1.0
    assert pruned.config.defaults["pruned_level"] == "tiny"
    faces = [Path(__file__).resolve().parents[1] / "examples" / f"face_{x}.png" for x in "ab"]
    out = generate_portrait(pruned, *faces, "a man and a woman on the beach", seed=0)
    assert out.unet_passes == 4 and np.asarray(out.image).std() > 10, "a picture, not a flat field"
