"""bundle.json validation: every refusal is one BundleError line that says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from bundle_edits import dynamic_axes
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


# ------------------------------------------------------------------- only regular files, every loaded byte hashed


def _to_package(root: Path, files: dict[str, bytes | None]) -> None:
    """Make the unet of a Core ML bundle the folder ``unet.mlpackage`` holding ``files`` (None: a sub-folder)."""
    pkg = root / "unet.mlpackage"
    pkg.mkdir()
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).mkdir() if data is None else (pkg / rel).write_bytes(data)

    def edit(d: dict[str, Any]) -> None:
        u = d["components"]["unet"]
        u["file"], u["extra_files"] = "unet.mlpackage", []
        u["sha256"] = {f"unet.mlpackage/{rel}": "0" * 64 for rel, data in files.items() if data is not None}

    _edit(root, edit)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("digests", ["kept", "emptied"])
def test_refuses_a_component_that_is_a_fifo(bundle: Path, digests: str) -> None:
    """A FIFO is never opened (a read would wait forever), whether or not bundle.json lists a digest for it."""
    (bundle / "vae_decoder.onnx").unlink()
    os.mkfifo(bundle / "vae_decoder.onnx")
    if digests == "emptied":
        _edit(bundle, lambda d: d["components"]["vae_decoder"].update(sha256={}))
    for verify in (True, False):
        _refused(bundle, r"^bundle file vae_decoder\.onnx \(components\.vae_decoder\.file\) is not a regular file",
                 verify=verify)


@pytest.mark.timeout(60)
def test_refuses_a_tokenizer_or_bundle_json_that_is_a_fifo(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    os.mkfifo(bundle / "tokenizer.json")
    _refused(bundle, r"bundle file tokenizer\.json \(tokenizer\.file\) is not a regular file")
    (bundle / "bundle.json").unlink()
    os.mkfifo(bundle / "bundle.json")
    for path in (bundle, bundle / "bundle.json"):
        _refused(path, r"bundle\.json is not a regular file")


def test_refuses_a_graph_that_is_a_folder_outside_core_ml(bundle: Path) -> None:
    """Only Core ML graphs are folders: an onnx component whose file is a folder (even with every file inside
    hashed) cannot run, and neither can one with nothing to hash."""
    (bundle / "vae_decoder.onnx").unlink()
    (bundle / "vae_decoder.onnx").mkdir()
    _edit(bundle, lambda d: d["components"]["vae_decoder"].update(sha256={}))
    _refused(bundle, r"components\.vae_decoder\.file 'vae_decoder\.onnx' is a folder; only Core ML bundles")
    (bundle / "vae_decoder.onnx" / "model.onnx").write_bytes(b"x")
    _edit(bundle, lambda d: d["components"]["vae_decoder"].update(
        sha256=component_digests(bundle, ["vae_decoder.onnx"])))
    _refused(bundle, r"'vae_decoder\.onnx' is a folder; only Core ML bundles")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inside,pattern", [
    ({}, r"components\.unet\.file 'unet\.mlpackage' is an empty folder"),
    ({"Data": None}, r"components\.unet\.file 'unet\.mlpackage' is an empty folder"),
    ({"Data/weight.bin": b"w", "fifo": "fifo"}, r"bundle file unet\.mlpackage/fifo .* is not a regular file"),
    ({"Data/weight.bin": b"w", "linked": "dirlink"}, r"bundle file unet\.mlpackage/linked .* is not a regular file"),
], ids=["empty", "only-empty-folders", "fifo-inside", "link-to-a-folder-inside"])
def test_core_ml_packages_hold_only_hashed_files(tmp_path: Path, inside: dict, pattern: str) -> None:
    root = tmp_path / "b"
    write_fake_bundle(root, runtime="coreml")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "weights.bin").write_bytes(b"never hashed")
    _to_package(root, {k: v for k, v in inside.items() if isinstance(v, bytes) or v is None})
    for rel, kind in inside.items():
        if kind == "fifo":
            os.mkfifo(root / "unet.mlpackage" / rel)
        elif kind == "dirlink":  # a link to a folder inside the bundle: its files would not be hashed
            os.symlink(root / "elsewhere", root / "unet.mlpackage" / rel)
    _refused(root, pattern, verify=False)


def _external_data_graph(root: Path, name: str, location: str) -> None:
    """Re-save ``name``.onnx of a real bundle with its tensors in ``location`` (onnx's own external-data writer)."""
    import onnx

    model = onnx.load(str(root / f"{name}.onnx"))
    (root / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime_fixtures import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("real") / "b").path


def test_refuses_onnx_external_data_the_manifest_does_not_list(real_bundle: Path, tmp_path: Path) -> None:
    """An ONNX graph reads its external-data file by itself: unlisted, a changed file changed the image while every
    listed sha256 still matched. It must be in the component's extra_files and sha256."""
    import shutil

    root = Path(shutil.copytree(real_bundle, tmp_path / "b"))
    _external_data_graph(root, "unet", "weights/unet.bin")
    _edit(root, lambda d: d["components"]["unet"].update(sha256=component_digests(root, ["unet.onnx"])))
    for verify in (True, False):
        _refused(root, r"components\.unet does not list weights/unet\.bin, but unet\.onnx keeps tensors in it "
                       r"\(external data\): every file a graph loads must be in its extra_files and sha256",
                 verify=verify)

    def listed(d: dict[str, Any]) -> None:
        d["components"]["unet"].update(extra_files=["weights/unet.bin"],
                                       sha256=component_digests(root, ["unet.onnx", "weights/unet.bin"]))

    _edit(root, listed)
    assert load_manifest(root).components["unet"].extra_files == ("weights/unet.bin",)
    with open(root / "weights" / "unet.bin", "r+b") as fh:
        fh.write(b"\x7f")
    _refused(root, r"sha256 mismatch for weights/unet\.bin \(component unet\)")


def test_refuses_onnx_external_data_outside_the_bundle(real_bundle: Path, tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(real_bundle, tmp_path / "b"))
    _external_data_graph(root, "vae_decoder", "vae.data")
    os.replace(root / "vae.data", tmp_path / "vae.data")
    import onnx

    model = onnx.load(str(root / "vae_decoder.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../vae.data"
    onnx.save(model, str(root / "vae_decoder.onnx"))
    _edit(root, lambda d: d["components"]["vae_decoder"].update(
        sha256=component_digests(root, ["vae_decoder.onnx"])))
    _refused(root, r"components\.vae_decoder external data '\.\./vae\.data' escapes the bundle folder")


def test_onnx_external_data_reader_agrees_with_onnx(tmp_path: Path) -> None:
    """The torch- and onnx-free reader finds what onnx itself finds: initializers, Constant nodes, subgraphs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    from dhumandiff.contract.bundle import onnx_external_data

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.full((4,), value, np.float32), name)

    then = helper.make_graph([helper.make_node("Add", ["x", "t"], ["y1"])], "then", [],
                             [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [4])], [const("t", 1.0)])
    other = helper.make_graph([helper.make_node("Constant", [], ["y2"], value=const("e", 2.0))], "else", [],
                              [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Constant", [], ["c"], value=const("c", 3.0)),
             helper.make_node("Add", ["x", "c"], ["s"]), helper.make_node("If", ["cond"], ["y"], then_branch=then,
                                                                       else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [const("x", 4.0)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_external_data_of(model, tmp_path / "inline.onnx") == []
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0,
                                                        convert_attribute=True)
    theirs = sorted({e.value for t in external_data_helper._get_all_tensors(model)
                     if external_data_helper.uses_external_data(t) for e in t.external_data if e.key == "location"})
    assert len(theirs) == 4
    assert onnx_external_data_of(model, tmp_path / "external.onnx") == theirs
    (tmp_path / "junk.onnx").write_bytes(b"graph unet")  # not a model: nothing to list (onnxruntime refuses it)
    assert onnx_external_data(tmp_path / "junk.onnx") is None


def onnx_external_data_of(model: Any, path: Path) -> list[str] | None:
    import onnx

    from dhumandiff.contract.bundle import onnx_external_data

    onnx.save(model, str(path))
    return onnx_external_data(path)


def test_refuses_an_openvino_ir_whose_bin_is_not_listed(tmp_path: Path) -> None:
    """OpenVINO reads ``unet.bin`` next to ``unet.xml`` by itself: it must be listed and hashed."""
    root = tmp_path / "ov"
    write_fake_bundle(root, runtime="openvino")
    (root / "unet.xml").write_bytes(b"<net/>")
    (root / "unet.bin").write_bytes(b"weights")
    _edit(root, lambda d: d["components"]["unet"].update(
        file="unet.xml", extra_files=[], sha256=component_digests(root, ["unet.xml"])))
    _refused(root, r"components\.unet does not list unet\.bin, but OpenVINO reads the weights of unet\.xml")
    _edit(root, lambda d: d["components"]["unet"].update(
        extra_files=["unet.bin"], sha256=component_digests(root, ["unet.xml", "unet.bin"])))
    assert load_manifest(root).components["unet"].file == "unet.xml"


# ------------------------------------------------------------------------------------------ bundle.json bombs


@pytest.mark.parametrize("text,pattern", [
    ("[" * 100_000 + "]" * 100_000, r"bundle\.json nests too deep to read"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"bundle\.json nests too deep to read"),
    ('{"format": "dhumandiff-bundle", "x": ' + "[" * 200 + "]" * 200 + "}", r"bundle\.json nests deeper than 64"),
    ('{"format_version": 1' + "0" * 5000 + "}", r"bundle\.json holds a number too long to read \(Exceeds the limit"),
], ids=["array-100000-deep", "object-100000-deep", "200-deep-inside-an-object", "5000-digit-number"])
def test_refuses_json_bombs(bundle: Path, text: str, pattern: str) -> None:
    (bundle / "bundle.json").write_text(text)
    _refused(bundle, pattern)


def test_refuses_a_bundle_json_over_16_mb_without_reading_it_all(bundle: Path) -> None:
    with open(bundle / "bundle.json", "a") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MB of NUL bytes after the JSON
    _refused(bundle, r"bundle\.json is over 16 MB \(a bundle\.json is a few kB\)")


@pytest.mark.parametrize("edit,pattern", [
    (lambda d: d.update(image_size=[1_000_000, 1_000_000]), r"'image_size' must be .* each side <= 8192 "
                                                            r"\(got \[1000000, 1000000\]\)"),
    (lambda d: d["tokenizer"].update(max_length=10**9), r"'tokenizer\.max_length' must be an integer >= 3 and <= 4096"),
    (lambda d: d["latent"].update(channels=100_000), r"'latent\.channels' must be an integer >= 1 and <= 64"),
    (lambda d: d.update(image_size=[8192, 8192]) or d["latent"].update(downscale=1),
     r"the latent grid .* holds 268,435,456 values, over the 16,777,216"),
    (lambda d: d["identity"].update(clip_size=10**6), r"'identity\.clip_size' must be an integer >= 1 and <= 2048"),
    (lambda d: d["identity"].update(num_id_tokens=10**8),
     r"'identity\.num_id_tokens' must be an integer >= 1 and <= 1024"),
    (lambda d: d["tokenizer"].update(pad_token_id=10**30), r"'tokenizer\.pad_token_id' must be an integer >= 0 and "
                                                           r"<= 2147483647 \(got 1000000000000000000000000000000\)"),
], ids=["image-size", "max-length", "latent-channels", "latent-grid", "clip-size", "id-tokens", "token-id"])
def test_refuses_sizes_that_would_allocate_too_much(bundle: Path, edit: Callable[[dict[str, Any]], Any],
                                                    pattern: str) -> None:
    _edit(bundle, lambda d: (dynamic_axes(d), edit(d)))
    msg = _refused(bundle, pattern)
    assert "re-export" in msg and len(msg) < 300
