"""Official fidelity: a model converted from the official release computes what the official code computes.

The project's reference (``dhumandiff.model``, recipe ``official``) against an independent re-statement of the
official inference code (``official_restatement.py``) on official-format random weights, stage by stage: the
conditional and unconditional text, the ID tokens, one UNet call, single-stage and cascade denoising, within
1e-4 in fp32. Each row of the fidelity table is also measured with the project's own recipe (``dhumandiff``) to
show the row is real: the difference it reports is what the official recipe removes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from transformers import CLIPImageProcessor

from dhumandiff.contract.images import preprocess_clip_photo
from dhumandiff.contract.recipe import OFFICIAL, OFFICIAL_NEGATIVE_PROMPT, project_recipe
from dhumandiff.model.convert import convert_official
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.face_inputs import FaceInput
from dhumandiff.model.official import safe_torch_load
from dhumandiff.model.sampler import NoiseSource, ReferenceSampler
from model_fixtures import official_release
from official_restatement import OfficialDHumanDiff

TOL = 1e-4
PROMPT = "a man and a woman on the beach"
STEPS = 4


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    sdxl, weights, _ = official_release(tmp)
    # Sharper ID-token keys than the release's N(0, 0.05) weights give: with near-uniform softmax maps the official
    # mask's min-max normalisation would amplify float rounding into which cells pass the 90th percentile.
    ip = safe_torch_load(weights / "ip_adapter_ca.pt")
    torch.save({k: v * 2000 if ".to_k_ip" in k else v for k, v in ip.items()}, weights / "ip_adapter_ca.pt")
    folder = convert_official(sdxl, weights, tmp / "converted")
    ours = DHumanDiff.from_pretrained(folder)
    theirs = OfficialDHumanDiff(sdxl, weights, weights / "image_encoder")
    size = ours.config.clip_size
    photos = [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.chelsea())]
    clips = [torch.from_numpy(preprocess_clip_photo(p, size, ours.config.clip_mean, ours.config.clip_std))
             for p in photos]
    g = torch.Generator().manual_seed(3)
    faceids = [torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1) for _ in range(2)]
    faces = tuple(FaceInput(crop=np.zeros((4, 4, 3), np.uint8), id_embedding=f[0].numpy(),
                            clip_pixels=c[0].numpy(), bbox=(0, 0, 1, 1)) for c, f in zip(clips, faceids))
    ids = ours.tokenize([PROMPT])
    positions = torch.tensor([[2, 5]])  # "man", "woman" after the start token
    cond_t = theirs.conditions(PROMPT, 2, 5, clips[0], clips[1], faceids[0], faceids[1])
    return {"ours": ours, "theirs": theirs, "faces": faces, "ids": ids, "ids2": ours.tokenize_2([PROMPT]),
            "positions": positions, "cond_t": cond_t, "folder": folder}


def _ours_conditions(pair, recipe):
    return ReferenceSampler(pair["ours"]).conditions(pair["faces"], pair["ids"], pair["positions"], pair["ids2"],
                                                     recipe)


def test_converted_model_records_the_official_recipe_and_defaults(pair):
    cfg = json.loads((pair["folder"] / "dhumandiff.json").read_text())
    assert cfg["recipe"] == OFFICIAL.to_dict()
    assert cfg["recipe"]["negative_prompt"] == OFFICIAL_NEGATIVE_PROMPT
    d = cfg["defaults"]
    assert (d["sampler"], d["steps"], d["guidance_scale"]) == ("euler", 50, 5.0)
    assert cfg["scheduler"]["_class_name"] == "EulerDiscreteScheduler"
    # a full-size SDXL UNet (sample_size 128 -> 1024 px) is converted to the official 512; the test-sized one
    # keeps its own smaller size
    assert cfg["image_size"] == 64  # UNet sample_size 8 x the VAE factor 8


def test_clip_input_is_the_whole_photo_as_clip_image_processor_makes_it():
    """Row 'what CLIP sees': the official recipe's whole-photo preprocessing equals transformers' processor."""
    proc = CLIPImageProcessor()  # the official code's default processor: shortest edge 224, centre crop 224
    for arr in (skdata.astronaut(), skdata.chelsea(), skdata.coffee()):
        img = Image.fromarray(arr)
        want = proc(images=[img], return_tensors="np").pixel_values
        got = preprocess_clip_photo(img, 224, proc.image_mean, proc.image_std)
        assert got.shape == want.shape == (1, 3, 224, 224)
        assert float(np.abs(got - want).max()) <= 1e-5


def test_text_and_id_tokens_match_official_and_the_project_recipe_does_not(pair):
    ct = pair["cond_t"]
    co = _ours_conditions(pair, OFFICIAL)
    rows = {
        "cond text (CLIP-L last layer, fused)": _maxdiff(co["ctx"], ct["text"]),
        "uncond text (negative prompt, penultimate)": _maxdiff(co["uctx"], ct["negative_text"]),
        "pooled": _maxdiff(co["pooled"], ct["pooled"]),
        "uncond pooled": _maxdiff(co["upooled"], ct["negative_pooled"]),
        "ID tokens": _maxdiff(co["ip_tokens"], ct["prompt_embeds"][:, 77:]),
        "uncond ID tokens (zero image)": _maxdiff(co["uip_tokens"], ct["negative_prompt_embeds"][:, 77:]),
    }
    print("\nofficial recipe vs official code, max |diff|:", json.dumps(rows, indent=1))
    assert all(v <= TOL for v in rows.values()), rows
    # the project's recipe differs in exactly the rows the official recipe fixes
    cp = _ours_conditions(pair, project_recipe(-2))
    d = {"cond text": _maxdiff(cp["ctx"][..., :32], ct["text"][..., :32]),
         "uncond text": _maxdiff(cp["uctx"], ct["negative_text"]),
         "uncond ID tokens": _maxdiff(cp["uip_tokens"], ct["negative_prompt_embeds"][:, 77:])}
    print("project recipe vs official code, max |diff|:", json.dumps(d, indent=1))
    assert all(v > 1e-3 for v in d.values()), d
    assert _maxdiff(cp["ip_tokens"], ct["prompt_embeds"][:, 77:]) <= TOL  # the conditional ID tokens agree


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_one_unet_call_matches_official(pair, scale):
    ours, theirs, ct = pair["ours"], pair["theirs"], pair["cond_t"]
    co = _ours_conditions(pair, OFFICIAL)
    g = torch.Generator().manual_seed(5)
    h = ours.config.latent_size
    x = torch.randn(2, 4, h, h, generator=g)
    t = torch.tensor(500.0)
    with torch.no_grad():
        mine = ours.identity_unet(x, t.repeat(2), torch.cat([co["uctx"], co["ctx"]]),
                                  torch.cat([co["uip_tokens"], co["ip_tokens"]]), None, torch.tensor([scale]),
                                  torch.cat([co["upooled"], co["pooled"]]), ours.time_ids(2))
        theirs.set_scale(scale)
        s = float(ours.config.image_size)
        ref = theirs.unet(x, t, encoder_hidden_states=torch.cat([ct["negative_prompt_embeds"], ct["prompt_embeds"]]),
                          added_cond_kwargs={"text_embeds": torch.cat([ct["negative_pooled"], ct["pooled"]]),
                                             "time_ids": torch.tensor([[s, s, 0, 0, s, s]]).repeat(2, 1)}).sample
    assert _maxdiff(mine, ref) <= TOL


def test_single_stage_denoising_matches_official_and_region_masks_depart(pair):
    ours, theirs = pair["ours"], pair["theirs"]
    h = ours.config.latent_size
    noise = NoiseSource(11).draw((1, 4, h, h))
    ref = theirs.single(pair["cond_t"], noise, STEPS, 0.7, ours.config.image_size)
    sampler = ReferenceSampler(ours)
    boxes = np.asarray([[0, 0, 16, 32], [16, 0, 32, 32]], np.float32)
    kw = dict(steps=STEPS, seed=11, guidance=5.0, ip_scale=0.7, input_ids_2=pair["ids2"])
    out = sampler.sample(pair["faces"], pair["ids"], pair["positions"], boxes, recipe=OFFICIAL, **kw)
    assert _maxdiff(out.latents, ref) <= TOL
    masked = sampler.sample(pair["faces"], pair["ids"], pair["positions"], boxes,
                            recipe=OFFICIAL.with_options(region_masks=True), **kw)
    assert _maxdiff(masked.latents, ref) > 5 * TOL  # the project's layout masks change the image


@pytest.mark.parametrize("mask_kind", ["official", "two-person"])
def test_cascade_matches_official_mask_and_mixing(pair, mask_kind):
    ours, theirs = pair["ours"], pair["theirs"]
    h, size = ours.config.latent_size, ours.config.image_size
    noise = NoiseSource(13).draw((1, 4, h, h))
    stage1 = theirs.single(pair["cond_t"], noise, STEPS, 0.7, size)
    vis = theirs.stage1_mask(h, two_person=mask_kind == "two-person")
    ref = theirs.stage2(pair["cond_t"], noise, STEPS, vis, size)
    recipe = OFFICIAL.with_options(cascade_mask=mask_kind)
    out = ReferenceSampler(ours).sample(pair["faces"], pair["ids"], pair["positions"], np.zeros((2, 4), np.float32),
                                        steps=STEPS, seed=13, guidance=5.0, mode="cascade",
                                        input_ids_2=pair["ids2"], recipe=recipe)
    assert _maxdiff(out.extras["stage1_latents"], stage1) <= TOL
    want = torch.from_numpy((vis > 0).astype(np.float32))
    assert torch.equal(out.mask[0, 0], want), f"{int((out.mask[0, 0] != want).sum())} mask cells differ"
    assert 0 < int(want.sum()) < want.numel()
    assert _maxdiff(out.latents, ref) <= TOL
    if mask_kind == "official":  # the project's own mask picks other cells from the same stage 1
        own = ReferenceSampler(ours).sample(pair["faces"], pair["ids"], pair["positions"],
                                            np.zeros((2, 4), np.float32), steps=STEPS, seed=13, guidance=5.0,
                                            mode="cascade", input_ids_2=pair["ids2"],
                                            recipe=OFFICIAL.with_options(cascade_mask="attention-mass"))
        print(f"\ncascade mask cells differing, project vs official: "
              f"{float((own.mask[0, 0] != want).float().mean()):.1%}")
