"""The UNet at its real size: an sd15 UNet (random weights, ~3.4 GB in fp32) through ONNX with external data and
through OpenVINO, one UNet call compared with torch.

The full-size run is ``@pytest.mark.slow`` (``pytest -m slow``; ~10 GB RAM, minutes of CPU). The same code runs
in the fast suite on ``sd15-test`` so the slow test cannot rot unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dhumandiff.export.bundle import ExportOptions, export_component, exporter
from dhumandiff.export.specs import get_spec, unet_batch
from dhumandiff.model.dhumandiff_model import DHumanDiff

WORDS = ["a", "photo", "of", "man", "woman", "and"]


def unet_parity(backbone: str, root: Path) -> dict[str, dict]:
    """Export the UNet to ONNX and OpenVINO (fp32) and compare one call at a second seed with torch."""
    model = DHumanDiff.from_backbone(backbone, words=WORDS).eval()
    spec = get_spec("unet")
    example = spec.example(model, unet_batch(model), seed=1)
    with torch.no_grad():
        reference = spec.build(model).eval()(*example.values()).numpy()
    results = {}
    for runtime in ("onnx", "openvino"):
        out = root / runtime
        out.mkdir()
        # export_component also runs the exporter's own gate (seed 0) and raises ParityError beyond 1e-4
        comp = export_component(spec, model, out, ExportOptions(runtime, "fp32"))
        files = [comp.file, *comp.extra_files]
        got = exporter(runtime).run(out, files, {k: v.numpy() for k, v in example.items()}, spec.outputs)
        err = float(np.abs(got["noise_pred"] - reference).max())
        results[runtime] = {"files": files, "max_abs": err, "validation": comp.validation,
                            "sizes": {f: (out / f).stat().st_size for f in files}}
    return results


def test_unet_parity_code_path_on_sd15_test(tmp_path):
    results = unet_parity("sd15-test", tmp_path)
    assert results["onnx"]["files"] == ["unet.onnx"]  # small graphs stay in one file
    assert results["openvino"]["files"] == ["unet.xml", "unet.bin"]
    assert all(r["max_abs"] <= 1e-4 for r in results.values()), results


@pytest.mark.slow
def test_sd15_unet_onnx_external_data_and_openvino(tmp_path):
    import onnx

    results = unet_parity("sd15", tmp_path)
    onnx_files = results["onnx"]["files"]
    assert onnx_files == ["unet.onnx", "unet.onnx.data"], "weights over 2 GB go to one external data file"
    sizes = results["onnx"]["sizes"]
    assert sizes["unet.onnx"] < 50_000_000 and sizes["unet.onnx.data"] > 2_000_000_000
    onnx.checker.check_model(str(tmp_path / "onnx" / "unet.onnx"), full_check=True)
    assert results["openvino"]["sizes"]["unet.bin"] > 2_000_000_000
    for runtime, r in results.items():
        assert r["max_abs"] <= 1e-4, (runtime, r)
