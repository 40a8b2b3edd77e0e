"""Quantised bundles of the embedded tiny model: each variant is smaller, loads and generates through the
unchanged runtimes, records its fidelity budget, and ``run_parity`` holds it to that budget.

One calibration set (``test_calibration.shared_calibration``: 4 records x 3 steps) serves every variant; parity
generates with those 3 steps. Core ML cannot predict on Linux: there the packages are checked by their spec
(constexpr ops, size) and by their decompressed weights; prediction tests are marked ``macos``.
"""

from __future__ import annotations

import dataclasses

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dhumandiff.checks.parity import run_parity
from dhumandiff.errors import DHumanDiffError, ParityError
from dhumandiff.export.bundle import export_bundle
from dhumandiff.export.quantize_modes import BUDGETS, QuantizeOptions
from dhumandiff.model.generate import load_model
from dhumandiff.utils.cpu import CpuFeatures, cpu_features
from calibration_fixtures import LAYERS, STEPS, shared_calibration

VARIANTS = [("onnx", "int8-static"), ("onnx", "int8-dynamic"), ("openvino", "int8-weights"),
            ("openvino", "int4-weights"), ("openvino", "int8"), ("coreml", "palettize-6"), ("coreml", "linear-int8")]
#: ONNX int8 picks its kernel by the exporting CPU (u8 x s8 with VNNI, u8 x u8 without: exact on every CPU).
#: A VNNI machine also checks the u8 x u8 variant that AVX2-only machines export ("MODE:KERNEL").
if cpu_features().vnni:
    VARIANTS.insert(1, ("onnx", "int8-static:u8u8"))
#: Core ML conversions of the whole bundle take 60-100 s each on 2 cores: they run with ``-m slow`` (and on macOS
#: for predictions); the default suite checks Core ML's compression ops on the shared converted bundle of
#: tests/test_export_coreml.py (palettize 6 / 4 bits, linear int8) instead. The u8 x u8 variant a VNNI machine adds
#: is what AVX2-only machines export by default: ``-m slow`` here. OpenVINO's int8 weight compression is the int4
#: path at 8 bits (int4-weights and int8 stay in the default run).
SLOW = {("coreml", "palettize-6"), ("coreml", "linear-int8"), ("onnx", "int8-static:u8u8"),
        ("openvino", "int8-weights")}


def _params(variants: list[tuple[str, str]]) -> list:
    return [pytest.param(r, m, id=f"{r}-{m}", marks=[pytest.mark.slow] if (r, m) in SLOW else [])
            for r, m in variants]
FACES = Path(__file__).resolve().parents[1] / "examples"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def calib(tmp_path_factory, tiny) -> Path:
    return shared_calibration(tmp_path_factory, tiny)


@pytest.fixture(scope="module")
def fp32_sizes() -> dict[str, int]:
    """On-disk size of the fp32 bundle of ``tiny``: the embedded ONNX bundle is that export (an OpenVINO IR's
    ``.bin`` and Core ML's fp32 weights hold the same fp32 bytes)."""
    from dhumandiff.runtimes.embedded import embedded_bundle

    size = _size(embedded_bundle())
    return {rt: size for rt in ("onnx", "openvino", "coreml")}


@pytest.fixture(scope="module")
def bundles(tiny, calib, tmp_path_factory):
    """Each variant exported once, on first use."""
    root = tmp_path_factory.mktemp("quantised")
    made: dict[tuple[str, str], Path] = {}

    def get(runtime: str, mode: str) -> Path:
        if (runtime, mode) not in made:
            precision = "fp16" if runtime == "coreml" else "fp32"
            name, _, kernel = mode.partition(":")
            options = QuantizeOptions(name, calibration=calib, int8_kernel=kernel or "auto")
            made[(runtime, mode)] = export_bundle(tiny, root / f"{runtime}-{mode.replace(':', '-')}", runtime,
                                                  precision, source_model="tiny", quantization=options)
        return made[(runtime, mode)]

    return get


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


# ------------------------------------------------------------------------------------------ every variant


@pytest.mark.parametrize("runtime,mode", _params(VARIANTS))
def test_variant_is_smaller_and_records_its_budget(bundles, fp32_sizes, runtime, mode):
    bundle = bundles(runtime, mode)
    m = _manifest(bundle)
    q = m["quantization"]
    assert q["mode"] == mode.partition(":")[0] and q["runtime"] == runtime and m["precision"] == q["precision"] != "fp32"
    assert q["budget"] == BUDGETS[q["weight_bits"]]
    assert m["budget"]["end_to_end_psnr_db"] == q["budget"]["psnr_db"]
    assert set(q["components"]) == set(m["components"]) - {"vae_decoder"}
    assert q["calibration"]["steps"] == STEPS and len(q["calibration"]["tensors_sha256"]) == 64
    for name in q["components"]:
        graph = q["graphs"][name]
        assert graph["bytes_after"] < graph["bytes_before"], (name, graph)
        assert m["export"]["graph_precision"][name] == q["precision"]
        assert m["budget"]["components"][name]["atol"] is None  # judged by cosine / PSNR
    assert m["export"]["graph_precision"]["vae_decoder"] in ("fp32", "fp16")
    assert _size(bundle) < fp32_sizes[runtime], (_size(bundle), fp32_sizes[runtime])


@pytest.mark.parametrize("runtime,mode", _params([v for v in VARIANTS if v[0] != "coreml"]))
def test_variant_loads_generates_and_is_held_to_its_budget(bundles, tiny, runtime, mode, tmp_path):
    from dhumandiff.runtimes import load_bundle

    bundle = bundles(runtime, mode)
    result = load_bundle(bundle)(FACES / "face_a.png", FACES / "face_b.png", "a man and a woman on the beach",
                                 steps=2, seed=1)
    image = np.asarray(result.image)
    assert image.shape == (64, 64, 3) and image.std() > 5

    report = run_parity(bundle, model=tiny, steps=STEPS, strict=False, report=tmp_path / "parity.json")
    e2e = report.end_to_end
    budget = _manifest(bundle)["quantization"]["budget"]
    assert report.quantization["budget"] == budget
    assert e2e.min_psnr_db == budget["psnr_db"] and e2e.identity_max_delta == budget["identity_delta"]
    assert 10.0 < e2e.psnr_db < 100.0  # quantised: measurably different from fp32, still the same picture
    assert e2e.identity_delta is not None and 0.0 <= e2e.identity_delta < 1.0
    assert e2e.identity_seeds == [0, 1, 2, 3], "identity is judged on the mean over four images"
    expected = (e2e.psnr_db >= budget["psnr_db"] and e2e.identity_delta <= budget["identity_delta"]
                and min(e2e.identity_cosine) >= e2e.identity_min_cosine)
    assert e2e.passed == expected, e2e.failures
    assert all(c.passed for c in report.components), report.failures
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["end_to_end"]["identity_delta"] == pytest.approx(e2e.identity_delta)
    assert data["quantization"]["mode"] == mode.partition(":")[0]


def test_over_strict_budget_fails(bundles, tiny, tmp_path):
    bundle = tmp_path / "strict"
    shutil.copytree(bundles("onnx", "int8-dynamic"), bundle)
    raw = _manifest(bundle)
    raw["quantization"]["budget"] = {"psnr_db": 150.0, "identity_delta": 0.0}  # no int8 graph gets there
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(ParityError, match="image PSNR .* < 150.0 dB") as info:
        run_parity(bundle, model=tiny, steps=STEPS)
    assert not info.value.report.passed


# -------------------------------------------------------------------------------------------- what's inside


def test_onnx_graphs_hold_int8(bundles):
    import onnx

    static = onnx.load(str(bundles("onnx", "int8-static") / "unet.onnx"))
    ops = [n.op_type for n in static.graph.node]
    assert ops.count("DequantizeLinear") > 50 and ops.count("QuantizeLinear") > 20  # QDQ format
    kernel = cpu_features().int8_kernel  # s8 weights with VNNI; u8 (exact without VNNI) elsewhere
    weight_type = onnx.TensorProto.INT8 if kernel == "u8s8" else onnx.TensorProto.UINT8
    weights = [i for i in static.graph.initializer if i.data_type == weight_type]
    assert len(weights) > 50
    q = _manifest(bundles("onnx", "int8-static"))["quantization"]
    assert q["graphs"]["unet"]["int8_kernel"] == kernel and q["cpu"]["vnni"] == cpu_features().vnni
    dynamic = onnx.load(str(bundles("onnx", "int8-dynamic") / "unet.onnx"))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & {n.op_type for n in dynamic.graph.node}


def test_u8s8_bundle_warns_on_a_cpu_without_vnni(bundles, monkeypatch):
    """A bundle quantised for u8 x s8 (VNNI) kernels says so when it runs on an AVX2-only CPU; a u8 x u8 one runs
    there without a word."""
    import dhumandiff.runtimes.generator as generator
    from dhumandiff.contract.bundle import load_manifest

    monkeypatch.setattr(generator, "cpu_features",
                        lambda: CpuFeatures(model="AVX2-only", machine="x86_64", cores=2, flags=("avx2", "fma")))
    m = load_manifest(bundles("onnx", "int8-static"))
    if cpu_features().vnni:
        with pytest.warns(RuntimeWarning, match=r"u8 x s8 kernels; this CPU \(AVX2\) has no VNNI.*--int8-kernel u8u8"):
            assert generator.warn_if_cpu_unfit(m)
        # the same bundle had it been exported with u8 x u8 kernels (as an AVX2-only machine does): no warning
        u8u8 = dataclasses.replace(m, extra={**m.extra, "quantization": {
            **m.extra["quantization"], "graphs": {name: {**g, "int8_kernel": "u8u8"} for name, g in
                                                  m.extra["quantization"]["graphs"].items()}}})
        assert generator.warn_if_cpu_unfit(u8u8) is None
    else:
        assert generator.warn_if_cpu_unfit(m) is None  # exported here: u8 x u8


def test_sensitive_layers_stay_float(tiny, calib, tmp_path):
    """--keep-float N: the N most sensitive layers (from the analysis) keep float weights in the graph."""
    import onnx

    from dhumandiff.calibration.sensitivity import sensitive_layers
    from dhumandiff.calibration.store import CalibrationSet

    keep = sensitive_layers(CalibrationSet.load(calib).sensitivity(), "int8_psnr_db", keep=2)
    bundle = export_bundle(tiny, tmp_path / "b", "onnx", source_model="tiny",
                           quantization=QuantizeOptions("int8-static", calibration=calib, keep_float=2,
                                                        components=("unet",)))
    q = _manifest(bundle)["quantization"]
    assert q["excluded_layers"] == keep and q["components"] == ["unet"]
    nodes = q["graphs"]["unet"]["excluded_layer_nodes"]
    model = onnx.load(str(bundle / "unet.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    for layer in keep:
        assert nodes[layer], layer
        for node in (n for n in model.graph.node if n.name in nodes[layer]):
            weight = node.input[1]
            assert weight in inits or producers[weight].op_type != "DequantizeLinear", (layer, node.name)


def test_openvino_modes_compress(bundles):
    import openvino as ov

    def census(bundle: Path, graph: str = "unet") -> tuple[int, set]:
        model = ov.Core().read_model(str(bundle / f"{graph}.xml"))
        fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        types = {op.get_element_type().get_type_name() for op in model.get_ordered_ops()
                 if op.get_type_name() == "Constant"}
        return fq, types

    fq, types = census(bundles("openvino", "int8"), "text_encoder")  # int8-weights: the int8 bundle's encoders
    assert fq == 0 and "u8" in types
    fq, types = census(bundles("openvino", "int4-weights"))
    assert "u4" in types or "i4" in types
    fq, _ = census(bundles("openvino", "int8"))
    assert fq > 20  # activations quantised too ...
    q = _manifest(bundles("openvino", "int8"))["quantization"]
    assert q["activation_components"] == ["unet"]  # ... in the UNet; the encoders get int8 weights
    assert q["graphs"]["text_encoder"]["method"] == "int8-weights" and q["graphs"]["unet"]["method"] == "int8"


@pytest.mark.parametrize("mode,op", [pytest.param("palettize-6", "constexpr_lut_to_dense", marks=pytest.mark.slow),
                                     pytest.param("linear-int8", ("constexpr_affine_dequantize",
                                                                  "constexpr_blockwise_shift_scale"),
                                                  marks=pytest.mark.slow)])
def test_coreml_weights_are_compressed(bundles, tiny, mode, op):
    from dhumandiff.export.quantize_coreml import op_types

    bundle = bundles("coreml", mode)
    m = _manifest(bundle)
    ops = op_types(bundle / m["components"]["unet"]["file"])
    wanted = (op,) if isinstance(op, str) else op
    assert sum(ops.get(o, 0) for o in wanted) > 20, ops
    assert m["components"]["unet"]["coreml"]["compression"]["mode"] == mode
    assert m["export"]["validation"]["unet"]["quantized"]["measured_by"].startswith(
        "coreml predict" if sys.platform == "darwin" else "decompressed weights")
    # The bundle's exact weights, run through the runtimes' own sampler loop: Core ML's arithmetic on Linux.
    report = run_parity(bundle, model=tiny, steps=STEPS, strict=False, weights_only=True)
    e2e = report.end_to_end
    assert report.runner and "torch" in report.runner[0]
    assert e2e.min_psnr_db == m["quantization"]["budget"]["psnr_db"] and 15.0 < e2e.psnr_db <= 200.0
    assert e2e.passed == (e2e.psnr_db >= e2e.min_psnr_db and e2e.identity_delta <= e2e.identity_max_delta
                          and min(e2e.identity_cosine) >= e2e.identity_min_cosine)


@pytest.mark.slow
def test_coreml_mixed_bit_follows_the_recipe(tiny, calib, tmp_path):
    from dhumandiff.export.quantize_coreml import op_types

    bundle = export_bundle(tiny, tmp_path / "mixed", "coreml", "fp16", source_model="tiny",
                           quantization=QuantizeOptions("mixed-bit", calibration=calib, avg_bits=6.0))
    q = _manifest(bundle)["quantization"]
    assert q["components"] == ["unet"] and q["recipe"]["average_bits"] <= 6.0
    assert set(q["recipe"]["bits"]) == {x for x in LAYERS if x in q["recipe"]["bits"]}
    assert op_types(bundle / "unet.mlpackage").get("constexpr_lut_to_dense", 0) > 0


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
@pytest.mark.parametrize("mode", ["palettize-6", "linear-int8"])
def test_coreml_variant_generates_on_macos(bundles, tiny, mode):
    from dhumandiff.runtimes import load_bundle

    bundle = bundles("coreml", mode)
    image = np.asarray(load_bundle(bundle)(FACES / "face_a.png", FACES / "face_b.png", "a man and a woman",
                                           steps=2).image)
    assert image.shape == (64, 64, 3)
    report = run_parity(bundle, model=tiny, steps=STEPS, strict=False)
    assert report.end_to_end.psnr_db > 15.0


# ------------------------------------------------------------------------------------------------ refusals


def test_refusals(tiny, calib, tmp_path):
    with pytest.raises(DHumanDiffError, match="needs a calibration set"):
        export_bundle(tiny, tmp_path / "a", "onnx", quantization=QuantizeOptions("int8-static"))
    with pytest.raises(DHumanDiffError, match="not a onnx variant.*int8-static"):
        export_bundle(tiny, tmp_path / "b", "onnx", quantization=QuantizeOptions("palettize-6"))
    with pytest.raises(DHumanDiffError, match="fp32"):
        export_bundle(tiny, tmp_path / "c", "onnx", "fp16", quantization=QuantizeOptions("int8-dynamic"))
    assert not any(tmp_path.iterdir()), "nothing written on a refusal"


def test_cli_export_quantized(calib, tmp_path):
    from dhumandiff.cli.main import main

    out = tmp_path / "b"
    args = ["export", "openvino", "tiny", "--out", str(out), "--quantize", "int8-weights", "--calibration", str(calib),
            "--keep-float", "1", "--symmetric"]
    assert main(args) == 0
    q = _manifest(out)["quantization"]
    assert q["mode"] == "int8-weights" and len(q["excluded_layers"]) == 1 and q["settings"]["symmetric"] is True
    assert main(["export", "onnx", "tiny", "--out", str(tmp_path / "c"), "--quantize", "int4"]) == 1
    assert main(["parity", str(out), "--steps", str(STEPS), "--report", str(tmp_path / "p.json")]) in (0, 13)
    assert "identity_delta" in json.loads((tmp_path / "p.json").read_text())["end_to_end"]
