"""Adapters on real backends (no mocks): NaN/Inf gate, device refusals, precision hints, I/O checks."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dhumandiff.errors import BundleError, NumericalError, RuntimeUnavailableError
from dhumandiff.runtimes.adapters import available_runtimes, make_runner
from dhumandiff.runtimes.adapters.onnx import OnnxRunner, choose_providers
from dhumandiff.runtimes.adapters.openvino import OpenVINORunner, precision_hint, resolve_device
from dhumandiff.contract.bundle import ComponentSpec, TensorSpec
from dhumandiff.utils.cpu import CpuFeatures, cpu_features

SHAPE = [1, 4, 2, 2]


def _unary_graph(path: Path, op: str, in_name: str, out_name: str, extra_input: str | None = None) -> None:
    inputs = [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, SHAPE)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, SHAPE))
    node = helper.make_node(op, [in_name], [out_name])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, SHAPE)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _components(tmp_path: Path, name: str, op: str, in_name: str, out_name: str, **kw: str) -> dict:
    _unary_graph(tmp_path / f"{name}.onnx", op, in_name, out_name, kw.get("extra_input"))
    declared_out = kw.get("declared_out", out_name)
    spec = ComponentSpec(name, f"{name}.onnx", (), {}, {in_name: TensorSpec(tuple(SHAPE), "float32")},
                         {declared_out: TensorSpec(tuple(SHAPE), "float32")})
    return {name: spec}


@pytest.mark.parametrize("runner_cls", [OnnxRunner, OpenVINORunner])
def test_nan_from_vae_decoder_suggests_fp32_vae(tmp_path: Path, runner_cls: type) -> None:
    comps = _components(tmp_path, "vae_decoder", "Sqrt", "latent_sample", "sample")
    runner = runner_cls(comps, tmp_path, device="cpu")
    ok = runner.run("vae_decoder", {"latent_sample": np.full(SHAPE, 4.0, np.float32)})
    np.testing.assert_allclose(ok["sample"], 2.0)
    with pytest.raises(NumericalError, match=r"vae_decoder produced NaN in output 'sample' .*--vae-precision fp32"):
        runner.run("vae_decoder", {"latent_sample": -np.ones(SHAPE, np.float32)})


def test_inf_from_another_component_names_it(tmp_path: Path) -> None:
    comps = _components(tmp_path, "unet", "Log", "sample", "noise_pred")
    runner = OnnxRunner(comps, tmp_path)
    with pytest.raises(NumericalError, match=r"^unet produced Inf in output 'noise_pred' \(onnx on cpu\); try an fp32"):
        runner.run("unet", {"sample": np.zeros(SHAPE, np.float32)})


def test_inputs_are_checked_against_the_manifest(tmp_path: Path) -> None:
    runner = OnnxRunner(_components(tmp_path, "unet", "Relu", "sample", "noise_pred"), tmp_path)
    with pytest.raises(ValueError, match=r"unet\.sample: got shape \[1, 4, 3, 3\], the bundle expects \[1, 4, 2, 2\]"):
        runner.run("unet", {"sample": np.zeros((1, 4, 3, 3), np.float32)})
    out = runner.run("unet", {"sample": -np.ones(SHAPE, np.float64)})  # cast to the declared float32
    assert out["noise_pred"].dtype == np.float32 and not out["noise_pred"].any()


def test_graph_and_manifest_disagreements_are_bundle_errors(tmp_path: Path) -> None:
    comps = _components(tmp_path, "unet", "Relu", "sample", "noise_pred", extra_input="secret")
    with pytest.raises(BundleError, match=r"takes input\(s\) \['secret'\] that bundle\.json does not declare"):
        OnnxRunner(comps, tmp_path).run("unet", {"sample": np.zeros(SHAPE, np.float32)})
    comps = _components(tmp_path, "vae_decoder", "Relu", "latent_sample", "out", declared_out="sample")
    with pytest.raises(BundleError, match=r"did not return output\(s\) \['sample'\] named in bundle\.json"):
        OnnxRunner(comps, tmp_path).run("vae_decoder", {"latent_sample": np.zeros(SHAPE, np.float32)})


def test_corrupt_graph_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "unet.onnx").write_bytes(b"not a protobuf")
    spec = ComponentSpec("unet", "unet.onnx", (), {}, {"sample": TensorSpec(tuple(SHAPE), "float32")},
                         {"noise_pred": TensorSpec(tuple(SHAPE), "float32")})
    for cls in (OnnxRunner, OpenVINORunner):
        with pytest.raises(BundleError, match=r"cannot (load|compile) unet\.onnx \(unet\)"):
            cls({"unet": spec}, tmp_path).run("unet", {"sample": np.zeros(SHAPE, np.float32)})


# ----------------------------------------------------------------------------------------------- devices


def test_onnx_provider_choice() -> None:
    avail = ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", avail) == ["CUDAExecutionProvider", "OpenVINOExecutionProvider",
                                               "CPUExecutionProvider"]
    assert choose_providers("cpu", avail) == ["CPUExecutionProvider"]
    assert choose_providers("cuda", avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeUnavailableError, match=r"no CoreMLExecutionProvider .*use --device cpu"):
        choose_providers("coreml", avail)
    with pytest.raises(RuntimeUnavailableError, match=r"unknown onnx device 'tpu'"):
        choose_providers("tpu", avail)


def test_onnx_cuda_absent_is_refused(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeUnavailableError, match="no CUDAExecutionProvider"):
        OnnxRunner({}, tmp_path, device="cuda")


def test_openvino_device_absent_is_refused(tmp_path: Path) -> None:
    assert resolve_device("auto", ["CPU"]) == "CPU"
    assert resolve_device("gpu", ["CPU", "GPU.0"]) == "GPU"
    absent = r"OpenVINO device NPU is not present on this machine \(available: CPU\); use --device cpu"
    with pytest.raises(RuntimeUnavailableError, match=absent):
        resolve_device("npu", ["CPU"])
    import openvino as ov

    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU")
    with pytest.raises(RuntimeUnavailableError, match="OpenVINO device GPU is not present"):
        OpenVINORunner({}, tmp_path, device="gpu")


def test_openvino_precision_is_always_explicit(tmp_path: Path) -> None:
    assert precision_hint("fp32", "CPU") == "f32"
    assert precision_hint("fp16", "GPU") == "f16"
    assert precision_hint("fp16", "CPU") == "f32"
    assert precision_hint("int8", "CPU") == "f32"
    assert precision_hint("bf16", "CPU") == ("bf16" if cpu_features().bf16 else "f32")
    assert precision_hint("bf16", "GPU") == "bf16"
    comps = _components(tmp_path, "unet", "Relu", "sample", "noise_pred")
    runner = OpenVINORunner(comps, tmp_path, precision="fp32")
    compiled, _ = runner.handle("unet")
    # this CPU would otherwise compile to bf16
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert runner.providers == ["OpenVINO:CPU:f32"]


def test_openvino_caches_compiled_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second runner (a restart) finds the first one's compiled blob in the cache; ``off`` writes none."""
    comps = _components(tmp_path, "unet", "Relu", "sample", "noise_pred")
    x = np.linspace(-1, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    cache = tmp_path / "ov-cache"
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", str(cache))
    first = OpenVINORunner(comps, tmp_path, precision="fp32")
    assert first.compile_config()["CACHE_DIR"] == str(cache / "cpu-f32-tall")
    want = first.run("unet", {"sample": x})["noise_pred"]
    blobs = sorted(cache.rglob("*.blob"))
    assert blobs, "no compiled blob was cached"
    again = OpenVINORunner(comps, tmp_path, precision="fp32")
    np.testing.assert_array_equal(again.run("unet", {"sample": x})["noise_pred"], want)
    assert sorted(cache.rglob("*.blob")) == blobs, "a restart with the same settings reuses the blob"
    # another precision of the same file never sees the f32 blob (OpenVINO's cache key ignores the hint); on a CPU
    # without native bf16 a bf16 bundle runs f32 (OpenVINO would anyway) and shares the f32 blob
    bf16 = OpenVINORunner(comps, tmp_path, precision="bf16")
    np.testing.assert_allclose(bf16.run("unet", {"sample": x})["noise_pred"], want, atol=1e-2)
    folders = {"cpu-f32-tall", "cpu-bf16-tall"} if cpu_features().bf16 else {"cpu-f32-tall"}
    assert {b.parent.parent.name for b in cache.rglob("*.blob")} == folders
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", "off")
    assert "CACHE_DIR" not in OpenVINORunner(comps, tmp_path, precision="fp32").compile_config()


AVX2_ONLY = CpuFeatures(model="AVX2-only test CPU", machine="x86_64", cores=2, flags=("avx2", "fma"))


def test_openvino_bf16_bundle_runs_f32_on_a_cpu_without_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2-only CPU OpenVINO cannot run bf16: the bf16 bundle compiles at f32 (and says so) instead of
    failing with 'ignored precision', and shares the f32 compile cache."""
    import dhumandiff.runtimes.adapters.openvino as ov_adapter

    monkeypatch.setattr(ov_adapter, "cpu_features", lambda: AVX2_ONLY)
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", str(tmp_path / "ov-cache"))
    assert precision_hint("bf16", "CPU") == "f32" and precision_hint("bf16", "GPU") == "bf16"
    comps = _components(tmp_path, "unet", "Relu", "sample", "noise_pred")
    runner = OpenVINORunner(comps, tmp_path, precision="bf16")
    assert runner.providers == ["OpenVINO:CPU:f32"]
    x = np.linspace(-1, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    np.testing.assert_array_equal(runner.run("unet", {"sample": x})["noise_pred"], np.maximum(x, 0))
    assert {b.parent.parent.name for b in (tmp_path / "ov-cache").rglob("*.blob")} == {"cpu-f32-tall"}


def test_openvino_cache_that_cannot_be_written_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache path that cannot be created (a file is in the way) runs uncached instead of failing to compile."""
    comps = _components(tmp_path, "unet", "Relu", "sample", "noise_pred")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", str(tmp_path / "file" / "cache"))
    runner = OpenVINORunner(comps, tmp_path, precision="fp32")
    assert "CACHE_DIR" not in runner.compile_config()
    out = runner.run("unet", {"sample": -np.ones(SHAPE, np.float32)})["noise_pred"]
    np.testing.assert_array_equal(out, np.zeros(SHAPE, np.float32))


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_refuses_off_macos(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailableError, match=r"^Core ML bundles run on macOS only; "):
        make_runner("coreml", {}, tmp_path)


def test_torchscript_missing_device_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeUnavailableError, match="CUDA is not available to PyTorch here; use --device cpu"):
        make_runner("torchscript", {}, tmp_path, device="cuda")


def test_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tflite'"):
        make_runner("tflite", {}, tmp_path)


def test_available_runtimes_reports_this_machine() -> None:
    infos = {r.name: r for r in available_runtimes(probe_torch=False)}
    assert set(infos) == {"onnx", "openvino", "coreml", "torchscript"}
    assert infos["onnx"].installed and "cpu" in infos["onnx"].devices
    assert "CPUExecutionProvider" in infos["onnx"].providers and infos["onnx"].version
    assert infos["openvino"].installed and "cpu" in infos["openvino"].devices
    if sys.platform != "darwin":
        assert infos["coreml"].devices == []


# ------------------------------------------------------------------------------ OpenVINO compile cache integrity


def _weighted(tmp_path: Path, weight: float, name: str = "unet") -> dict:
    """A graph ``noise_pred = sample + W`` whose constant W (16 floats) lands verbatim in the compiled blob."""
    from onnx import numpy_helper

    w = (np.arange(16, dtype=np.float32) + weight).reshape(SHAPE)
    node = helper.make_node("Add", ["sample", "w"], ["noise_pred"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, SHAPE)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    return {name: ComponentSpec(name, f"{name}.onnx", (), {}, {"sample": TensorSpec(tuple(SHAPE), "float32")},
                                {"noise_pred": TensorSpec(tuple(SHAPE), "float32")})}


def _cached_run(comps: dict, root: Path) -> np.ndarray:
    runner = OpenVINORunner(comps, root, precision="fp32")
    return runner.run("unet", {"sample": np.zeros(SHAPE, np.float32)})["noise_pred"]


def _only_blob(cache: Path) -> Path:
    blobs = sorted(cache.rglob("*.blob"))
    assert len(blobs) == 1, blobs
    return blobs[0]


def _damage(blob: Path, weight: float) -> None:
    """Overwrite the graph's constant inside the compiled blob (what a bad sector or a half-copied cache does)."""
    data = blob.read_bytes()
    w = (np.arange(16, dtype=np.float32) + weight).tobytes()
    assert data.count(w) == 1, "the constant is stored verbatim in the blob"
    blob.write_bytes(data.replace(w, np.full(16, 7.0, np.float32).tobytes()))


def test_openvino_damaged_cached_blob_is_recompiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO imports a cached blob without checking its bytes: a damaged one ran and gave another image (exit 0).
    The record beside the blob catches it: the blob is deleted, compiled again and rewritten."""
    comps = _weighted(tmp_path, 1000.0)
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", "off")
    uncached = _cached_run(comps, tmp_path)
    cache = tmp_path / "ov-cache"
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", str(cache))
    np.testing.assert_array_equal(_cached_run(comps, tmp_path), uncached)
    blob = _only_blob(cache)
    _recorded(blob)
    _damage(blob, 1000.0)
    damaged = blob.read_bytes()
    np.testing.assert_array_equal(_cached_run(comps, tmp_path), uncached)
    assert _only_blob(cache) == blob and blob.read_bytes() != damaged, "the damaged blob was compiled again"
    _recorded(blob)
    # a blob without its record (a crash between compile and record, or copied in) is never imported either
    _damage(blob, 1000.0)
    Path(f"{blob}.sha256.json").unlink()
    np.testing.assert_array_equal(_cached_run(comps, tmp_path), uncached)
    _recorded(blob)


def _recorded(blob: Path) -> None:
    """The blob holds the graph's real constant and its record names the blob's own sha256."""
    record = json.loads(Path(f"{blob}.sha256.json").read_text())
    data = blob.read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["blob"] == blob.name
    assert (np.arange(16, dtype=np.float32) + 1000.0).tobytes() in data


def test_openvino_cache_entry_is_tied_to_the_graph_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each graph's blobs live in a folder keyed by its files' sha256 + settings + OpenVINO version: a blob and
    record of another graph copied over this graph's are never used, and a changed graph gets a fresh folder."""
    cache = tmp_path / "ov-cache"
    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", str(cache))
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    a_root.mkdir(), b_root.mkdir()
    comps_a, comps_b = _weighted(a_root, 1000.0), _weighted(b_root, 2000.0)
    assert _cached_run(comps_a, a_root)[0, 0, 0, 0] == 1000.0
    blob_a = _only_blob(cache)
    want_b = _cached_run(comps_b, b_root)
    assert want_b[0, 0, 0, 0] == 2000.0
    blob_b = next(b for b in cache.rglob("*.blob") if b != blob_a)
    key_a = OpenVINORunner(comps_a, a_root, precision="fp32").cache_key("unet")
    assert blob_a.parent.name == f"unet-{key_a}" and blob_b.parent != blob_a.parent
    for suffix in ("", ".sha256.json"):  # graph a's entry copied over graph b's
        Path(f"{blob_b}{suffix}").write_bytes(Path(f"{blob_a}{suffix}").read_bytes())
    np.testing.assert_array_equal(_cached_run(comps_b, b_root), want_b)
    comps_a2 = _weighted(a_root, 3000.0)  # graph a's file changed in place (same name)
    assert _cached_run(comps_a2, a_root)[0, 0, 0, 0] == 3000.0
    key_a2 = OpenVINORunner(comps_a2, a_root, precision="fp32").cache_key("unet")
    assert key_a2 != key_a and len(list((cache / "cpu-f32-tall" / f"unet-{key_a2}").glob("*.blob"))) == 1


# ------------------------------------------------------------------------- graph shapes against bundle.json


def _spec(shape_in: tuple, shape_out: tuple) -> ComponentSpec:
    return ComponentSpec("vae_decoder", "vae_decoder.onnx", (), {}, {"latent_sample": TensorSpec(shape_in, "float32")},
                         {"sample": TensorSpec(shape_out, "float32")})


@pytest.mark.parametrize("runner_cls", [OnnxRunner, OpenVINORunner])
def test_graph_shapes_that_contradict_bundle_json_are_refused_at_load(tmp_path: Path, runner_cls: type) -> None:
    """A graph whose declared output (or input) shape is not bundle.json's is refused, named, before it runs: the
    image would otherwise fail as a backend or NumPy broadcast traceback several steps later."""
    _unary_graph(tmp_path / "vae_decoder.onnx", "Relu", "latent_sample", "sample")
    x = {"latent_sample": np.zeros((1, 4, 3, 3), np.float32)}
    out = (r"^vae_decoder graph output 'sample' has shape \[1, 4, 2, 2\], bundle\.json declares \[1, 4, 3, 3\]: "
           r".*re-export")
    with pytest.raises(BundleError, match=out):
        runner_cls({"vae_decoder": _spec((1, 4, 2, 2), (1, 4, 3, 3))}, tmp_path).handle("vae_decoder")
    inp = r"^vae_decoder graph input 'latent_sample' has shape \[1, 4, 2, 2\], bundle\.json declares \[1, 4, 3, 3\]"
    with pytest.raises(BundleError, match=inp):
        runner_cls({"vae_decoder": _spec((1, 4, 3, 3), (1, 4, 3, 3))}, tmp_path).run("vae_decoder", x)
    ok = runner_cls({"vae_decoder": _spec((1, 4, 2, 2), ("batch", 4, 2, 2))}, tmp_path)  # named axes are dynamic
    assert ok.run("vae_decoder", {"latent_sample": np.ones(SHAPE, np.float32)})["sample"].shape == tuple(SHAPE)


@pytest.mark.parametrize("runner_cls", [OnnxRunner, OpenVINORunner])
def test_dynamic_graph_output_of_the_wrong_shape_is_refused_after_its_run(tmp_path: Path, runner_cls: type) -> None:
    """A graph with dynamic axes cannot be checked at load: its first output is checked against bundle.json."""
    dims = ["b", "c", "h", "w"]
    node = helper.make_node("Transpose", ["latent_sample"], ["sample"], perm=[0, 1, 3, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("sample", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "vae_decoder.onnx"))
    runner = runner_cls({"vae_decoder": _spec((1, 4, 2, 3), (1, 4, 2, 3))}, tmp_path)
    with pytest.raises(BundleError, match=r"^vae_decoder graph output 'sample' has shape \[1, 4, 3, 2\], bundle\.json "
                                          r"declares \[1, 4, 2, 3\]"):
        runner.run("vae_decoder", {"latent_sample": np.zeros((1, 4, 2, 3), np.float32)})


def test_low_memory_keeps_external_weights_mapped_and_small_graphs_as_usual(tmp_path: Path) -> None:
    """``low_memory``: a graph whose fp16 weights lie in an external file opens at ENABLE_EXTENDED without the
    arena (onnxruntime's ENABLE_ALL would keep an fp32 copy of every weight: 18 GiB for the SDXL UNet); a graph
    with inline weights opens as in a normal run, so its outputs stay bit-identical to one."""
    import onnxruntime as ort

    w = np.linspace(-1, 1, int(np.prod(SHAPE)), dtype=np.float16).reshape(SHAPE)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "w32"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
        initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="unet.onnx.data", size_threshold=0)
    onnx.save_model(model, str(tmp_path / "vae_decoder.onnx"))
    io = ({"x": TensorSpec(tuple(SHAPE), "float32")}, {"y": TensorSpec(tuple(SHAPE), "float32")})
    comps = {"unet": ComponentSpec("unet", "unet.onnx", ("unet.onnx.data",), {}, *io),
             "vae_decoder": ComponentSpec("vae_decoder", "vae_decoder.onnx", (), {}, *io)}
    x = np.ones(SHAPE, np.float32)
    levels = {}
    for mapped in (False, True):
        runner = OnnxRunner(comps, tmp_path, num_threads=1)
        runner.mapped_weights = mapped
        for name in comps:
            session = runner._load(name)
            levels[mapped, name] = session.get_session_options().graph_optimization_level
            np.testing.assert_array_equal(runner.run(name, {"x": x})["y"], x + w.astype(np.float32))
    extended, everything = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert levels[True, "unet"] == extended
    assert levels[False, "unet"] == levels[True, "vae_decoder"] == levels[False, "vae_decoder"] == everything
