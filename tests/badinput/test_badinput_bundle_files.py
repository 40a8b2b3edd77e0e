"""Bundles whose files or bundle.json are built to hang, exhaust memory or slip unhashed bytes in, each through
``generate`` (CLI and Python API) and ``verify``: one ``error:`` line, exit 10, no traceback, no output file, and
never a hang. The tampered-bundle cases of ``test_badinput_files.py``, for these failure classes."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from badinput_corpus import FACE_A, FACE_B, PROMPT, check_cli_refusal, edit_manifest, rehash, run_cli
from bundle_edits import dynamic_axes, hash_tokenizer

from dhumandiff.errors import BundleError


def _fifo_without_digest(bundle: Path) -> None:
    """The graph replaced by a FIFO: opening it for reading waits for a writer that never comes."""
    (bundle / "vae_decoder.onnx").unlink()
    os.mkfifo(bundle / "vae_decoder.onnx")
    edit_manifest(bundle, lambda d: d["components"]["vae_decoder"].update(sha256={}))


def _folder_graph(bundle: Path) -> None:
    """The graph replaced by a folder whose one file is hashed: listed, verified, and not runnable."""
    from dhumandiff.contract.bundle import component_digests

    (bundle / "vae_decoder.onnx").unlink()
    (bundle / "vae_decoder.onnx").mkdir()
    (bundle / "vae_decoder.onnx" / "model.onnx").write_bytes(b"x")
    edit_manifest(bundle, lambda d: d["components"]["vae_decoder"].update(
        sha256=component_digests(bundle, ["vae_decoder.onnx"])))


def _unlisted_external_data(bundle: Path) -> None:
    """The UNet's weights moved to an external-data file the manifest does not list (its digests all match)."""
    import onnx

    model = onnx.load(str(bundle / "unet.onnx"))
    onnx.save(model, str(bundle / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="unet.onnx.data", size_threshold=0)
    rehash(bundle)


def _write(text: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / "bundle.json").write_text(text)


def _grow_to_64_mb(bundle: Path) -> None:
    with open(bundle / "bundle.json", "a") as fh:
        fh.truncate(64 << 20)


def _dynamic(key: str, value: object) -> Callable[[Path], None]:
    """Named (dynamic) axes, so no shape cross-check stands between ``key`` and an allocation; then ``key`` set."""
    def apply(d: dict) -> None:
        dynamic_axes(d)
        section, _, field = key.rpartition(".")
        (d[section] if section else d)[field] = value
    return lambda bundle: edit_manifest(bundle, apply)


def _unet_output_halved(bundle: Path) -> None:
    """A UNet graph that takes the declared inputs but returns noise_pred at half the declared size."""
    import onnx
    from onnx import TensorProto, helper

    spec = json.loads((bundle / "bundle.json").read_text())["components"]["unet"]
    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    inputs = [helper.make_tensor_value_info(n, types[s["dtype"]], s["shape"]) for n, s in spec["inputs"].items()]
    b, c, h, w = spec["outputs"]["noise_pred"]["shape"]
    node = helper.make_node("AveragePool", ["sample"], ["noise_pred"], kernel_shape=[2, 2], strides=[2, 2])
    out = helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, [b, c, h // 2, w // 2])
    model = helper.make_model(helper.make_graph([node], "unet", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(bundle / "unet.onnx"))
    rehash(bundle)


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Path], None]
    needle: str
    verify: bool = True  # `dhumandiff verify` refuses it too (it reads files, it runs no graph)


CASES = [
    Case("component-is-a-fifo", _fifo_without_digest, r"vae_decoder\.onnx \(components\.vae_decoder\.file\) is not a "
                                                       r"regular file"),
    Case("component-is-a-folder", _folder_graph, r"'vae_decoder\.onnx' is a folder; only Core ML bundles"),
    Case("onnx-external-data-not-listed", _unlisted_external_data,
         r"components\.unet does not list unet\.onnx\.data, but unet\.onnx keeps tensors in it"),
    Case("bundle-json-100000-deep", _write("[" * 100_000 + "]" * 100_000), r"bundle\.json nests too deep to read"),
    Case("bundle-json-5000-digit-number", _write('{"format_version": 1' + "0" * 5000 + "}"),
         r"bundle\.json holds a number too long to read"),
    Case("bundle-json-64-mb", _grow_to_64_mb, r"bundle\.json is over 16 MB"),
    Case("image-size-1000000-square", _dynamic("image_size", [1_000_000, 1_000_000]), r"each side <= 8192"),
    Case("tokenizer-max-length-1e9", _dynamic("tokenizer.max_length", 10**9),
         r"'tokenizer\.max_length' must be an integer >= 3 and <= 4096"),
    Case("graph-output-shape-differs", _unet_output_halved,
         r"unet graph output 'noise_pred' has shape \[2, 4, 8, 8\], bundle\.json declares \[2, 4, 16, 16\]",
         verify=False),
]


RUNS = [pytest.param(case, door, id=f"{case.id}-{door}") for case in CASES for door in ("cli", "api", "verify")
        if door != "verify" or case.verify]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case,door", RUNS)
def test_bundle_built_to_hang_or_exhaust(case: Case, door: str, bundle_copy: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    hash_tokenizer(bundle_copy)  # what the exporter writes: verify accepts the untouched copy
    case.edit(bundle_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if door == "verify":
        rc, err = run_cli(["verify", str(bundle_copy)], capsys)
        check_cli_refusal(rc, err, 10, case.needle, out_dir)
    elif door == "cli":
        rc, err = run_cli(["generate", "--bundle", str(bundle_copy), "--face-a", str(FACE_A), "--face-b", str(FACE_B),
                           "--prompt", PROMPT, "--steps", "1", "--out", str(out_dir / "p.png")], capsys)
        check_cli_refusal(rc, err, 10, case.needle, out_dir)
    else:
        from dhumandiff.runtimes import load_bundle

        with pytest.raises(BundleError) as exc:
            load_bundle(bundle_copy)(FACE_A, FACE_B, PROMPT, steps=1)
        assert exc.value.exit_code == 10 and "\n" not in str(exc.value)
        assert re.search(case.needle, str(exc.value)), str(exc.value)
