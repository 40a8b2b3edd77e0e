"""Every component exported to ONNX / OpenVINO / TorchScript matches the torch fp32 wrapper it came from.

Random-weight tiny models (and xl-test for SDXL's extra inputs) keep these fast; the graphs are run with the
real backends (onnxruntime sessions, OpenVINO compiled models, torch.jit.load), never through the exporter's
own validation, so a bug in that validation cannot hide a bad graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dhumandiff.export.artifacts import GraphJob
from dhumandiff.export.bundle import export_bundle
from dhumandiff.export.specs import components_for, get_spec, unet_batch
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.utils.regions import default_boxes, region_mask
from model_fixtures import WORDS, make_tiny_model

@pytest.fixture(scope="module")
def tiny() -> DHumanDiff:
    return make_tiny_model()


def reference_outputs(model: DHumanDiff, name: str, example: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    spec = get_spec(name)
    with torch.no_grad():
        out = spec.build(model).eval()(*example.values())
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(spec.outputs, out)}


def examples(model: DHumanDiff) -> dict[str, dict[str, torch.Tensor]]:
    """Example inputs per component, with a seed other than the exporter's own validation seed (0)."""
    return {s.name: s.example(model, unet_batch(model), seed=7) for s in components_for(model)}


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_bundles(tiny: DHumanDiff, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {p: export_bundle(tiny, root / p, "onnx", p, source_model="tiny") for p in ("fp32", "fp16")}


def _ort_run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(feed), "graph inputs must carry the contract's names"
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def test_onnx_fp32_every_component_within_1e_4(tiny, onnx_bundles):
    import onnx

    bundle = onnx_bundles["fp32"]
    errors = {}
    for name, ex in examples(tiny).items():
        path = bundle / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        got = _ort_run(path, {k: v.numpy() for k, v in ex.items()})
        for out, ref in reference_outputs(tiny, name, ex).items():
            assert got[out].shape == ref.shape
            errors[f"{name}.{out}"] = float(np.abs(got[out] - ref).max())
    assert set(n.split(".")[0] for n in errors) == {s.name for s in components_for(tiny)}
    assert "identity_encoder.embedding" in errors
    assert max(errors.values()) <= 1e-4, errors


def test_onnx_fp16_cosine_and_fp32_io(tiny, onnx_bundles):
    import onnx

    bundle = onnx_bundles["fp16"]
    for name, ex in examples(tiny).items():
        path = bundle / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in graph.input), \
            "fp16 graphs keep float32 inputs (keep_io_types)"
        weights16 = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
        if name == "vae_decoder":
            assert weights16 == 0, "the VAE decoder stays fp32 in fp16 bundles"
        else:
            assert weights16 > 0, f"{name} was not converted to fp16"
        got = _ort_run(path, {k: v.numpy() for k, v in ex.items()})
        for out, ref in reference_outputs(tiny, name, ex).items():
            assert got[out].dtype == np.float32
            assert cos(got[out], ref) >= 0.999, (name, out)


def test_onnx_large_graph_goes_to_one_external_data_file(tiny, tmp_path):
    """The > 2 GB path (sd15/xl UNets), forced on a small graph: one .onnx.data file, readable and valid."""
    import onnx

    from dhumandiff.export import onnx_export

    src = tmp_path / "src.onnx"
    spec = get_spec("vae_decoder")
    ex = spec.example(tiny, 1, seed=3)
    torch.onnx.export(spec.build(tiny).eval(), tuple(ex.values()), str(src), input_names=["latent_sample"],
                      output_names=["sample"], opset_version=onnx_export.OPSET, dynamo=False)
    out = tmp_path / "bundle"
    out.mkdir()
    files = onnx_export.save(onnx.load(str(src)), out, "vae_decoder", threshold=0)
    assert files == ["vae_decoder.onnx", "vae_decoder.onnx.data"]
    assert sorted(p.name for p in out.iterdir()) == files
    assert (out / "vae_decoder.onnx").stat().st_size < 200_000 < (out / "vae_decoder.onnx.data").stat().st_size
    onnx.checker.check_model(str(out / "vae_decoder.onnx"), full_check=True)
    got = _ort_run(out / "vae_decoder.onnx", {"latent_sample": ex["latent_sample"].numpy()})
    ref = reference_outputs(tiny, "vae_decoder", ex)["sample"]
    assert np.abs(got["sample"] - ref).max() <= 1e-4


@pytest.mark.parametrize("runtime", ["onnx", "openvino", "torchscript"])
def test_dynamic_unet_runs_other_batch_and_size(tiny, tmp_path, runtime):
    """--dynamic graphs take another batch and latent size than they were traced with."""
    import importlib

    backend = importlib.import_module(f"dhumandiff.export.{runtime}_export")
    spec = get_spec("unet")
    module = spec.build(tiny).eval()
    job = GraphJob("unet", module, spec.input_names(tiny), spec.outputs, spec.example(tiny, 2), spec.axes(tiny, True),
                   tmp_path, "fp32")
    with torch.no_grad():
        files = backend.export(job)
    g = torch.Generator().manual_seed(5)
    other = {"sample": torch.randn(1, 4, 24, 32, generator=g), "timestep": torch.tensor([321.0]),
             "encoder_hidden_states": torch.randn(1, 77, 64, generator=g),
             "ip_tokens": torch.randn(1, 32, 64, generator=g),
             "region_mask": torch.from_numpy(region_mask(default_boxes(), 24, 32))[None],
             "ip_scale": torch.tensor([0.7])}
    with torch.no_grad():
        ref = module(*other.values()).numpy()
    got = backend.run(tmp_path, files, {k: v.numpy() for k, v in other.items()}, spec.outputs)["noise_pred"]
    assert got.shape == (1, 4, 24, 32)
    assert np.abs(got - ref).max() <= 1e-4


# --------------------------------------------------------------------------------------------- OpenVINO


@pytest.fixture(scope="module")
def openvino_bundles(tiny: DHumanDiff, tmp_path_factory) -> dict[str, Path]:
    """Each precision's bundle, exported on first use (the fp16 one only under ``-m slow``: ~30 s)."""
    root = tmp_path_factory.mktemp("openvino")
    class Lazy(dict):
        def __missing__(self, p: str) -> Path:
            self[p] = export_bundle(tiny, root / p, "openvino", p, source_model="tiny")
            return self[p]

    return Lazy()


def _ov_run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": 1})
    ports = {}
    for port in compiled.inputs:
        name = next(n for n in port.get_names() if n in feed)  # KeyError-free only with contract names
        ports[port] = feed[name]
    result = compiled(ports)
    return {next(iter(p.get_names())): np.asarray(result[p]) for p in compiled.outputs}


def test_openvino_fp32_every_component_within_1e_4(tiny, openvino_bundles):
    bundle = openvino_bundles["fp32"]
    errors = {}
    for name, ex in examples(tiny).items():
        got = _ov_run(bundle / f"{name}.xml", {k: v.numpy() for k, v in ex.items()})
        for out, ref in reference_outputs(tiny, name, ex).items():
            errors[f"{name}.{out}"] = float(np.abs(got[out] - ref).max())
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.slow
def test_openvino_fp16_ir_weights_and_cosine(tiny, openvino_bundles):
    bundle32, bundle16 = openvino_bundles["fp32"], openvino_bundles["fp16"]
    for name, ex in examples(tiny).items():
        smaller = (bundle16 / f"{name}.bin").stat().st_size < 0.6 * (bundle32 / f"{name}.bin").stat().st_size
        assert smaller == (name != "vae_decoder"), f"{name}: fp16 IR weights (VAE decoder stays fp32)"
        got = _ov_run(bundle16 / f"{name}.xml", {k: v.numpy() for k, v in ex.items()})
        for out, ref in reference_outputs(tiny, name, ex).items():
            assert cos(got[out], ref) >= 0.999, (name, out)


# ------------------------------------------------------------------------------------------ TorchScript


def test_torchscript_bundle_loads_without_model_code(tiny, tmp_path):
    bundle = export_bundle(tiny, tmp_path / "ts", "torchscript", "fp32")
    for name, ex in examples(tiny).items():
        graph = torch.jit.load(str(bundle / f"{name}.pt"))
        with torch.no_grad():
            out = graph(*ex.values())
        out = out if isinstance(out, tuple) else (out,)
        for got, (o, ref) in zip(out, reference_outputs(tiny, name, ex).items()):
            assert np.abs(got.numpy() - ref).max() <= 1e-5, (name, o)


# ----------------------------------------------------------------------------------------------- SDXL


def test_xl_unet_and_second_text_encoder_export_and_match(tmp_path):
    """xl-test: the UNet's extra SDXL inputs and text encoder 2's two outputs survive ONNX and OpenVINO."""
    model = DHumanDiff.from_backbone("xl-test", words=WORDS).eval()
    names = [s.name for s in components_for(model)]
    assert "text_encoder_2" in names and "identity_encoder" not in names
    assert get_spec("unet").input_names(model)[-2:] == ("text_embeds", "time_ids")
    for runtime in ("onnx", "openvino"):
        from importlib import import_module

        backend = import_module(f"dhumandiff.export.{runtime}_export")
        for name in ("text_encoder_2", "unet"):
            spec = get_spec(name)
            module = spec.build(model).eval()
            job = GraphJob(name, module, spec.input_names(model), spec.outputs, spec.example(model, 2),
                           {}, tmp_path, "fp32")
            with torch.no_grad():
                files = backend.export(job)
            ex = spec.example(model, 2, seed=11)
            got = backend.run(tmp_path, files, {k: v.numpy() for k, v in ex.items()}, spec.outputs)
            ref = reference_outputs(model, name, ex)
            assert set(got) == set(spec.outputs)
            for out in spec.outputs:
                assert got[out].shape == ref[out].shape
                assert np.abs(got[out] - ref[out]).max() <= 1e-4, (runtime, name, out)


def test_bundle_records_validation_per_component(onnx_bundles):
    manifest = json.loads((onnx_bundles["fp32"] / "bundle.json").read_text())
    validation = manifest["export"]["validation"]
    assert set(validation) == set(manifest["components"])
    assert all(v["max_abs"] <= 1e-4 for v in validation.values())
    fp16 = json.loads((onnx_bundles["fp16"] / "bundle.json").read_text())
    assert fp16["export"]["graph_precision"]["vae_decoder"] == "fp32"
    assert fp16["export"]["graph_precision"]["unet"] == "fp16"
    assert fp16["budget"]["components"]["vae_decoder"]["atol"] == 1e-4
    assert fp16["budget"]["end_to_end_psnr_db"] == 35.0
