"""The distilled tiny VAE decoder: distillation writes a diffusers AutoencoderTiny folder, the model selects it by
its defaults, and the exported vae_decoder graph (a real onnxruntime session) and the torch sampler both use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from dhumandiff.distill.recipe import distill_model
from dhumandiff.distill.tiny_vae import TinyVaeConfig, TinyVaeDistiller, teacher_pairs
from dhumandiff.errors import CheckpointError
from dhumandiff.export.wrappers import VaeDecoderWrapper
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.sampler import ReferenceSampler
from dhumandiff.model.tiny_decoder import build_tiny_autoencoder
from training_fixtures import random_tiny, small_world


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory):
    """A random tiny teacher, a 12-image world and a 30-step tiny-VAE distillation through ``distill_model``."""
    root = tmp_path_factory.mktemp("tinyvae")
    world = small_world(root, count=12)
    teacher_dir = random_tiny().save_pretrained(root / "teacher")
    report = distill_model(teacher_dir, world, root / "student", TinyVaeConfig(steps=30, batch_size=4, lr=3e-3))
    return {"root": root, "world": world, "teacher": teacher_dir, "student": root / "student", "report": report}


def test_shapes_match_the_full_vae():
    model = DHumanDiff.from_backbone("tiny", seed=0)
    tiny = build_tiny_autoencoder(model.vae.config).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = model.vae.encode(x).latent_dist.mean
        assert tiny.encode(x).latents.shape == z.shape
        assert tiny.decode(z).sample.shape == model.vae.decode(z).sample.shape == x.shape
    full = sum(p.numel() for p in model.vae.decoder.parameters())
    assert sum(p.numel() for p in tiny.decoder.parameters()) < full


def test_distillation_writes_a_loadable_student_that_selects_the_tiny_decoder(distilled):
    report = distilled["report"]
    assert report["method"] == "tiny-vae" and report["steps_done"] == 30
    for key in ("psnr_tiny_vs_full_decoder_db", "psnr_full_decoder_vs_photo_db", "psnr_tiny_decoder_vs_photo_db"):
        assert np.isfinite(report[key]), key
    saved = json.loads((distilled["student"] / "distill_report.json").read_text())
    assert saved["steps_done"] == 30
    # diffusers' own loader reads the folder (the format TAESD ships in)
    folder = distilled["student"] / "vae_tiny"
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    AutoencoderTiny.from_pretrained(folder)
    student = DHumanDiff.from_pretrained(distilled["student"])
    assert student.vae_decoder_kind == "tiny" and student.vae_tiny is not None
    teacher = DHumanDiff.from_pretrained(distilled["teacher"])
    assert teacher.vae_decoder_kind == "full" and teacher.vae_tiny is None


def test_distillation_moves_the_decoder_towards_the_full_one(distilled):
    """Trained steps bring the tiny decoder's image closer to the full decoder's than its random start."""
    world = distilled["world"]
    from dhumandiff.data.dataset import PairHumanDataset

    ds = PairHumanDataset(world, image_size=64, use_reference_faces=False)
    images = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    teacher = DHumanDiff.from_pretrained(distilled["teacher"])
    torch.manual_seed(0)
    fresh = TinyVaeDistiller(teacher, images, TinyVaeConfig(steps=1))
    before = fresh.fidelity(images)["psnr_tiny_vs_full_decoder_db"]
    trained = DHumanDiff.from_pretrained(distilled["student"])
    latents, full = teacher_pairs(teacher, images)
    with torch.no_grad():
        tiny = trained.decode_latent_sample(latents).clamp(-1, 1)
    after = 10 * np.log10(4.0 / torch.mean((tiny - full) ** 2).item())
    assert after > before + 1.0, (before, after)


def test_exported_decoder_and_sampler_use_the_tiny_decoder(distilled, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from dhumandiff.export.bundle import export_bundle

    student = DHumanDiff.from_pretrained(distilled["student"])
    bundle = export_bundle(student, tmp_path / "bundle", "onnx", "fp32")
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = student.decode_latent_sample(z).numpy()
        full = student.vae.decode(z).sample.numpy()
        wrapped = VaeDecoderWrapper(student)(z).numpy()
    sess = ort.InferenceSession(str(bundle / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"latent_sample": z.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(wrapped, want)
    assert np.abs(got - full).max() > 1e-2, "the bundle must hold the tiny decoder, not the full one"
    # the torch reference sampler decodes UNet-space latents with the same decoder
    scale = float(student.vae.config.scaling_factor)
    img = ReferenceSampler(student).decode(z * scale)
    np.testing.assert_allclose(img.numpy(), (np.clip(want[0], -1, 1) + 1) / 2, atol=1e-5)


def test_asking_for_a_missing_tiny_decoder_is_one_clear_error():
    model = DHumanDiff.from_backbone("tiny", seed=0)
    model.config.defaults["vae_decoder"] = "tiny"
    with pytest.raises(CheckpointError, match="distill --method tiny-vae"):
        VaeDecoderWrapper(model)
    model.config.defaults["vae_decoder"] = "huge"
    with pytest.raises(CheckpointError, match="full, tiny"):
        _ = model.vae_decoder_kind


def test_face_weights_mark_the_face_boxes():
    from dhumandiff.distill.tiny_vae import face_weight_maps

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.75, 0.75, 1.0, 1.0]]])
    w = face_weight_maps(boxes, 8, boost=3.0)
    assert w.shape == (1, 1, 8, 8)
    assert torch.all(w[0, 0, :4, :4] == 4.0) and torch.all(w[0, 0, 6:, 6:] == 4.0)
    assert w[0, 0, 5, 5] == 1.0 and w[0, 0, 0, 7] == 1.0
    assert int((w == 4.0).sum()) == 16 + 4


def test_continuing_from_an_earlier_tiny_vae_starts_from_its_weights(distilled):
    teacher = DHumanDiff.from_pretrained(distilled["teacher"])
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    d = TinyVaeDistiller(teacher, images, TinyVaeConfig(steps=1, init_from=str(distilled["student"])))
    saved = AutoencoderTiny.from_pretrained(distilled["student"] / "vae_tiny").state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in d.student.state_dict().items())
    with pytest.raises(CheckpointError, match="holds no tiny VAE"):
        TinyVaeDistiller(teacher, images, TinyVaeConfig(steps=1, init_from=str(distilled["teacher"])))


def test_identity_term_needs_faces_and_trains_with_them(distilled):
    from dhumandiff.errors import SettingsError

    teacher = DHumanDiff.from_pretrained(distilled["teacher"])
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    with pytest.raises(SettingsError, match="identity"):
        TinyVaeDistiller(teacher, images, TinyVaeConfig(steps=1, identity_weight=0.1))
    boxes = torch.tensor([[0.05, 0.05, 0.45, 0.5], [0.55, 0.05, 0.95, 0.5]]).repeat(4, 1, 1)
    d = TinyVaeDistiller(teacher, images, TinyVaeConfig(steps=2, batch_size=2, identity_weight=0.1), face_boxes=boxes)
    term = d._identity_term(d.student.decode(d.latents[:2] * d.scale).sample, torch.tensor([0, 1]))
    assert term.requires_grad and 0.0 <= float(term) <= 2.0
    assert np.isfinite(d.train()["loss"])
