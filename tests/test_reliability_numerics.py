"""Numerical guards: a NaN/Inf from any component stops generation with ``NumericalError`` (exit 12) naming the
component, on every bundle runtime and in the PyTorch reference, with the fix that fits how it ran; and
``--vae-precision`` does what it says (fp16/fp32 VAE in the reference; bundles run the precision they were
exported in and refuse a request they cannot honour). NaNs are forced for real: weights overwritten with inf in
the exported graph files, or a VAE input that overflows fp16 but not fp32.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from runtime_fixtures import build_tiny_bundle, face_images, make_modules  # noqa: E402

from dhumandiff.cli.main import main  # noqa: E402
from dhumandiff.errors import NumericalError, SettingsError  # noqa: E402
from dhumandiff.runtimes import load_bundle  # noqa: E402
from dhumandiff.contract.bundle import component_digests  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FACES = (REPO / "examples" / "face_a.png", REPO / "examples" / "face_b.png")
PROMPT = "a man and a woman on the beach"


def _rehash(bundle: Path, edit: Any = None) -> None:
    """Recompute digests after a deliberate graph change (a bundle that passes every integrity check)."""
    d = json.loads((bundle / "bundle.json").read_text())
    for comp in d["components"].values():
        comp["sha256"] = component_digests(bundle, list(comp["sha256"]))
    if edit:
        edit(d)
    (bundle / "bundle.json").write_text(json.dumps(d, indent=2))


def _inf_in_onnx_initializer(path: Path) -> str:
    """Overwrite the first conv weight of an ONNX graph with +inf, in the file; returns the initializer name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if len(t.dims) == 4)
    init.CopyFrom(numpy_helper.from_array(np.full(tuple(init.dims), np.inf, np.float32), init.name))
    onnx.save(model, str(path))
    return init.name


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken on purpose: onnx (VAE decoder weights set to inf in the .onnx file), OpenVINO (UNet weights inf
    before export) and TorchScript (VAE decoder weights inf before export)."""
    import torch

    root = tmp_path_factory.mktemp("nan-bundles")
    onnx_b = build_tiny_bundle(root / "onnx", "onnx").path
    _inf_in_onnx_initializer(onnx_b / "vae_decoder.onnx")
    _rehash(onnx_b)
    out = {"onnx": onnx_b}
    for runtime, component in (("openvino", "unet"), ("torchscript", "vae_decoder")):
        mods = make_modules(seed=0)
        with torch.no_grad():
            mods[component].conv_out.weight.fill_(float("inf"))
        out[runtime] = build_tiny_bundle(root / runtime, runtime, modules=mods).path
    return out


@pytest.mark.parametrize("runtime,component", [("onnx", "vae_decoder"), ("openvino", "unet"),
                                               ("torchscript", "vae_decoder")])
def test_every_bundle_runtime_names_the_component(bundles: dict[str, Path], runtime: str, component: str) -> None:
    gen = load_bundle(bundles[runtime], num_threads=1)
    with pytest.raises(NumericalError) as exc:
        gen(*face_images(), "a photo of the man and woman at the beach", steps=2)
    msg = str(exc.value)
    assert exc.value.exit_code == 12 and "\n" not in msg
    assert re.match(rf"{component} produced (NaN|Inf) in output '\w+' \({runtime} on (cpu|CPU)\)", msg), msg
    if component == "vae_decoder":  # fp32 bundle: the precision switch cannot help, and the message says so
        assert "already ran in fp32 (--vae-precision fp32 cannot help)" in msg and "dhumandiff parity" in msg


def test_cli_reports_the_nan_in_one_line_and_writes_nothing(bundles: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    face_a, face_b = face_images()
    face_a.save(tmp_path / "a.png")
    face_b.save(tmp_path / "b.png")
    out = tmp_path / "out" / "p.png"
    capsys.readouterr()
    rc = main(["generate", "--bundle", str(bundles["onnx"]), "--face-a", str(tmp_path / "a.png"), "--face-b",
               str(tmp_path / "b.png"), "--prompt", "a photo of the man and woman at the beach", "--steps", "2",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 12 and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: vae_decoder produced"), err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_fp16_vae_graph_gets_the_fp16_advice(bundles: dict[str, Path], tmp_path: Path) -> None:
    """The hint follows the VAE's recorded graph precision (bundle.json export.graph_precision)."""
    b = Path(shutil.copytree(bundles["onnx"], tmp_path / "fp16"))
    _rehash(b, lambda d: d.setdefault("export", {}).setdefault("graph_precision", {}).update(vae_decoder="fp16"))
    gen = load_bundle(b, num_threads=1)
    with pytest.raises(NumericalError, match=r"this bundle's VAE decoder is fp16 and overflowed; re-export"):
        gen(*face_images(), "a photo of the man and woman at the beach", steps=1)
    with pytest.raises(SettingsError, match=r"exported in fp16, so --vae-precision fp32 cannot be applied"):
        gen(*face_images(), "a photo of the man and woman at the beach", steps=1, vae_precision="fp32")


# --------------------------------------------------------------------------------------- the reference


@pytest.fixture(scope="module")
def tiny() -> Any:
    from dhumandiff.model.generate import load_model

    return load_model("tiny")


def test_reference_unet_nan_is_named_with_its_step(tiny: Any) -> None:
    import torch

    from dhumandiff.model.generate import generate_portrait

    broken = copy.deepcopy(tiny)
    with torch.no_grad():
        broken.unet.conv_out.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"^unet produced NaN in output 'noise_pred' at step 1; the model's"):
        generate_portrait(broken, *FACES, PROMPT, steps=2)


def test_reference_fp16_vae_overflow_is_fixed_by_fp32(tiny: Any) -> None:
    """A VAE whose input exceeds fp16's range (65504): fp16 -> NaN named, with the fix; fp32 -> an image."""
    from dhumandiff.model.generate import generate_portrait

    hot = copy.deepcopy(tiny)
    hot.vae.register_to_config(scaling_factor=1e-5)  # latents / 1e-5 ~ 1e5: inf in fp16, fine in fp32
    with pytest.raises(NumericalError) as exc:
        generate_portrait(hot, *FACES, PROMPT, steps=1, vae_precision="fp16")
    assert re.match(r"vae_decoder produced (NaN|Inf) in output 'sample' \(torch fp16 on cpu\); the fp16 VAE decoder "
                    r"overflowed; rerun with --vae-precision fp32$", str(exc.value)), str(exc.value)
    assert generate_portrait(hot, *FACES, PROMPT, steps=1, vae_precision="fp32").image.size == (64, 64)
    assert tiny.vae.dtype == hot.vae.dtype, "the fp16 decode works on a copy: the model is never cast"


def test_reference_vae_precision_really_switches(tiny: Any) -> None:
    """fp16 decodes differently from fp32 (by rounding, not by much): the option is wired, not ignored."""
    from dhumandiff.model.sampler import ReferenceSampler

    import torch

    sampler = ReferenceSampler(tiny)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32))
    x32, x16 = sampler.decode(z, "fp32"), sampler.decode(z, "fp16")
    assert x32.dtype == x16.dtype == torch.float32
    diff = float((x32 - x16).abs().max())
    assert 0 < diff < 0.02, diff
    assert torch.equal(sampler.decode(z), x32), "default: the model's own fp32 VAE"


def test_cli_vae_precision_on_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The documented fix end to end: the same overflowing model fails in fp16 (exit 12) and works in fp32."""
    from dhumandiff.model.registry import resolve_model

    src = resolve_model("tiny")
    model = tmp_path / "hot-vae"
    shutil.copytree(src, model, ignore=shutil.ignore_patterns("unet", "identity_encoder"))
    for big in ("unet", "identity_encoder"):
        os.symlink(src / big, model / big)
    cfg = json.loads((model / "vae" / "config.json").read_text())
    cfg["scaling_factor"] = 1e-5
    (model / "vae" / "config.json").write_text(json.dumps(cfg))
    args = ["generate", "--model", str(model), "--face-a", str(FACES[0]), "--face-b", str(FACES[1]), "--prompt",
            PROMPT, "--steps", "1"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "16.png"), "--vae-precision", "fp16"]) == 12
    err = capsys.readouterr().err
    assert re.search(r"^error: vae_decoder produced .*rerun with --vae-precision fp32$", err, re.M), err
    assert not (tmp_path / "16.png").exists()
    assert main([*args, "--out", str(tmp_path / "32.png"), "--vae-precision", "fp32"]) == 0
    assert (tmp_path / "32.png").is_file()
