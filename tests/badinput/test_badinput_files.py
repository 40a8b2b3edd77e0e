"""Bad bundles, model folders and PairHuman annotations, each through the CLI and the Python API: one line that
says what to do, the documented exit code (10 bundle, 9 checkpoint, 8 annotation; ``data check`` reports
with 1), no traceback, no output file, and never a pickle executed."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from badinput_corpus import FACE_A, FACE_B, PROMPT, check_cli_refusal, edit_manifest, rehash, run_cli

from dhumandiff.cli.main import main
from dhumandiff.errors import AnnotationError, BundleError, CheckpointError, DHumanDiffError


# ------------------------------------------------------------------------------------------------ bundles


def _set(path: str, value: Any) -> Callable[[Path], None]:
    """Set (or with ``...`` delete) a dotted path in bundle.json."""
    def edit(bundle: Path) -> None:
        def apply(d: dict) -> None:
            *parents, last = path.split(".")
            for k in parents:
                d = d[k]
            if value is ...:
                del d[last]
            else:
                d[last] = value
        edit_manifest(bundle, apply)
    return edit


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / rel).unlink()


def _flip_bytes(rel: str) -> Callable[[Path], None]:
    def edit(bundle: Path) -> None:
        with open(bundle / rel, "r+b") as fh:
            fh.seek(-16, 2)
            fh.write(b"\xff" * 16)
    return edit


def _escape(bundle: Path) -> None:
    shutil.copy(bundle / "unet.onnx", bundle.parent / "unet.onnx")  # the file exists, outside the bundle
    _set("components.unet.file", "../unet.onnx")(bundle)


def _symlink_out(bundle: Path) -> None:
    outside = bundle.parent / "elsewhere.onnx"
    shutil.copy(bundle / "vae_decoder.onnx", outside)
    (bundle / "vae_decoder.onnx").unlink()
    os.symlink(outside, bundle / "vae_decoder.onnx")


def _corrupt_graph(bundle: Path) -> None:
    (bundle / "identity_encoder.onnx").write_bytes(b"not a protobuf, but with a matching digest")
    rehash(bundle)


def _bad_json(bundle: Path) -> None:
    (bundle / "bundle.json").write_text('{"format": "dhumandiff-bundle", ')


def _no_manifest(bundle: Path) -> None:
    (bundle / "bundle.json").unlink()


def _unknown_component(bundle: Path) -> None:
    def add(d: dict) -> None:
        d["components"]["safety_checker"] = dict(d["components"]["vae_decoder"])
    edit_manifest(bundle, add)


def _replace_tokenizer(vocab: dict[str, int]) -> Callable[[Path], None]:
    """A replaced tokenizer.json that still parses: a WordLevel model over ``vocab`` (its own digest: the small
    bundle records none for its tokenizer, as a hand-made bundle may not)."""
    def edit(bundle: Path) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(bundle / "tokenizer.json"))
    return edit


@dataclass(frozen=True)
class BundleCase:
    id: str
    edit: Callable[[Path], None] | None
    needle: str
    cli: tuple[str, ...] = ()
    api: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # generate from this path (relative to the copy) instead of the copy itself


BUNDLE_CASES = [
    BundleCase("format-version-2", _set("format_version", 2), r"format_version 2 is not supported.*re-export"),
    BundleCase("not-a-bundle-format", _set("format", "something-else"), r"not a dhumandiff bundle"),
    BundleCase("file-missing", _remove("unet.onnx"), r"bundle file unet\.onnx is missing.*copy the whole bundle"),
    BundleCase("tokenizer-missing", _remove("tokenizer.json"), r"tokenizer\.json is missing"),
    BundleCase("sha256-mismatch", _flip_bytes("vae_decoder.onnx"),
               r"sha256 mismatch for vae_decoder\.onnx \(component vae_decoder\).*copy the bundle again"),
    BundleCase("path-escapes-folder", _escape, r"'\.\./unet\.onnx' escapes the bundle folder"),
    BundleCase("sha256-key-escapes", _set("components.unet.sha256", {"../../etc/passwd": "0" * 64}),
               r"(escapes the bundle folder|lists \.\./\.\./etc/passwd)"),
    BundleCase("tokenizer-empty-vocab", _replace_tokenizer({}),
               r"tokenizer .*tokenizer\.json has an empty vocabulary: the bundle's tokenizer file is unusable"),
    BundleCase("tokenizer-person-words-unknown",
               _replace_tokenizer({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "and": 5, "beach": 6}),
               r"knows none of the person words .*tokenizer file is unusable"),
    BundleCase("tokenizer-path-escapes", _set("tokenizer.file", "../../tokenizer.json"), r"escapes the bundle"),
    BundleCase("absolute-path", _set("components.unet.file", "/etc/passwd"), r"is an absolute path"),
    BundleCase("symlink-out-of-folder", _symlink_out, r"points outside the bundle folder"),
    BundleCase("for-another-runtime", None, r"this bundle is for onnx; use --runtime onnx or export for openvino",
               cli=("--runtime", "openvino"), api={"runtime": "openvino"}),
    BundleCase("unknown-runtime", _set("runtime", "tensorrt"), r"runtime 'tensorrt' is not one of"),
    BundleCase("no-bundle-json", _no_manifest, r"not a dhumandiff bundle \(no bundle\.json\)"),
    BundleCase("no-such-folder", None, r"no bundle at .*nowhere", path="nowhere"),
    BundleCase("bundle-json-not-json", _bad_json, r"is not valid JSON"),
    BundleCase("field-missing", _set("defaults", ...), r"missing field 'defaults'"),
    BundleCase("field-wrong-type", _set("image_size", "64x64"), r"'image_size' must be \[height, width\]"),
    BundleCase("nested-field-wrong-type", _set("identity.min_face_px", "big"), r"'identity\.min_face_px' must be"),
    BundleCase("scheduler-wrong-type", _set("scheduler.num_train_timesteps", "1000"),
               r"scheduler num_train_timesteps must be an integer"),
    BundleCase("unknown-component", _unknown_component, r"unknown component\(s\) safety_checker"),
    BundleCase("cfg-flag-contradicts-unet", _set("defaults.cfg", False), r"defaults\.cfg is false but the unet"),
    BundleCase("graph-corrupt-digest-ok", _corrupt_graph, r"onnxruntime cannot load identity_encoder\.onnx"),
]


@pytest.mark.parametrize("door", ["cli", "api"])
@pytest.mark.parametrize("case", BUNDLE_CASES, ids=[c.id for c in BUNDLE_CASES])
def test_bad_bundle(case: BundleCase, door: str, bundle_copy: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture) -> None:
    if case.edit is not None:
        case.edit(bundle_copy)
    bundle = bundle_copy / case.path if case.path else bundle_copy
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if door == "cli":
        rc, err = run_cli(["generate", "--bundle", str(bundle), "--face-a", str(FACE_A), "--face-b", str(FACE_B),
                           "--prompt", PROMPT, "--steps", "1", "--out", str(out_dir / "p.png"), *case.cli], capsys)
        check_cli_refusal(rc, err, 10, case.needle, out_dir)
        return
    from dhumandiff.runtimes import load_bundle

    with pytest.raises(BundleError) as exc:
        load_bundle(bundle, **case.api)(FACE_A, FACE_B, PROMPT, steps=1)
    assert exc.value.exit_code == 10 and "\n" not in str(exc.value)
    assert re.search(case.needle, str(exc.value)), str(exc.value)


# ------------------------------------------------------------------------------------------- model folders


def _pickled_weights(model: Path, marker: Path) -> None:
    """Replace the VAE's safetensors by a torch pickle carrying code (which must never run)."""
    import safetensors.torch
    import torch

    class Payload:
        def __reduce__(self) -> Any:
            return (Path.write_text, (marker, "pwned"))

    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    state: dict[str, Any] = dict(safetensors.torch.load_file(str(weights)))
    state["evil"] = Payload()
    torch.save(state, model / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()


def _model_copy(src: Path, dest: Path) -> Path:
    """The tiny model folder with its two big, never edited parts linked rather than copied."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("unet", "identity_encoder"))
    for big in ("unet", "identity_encoder"):
        os.symlink(src / big, dest / big)
    return dest


MODEL_CASES = {
    "weights-missing": (lambda m, _: (m / "resampler" / "diffusion_pytorch_model.safetensors").unlink(),
                        r"cannot be loaded \(.*no file named diffusion_pytorch_model\.safetensors.*must hold safetensors"),
    "pickle-instead-of-safetensors": (_pickled_weights, r"cannot be loaded .*must hold safetensors"),
    "weights-corrupt": (lambda m, _: (m / "resampler" / "diffusion_pytorch_model.safetensors").write_bytes(b"x"),
                        r"cannot be loaded"),
    "config-not-json": (lambda m, _: (m / "dhumandiff.json").write_text("{oops"), r"not a valid model config"),
    "config-wrong-shape": (lambda m, _: (m / "dhumandiff.json").write_text('{"name": 3}'),
                           r"not a valid model config"),
    "component-folder-missing": (lambda m, _: shutil.rmtree(m / "resampler"), r"is missing resampler/"),
    "not-a-model-folder": (lambda m, _: (m / "dhumandiff.json").unlink(), r"(is not a dhumandiff model folder|not found: pass an embedded model .* or a folder made by)"),
}


@pytest.mark.parametrize("door", ["cli", "api"])
@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_bad_model_folder(name: str, door: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dhumandiff.model.registry import resolve_model

    model = _model_copy(resolve_model("tiny"), tmp_path / "model")
    marker = tmp_path / "payload_ran"
    edit, needle = MODEL_CASES[name]
    edit(model, marker)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if door == "cli":
        rc, err = run_cli(["generate", "--model", str(model), "--face-a", str(FACE_A), "--face-b", str(FACE_B),
                           "--prompt", PROMPT, "--steps", "1", "--out", str(out_dir / "p.png")], capsys)
        check_cli_refusal(rc, err, 9, needle, out_dir)
    else:
        from dhumandiff.model.generate import load_model

        with pytest.raises(CheckpointError) as exc:
            load_model(str(model))
        assert exc.value.exit_code == 9 and "\n" not in str(exc.value)
        assert re.search(needle, str(exc.value)), str(exc.value)
    assert not marker.exists(), "a pickle payload ran"


# ---------------------------------------------------------------------------------------- PairHuman JSON


def _edit_ann(fn: Callable[[dict], Any]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))
    return edit


def _write(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


ANNOTATION_CASES = {
    "people-missing": (_edit_ann(lambda d: d.pop("people")), r"field 'people'"),
    "box-is-a-string": (_edit_ann(lambda d: d["people"][0].__setitem__("unique_coordinate", "10,10,50,60")),
                        r"field 'people\[0\]\.unique_coordinate'"),
    "box-too-short": (_edit_ann(lambda d: d["people"][1].__setitem__("unique_coordinate", [1, 2, 3])),
                      r"field 'people\[1\]\.unique_coordinate'"),
    "height-negative": (_edit_ann(lambda d: d["Information"].__setitem__("height", -64)),
                        r"field 'Information\.height'"),
    "width-is-text": (_edit_ann(lambda d: d["Information"].__setitem__("width", "sixty-four")),
                      r"field 'Information\.width'"),
    "caption-text-missing": (_edit_ann(lambda d: d["image_caption"].pop("text")), r"field 'image_caption\.text'"),
    "span-index-is-text": (_edit_ann(lambda d: d["image_caption"]["match_info"][0]["person_info"][0].__setitem__(
        "start_idx", "two")), r"start_idx"),
    "root-is-a-list": (_write("[1, 2, 3]"), r"field '<root>'"),
    "not-json": (_write("{'Information': }"), r"not valid JSON"),
    "zero-bytes": (_write(""), r"not valid JSON"),
}


@pytest.mark.parametrize("door", ["cli", "api"])
@pytest.mark.parametrize("name", list(ANNOTATION_CASES))
def test_bad_annotation(name: str, door: str, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = Path(shutil.copytree(world, tmp_path / "world"))
    ann = folder / "annotations" / "000000.json"
    edit, needle = ANNOTATION_CASES[name]
    edit(ann)
    if door == "cli":
        capsys.readouterr()
        rc = main(["data", "check", str(folder)])
        out, err = capsys.readouterr()
        assert rc == 1 and "Traceback" not in err, err
        bad = [ln for ln in err.splitlines() if ln.strip()]
        assert len(bad) == 1 and bad[0].startswith(f"bad {ann}: ") and re.search(needle, bad[0]), err
        assert "1 records ok, 1 problems" in out
        return
    from dhumandiff.data.dataset import PairHumanDataset
    from dhumandiff.data.schema import load_annotation

    for load in (lambda: load_annotation(ann), lambda: PairHumanDataset(folder)):
        with pytest.raises(AnnotationError) as exc:
            load()
        msg = str(exc.value)
        assert exc.value.exit_code == 8 and "\n" not in msg and msg.startswith(f"{ann}: "), msg
        assert re.search(needle, msg), msg
    assert isinstance(exc.value, DHumanDiffError)
