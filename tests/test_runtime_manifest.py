"""bundle.json validation: every refusal is one BundleError line that says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from runtime_fixtures import component_io, write_fake_bundle

from dhumandiff.errors import BundleError
from dhumandiff.contract.bundle import (
    Manifest,
    component_digests,
    load_manifest,
    manifest_from_dict,
    write_manifest,
)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    write_fake_bundle(root)
    return root


def _edit(root: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    d = json.loads((root / "bundle.json").read_text())
    fn(d)
    (root / "bundle.json").write_text(json.dumps(d))


def _refused(root: Path | str, pattern: str, **kw: Any) -> str:
    with pytest.raises(BundleError, match=pattern) as e:
        load_manifest(root, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------- accept


def test_valid_bundle_loads_with_typed_fields(bundle: Path) -> None:
    m = load_manifest(bundle)
    assert isinstance(m, Manifest)
    assert m.root == bundle
    assert m.runtime == "onnx" and m.precision == "fp32" and m.image_size == (64, 64)
    assert m.latent.channels == 4 and m.latent.downscale == 4 and m.latent_size == (16, 16)
    assert m.unet_batch == 2 and m.defaults.cfg is True and not m.is_sdxl
    assert m.identity.clip_mean[0] == pytest.approx(0.48145466)
    assert m.components["unet"].inputs["sample"].shape == (2, 4, 16, 16)
    assert m.components["unet"].extra_files == ("unet.onnx.data",)
    assert m.scheduler["_class_name"] == "DDIMScheduler"
    assert m.budget is not None and m.budget.end_to_end_psnr_db == 40.0
    # the bundle's own file is also accepted
    assert load_manifest(bundle / "bundle.json").runtime == "onnx"
    assert load_manifest(bundle, runtime="onnx").runtime == "onnx"


def test_to_json_round_trips_and_write_is_atomic(bundle: Path, tmp_path: Path) -> None:
    m = load_manifest(bundle)
    again = manifest_from_dict(json.loads(m.to_json()))
    assert again == m
    target = write_manifest(bundle, m)
    assert target == bundle / "bundle.json"
    assert load_manifest(bundle) == m
    assert not [p for p in bundle.iterdir() if ".partial" in p.name]


def test_unknown_top_level_keys_survive_a_round_trip(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(notes={"exporter": "x"}))
    m = load_manifest(bundle)
    assert json.loads(m.to_json())["notes"] == {"exporter": "x"}


def test_write_manifest_refuses_what_the_reader_would_refuse(bundle: Path) -> None:
    m = load_manifest(bundle)
    import dataclasses

    bad = dataclasses.replace(m, components={k: v for k, v in m.components.items() if k != "unet"})
    with pytest.raises(BundleError, match="missing required component"):
        write_manifest(bundle, bad)


def test_symlink_inside_the_bundle_is_fine(bundle: Path) -> None:
    blobs = bundle / "blobs"
    blobs.mkdir()
    os.replace(bundle / "unet.onnx", blobs / "unet.onnx")
    os.symlink("blobs/unet.onnx", bundle / "unet.onnx")
    assert load_manifest(bundle).components["unet"].file == "unet.onnx"


def test_folder_component_needs_a_digest_per_file(tmp_path: Path) -> None:
    """Core ML .mlpackage components are folders: each file inside is hashed."""
    root = tmp_path / "b"
    write_fake_bundle(root, runtime="coreml")
    pkg = root / "unet.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "model.mlmodel").write_bytes(b"spec")
    (pkg / "weight.bin").write_bytes(b"weights")

    def to_pkg(d: dict[str, Any]) -> None:
        u = d["components"]["unet"]
        u["file"], u["extra_files"] = "unet.mlpackage", []
        u["sha256"] = component_digests(root, ["unet.mlpackage"])

    _edit(root, to_pkg)
    m = load_manifest(root)
    assert set(m.components["unet"].sha256) == {"unet.mlpackage/Data/model.mlmodel", "unet.mlpackage/Data/weight.bin"}
    (pkg / "extra.bin").write_bytes(b"smuggled")
    _refused(root, r"no digest for unet\.mlpackage/Data/extra\.bin")


# ------------------------------------------------------------------------------------------------- refuse


def test_refuses_a_missing_path(tmp_path: Path) -> None:
    _refused(tmp_path / "nope", r"no bundle at .*nope; pass the folder written by `dhumandiff export`")


def test_refuses_a_folder_without_bundle_json(tmp_path: Path) -> None:
    _refused(tmp_path, r"is not a dhumandiff bundle \(no bundle\.json\)")


def test_refuses_another_file(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    _refused(f, r"is not a dhumandiff bundle; pass the bundle folder")


def test_refuses_invalid_json(bundle: Path) -> None:
    (bundle / "bundle.json").write_text("{not json")
    _refused(bundle, r"bundle\.json is not valid JSON \(line 1: .*\); re-export")


def test_refuses_wrong_format(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(format="optimum-onnx"))
    _refused(bundle, r"not a dhumandiff bundle \(bundle\.json 'format' is 'optimum-onnx'")


def test_refuses_unsupported_format_version(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(format_version=2))
    msg = _refused(bundle, r"format_version 2 is not supported")
    assert msg.endswith("re-export with this dhumandiff version")
    _edit(bundle, lambda d: d.update(format_version="1"))
    _refused(bundle, r"'format_version' must be an integer")


def test_refuses_runtime_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ov"
    write_fake_bundle(root, runtime="openvino")
    msg = _refused(root, "this bundle is for openvino", runtime="onnx")
    assert msg == "this bundle is for openvino; use --runtime openvino or export for onnx"


def test_refuses_unknown_runtime(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(runtime="tflite"))
    _refused(bundle, r"runtime 'tflite' is not one of onnx, openvino, coreml, torchscript")


def test_refuses_a_missing_file(bundle: Path) -> None:
    (bundle / "unet.onnx.data").unlink()
    _refused(bundle, r"bundle file unet\.onnx\.data is missing .*copy the whole bundle folder again")


def test_refuses_a_missing_tokenizer(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    _refused(bundle, r"bundle file tokenizer\.json is missing")


def test_refuses_sha256_mismatch_naming_the_file(bundle: Path) -> None:
    with open(bundle / "unet.onnx.data", "r+b") as f:
        f.write(b"\1")
    _refused(bundle, r"sha256 mismatch for unet\.onnx\.data \(component unet\)")
    # verify=False skips hashing but still checks presence and paths
    assert load_manifest(bundle, verify=False).runtime == "onnx"


def test_refuses_tokenizer_sha256_mismatch_when_declared(bundle: Path) -> None:
    _edit(bundle, lambda d: d["tokenizer"].update(sha256="0" * 64))
    _refused(bundle, r"sha256 mismatch for tokenizer\.json \(tokenizer\)")


def test_refuses_a_file_without_digest(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["unet"]["sha256"].pop("unet.onnx.data"))
    _refused(bundle, r"components\.unet\.sha256 has no digest for unet\.onnx\.data")


def test_refuses_a_digest_for_a_foreign_file(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["unet"]["sha256"].update({"tokenizer.json": "a" * 64}))
    _refused(bundle, r"lists tokenizer\.json, which is not one of the component's files")


def test_refuses_malformed_digest(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["unet"]["sha256"].update({"unet.onnx": "xyz"}))
    _refused(bundle, r"must be 64 lowercase hex digits")


@pytest.mark.parametrize("path", ["/etc/passwd", "\\\\server\\share\\unet.onnx", "C:\\models\\unet.onnx"])
def test_refuses_absolute_paths(bundle: Path, path: str) -> None:
    _edit(bundle, lambda d: d["components"]["unet"].update(file=path))
    _refused(bundle, r"is an absolute path; bundles must be self-contained")


@pytest.mark.parametrize("path", ["../unet.onnx", "sub/../../unet.onnx", "..\\unet.onnx"])
def test_refuses_paths_that_escape(bundle: Path, path: str) -> None:
    _edit(bundle, lambda d: d["components"]["unet"].update(file=path))
    _refused(bundle, r"escapes the bundle folder \('\.\.'\)")


def test_refuses_extra_files_and_tokenizer_paths_that_escape(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["unet"].update(extra_files=["../x.data"]))
    _refused(bundle, r"components\.unet\.extra_files '\.\./x\.data' escapes")
    write_fake_bundle(bundle)
    _edit(bundle, lambda d: d["tokenizer"].update(file="/tmp/tokenizer.json"))
    _refused(bundle, r"tokenizer\.file '/tmp/tokenizer\.json' is an absolute path")


def test_refuses_symlinks_pointing_outside(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle / "unet.onnx").read_bytes())  # same bytes: the digest alone would pass
    (bundle / "unet.onnx").unlink()
    os.symlink(outside, bundle / "unet.onnx")
    _refused(bundle, r"unet\.onnx' points outside the bundle folder \(symlink to .*outside\.onnx\)")


def test_refuses_symlinked_file_inside_a_folder_component(tmp_path: Path) -> None:
    root = tmp_path / "b"
    write_fake_bundle(root, runtime="coreml")
    pkg = root / "unet.mlpackage"
    pkg.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s")
    os.symlink(secret, pkg / "weight.bin")

    def to_pkg(d: dict[str, Any]) -> None:
        u = d["components"]["unet"]
        u["file"], u["extra_files"], u["sha256"] = "unet.mlpackage", [], {"unet.mlpackage/weight.bin": "0" * 64}

    _edit(root, to_pkg)
    _refused(root, r"points outside the bundle folder")


@pytest.mark.parametrize("component", ["unet", "vae_decoder", "text_encoder", "identity_encoder"])
def test_refuses_missing_required_components(bundle: Path, component: str) -> None:
    _edit(bundle, lambda d: d["components"].pop(component))
    _refused(bundle, rf"bundle is missing required component\(s\) {component}; re-export")


def test_refuses_unknown_components(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"].update(safety_checker=d["components"]["unet"]))
    _refused(bundle, r"unknown component\(s\) safety_checker")


def test_refuses_io_names_outside_the_contract(bundle: Path) -> None:
    def rename(d: dict[str, Any]) -> None:
        ins = d["components"]["unet"]["inputs"]
        ins["encoder_hidden_state"] = ins.pop("encoder_hidden_states")

    _edit(bundle, rename)
    _refused(bundle, r"component unet has inputs .*the contract needs .*encoder_hidden_states")
    write_fake_bundle(bundle)
    image = {"image": {"shape": [1], "dtype": "float32"}}
    _edit(bundle, lambda d: d["components"]["vae_decoder"].update(outputs=image))
    _refused(bundle, r"component vae_decoder has outputs \['image'\], the contract needs \['sample'\]")


def test_sdxl_bundles_need_text_encoder_2_and_unet_extras(tmp_path: Path) -> None:
    root = tmp_path / "xl"
    write_fake_bundle(root, sdxl=True)
    m = load_manifest(root)
    assert m.is_sdxl and "text_embeds" in m.components["unet"].inputs
    _edit(root, lambda d: d["components"].pop("text_encoder_2"))
    _refused(root, r"component unet has inputs .*the contract needs")


def test_refuses_cfg_flag_that_contradicts_the_unet_batch(bundle: Path) -> None:
    _edit(bundle, lambda d: d["defaults"].update(cfg=False))
    _refused(bundle, r"defaults\.cfg is false but the unet runs batch 2")


def test_refuses_a_unet_batch_other_than_1_or_2(tmp_path: Path) -> None:
    root = tmp_path / "b"
    d = write_fake_bundle(root)
    for name, spec in d["components"]["unet"]["inputs"].items():
        if name != "ip_scale":
            spec["shape"][0] = 3
    (root / "bundle.json").write_text(json.dumps(d))
    _refused(root, r"unet batch is 3; it must be 2 \(CFG\) or 1 \(CFG-free\)")


def test_refuses_shapes_that_disagree_with_image_size(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(image_size=[128, 128]))
    _refused(bundle, r"unet\.sample shape \[2, 4, 16, 16\] does not match \[2, 4, 32, 32\]")
    _edit(bundle, lambda d: d.update(image_size=[66, 64]))
    _refused(bundle, r"image_size \[66, 64\] is not divisible by latent\.downscale 4")


def test_refuses_wrong_ip_token_count(bundle: Path) -> None:
    _edit(bundle, lambda d: d["identity"].update(num_id_tokens=4))
    _refused(bundle, r"unet\.ip_tokens shape \[2, 32, 32\] must be \[B, 8, C\]")


def test_refuses_float_ids(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["text_encoder"]["inputs"]["input_ids"].update(dtype="float32"))
    _refused(bundle, r"text_encoder\.input_ids must be int64")


def test_refuses_unsupported_scheduler(bundle: Path) -> None:
    _edit(bundle, lambda d: d["scheduler"].update(_class_name="DPMSolverMultistepScheduler"))
    _refused(bundle, r"scheduler '_class_name' 'DPMSolverMultistepScheduler' is not supported by the NumPy sampler")


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda d: d["latent"].pop("scaling_factor"), r"missing field 'latent\.scaling_factor'"),
        (lambda d: d["latent"].update(channels=0), r"'latent\.channels' must be an integer >= 1"),
        (lambda d: d["identity"].update(clip_mean=[0.5, 0.5]), r"'identity\.clip_mean' must be a list of 3"),
        (lambda d: d["identity"].update(clip_std=[0.5, 0, 0.5]), r"'identity\.clip_std' must be a list of 3"),
        (lambda d: d["defaults"].update(cfg="yes"), r"'defaults\.cfg' must be true or false"),
        (lambda d: d["defaults"].update(steps=1.5), r"'defaults\.steps' must be an integer"),
        (lambda d: d.update(image_size=[64]), r"'image_size' must be \[height, width\]"),
        (lambda d: d.pop("tokenizer"), r"missing field 'tokenizer'"),
        (lambda d: d["tokenizer"].update(max_length="77"), r"'tokenizer\.max_length' must be an integer"),
        (lambda d: d.pop("precision"), r"missing field 'precision'"),
        (lambda d: d["components"]["unet"]["inputs"]["sample"].update(dtype="float64"),
         r"'components\.unet\.inputs\.sample\.dtype' 'float64' is not one of"),
        (lambda d: d["components"]["unet"]["inputs"]["sample"].update(shape=[2, -4, 16, 16]),
         r"'components\.unet\.inputs\.sample\.shape' must be a list of positive integers"),
        (lambda d: d["budget"].update(end_to_end_psnr_db="high"), r"'budget\.end_to_end_psnr_db' must be a positive"),
    ],
)
def test_refuses_malformed_fields(bundle: Path, edit: Callable[[dict[str, Any]], Any], pattern: str) -> None:
    _edit(bundle, edit)
    msg = _refused(bundle, pattern)
    assert "re-export" in msg


def test_contract_helper_matches_required_components() -> None:
    from dhumandiff.contract.bundle import COMPONENT_IO

    assert set(COMPONENT_IO) <= set(component_io())
    for name, (ins, outs) in COMPONENT_IO.items():
        assert list(component_io()[name][0]) == list(ins), name
        assert list(component_io()[name][1]) == list(outs), name
