"""Every backbone builds from one code path, saves/loads exactly, and samples in both modes."""

import numpy as np
import pytest
import torch

from dhumandiff.errors import CheckpointError
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.face_inputs import FaceInput
from dhumandiff.model.sampler import ReferenceSampler
from dhumandiff.utils.prompt import person_positions
from dhumandiff.utils.regions import default_boxes

WORDS = ["a", "man", "and", "woman", "on", "the", "beach", "in", "garden"]


def _faces(model, seed=0):
    rng = np.random.default_rng(seed)
    s = model.config.clip_size
    return tuple(FaceInput(crop=np.zeros((112, 112, 3), np.uint8), id_embedding=rng.standard_normal(512).astype(np.float32),
                           clip_pixels=rng.standard_normal((3, s, s)).astype(np.float32), bbox=(0, 0, 112, 112))
                 for _ in range(2))


def _inputs(model, prompt="a man and a woman on the beach"):
    ids, pos = person_positions(model.tokenizer.backend_tokenizer, prompt)
    return torch.from_numpy(ids)[None], torch.from_numpy(pos)[None]


@pytest.mark.parametrize("backbone", ["tiny", "sd15-test", "xl-test"])
def test_backbone_builds_saves_and_reloads_exactly(tmp_path, backbone):
    model = DHumanDiff.from_backbone(backbone, words=WORDS, seed=0)
    assert (model.text_encoder_2 is not None) == backbone.startswith("xl")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 12e6, f"{backbone} test config should stay small, has {n_params / 1e6:.1f}M"
    path = model.save_pretrained(tmp_path / "m")
    loaded = DHumanDiff.from_pretrained(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The processors (and so the identity route) survive the round trip.
    assert loaded.ip_state_dict().keys() == model.ip_state_dict().keys()


def test_person_positions_point_at_the_person_words():
    model = DHumanDiff.from_backbone("tiny", words=WORDS)
    ids, pos = _inputs(model, "a man and a woman in the garden")
    toks = model.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert toks[pos[0, 0]] == "man" and toks[pos[0, 1]] == "woman"


@pytest.mark.parametrize("backbone", ["tiny", "xl-test"])
def test_sampler_single_and_cascade(backbone):
    model = DHumanDiff.from_backbone(backbone, words=WORDS, seed=0).eval()
    sampler = ReferenceSampler(model)
    ids, pos = _inputs(model)
    faces = _faces(model)
    out1 = sampler.sample(faces, ids, pos, default_boxes(), steps=3, seed=7, guidance=3.0, mode="single")
    out2 = sampler.sample(faces, ids, pos, default_boxes(), steps=3, seed=7, guidance=3.0, mode="single")
    assert out1.image.shape == (3, model.config.image_size, model.config.image_size)
    assert torch.equal(out1.image, out2.image), "same seed must give the same image"
    assert out1.unet_passes == 6
    other = sampler.sample(faces, ids, pos, default_boxes(), steps=3, seed=8, guidance=3.0, mode="single")
    assert not torch.equal(out1.image, other.image)
    cas = sampler.sample(faces, ids, pos, default_boxes(), steps=3, seed=7, guidance=3.0, mode="cascade")
    assert cas.unet_passes == (3 + 2 * 3) * 2
    assert cas.mask is not None
    frac = float(cas.mask.mean())
    assert 0.05 <= frac <= 0.2, f"cascade mask should keep ~10% of the latent, kept {frac:.2f}"


def test_missing_component_folder_is_a_clear_error(tmp_path):
    model = DHumanDiff.from_backbone("tiny", words=WORDS)
    path = model.save_pretrained(tmp_path / "m")
    import shutil

    shutil.rmtree(path / "resampler")
    with pytest.raises(CheckpointError, match="missing resampler"):
        DHumanDiff.from_pretrained(path)
    with pytest.raises(CheckpointError, match="not a dhumandiff model folder"):
        DHumanDiff.from_pretrained(tmp_path)
