"""dhumandiff parity: per-component measurements through the shipped runtime adapters, gated by the budget the
exporter wrote; end to end once the runtime's generator and the tiny world's analyzer exist."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dhumandiff.checks.parity import grid_boxes, run_parity
from dhumandiff.errors import BundleError, ParityError
from dhumandiff.export.bundle import export_bundle
from dhumandiff.model.dhumandiff_model import DHumanDiff
from model_fixtures import WORDS, make_tiny_model



@pytest.fixture(scope="module")
def tiny() -> DHumanDiff:
    return make_tiny_model()


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    return {
        "onnx-fp32": export_bundle(tiny, root / "onnx-fp32", "onnx", "fp32", source_model="tiny"),
        "onnx-fp16": export_bundle(tiny, root / "onnx-fp16", "onnx", "fp16", source_model="tiny"),
        "torchscript-fp32": export_bundle(tiny, root / "ts-fp32", "torchscript", "fp32"),
    }


@pytest.mark.parametrize("key", ["onnx-fp32", "onnx-fp16", "torchscript-fp32"])
def test_components_within_budget(tiny, bundles, tmp_path, key):
    report = tmp_path / "report.json"
    result = run_parity(bundles[key], model=tiny, end_to_end=False, report=report)
    assert result.passed, result.failures
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["end_to_end"] is None
    assert set(data["components"]) == {"identity_encoder", "image_encoder", "face_projection", "text_encoder",
                                       "unet", "vae_decoder"}
    for name, c in data["components"].items():
        if key.endswith("fp32") or name == "vae_decoder":
            assert c["max_abs"] <= 1e-4, (name, c)
        else:
            assert c["cosine"] >= 0.999, (name, c)


def test_outside_budget_raises_after_writing_the_report(tiny, bundles, tmp_path):
    bundle = tmp_path / "strict"
    shutil.copytree(bundles["onnx-fp32"], bundle)
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["budget"]["components"]["unet"]["min_psnr_db"] = 500.0  # no float32 graph gets there
    (bundle / "bundle.json").write_text(json.dumps(raw))
    report = tmp_path / "strict.json"
    with pytest.raises(ParityError, match="unet: PSNR"):
        run_parity(bundle, model=tiny, end_to_end=False, report=report)
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["components"]["unet"]["passed"] is False
    assert data["components"]["text_encoder"]["passed"] is True
    result = run_parity(bundle, model=tiny, end_to_end=False, strict=False)
    assert not result.passed and len(result.failures) == 1


def test_reference_model_must_be_known_and_match(bundles):
    with pytest.raises(BundleError, match="source_model"):
        run_parity(bundles["torchscript-fp32"], end_to_end=False)
    other = DHumanDiff.from_backbone("sd15-test", words=WORDS)
    with pytest.raises(BundleError, match="sd15-test model"):
        run_parity(bundles["onnx-fp32"], model=other, end_to_end=False)


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (128, 96)])
def test_grid_boxes_give_one_mask_under_both_rasterisation_rules(size):
    """The reference (cell centre inside the box) and the runtime (cell overlaps the box) agree on the grid."""
    from dhumandiff.contract.layout import make_layout
    from dhumandiff.contract.layout import region_mask as runtime_mask
    from dhumandiff.utils.regions import region_mask as reference_mask

    h, w = size
    boxes = grid_boxes(h, w)
    np.testing.assert_array_equal(reference_mask(boxes, h, w)[None],
                                  runtime_mask(make_layout(boxes.tolist()), (h, w)))


def _analyzer(model: DHumanDiff):
    """The tiny world's own analyzer once it exists; until then dlib (a real recogniser, used on whole boxes)."""
    if importlib.util.find_spec("dhumandiff.model.faces.world") is not None:
        from dhumandiff.model.generate import default_analyzer

        return default_analyzer(model)
    pytest.importorskip("dlib")
    from dhumandiff.contract.faces.dlib_faces import DlibAnalyzer

    return DlibAnalyzer()


@pytest.mark.parametrize("key", ["onnx-fp32", "onnx-fp16"])
def test_end_to_end_within_budget(tiny, bundles, tmp_path, key):
    """Same faces, prompt, layout and seed through the torch reference and the bundle's NumPy sampler."""
    report = tmp_path / "e2e.json"
    result = run_parity(bundles[key], model=tiny, steps=4, report=report, analyzer=_analyzer(tiny))
    e2e = result.end_to_end
    assert e2e is not None and e2e.passed and result.passed, result.failures
    assert e2e.steps == 4 and e2e.guidance_scale == 3.0
    if key.endswith("fp32"):  # float32 graphs: the uint8 images differ at most by rounding on a few pixels
        assert e2e.psnr_db >= 60.0 and min(e2e.identity_cosine) >= 0.999
    else:
        assert e2e.psnr_db >= 35.0 and min(e2e.identity_cosine) >= 0.95
    data = json.loads(report.read_text())
    assert data["end_to_end"]["passed"] is True and data["end_to_end"]["boxes"] == e2e.boxes
