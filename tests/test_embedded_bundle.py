"""The embedded default's shipped ONNX bundle: complete, in step with the shipped weights, and torch-free.

``dhumandiff generate`` without ``--model``/``--bundle`` runs ``dhumandiff/assets/bundles/tiny`` (see
``dhumandiff/runtimes/embedded.py``). These tests run the CLI with torch, diffusers and transformers unimportable
and compare its image with the PyTorch reference's pixel for pixel (the same image up to a float rounding at a
grey-level boundary: at most one level, in under 1 % of the pixels): a bundle left behind after ``tiny`` changes
(rebuild with ``scripts/build-embedded-bundle.sh``) fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blocked_imports import run_cli_without

ROOT = Path(__file__).resolve().parent.parent
FACES = ("--face-a", str(ROOT / "examples" / "face_a.png"), "--face-b", str(ROOT / "examples" / "face_b.png"))
PROMPT = ("--prompt", "a man and a woman on the beach")
TORCH = {"torch", "diffusers", "transformers", "huggingface_hub", "accelerate"}
RUNTIMES = {"onnxruntime", "openvino"}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for float rounding: no pixel more than one grey level apart, under 1 % of them differing at all."""
    diff = np.abs(a - b)
    return a.shape == b.shape and int(diff.max()) <= 1 and float((diff > 0).mean()) < 0.01


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The PyTorch reference's image of the README's first command (at 8 steps, to stay quick)."""
    from dhumandiff.model.generate import generate_portrait, load_model

    res = generate_portrait(load_model("tiny"), ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png",
                            PROMPT[1], steps=8, seed=3)
    return np.asarray(res.image.convert("RGB"), dtype=np.int16)


def test_the_shipped_bundle_is_complete():
    from dhumandiff.runtimes.embedded import embedded_bundle
    from dhumandiff.runtimes.verify import verify_bundle

    path = embedded_bundle()
    assert path is not None, "dhumandiff/assets/bundles/tiny is missing: run scripts/build-embedded-bundle.sh"
    report = verify_bundle(path)  # raises on a missing or changed file
    assert report.runtime == "onnx" and report.model_name == "tiny" and set(report.components) >= {"unet", "vae_decoder"}


def test_default_generate_needs_no_torch_and_matches_the_reference(tmp_path, reference_image):
    out = tmp_path / "portrait.png"
    r = run_cli_without(TORCH | {"openvino"}, "generate", *FACES, *PROMPT, "--steps", "8", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert _same_image(_pixels(out), reference_image), "the embedded bundle no longer reproduces the reference"


def test_without_a_runtime_the_default_falls_back_to_the_reference(tmp_path, reference_image):
    out = tmp_path / "portrait.png"
    r = run_cli_without(RUNTIMES, "generate", *FACES, *PROMPT, "--steps", "8", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert _same_image(_pixels(out), reference_image)


def test_without_runtime_or_torch_one_line_names_the_extra(tmp_path):
    out = tmp_path / "portrait.png"
    r = run_cli_without(TORCH | RUNTIMES, "generate", *FACES, *PROMPT, "--out", str(out))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 11 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert 'pip install "dhumandiff[onnx]"' in lines[0]
    assert not out.exists()


def test_what_only_the_reference_does_names_the_torch_extra(tmp_path):
    out = tmp_path / "portrait.png"
    r = run_cli_without(TORCH, "generate", *FACES, *PROMPT, "--mode", "cascade", "--out", str(out))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 11 and len(lines) == 1, r.stderr
    assert "--mode cascade" in lines[0] and 'pip install "dhumandiff[torch]"' in lines[0]
    assert not out.exists()


def test_serve_without_a_bundle_serves_the_embedded_default(tmp_path):
    import httpx

    from kiosk_fixtures import KioskServer

    with KioskServer(None, tmp_path) as server:
        health = httpx.get(server.url + "/api/health", timeout=30).json()
    assert health["model"] == "tiny" and health["runtime"] == "onnx" and health["image_size"] == [64, 64]
