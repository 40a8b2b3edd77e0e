"""Bundles of a model with the official conditioning recipe reproduce its PyTorch reference on ONNX and OpenVINO.

A tiny-shaped random model is given the ``official`` recipe (last-layer prompt / penultimate negative prompt, the
official negative prompt, zero-image unconditional ID tokens, no region masks, the whole photo for CLIP), exported
from its model folder and checked end to end with ``dhumandiff parity``: the recipe travels in ``bundle.json`` and
the NumPy sampler follows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dhumandiff.cli.main import main
from dhumandiff.contract.bundle import load_manifest
from dhumandiff.contract.recipe import NEGATIVE_TEXT_OUTPUT, OFFICIAL
from dhumandiff.errors import BundleError
from dhumandiff.runtimes.generator import load_bundle
from dhumandiff.model.convert import convert_official
from face_pack_fixtures import make_pack
from model_fixtures import make_tiny_model, official_release


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory):
    model = make_tiny_model(seed=4)
    model.config.recipe = OFFICIAL.to_dict()
    return model.save_pretrained(tmp_path_factory.mktemp("official-tiny") / "model")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A test-sized official release converted with ``convert official`` (recipe ``official``), and an
    insightface-format pack (built in the test), shared by the converted-model tests."""
    tmp = tmp_path_factory.mktemp("converted")
    sdxl, weights, _ = official_release(tmp)
    return convert_official(sdxl, weights, tmp / "converted"), make_pack(tmp / "faces")


def _export(folder, runtime: str):
    bundle = folder.parent / f"{runtime}-bundle"
    if not bundle.exists():
        assert main(["export", runtime, str(folder), "--out", str(bundle)]) == 0
    return bundle


# the OpenVINO run repeats the ONNX one on the other runtime (the converted-model pack test covers both runtimes)
@pytest.mark.parametrize("runtime", ["onnx", pytest.param("openvino", marks=pytest.mark.slow)])
def test_official_recipe_bundle_passes_parity(official_folder, tmp_path, runtime):
    bundle = _export(official_folder, runtime)
    raw = json.loads((bundle / "bundle.json").read_text())
    assert raw["recipe"] == OFFICIAL.to_dict()
    assert NEGATIVE_TEXT_OUTPUT in raw["components"]["text_encoder"]["outputs"]
    report = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--steps", "3", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"], data
    assert data["end_to_end"]["psnr_db"] >= 40.0
    torch.set_grad_enabled(True)  # load_model switches autograd off for the whole process


def test_recipe_choices_change_the_bundle_image_and_a_broken_recipe_is_refused(official_folder, tmp_path):
    import shutil

    from dhumandiff.checks.parity import world_faces

    bundle = shutil.copytree(_export(official_folder, "onnx"), tmp_path / "bundle")
    gen = load_bundle(bundle)
    a, b, words = world_faces(0)
    kw = dict(steps=2, seed=1, person_words=words)
    base = np.asarray(gen(a, b, "a man and a woman on the beach", **kw).image, np.float64)
    for change in ({"negative_prompt": ""}, {"region_masks": True}):
        other = np.asarray(gen(a, b, "a man and a woman on the beach", **kw, **change).image, np.float64)
        assert np.abs(other - base).max() > 0, change
    # a manifest that claims the official recipe but lacks the negative prompt's layer is refused
    raw = json.loads((bundle / "bundle.json").read_text())
    del raw["components"]["text_encoder"]["outputs"][NEGATIVE_TEXT_OUTPUT]
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=NEGATIVE_TEXT_OUTPUT):
        load_manifest(bundle)
    raw["recipe"]["cascade_mask"] = "nonsense"
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="cascade_mask"):
        load_manifest(bundle)


def test_generate_with_a_converted_model_names_the_face_models_option(converted, tmp_path):
    """A converted official model ships no face recogniser: without a pack the one line names --face-models."""
    import subprocess
    import sys

    from dhumandiff.checks.parity import world_faces

    folder, _ = converted
    a, b, _ = world_faces(0)
    a.save(tmp_path / "a.png")
    b.save(tmp_path / "b.png")
    env = {k: v for k, v in __import__("os").environ.items() if k != "DHUMANDIFF_FACE_MODELS"}
    r = subprocess.run([sys.executable, "-m", "dhumandiff.cli.main", "generate", "--model", str(folder),
                        "--face-a", str(tmp_path / "a.png"), "--face-b", str(tmp_path / "b.png"),
                        "--prompt", "a man and a woman on the beach", "--out", str(tmp_path / "out.png")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 9, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--face-models" in lines[0] and "DHUMANDIFF_FACE_MODELS" in lines[0], r.stderr
    assert not (tmp_path / "out.png").exists()


def test_generate_with_a_converted_model_and_a_face_pack_on_real_photos(converted, tmp_path):
    """``generate --model CONVERTED --face-models PACK`` on real photos (scikit-image's astronaut, a person from the
    insightface wheel's group photo): the torch-free pack pipeline finds the faces (the largest, said in one
    warning line), ArcFace embeds them, and the official-faithful reference paints the portrait."""
    import os
    import subprocess
    import sys

    from PIL import Image
    from skimage import data as skdata

    insightface = pytest.importorskip("insightface")
    folder, pack = converted
    Image.fromarray(skdata.astronaut()).save(tmp_path / "a.png")
    group = Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB")
    group.crop((400, 0, 750, 300)).save(tmp_path / "b.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k != "DHUMANDIFF_FACE_MODELS"}
    r = subprocess.run([sys.executable, "-m", "dhumandiff.cli.main", "generate", "--model", str(folder),
                        "--face-models", str(pack), "--face-a", str(tmp_path / "a.png"), "--face-b",
                        str(tmp_path / "b.jpg"), "--prompt", "a man and a woman on the beach", "--steps", "2",
                        "--out", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "using the largest" in r.stderr and "Traceback" not in r.stderr
    assert Image.open(tmp_path / "out.png").size == (64, 64)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_converted_model_bundle_ships_the_face_pack_and_runs_real_photos(converted, tmp_path, runtime):
    """``export RUNTIME CONVERTED --face-models PACK``: the pack's detector and recogniser go into the bundle,
    hashed; ``generate --bundle`` on real photos finds, aligns and embeds the faces exactly as the reference's
    pack pipeline does (same embeddings), and ``parity`` passes end to end."""
    from PIL import Image
    from skimage import data as skdata

    from dhumandiff.contract.faces.insightface_pack import PackFaceAnalyzer
    insightface = pytest.importorskip("insightface")
    folder, pack = converted
    bundle = tmp_path / "bundle"
    assert main(["export", runtime, str(folder), "--out", str(bundle), "--face-models", str(pack)]) == 0
    raw = json.loads((bundle / "bundle.json").read_text())
    ident = raw["identity"]
    assert ident["detector"] == "scrfd" and (bundle / ident["detector_file"]).is_file()
    assert raw["export"]["face_pack"] == {"detector": "det_10g.onnx", "recogniser": "w600k_r50.onnx"}
    assert main(["verify", str(bundle)]) == 0

    astronaut = skdata.astronaut()
    group = np.asarray(Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB"))
    gen = load_bundle(bundle)
    ours = PackFaceAnalyzer(pack)
    for photo in (astronaut, group):
        with pytest.warns(UserWarning, match="using the largest"):
            crop = gen.cropper(Image.fromarray(photo), None, "photo", "--face-index-a")
        x = np.asarray(crop)
        from dhumandiff.contract.images import preprocess_face

        emb = gen.runner.run("identity_encoder", {"face": preprocess_face(crop, 112, ident["arcface_mean"],
                                                                          ident["arcface_std"])})["embedding"]
        with pytest.warns(UserWarning):
            ref = ours.analyze_single(photo)
        cos = float(emb.ravel() @ ref.embedding / np.linalg.norm(emb))
        assert cos >= 0.9999, cos
        assert x.shape == (112, 112, 3)
    out = gen(Image.fromarray(astronaut), Image.fromarray(group), "a man and a woman on the beach", steps=2)
    assert out.image.size == (64, 64)

    # parity on the real photos (the reference embeds with the bundle's recogniser, copied verbatim)
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    Image.fromarray(group).save(tmp_path / "b.png")
    report = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--steps", "2", "--report", str(report), "--face-a", str(tmp_path / "a.png"),
                 "--face-b", str(tmp_path / "b.png"), "--prompt", "a man and a woman on the beach"]) == 0
    assert json.loads(report.read_text())["passed"]
    # a tampered detector is caught
    (bundle / ident["detector_file"]).write_bytes(b"tampered")
    assert main(["verify", str(bundle)]) == 10
    torch.set_grad_enabled(True)
