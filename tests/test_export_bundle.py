"""export_bundle: atomic folders, a manifest the runtimes accept, refusals that say what to do, the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

from dhumandiff.errors import DHumanDiffError, ParityError, RuntimeUnavailableError
from dhumandiff.export.bundle import export_bundle
from dhumandiff.export.specs import ComponentSpec, components_for
from dhumandiff.export.validate import Tolerance
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.utils.atomic import sha256_file
from model_fixtures import WORDS, make_tiny_model


@pytest.fixture(scope="module")
def tiny() -> DHumanDiff:
    return make_tiny_model()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty folder of its own (HOME, and with it library caches, lives in tmp_path)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _raising(spec: ComponentSpec) -> ComponentSpec:
    def build(model):
        raise RuntimeError("injected failure while building " + spec.name)

    return dataclasses.replace(spec, build=build)


def _specs_failing_at(model: DHumanDiff, name: str) -> list[ComponentSpec]:
    return [_raising(s) if s.name == name else s for s in components_for(model)]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_interrupted_export_leaves_no_bundle(tiny, out):
    with pytest.raises(RuntimeError, match="injected"):
        export_bundle(tiny, out / "bundle", "onnx", specs=_specs_failing_at(tiny, "unet"))
    assert list(out.iterdir()) == [], "no bundle folder, no partial sibling, no bundle.json anywhere"


def test_failed_overwrite_keeps_the_previous_bundle(tiny, out):
    bundle = export_bundle(tiny, out / "bundle", "onnx")
    before = _tree(bundle)
    with pytest.raises(RuntimeError, match="injected"):
        export_bundle(tiny, bundle, "onnx", overwrite=True, specs=_specs_failing_at(tiny, "vae_decoder"))
    assert _tree(bundle) == before
    assert sorted(p.name for p in out.iterdir()) == ["bundle"]
    with pytest.raises(FileExistsError, match="overwrite"):
        export_bundle(tiny, bundle, "onnx")


def test_graph_outside_its_tolerance_is_not_written(tiny, out):
    impossible = {"fp32": Tolerance(atol=None, min_cosine=0.0, min_psnr_db=1000.0)}
    specs = [dataclasses.replace(s, tolerances=impossible) if s.name == "face_projection" else s
             for s in components_for(tiny)]
    with pytest.raises(ParityError, match="face_projection exported to onnx fp32 misses its tolerance"):
        export_bundle(tiny, out / "bundle", "onnx", specs=specs)
    assert list(out.iterdir()) == []


def test_manifest_follows_the_contract(tiny, tmp_path):
    from dhumandiff.contract import bundle as manifest_mod

    for runtime, precision in (("onnx", "fp16"), ("torchscript", "fp32")):
        bundle = export_bundle(tiny, tmp_path / f"{runtime}-{precision}", runtime, precision, source_model="tiny")
        m = manifest_mod.load_manifest(bundle, runtime=runtime)  # strict: shapes, names, every sha256
        raw = json.loads((bundle / "bundle.json").read_text())
        assert raw["source_model"] == "tiny" and raw["created_by"] == "dhumandiff 0.1.0"
        assert m.precision == precision and m.backbone == "tiny" and m.image_size == (64, 64)
        assert m.latent.downscale == 4 and m.latent_size == (16, 16)
        assert m.defaults.cfg and m.unet_batch == 2  # tiny samples with guidance 3.0
        assert m.scheduler["_class_name"] == "DDIMScheduler"
        assert m.scheduler["prediction_type"] == "v_prediction"
        assert set(m.components) == set(manifest_mod.REQUIRED_COMPONENTS)
        assert m.components["unet"].inputs["ip_tokens"].shape == (2, 32, 64)
        assert m.components["text_encoder"].inputs["input_ids"].dtype == "int64"
        assert m.identity.clip_size == 56 and m.identity.arcface_std == 127.5
        assert m.budget.component_max_abs == (1e-4 if precision == "fp32" else 0.1)
        assert m.budget.end_to_end_psnr_db == (40.0 if precision == "fp32" else 35.0)
        listed = {f for c in raw["components"].values() for f in c["sha256"]} | {raw["tokenizer"]["file"]}
        on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"bundle.json"}
        assert listed == on_disk, "every file of the bundle is covered by a sha256"


def test_tokenizer_file_tokenizes_like_the_model(tiny, tmp_path):
    from tokenizers import Tokenizer

    from dhumandiff.utils.prompt import person_positions

    bundle = export_bundle(tiny, tmp_path / "b", "torchscript")
    shipped = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    prompt = "a photo of a man and a woman on the beach"
    ids_model, pos_model = person_positions(tiny.tokenizer.backend_tokenizer, prompt)
    ids_bundle, pos_bundle = person_positions(shipped, prompt)
    np.testing.assert_array_equal(ids_model, ids_bundle)
    np.testing.assert_array_equal(pos_model, pos_bundle)


def test_refusals_say_what_to_do(tiny, out):
    bare = DHumanDiff.from_backbone("tiny", words=WORDS)
    with pytest.raises(DHumanDiffError, match="no identity encoder"):
        export_bundle(bare, out / "b", "onnx")
    with pytest.raises(DHumanDiffError, match="unknown runtime"):
        export_bundle(tiny, out / "b", "tflite")
    with pytest.raises(DHumanDiffError, match="calibrate"):
        export_bundle(tiny, out / "b", "onnx", precision="int8")
    if importlib.util.find_spec("dhumandiff.export.coreml_export") is None:
        with pytest.raises(RuntimeUnavailableError, match="Core ML export"):
            export_bundle(tiny, out / "b", "coreml")
    assert list(out.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("dhumandiff.model.faces.world") is None,
                    reason="a model folder with an identity encoder needs the tiny world's encoder class")
def test_cli_export_then_parity_from_a_model_folder(tmp_path):
    """The user's path: a model folder -> `dhumandiff export onnx` -> `dhumandiff parity` (source recorded)."""
    from dhumandiff.cli.main import main

    folder = make_tiny_model().save_pretrained(tmp_path / "model")
    bundle = tmp_path / "bundle"
    assert main(["export", "onnx", str(folder), "--out", str(bundle), "--precision", "fp16"]) == 0
    assert json.loads((bundle / "bundle.json").read_text())["source_model"] == str(folder.resolve())
    assert main(["export", "onnx", str(folder), "--out", str(bundle)]) == 2  # exists, no --overwrite
    report = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--steps", "3", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] and data["precision"] == "fp16" and data["end_to_end"]["steps"] == 3
    torch.set_grad_enabled(True)  # load_model switches autograd off for the whole process


def test_cli_export_and_parity_commands(tmp_path):
    from dhumandiff.cli.commands_export import register
    from dhumandiff.errors import BundleError

    app = typer.Typer()
    register(app)
    folder = DHumanDiff.from_backbone("tiny", words=WORDS).save_pretrained(tmp_path / "model")
    with pytest.raises(DHumanDiffError, match="no identity encoder"):
        app(args=["export", "onnx", str(folder), "--out", str(tmp_path / "b")], standalone_mode=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError, match="not a dhumandiff bundle"):
        app(args=["parity", str(folder), "--components-only"], standalone_mode=False)
    torch.set_grad_enabled(True)  # load_model switches autograd off for the whole process


def test_export_stage_never_imports_the_runtimes():
    """export is an earlier stage than runtimes: exporting must work without the runtimes package loaded."""
    import subprocess
    import sys

    code = ("import sys, dhumandiff.export.bundle, dhumandiff.export.onnx_export, dhumandiff.export.openvino_export, "
            "dhumandiff.export.torchscript_export, dhumandiff.cli.commands_export\n"
            "bad = sorted(m for m in sys.modules if m.startswith('dhumandiff.runtimes'))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_tolerance_scales_with_the_output_magnitude():
    """atol holds for outputs up to magnitude 1; larger outputs get atol x their magnitude (float rounding grows
    with the values), and a multi-output component fails when any one output misses its own scaled limit."""
    from dhumandiff.export.validate import compare, worst

    tol = Tolerance(atol=1e-4, min_cosine=0.999, min_psnr_db=40.0)
    big = np.linspace(-5.0, 5.0, 1000, dtype=np.float32)
    assert compare(big, big + 3e-4).failures(tol) == []  # 3e-4 < 1e-4 x 5
    assert compare(big, big + 6e-4).failures(tol)  # 6e-4 > 5e-4
    small = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    assert compare(small, small + 3e-4).failures(tol)  # no scaling below magnitude 1
    both = worst({"big": compare(big, big + 3e-4), "small": compare(small, small + 2e-4)})
    assert any("max abs" in f for f in both.failures(tol)), "the small output's own limit (1e-4) is missed"
    assert worst({"big": compare(big, big + 3e-4), "small": compare(small, small + 5e-5)}).failures(tol) == []
