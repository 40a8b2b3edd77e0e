"""Determinism: the same bundle (or model), seed and inputs give a bit-identical image on the same runtime,
from a freshly loaded generator each time (new sessions / compiled models, not a cached result).

onnxruntime, OpenVINO and TorchScript run the same random tiny weights (runtime_fixtures); the PyTorch
reference runs the embedded ``tiny`` model. Core ML can only predict on macOS (marked ``macos``).
Cross-runtime agreement (within a tolerance, not bit for bit) is tests/test_runtime_generator.py's job.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from runtime_fixtures import LCM_CONFIG, build_tiny_bundle, face_images, make_modules  # noqa: E402

from dhumandiff.runtimes import load_bundle  # noqa: E402

PROMPT = "a photo of the man and woman at the beach"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    mods = make_modules(seed=3)
    out = {rt: build_tiny_bundle(root / rt, rt, modules=mods).path for rt in ("onnx", "openvino", "torchscript")}
    out["onnx-lcm"] = build_tiny_bundle(root / "lcm", "onnx", cfg=False, scheduler=LCM_CONFIG, seed=4).path
    return out


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("runtime", ["onnx", "openvino", "torchscript", "onnx-lcm"])
def test_bundle_runtime_is_bit_identical(bundles: dict[str, Path], runtime: str) -> None:
    """Two fresh loads, same seed: identical latents and PNG bytes; another seed differs (the test can fail).
    ``onnx-lcm`` also draws per-step noise (LCM), which must come from the seed too."""
    faces = face_images()
    runs = [load_bundle(bundles[runtime], num_threads=1)(*faces, PROMPT, seed=11, steps=3) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].latents, runs[1].latents)
    assert _png(runs[0].image) == _png(runs[1].image)
    other = load_bundle(bundles[runtime], num_threads=1)(*faces, PROMPT, seed=12, steps=3)
    assert not np.array_equal(other.latents, runs[0].latents)


def test_torch_reference_is_bit_identical() -> None:
    from dhumandiff.model.generate import generate_portrait, load_model

    faces = (REPO / "examples" / "face_a.png", REPO / "examples" / "face_b.png")
    prompt = "a man and a woman on the beach"
    a = generate_portrait(load_model("tiny"), *faces, prompt, steps=2, seed=5)
    b = generate_portrait(load_model("tiny"), *faces, prompt, steps=2, seed=5)
    assert _png(a.image) == _png(b.image)
    c = generate_portrait(load_model("tiny"), *faces, prompt, steps=2, seed=6)
    assert _png(c.image) != _png(a.image)


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts on macOS only")
def test_coreml_is_bit_identical(tmp_path: Path) -> None:  # pragma: no cover - macOS only
    from dhumandiff.export.bundle import export_bundle
    from dhumandiff.model.generate import load_model

    bundle = export_bundle(load_model("tiny"), tmp_path / "coreml", "coreml", precision="fp32", source_model="tiny")
    faces = (REPO / "examples" / "face_a.png", REPO / "examples" / "face_b.png")
    runs = [load_bundle(bundle, device="cpu")(*faces, "a man and a woman on the beach", seed=5, steps=2)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].latents, runs[1].latents)
    assert _png(runs[0].image) == _png(runs[1].image)
