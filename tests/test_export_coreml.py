"""Core ML export: split-einsum attention, mlprogram conversion, chunking, compression, the adapter, the CLI.

``MLModel.predict`` raises off macOS, so on Linux these tests prove what can be proved without running a
package: the traced module (the object coremltools converts) computes what the model computes; the weights read
back from each mlpackage are the torch weights (fp16-rounded in fp16 graphs, bit for bit in fp32 ones); the
interfaces carry the contract's names, shapes and types; chunks add up by specification; compression shrinks
files within its quantisation error. The ``macos`` tests run every package and compare with torch.

One CLI export (random-weight tiny model with a world identity encoder, fp16, split-einsum UNet chunked at a
1 MB threshold) is shared by the module's tests.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("coremltools")

from dhumandiff.errors import BundleError, DHumanDiffError  # noqa: E402
from dhumandiff.export import coreml_export as ce  # noqa: E402
from dhumandiff.export.bundle import export_bundle  # noqa: E402
from dhumandiff.export.coreml_attention import (attention_implementation, count_processors,  # noqa: E402
                                                with_attention)
from dhumandiff.export.coreml_chunk import (check_chunks, chunk_mlpackage, const_values, load_program,  # noqa: E402
                                            op_type_counts, program_weight_bytes, weight_file_bytes)
from dhumandiff.export.specs import components_for, get_spec, unet_batch  # noqa: E402
from dhumandiff.export.validate import compare_outputs, worst  # noqa: E402
from dhumandiff.model.dhumandiff_model import DHumanDiff  # noqa: E402
from dhumandiff.contract.bundle import COMPONENT_IO, load_manifest  # noqa: E402

#: Small enough that the tiny UNet (8.8 MB of fp16 weights) is chunked like an SDXL UNet over 1 GB.
TEST_CHUNK_THRESHOLD = 1_000_000
FP16_REL = 2.0 ** -11  # round-to-nearest fp16: relative error of a normal number
ARRAY_FLOAT32, ARRAY_FLOAT16, ARRAY_INT32 = 65568, 65552, 131104


def _nontrivial_norms(model: nn.Module, seed: int = 0) -> None:
    """Random-init norms are 1/0 and batch-norm statistics 0/1: the converter folds such identities away, which
    would hide them from the weight read-back. Give them trained-looking values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=gen))
                mod.running_var.copy_(1 + 0.2 * torch.rand(mod.running_var.shape, generator=gen))


def make_model(backbone: str = "tiny") -> DHumanDiff:
    from dhumandiff.model.faces.world import WorldIdentityEncoder

    model = DHumanDiff.from_backbone(backbone, seed=0)
    model.identity_encoder = WorldIdentityEncoder(arch="a").eval()
    _nontrivial_norms(model)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> DHumanDiff:
    return make_model("tiny")


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory) -> Path:
    """`dhumandiff export coreml MODEL --out B --attention split_einsum` (fp16 is the Core ML default)."""
    from dhumandiff.cli.main import main

    root = tmp_path_factory.mktemp("coreml")
    folder = tiny.save_pretrained(root / "model")
    out = root / "bundle"
    with ce.coreml_settings(chunk_threshold_bytes=TEST_CHUNK_THRESHOLD):
        assert main(["export", "coreml", str(folder), "--out", str(out), "--attention", "split_einsum"]) == 0
    torch.set_grad_enabled(True)  # load_model turns autograd off process-wide; some tests below need it
    return out


def _files(bundle: Path, name: str) -> list[Path]:
    comp = json.loads((bundle / "bundle.json").read_text())["components"][name]
    return [bundle / f for f in [comp["file"], *comp["extra_files"]]]


def _io(path: Path) -> tuple[dict, dict]:
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def desc(features):
        return {f.name: (f.type.multiArrayType.dataType, list(f.type.multiArrayType.shape)) for f in features}

    return desc(spec.description.input), desc(spec.description.output)


def _used_tensors(module: nn.Module, example: dict[str, torch.Tensor]) -> set[str]:
    """Weights the outputs depend on (autograd); a batch-norm buffer counts when its module's weight does."""
    params = dict(module.named_parameters())
    with torch.enable_grad():
        for p in params.values():
            p.requires_grad_(True)
        out = module(*example.values())
        out = out if isinstance(out, tuple) else (out,)
        loss = sum(o.float().square().sum() for o in out)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    used = {n for n, g in zip(params, grads) if g is not None}
    return used | {n for n, _ in module.named_buffers() if n.rsplit(".", 1)[0] + ".weight" in used}


# ------------------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("backbone", ["tiny", "sd15-test", "xl-test"])
def test_split_einsum_processors_equal_the_originals(backbone):
    model = DHumanDiff.from_backbone(backbone, seed=1).eval()
    spec = get_spec("unet")
    wrapper = spec.build(model).eval()
    ex = spec.example(model, 2, seed=5)
    gen = torch.Generator().manual_seed(9)
    ex["region_mask"] = torch.rand(ex["region_mask"].shape, generator=gen)  # soft, overlapping regions
    ex["ip_scale"] = torch.tensor([0.7])
    with torch.no_grad():
        ref = wrapper(*ex.values())
        split = with_attention(wrapper, "split_einsum")
        got = split(*ex.values())
        with attention_implementation(wrapper, "split_einsum"):
            swapped = count_processors(wrapper)
            got_in_place = wrapper(*ex.values())
    n = len(model.unet.attn_processors) // 2
    assert swapped == {"SplitEinsumSelfAttnProcessor": n, "SplitEinsumDualProcessor": n}
    assert count_processors(wrapper) == {"SelfAttnProcessor": n, "DualIPAttnProcessor": n}, "originals restored"
    assert count_processors(split) == swapped
    assert (got - ref).abs().max().item() < 1e-5
    assert (got_in_place - ref).abs().max().item() < 1e-5
    # The ip weights are shared, so the official checkpoint layout (state-dict keys) is unchanged.
    assert split.identity_unet.unet.state_dict().keys() == wrapper.identity_unet.unet.state_dict().keys()


def test_split_einsum_region_masks_and_ip_scale_route_like_the_original():
    """Per layer: masks that give person 1 the left half only, person 2 nothing; ip_scale 0 and 2."""
    model = DHumanDiff.from_backbone("tiny", seed=2).eval()
    wrapper = get_spec("unet").build(model).eval()
    ex = get_spec("unet").example(model, 2, seed=3)
    mask = torch.zeros_like(ex["region_mask"])
    mask[:, 0, :, : mask.shape[-1] // 2] = 1.0
    ex["region_mask"] = mask
    split = with_attention(wrapper, "split_einsum")
    with torch.no_grad():
        for scale in (0.0, 2.0):
            ex["ip_scale"] = torch.tensor([scale])
            assert (split(*ex.values()) - wrapper(*ex.values())).abs().max().item() < 1e-5
        store_ref, store_split = [], []  # the cascade's attention-store path falls back to the original maths
        a = model.identity_unet(*list(ex.values())[:6], attn_store=store_ref)
        b = split.identity_unet(*list(ex.values())[:6], attn_store=store_split)
    assert (a - b).abs().max().item() < 1e-5 and len(store_ref) == len(store_split) > 0
    assert all((x - y).abs().max().item() < 1e-5 for x, y in zip(store_ref, store_split))


# ------------------------------------------------------------------------------- trace = what is converted


@pytest.mark.parametrize("backbone", ["sd15-test", "xl-test"])
def test_traced_modules_compute_what_the_wrappers_compute(backbone):
    """(b) The traced module (what coremltools converts) against the wrapper; the tiny model's own numbers are
    recorded by the exporter and checked in ``test_cli_bundle_passes_the_bundle_reader``."""
    model = make_model(backbone)
    for spec in components_for(model):
        traced = ce.trace_component(spec, model, attention="split_einsum", seed=11)
        check = traced.trace_check
        assert check.max_abs < 1e-5, (backbone, spec.name, check)
        assert traced.attention == ("split_einsum" if spec.name == "unet" else "original")
    assert count_processors(model)["DualIPAttnProcessor"] > 0, "the model's own processors are back"


# --------------------------------------------------------------------------------------- the CLI bundle


def test_cli_bundle_passes_the_bundle_reader(bundle):
    m = load_manifest(bundle, runtime="coreml")
    raw = json.loads((bundle / "bundle.json").read_text())
    assert m.precision == "fp16" and set(m.components) == set(COMPONENT_IO)
    graph = raw["export"]["graph_precision"]
    assert graph == {name: ("fp32" if name == "vae_decoder" else "fp16") for name in m.components}
    for name, comp in raw["components"].items():
        assert comp["file"].endswith(".mlpackage") and (bundle / comp["file"]).is_dir()
        assert comp["coreml"]["minimum_deployment_target"] == "iOS17"
        assert comp["coreml"]["compute_precision"] == ("float32" if name == "vae_decoder" else "float16")
        assert comp["coreml"]["attention"] == ("split_einsum" if name == "unet" else "original")
        validation = raw["export"]["validation"][name]
        assert validation["trace"]["max_abs"] < 1e-5
        if sys.platform != "darwin":
            assert validation["coreml_predict"] is None, "no prediction claimed where none can run"
    # Core ML's int32 ids are recorded beside the contract's int64
    ids = raw["components"]["text_encoder"]["inputs"]
    assert ids["input_ids"] == {"shape": [1, 77], "dtype": "int64", "graph_dtype": "int32"}
    assert ids["subject_positions"]["graph_dtype"] == "int32" and "graph_dtype" not in ids["face_tokens"]
    unet = raw["components"]["unet"]
    assert unet["file"] == "unet_chunk1.mlpackage" and unet["extra_files"] == ["unet_chunk2.mlpackage"]
    assert [c["file"] for c in unet["chunks"]] == ["unet_chunk1.mlpackage", "unet_chunk2.mlpackage"]
    assert not (bundle / "unet.mlpackage").exists() and not list(bundle.glob(".*"))
    # every file inside each mlpackage is hashed
    assert any(k.startswith("unet_chunk2.mlpackage/") and k.endswith("weight.bin") for k in unet["sha256"])


def test_mlpackage_interfaces_follow_the_contract(bundle, tiny):
    for spec in components_for(tiny):
        example = spec.example(tiny, unet_batch(tiny))
        files = _files(bundle, spec.name)
        inputs, outputs = {}, {}
        for f in files:
            i, o = _io(f)
            inputs.update({k: v for k, v in i.items() if k in example})
            outputs = o
        want_in = {n: (ARRAY_INT32 if t.dtype == torch.int64 else ARRAY_FLOAT32, list(t.shape))
                   for n, t in example.items()}
        assert inputs == want_in, spec.name
        assert list(outputs) == list(spec.outputs), spec.name
        assert all(dtype == ARRAY_FLOAT32 for dtype, _ in outputs.values()), "float32 I/O in fp16 graphs too"


#: Weights the converter legitimately transforms, so they are not stored as themselves: batch norm folded into
#: the preceding convolution (identity encoder), and layer 0 of the resampler, whose query comes from the learned
#: latents alone (a constant: LayerNorm + to_q are folded into one precomputed tensor).
FOLDED = {"identity_encoder": ("encoder.features.",),
          "face_projection": ("resampler.proj.layers.0.ln1.", "resampler.proj.layers.0.attn.to_q.")}


def test_weights_read_back_equal_the_torch_weights(bundle, tiny):
    """(a) Every weight the graph uses is in the package as the torch value rounded to the graph's precision
    (bit for bit in the fp32 VAE), except those the converter folds (``FOLDED``)."""
    for spec in components_for(tiny):
        precision = spec.graph_precision("fp16")
        module = spec.build(tiny).eval()
        report = ce.check_weights(module, _files(bundle, spec.name), precision)
        assert report["inexact"] == [], spec.name
        assert report["stored_dtypes"] == (["float32"] if precision == "fp32" else ["float16"]), spec.name
        if precision == "fp32":
            assert report["max_abs"] == 0.0
        else:
            assert report["max_rel"] <= FP16_REL * 1.0001, spec.name
        used = _used_tensors(module, spec.example(tiny, unet_batch(tiny)))
        lost = [n for n in report["unmatched"] if n in used and not n.startswith(FOLDED.get(spec.name, ()))]
        assert lost == [], (spec.name, lost)
        if spec.name in ("text_encoder", "unet"):
            assert report["coverage"] == 1.0
        # and the weights alone (read back into torch) keep the outputs within the fp16 rounding's reach
        example = spec.example(tiny, unet_batch(tiny), seed=4)
        with torch.no_grad():
            ref = module(*example.values())
            with ce.mlpackage_weights_loaded(module, _files(bundle, spec.name)) as match:
                got = module(*example.values())
        assert match.unmatched == report["unmatched"]
        ref, got = (ref if isinstance(ref, tuple) else (ref,)), (got if isinstance(got, tuple) else (got,))
        summary = worst(compare_outputs({str(i): r.numpy() for i, r in enumerate(ref)},
                                        {str(i): g.numpy() for i, g in enumerate(got)}))
        if precision == "fp32":
            assert summary.max_abs == 0.0, spec.name
        else:
            assert summary.cosine > 0.99999 and summary.psnr_db > 60, (spec.name, summary)


def test_unet_chunks_by_specification(bundle, tiny):
    raw = json.loads((bundle / "bundle.json").read_text())
    report = raw["export"]["validation"]["unet"]["chunks"]
    c1, c2 = _files(bundle, "unet")
    (in1, out1), (in2, out2) = _io(c1), _io(c2)
    contract = set(get_spec("unet").input_names(tiny))
    assert set(in1) <= contract
    assert set(in2) <= set(out1) | contract and set(out1) <= set(in2), "chunk 2 reads exactly what crosses"
    assert list(out2) == ["noise_pred"]
    assert all(in2[n] == out1[n] for n in out1), "crossing tensors keep type and shape"
    p1, p2 = load_program(c1)[0], load_program(c2)[0]
    ops1, ops2 = sum(op_type_counts(p1).values()), sum(op_type_counts(p2).values())
    assert ops1 + ops2 == report["original_ops"] + report["boundary_casts"]
    assert report["boundary_casts"] == 2 * len(out1)  # fp16 tensors cross as fp32: one cast on each side
    w1, w2 = program_weight_bytes(p1), program_weight_bytes(p2)
    assert w1 + w2 == report["original_weight_bytes"] + report["shared_weight_bytes"]
    assert max(w1, w2) < 0.6 * report["original_weight_bytes"], "the cut balances the weights"
    assert report["shared_weight_bytes"] < 0.01 * report["original_weight_bytes"]


def test_chunking_any_program_adds_up_and_refuses_a_bad_split(bundle, tmp_path):
    """chunk_mlpackage on another program (the face projection, two outputs), then a broken chunk order."""
    src = _files(bundle, "face_projection")[0]
    result = chunk_mlpackage(src, tmp_path, "fp")
    assert [p.name for p in result.paths] == ["fp_chunk1.mlpackage", "fp_chunk2.mlpackage"]
    rep = result.report
    assert rep["chunk_ops"] == rep["original_ops"] + rep["boundary_casts"]
    original = {k: v for k, v in const_values(load_program(src)[0]).items() if v.size > 1}
    merged = {}
    for p in result.paths:
        merged.update(const_values(load_program(p)[0]))
    assert all(np.array_equal(merged[k], v) for k, v in original.items()), "every weight, bit for bit"
    assert list(_io(result.paths[1])[1]) == ["ip_tokens", "face_token"]
    with pytest.raises(ValueError, match="neither a model input nor an earlier chunk"):
        check_chunks(src, list(reversed(result.paths)))
    with pytest.raises(ValueError, match="returns"):
        check_chunks(src, result.paths[:1])


# ------------------------------------------------------------------------------------------- compression


@pytest.mark.parametrize("mode,nbits", [("palettize", 6), ("palettize", 4), ("linear_int8", 8)])
def test_compress_shrinks_within_the_quantisation_error(bundle, tiny, tmp_path, mode, nbits):
    src = _files(bundle, "face_projection")[0]
    out = ce.compress_mlpackage(src, mode, nbits, out=tmp_path / "fp.mlpackage")
    before, after = weight_file_bytes(src), weight_file_bytes(out)
    assert after < (0.55 if mode == "linear_int8" else (nbits + 1) / 16) * before, (before, after)
    base = {ce.weight_key(k): v for k, v in ce.mlpackage_weights(src).items() if v.dtype.kind == "f"}
    decompressed = ce.mlpackage_weights(out)
    compressed = [ce.weight_key(k) for k in decompressed if k.endswith(("_palettized", "_quantized"))]
    assert len(compressed) >= 20
    for key in compressed:
        w = base[key].astype(np.float64)
        q = decompressed[next(k for k in decompressed if ce.weight_key(k) == key)].astype(np.float64)
        err = np.abs(q - w)
        if mode == "palettize":
            palette = np.unique(q)
            assert len(palette) <= 2 ** nbits
            # each weight is (but for fp16 ties) replaced by its nearest palette entry ...
            nearest = np.abs(w.ravel()[:, None] - palette[None]).min(1)
            assert np.mean(err.ravel() <= nearest + 1e-7) >= 0.999
            # ... and k-means' palette is about as good as a uniform 2^n-level grid over the range, whose RMS error
            # is R / (2^n sqrt 12) (measured: within 1.11x at 4 bits, 1.07x at 6)
            rms_uniform = (w.max() - w.min()) / (2 ** nbits * np.sqrt(12))
            assert np.sqrt((err ** 2).mean()) <= 1.25 * rms_uniform
        else:
            # symmetric per-output-channel int8: half a step (max|w_c| / 127 / 2), plus fp16 rounding of the scale
            # and of the dequantised weight (127 * scale * 2^-11 each)
            step = np.abs(w).reshape(w.shape[0], -1).max(1) / 127
            assert (err.reshape(w.shape[0], -1).max(1) <= step / 2 * (1 + 2 * 127 * 2 ** -10) + 1e-7).all()
    # what the compressed weights do to the outputs (in torch, weights decompressed into the module)
    spec = get_spec("face_projection")
    module = spec.build(tiny).eval()
    ex = spec.example(tiny, 1, seed=2)
    with torch.no_grad():
        ref = module(*ex.values())
        with ce.mlpackage_weights_loaded(module, out):
            got = module(*ex.values())
    summary = worst(compare_outputs({"a": ref[0].numpy(), "b": ref[1].numpy()},
                                    {"a": got[0].numpy(), "b": got[1].numpy()}))
    assert summary.cosine > {4: 0.98, 6: 0.998, 8: 0.9999}[nbits], summary


def test_compress_refuses_unknown_modes(bundle, tmp_path):
    src = _files(bundle, "face_projection")[0]
    with pytest.raises(DHumanDiffError, match="nbits"):
        ce.compress_mlpackage(src, "palettize", 5, out=tmp_path / "x.mlpackage")
    with pytest.raises(DHumanDiffError, match="linear_int8"):
        ce.compress_mlpackage(src, "int4", out=tmp_path / "x.mlpackage")


# -------------------------------------------------------------------------------------- runtime adapter


class _FakeMLModel:
    """Reads the real package's interface; ``predict`` records what it was fed and returns zeros."""

    calls: list[tuple[str, dict[str, np.ndarray]]] = []

    def __init__(self, path: str, compute_units=None) -> None:
        import coremltools as ct

        self.name = Path(path).name
        self._spec = ct.models.MLModel(path, skip_model_load=True).get_spec()

    def get_spec(self):
        return self._spec

    def predict(self, feed):
        _FakeMLModel.calls.append((self.name, dict(feed)))
        outs = {}
        for f in self._spec.description.output:
            dtype = np.float16 if f.type.multiArrayType.dataType == ARRAY_FLOAT16 else np.float32
            outs[f.name] = np.zeros(tuple(f.type.multiArrayType.shape), dtype)
        return outs


def test_adapter_runs_chunks_in_order_and_casts_ids(bundle, tiny, monkeypatch):
    """The macOS adapter's plumbing, with MLModel.predict faked (Linux): chunk 2 gets chunk 1's outputs, ids
    travel as int32."""
    import types

    from dhumandiff.runtimes.adapters import coreml as adapter
    from dhumandiff.runtimes.adapters import make_runner

    fake = types.SimpleNamespace(ComputeUnit=types.SimpleNamespace(ALL="ALL", CPU_ONLY="CPU_ONLY"),
                                 models=types.SimpleNamespace(MLModel=_FakeMLModel))
    monkeypatch.setattr(adapter, "_ct", lambda: fake)
    _FakeMLModel.calls = []
    m = load_manifest(bundle, runtime="coreml")
    runner = make_runner("coreml", m.components, bundle, device="auto")
    unet_in = {n: t.numpy() for n, t in get_spec("unet").example(tiny, unet_batch(tiny)).items()}
    out = runner.run("unet", unet_in)
    assert list(out) == ["noise_pred"] and out["noise_pred"].shape == unet_in["sample"].shape
    (n1, feed1), (n2, feed2) = _FakeMLModel.calls
    assert (n1, n2) == ("unet_chunk1.mlpackage", "unet_chunk2.mlpackage")
    assert set(feed1) <= set(unet_in)
    assert set(feed2) - set(unet_in) == set(_io(bundle / "unet_chunk1.mlpackage")[1])
    text_in = {n: t.numpy() for n, t in get_spec("text_encoder").example(tiny, 1).items()}
    runner.run("text_encoder", text_in)
    fed = _FakeMLModel.calls[-1][1]
    assert fed["input_ids"].dtype == np.int32 and fed["subject_positions"].dtype == np.int32
    np.testing.assert_array_equal(fed["input_ids"], text_in["input_ids"])
    # a chunk 2 without its chunk 1 cannot be fed: a clear bundle error, not a Core ML crash
    broken = dict(m.components)
    broken["unet"] = dataclasses.replace(m.components["unet"], file="unet_chunk2.mlpackage", extra_files=())
    with pytest.raises(BundleError, match="earlier chunk"):
        make_runner("coreml", broken, bundle).run("unet", unet_in)


def test_adapter_refuses_off_macos(bundle):
    if sys.platform == "darwin":
        pytest.skip("macOS runs Core ML")
    from dhumandiff.errors import RuntimeUnavailableError
    from dhumandiff.runtimes.adapters import make_runner

    with pytest.raises(RuntimeUnavailableError, match="macOS"):
        make_runner("coreml", load_manifest(bundle).components, bundle)


# ------------------------------------------------------------------------------------------ refusals


def test_refusals_say_what_to_do(tiny, tmp_path):
    with pytest.raises(DHumanDiffError, match="static shapes"):
        export_bundle(tiny, tmp_path / "b", "coreml", "fp16", dynamic=True)
    with pytest.raises(DHumanDiffError, match="unknown attention"):
        with ce.coreml_settings(attention="flash"):
            pass
    with pytest.raises(DHumanDiffError, match="precision"):
        export_bundle(tiny, tmp_path / "b", "coreml", "int8")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_unknown_attention(tiny, tmp_path):
    from dhumandiff.cli.main import main

    folder = tiny.save_pretrained(tmp_path / "model")
    assert main(["export", "coreml", str(folder), "--out", str(tmp_path / "b"), "--attention", "flash"]) != 0
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_xl_test_fp32_original_attention_bundle(tmp_path):
    """SDXL's extra inputs (text_embeds, time_ids, text_encoder_2) through Core ML, fp32, no chunking."""
    model = make_model("xl-test")
    with ce.coreml_settings(attention="original"):
        out = export_bundle(model, tmp_path / "xl", "coreml", "fp32")
    m = load_manifest(out, runtime="coreml")
    assert m.is_sdxl and set(m.components["unet"].inputs) >= {"text_embeds", "time_ids"}
    raw = json.loads((out / "bundle.json").read_text())
    for name, v in raw["export"]["validation"].items():
        assert v["weights"]["max_abs"] == 0.0 and v["weights_roundtrip"]["max_abs"] == 0.0, name
    assert list(_io(out / "text_encoder_2.mlpackage")[1]) == ["prompt_embeds", "pooled_prompt_embeds"]


# ----------------------------------------------------------------------------------------------- macOS


def _reference(model: DHumanDiff, name: str, seed: int = 7) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    spec = get_spec(name)
    example = spec.example(model, unet_batch(model), seed)
    with torch.no_grad():
        out = spec.build(model).eval()(*example.values())
    out = out if isinstance(out, tuple) else (out,)
    return {n: t.numpy() for n, t in example.items()}, {n: o.numpy() for n, o in zip(spec.outputs, out)}


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="MLModel.predict runs on macOS only")
@pytest.mark.parametrize("device", ["cpu", "auto"])
@pytest.mark.parametrize("name", list(COMPONENT_IO))
def test_coreml_predict_matches_torch(bundle, tiny, name, device):
    """Every package (the chunked UNet through the adapter's chunk chain) against torch fp32, on fresh inputs."""
    from dhumandiff.export.validate import compare
    from dhumandiff.runtimes.adapters import make_runner

    runner = make_runner("coreml", load_manifest(bundle).components, bundle, device=device)
    inputs, reference = _reference(tiny, name)
    got = runner.run(name, inputs)
    for out_name, ref in reference.items():
        c = compare(ref, got[out_name])
        if name == "vae_decoder":  # fp32 graph
            assert c.max_abs <= 1e-3, (name, out_name, c)
        else:
            assert c.cosine >= 0.999 and c.psnr_db >= 35.0, (name, out_name, c)


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="MLModel.predict runs on macOS only")
def test_coreml_chunks_equal_the_whole_unet(tiny, tmp_path):
    """The two chunks run in sequence give what the unchunked package gives (same precision, same device)."""
    spec = get_spec("unet")
    traced = ce.trace_component(spec, tiny, "split_einsum")
    whole = ce.save_mlpackage(ce.convert_traced(traced, "fp16"), tmp_path / "unet.mlpackage")
    chunks = chunk_mlpackage(whole, tmp_path, "unet").paths
    inputs, reference = _reference(tiny, "unet")
    a = ce.predict_mlpackages([whole], inputs, "CPU_ONLY")["noise_pred"]
    b = ce.predict_mlpackages(chunks, inputs, "CPU_ONLY")["noise_pred"]
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()
    from dhumandiff.export.validate import compare

    c = compare(reference["noise_pred"], b)
    assert c.cosine >= 0.999 and c.psnr_db >= 35.0, c


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="MLModel.predict runs on macOS only")
def test_coreml_original_and_split_einsum_agree(tiny, tmp_path):
    spec = get_spec("unet")
    inputs, reference = _reference(tiny, "unet")
    outs = {}
    for attention in ("original", "split_einsum"):
        traced = ce.trace_component(spec, tiny, attention)
        path = ce.save_mlpackage(ce.convert_traced(traced, "fp32"), tmp_path / f"{attention}.mlpackage")
        outs[attention] = ce.predict_mlpackages([path], inputs, "CPU_ONLY")["noise_pred"]
        assert np.abs(outs[attention] - reference["noise_pred"]).max() <= 1e-3, attention


def test_no_stray_files(bundle):
    """Nothing but the manifest, the tokenizer and the listed packages in the bundle."""
    raw = json.loads((bundle / "bundle.json").read_text())
    listed = {f for c in raw["components"].values() for f in [c["file"], *c["extra_files"]]}
    top = {p.name for p in bundle.iterdir()}
    assert top == listed | {"bundle.json", "tokenizer"}


def test_official_recipe_text_encoder_converts_with_both_outputs(tmp_path):
    """A model with the official recipe: the Core ML text encoder carries the negative prompt's layer as its second
    output (what the runtimes read for the unconditional row), converted from the trace of the wrapper."""
    from dhumandiff.contract.recipe import NEGATIVE_TEXT_OUTPUT, OFFICIAL

    model = make_model("tiny")
    model.config.recipe = OFFICIAL.to_dict()
    spec = get_spec("text_encoder", model)
    assert spec.outputs == ("prompt_embeds", NEGATIVE_TEXT_OUTPUT)
    traced = ce.trace_component(spec, model, seed=3)
    assert traced.trace_check.max_abs < 1e-5
    assert set(traced.reference) == {"prompt_embeds", NEGATIVE_TEXT_OUTPUT}
    assert np.abs(traced.reference["prompt_embeds"] - traced.reference[NEGATIVE_TEXT_OUTPUT]).max() > 1e-3
    mlmodel = ce.convert_traced(traced, "fp32")
    out_names = [o.name for o in mlmodel.get_spec().description.output]
    assert out_names == ["prompt_embeds", NEGATIVE_TEXT_OUTPUT]
