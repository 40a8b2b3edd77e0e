"""The full objective's extra terms: identity loss through the real face encoder, region loss on attention maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dhumandiff.data.dataset import PairHumanDataset, crop_square
from dhumandiff.model.generate import load_model
from dhumandiff.training.config import TrainConfig
from dhumandiff.training.objectives import face_crop_grid, identity_loss, predicted_x0, region_loss
from dhumandiff.training.trainer import DiffusionTrainer
from training_fixtures import random_tiny, small_world, tensors_for


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("objectives"), count=12)


def test_face_crop_grid_matches_the_analyzers_square_crop(world):
    ds = PairHumanDataset(world, split=None, use_reference_faces=False, image_size=None)
    item = ds[0]
    img = item["pixel_values"][None]                      # native size, [-1, 1]
    h, w = img.shape[-2:]
    box = item["face_boxes"][0]
    ours = (face_crop_grid(img, box[None], size=56)[0] + 1) / 2
    pil = Image.fromarray(((img[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    px_box = [float(box[0]) * w, float(box[1]) * h, float(box[2]) * w, float(box[3]) * h]
    ref = torch.from_numpy(np.asarray(crop_square(pil, px_box, 56), dtype=np.float32) / 255).permute(2, 0, 1)
    # bilinear vs bicubic resampling differ a little; a misplaced crop differs a lot
    assert float((ours - ref).abs().mean()) < 0.06
    shifted = (face_crop_grid(img, (box + torch.tensor([0.2, 0.0, 0.2, 0.0]))[None], size=56)[0] + 1) / 2
    assert float((shifted - ref).abs().mean()) > 2 * float((ours - ref).abs().mean())


def test_identity_loss_prefers_the_right_person_and_passes_gradients(world):
    model = load_model("tiny")
    enc = model.identity_encoder.eval()
    ds = PairHumanDataset(world, split=None, use_reference_faces=True, image_size=model.config.image_size)
    items = [ds[i] for i in range(4)]
    images = torch.stack([it["pixel_values"] for it in items]).requires_grad_(True)
    boxes = torch.stack([it["face_boxes"] for it in items])
    refs = torch.stack([it["reference_faces"] for it in items]) * 2 - 1       # [4, 2, 3, 112, 112]
    with torch.no_grad():
        ref_emb = enc(refs.flatten(0, 1)).reshape(4, 2, -1)
    w = torch.ones(4, 2)
    right = identity_loss(enc, images, boxes, ref_emb, w)
    swapped = identity_loss(enc, images, boxes, ref_emb.flip(1), w)
    assert float(right) < float(swapped) - 0.1, (float(right), float(swapped))
    right.backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    zero = identity_loss(enc, images, boxes, ref_emb, torch.zeros(4, 2))
    assert float(zero) == 0.0


def test_region_loss_is_low_inside_and_high_outside_the_boxes():
    masks = torch.zeros(1, 2, 8, 8)
    masks[:, 0, :, :4] = 1
    masks[:, 1, :, 4:] = 1
    inside = masks.flatten(2) / masks.flatten(2).sum(-1, keepdim=True)        # all mass in its own box
    outside = masks.flip(1).flatten(2) / masks.flatten(2).sum(-1, keepdim=True)
    lo = region_loss([inside], masks, torch.ones(1))
    hi = region_loss([outside], masks, torch.ones(1))
    assert float(lo) < 0 < float(hi)
    assert float(lo) == pytest.approx(-float(hi))
    # coarser layers see the mask average-pooled to their resolution
    coarse = torch.nn.functional.avg_pool2d(inside.reshape(1, 2, 8, 8), 2).flatten(2)
    assert float(region_loss([coarse], masks, torch.ones(1))) < 0
    with pytest.raises(ValueError):
        region_loss([], masks, torch.ones(1))


def test_predicted_x0_inverts_the_forward_process():
    x0 = torch.randn(3, 4, 8, 8)
    noise = torch.randn_like(x0)
    ab = torch.tensor([0.9, 0.5, 0.1])
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    xt = a * x0 + s * noise
    v = a * noise - s * x0
    assert torch.allclose(predicted_x0(v, xt, ab, "v_prediction"), x0, atol=1e-5)
    assert torch.allclose(predicted_x0(noise, xt, ab, "epsilon"), x0, atol=1e-4)


def test_full_objective_trains_and_moves_attention_into_the_boxes(world, tmp_path):
    model = random_tiny(seed=1)
    data = tensors_for(model, world)
    cfg = TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=1, checkpoint_every=1000, log_every=10,
                      identity_loss_weight=0.5, region_loss_weight=1.0, identity_loss_max_t=1000,
                      identity_loss_batch=2, trainable="adapters", use_region_masks=True)
    trainer = DiffusionTrainer(model, data, cfg, tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    _, first = trainer.loss(g)
    assert {"diffusion", "identity", "region", "loss"} <= set(first)
    expected = first["diffusion"] + 0.5 * first["identity"] + 1.0 * first["region"]
    assert first["loss"] == pytest.approx(expected, rel=1e-4)
    trainer.train()
    _, last = trainer.loss(torch.Generator().manual_seed(0))
    # the adapters' K projections learn to put each person's attention mass inside its own box
    assert last["region"] < first["region"] - 1e-3, (first, last)
    assert np.isfinite(last["identity"])
