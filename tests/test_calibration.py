"""dhumandiff calibrate: real graph inputs recorded at every sampler step, reproducibly, and per-layer sensitivity.

Runs the embedded tiny model on a 4-record synthetic PairHuman folder with a 3-step sampler. The helpers at the
top (one world, one calibration set per test session) are shared with ``test_quantize.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dhumandiff.calibration.record import CalibrationConfig, record_calibration
from dhumandiff.calibration.sensitivity import (analyze_sensitivity, linear_weights, mixed_bit_recipe,
                                                palettized_weights, sensitive_layers)
from dhumandiff.calibration.store import CalibrationError, CalibrationSet
from dhumandiff.model.generate import load_model
from dhumandiff.model.sampler import make_scheduler
from calibration_fixtures import LAYERS, RECORDS, STEPS, shared_calibration, shared_world

@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return shared_world(tmp_path_factory)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory, tiny) -> Path:
    return shared_calibration(tmp_path_factory, tiny)


# ---------------------------------------------------------------------------------------------- recording


def test_unet_inputs_are_recorded_at_every_step(tiny, calib_dir):
    calib = CalibrationSet.load(calib_dir)
    meta = calib.meta
    assert (meta["seed"], meta["steps"], meta["sampler"], meta["records"]) == (0, STEPS, "ddim", RECORDS)
    assert meta["guidance_scale"] == tiny.config.defaults["guidance_scale"]
    assert len(meta["data"]["sha256"]) == 64 and len(meta["data"]["records"]) == RECORDS

    t = calib.tensors
    assert t["unet/sample"].shape == (RECORDS, STEPS, 2, 4, 16, 16)  # [record, step, CFG rows, C, h, w]
    assert t["unet/timestep"].shape == (RECORDS, STEPS, 2)
    sched = make_scheduler(tiny)
    sched.set_timesteps(STEPS)
    for r in range(RECORDS):
        np.testing.assert_array_equal(t["unet/timestep"][r, :, 0], sched.timesteps.numpy().astype(np.float32))
    # The conditioning is the same at every step of a record: stored once per record.
    inputs = calib.inputs("unet")
    assert {n for n, s in inputs.items() if s["per_step"]} == {"sample", "timestep"}
    assert t["unet/encoder_hidden_states"].shape == (RECORDS, 2, 77, 64)
    assert t["unet/ip_tokens"].shape == (RECORDS, 2, 32, 64) and t["unet/region_mask"].shape == (RECORDS, 2, 2, 16, 16)
    # The first step's input is the seeded NumPy noise the runtimes draw (record k uses seed + k).
    for k in range(RECORDS):
        noise = np.random.default_rng(k).standard_normal((1, 4, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(t["unet/sample"][k, 0, 0], noise[0] * float(sched.init_noise_sigma), rtol=1e-6)
    # Uncond row: zero ID tokens; cond row: the persons' real tokens.
    assert not t["unet/ip_tokens"][:, 0].any() and t["unet/ip_tokens"][:, 1].std() > 0

    calls = list(calib.samples("unet"))
    assert len(calls) == RECORDS * STEPS == calib.count("unet")
    assert {n: v.shape for n, v in calls[0].items()} == {n: tuple(s["shape"]) for n, s in inputs.items()}


def test_conditioning_inputs_come_from_real_prompts_and_faces(calib_dir):
    calib = CalibrationSet.load(calib_dir)
    assert calib.count("identity_encoder") == calib.count("image_encoder") == 2 * RECORDS  # two people each
    assert calib.count("text_encoder") == 2 * RECORDS  # the prompt and the empty negative prompt
    assert calib.count("vae_decoder") == RECORDS
    ids = calib.tensors["text_encoder/input_ids"]
    positions = calib.tensors["text_encoder/subject_positions"]
    assert ids.shape == (2 * RECORDS, 1, 77) and ids.dtype == np.int64
    assert (positions[0::2] >= 1).all() and (positions[1::2] == -1).all()  # person words found; uncond: none
    faces = calib.tensors["identity_encoder/face"]
    assert faces.shape == (2 * RECORDS, 1, 3, 112, 112) and -1.0 <= faces.min() < faces.max() <= 1.0
    shapes = {n: tuple(v.shape) for n, v in next(calib.samples("face_projection")).items()}
    assert shapes == {"image_embeds": (1, 50, 64), "id_embedding": (1, 512)}


def test_same_seed_gives_the_same_hash(tiny, world, tmp_path):
    def record(name: str, seed: int) -> dict:
        path = record_calibration(tiny, world, tmp_path / name, CalibrationConfig(count=2, steps=2, seed=seed))
        return json.loads((path / "calibration.json").read_text())

    a, b, c = record("a", 0), record("b", 0), record("c", 1)
    assert a["tensors_sha256"] == b["tensors_sha256"] and a["file_sha256"] == b["file_sha256"]
    assert a["data"] == b["data"]
    assert c["tensors_sha256"] != a["tensors_sha256"] and c["seed"] == 1
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "written atomically, no leftovers"
    with pytest.raises(FileExistsError):
        record_calibration(tiny, world, tmp_path / "a", CalibrationConfig(count=2, steps=2))


def test_altered_calibration_is_refused(calib_dir, tmp_path):
    copy = tmp_path / "calib"
    shutil.copytree(calib_dir, copy)
    data = bytearray((copy / "calibration.safetensors").read_bytes())
    data[-8:] = bytes(8)
    (copy / "calibration.safetensors").write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="sha256"):
        CalibrationSet.load(copy)
    with pytest.raises(CalibrationError, match="not a calibration folder"):
        CalibrationSet.load(tmp_path)


# -------------------------------------------------------------------------------------------- sensitivity


def test_sensitivity_lists_layers_with_psnrs(tiny, calib_dir):
    report = CalibrationSet.load(calib_dir).sensitivity()
    assert report is not None and report["component"] == "unet" and report["bits"] == [8, 4]
    names = [layer["name"] for layer in report["layers"]]
    assert names and set(names) <= set(LAYERS) and len(names) >= 4  # layers under 2048 weights are skipped
    for layer in report["layers"]:
        tiny.get_submodule(layer["name"])  # names are model module paths
        p8, p4 = layer["psnr_db"]["8"], layer["psnr_db"]["4"]
        assert 0 < p4 < p8 <= 200, layer  # fewer bits, more error
        assert layer["int8_psnr_db"] <= layer["int8_weights_psnr_db"] + 0.5  # quantised inputs add error
        assert layer["tolerates"] == [b for b in (8, 4) if layer["psnr_db"][str(b)] >= report["threshold_db"]]
    ranked = sensitive_layers(report, keep=2)
    worst = sorted(report["layers"], key=lambda x: x["int8_psnr_db"])
    assert ranked == [worst[0]["name"], worst[1]["name"]]
    assert sensitive_layers(report, threshold_db=0.0) == []
    assert set(sensitive_layers(report, threshold_db=500.0)) == set(names)


def test_analysis_restores_every_weight(tiny, calib_dir):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    analyze_sensitivity(tiny, CalibrationSet.load(calib_dir), bits=(4,), method="palettize", samples=2,
                        layers=LAYERS[:1])
    after = tiny.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantisers():
    w = torch.randn(16, 8, 3, 3)
    for bits in (8, 4):
        q = palettized_weights(w, bits)
        assert q.shape == w.shape and len(torch.unique(q)) <= 2 ** bits
        lin = linear_weights(w, bits)
        steps = lin.reshape(16, -1) / (w.reshape(16, -1).abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1))
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # integers times one scale per output channel
    assert (palettized_weights(w, 4) - w).abs().mean() > (palettized_weights(w, 8) - w).abs().mean()


def test_mixed_bit_recipe_meets_the_target():
    def layer(name, params, p8, p6, p4):
        return {"name": name, "params": params, "psnr_db": {"8": p8, "6": p6, "4": p4}}

    report = {"format": "dhumandiff-sensitivity", "format_version": 1, "bits": [8, 6, 4], "threshold_db": 40.0,
              "layers": [layer("robust", 1000, 90, 80, 70), layer("middle", 1000, 80, 60, 45),
                         layer("fragile", 1000, 50, 35, 20)]}
    for target in (4.0, 5.0, 6.0, 8.0):
        recipe = mixed_bit_recipe(report, target)
        assert recipe["average_bits"] <= target + 1e-9
        bits = recipe["bits"]
        assert bits["robust"] <= bits["middle"] <= bits["fragile"]
    assert mixed_bit_recipe(report, 4.0)["bits"] == {"robust": 4, "middle": 4, "fragile": 4}
    # A budget that fits everything uncompressed keeps everything uncompressed: the strictest bar wins.
    assert mixed_bit_recipe(report, 16.0)["bits"] == {"robust": 16, "middle": 16, "fragile": 16}
    six = mixed_bit_recipe(report, 6.0)["bits"]
    assert six["fragile"] == 8 and six["robust"] == 4  # the fragile layer gets the bits the robust one gives up
    with pytest.raises(Exception, match="below the smallest"):
        mixed_bit_recipe(report, 3.0)


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_calibrate(world, tmp_path):
    from dhumandiff.cli.main import main

    out = tmp_path / "calib"
    args = ["calibrate", "tiny", "--data", str(world), "--out", str(out), "--count", "1", "--steps", "2",
            "--bits", "8,4", "--method", "linear", "--samples", "2", "--layer", LAYERS[0]]
    assert main(args) == 0
    calib = CalibrationSet.load(out)
    assert calib.meta["steps"] == 2 and calib.meta["model"] == "tiny"
    assert [x["name"] for x in calib.sensitivity()["layers"]] == [LAYERS[0]]
    assert main(args) == 2  # exists: --overwrite replaces it
    assert main(["calibrate", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()
