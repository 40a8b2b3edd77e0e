"""End to end: the NumPy sampler loop over real onnxruntime, OpenVINO and TorchScript graphs of a tiny
random model exported in the test, checked against the torch modules themselves."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from runtime_fixtures import (  # noqa: E402
    LCM_CONFIG,
    N_ID,
    TinyBundle,
    build_tiny_bundle,
    face_images,
    make_modules,
)

from dhumandiff.errors import BundleError, InputImageError, LayoutError, PromptError  # noqa: E402
from dhumandiff.runtimes import load_bundle  # noqa: E402
from dhumandiff.runtimes.generator import BundleGenerator, GenerationResult, SettingsError  # noqa: E402

PROMPT = "a photo of a man and a woman at the beach"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyBundle]:
    """The same random weights exported to each runtime, plus CFG-free and SDXL-shaped variants."""
    root = tmp_path_factory.mktemp("bundles")
    mods = make_modules(seed=0)
    out = {rt: build_tiny_bundle(root / rt, rt, modules=mods) for rt in ("onnx", "openvino", "torchscript")}
    out["student"] = build_tiny_bundle(root / "student", "onnx", cfg=False, scheduler=LCM_CONFIG, seed=1)
    out["xl"] = build_tiny_bundle(root / "xl", "onnx", sdxl=True, seed=2)
    return out


@pytest.fixture(scope="session")
def faces() -> tuple[Any, Any]:
    return face_images()


def psnr(a: Any, b: Any) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class Recorder:
    """Wraps a real runner and keeps every call's inputs (to check the loop's contract, not to fake a backend)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((component, {k: np.array(v) for k, v in inputs.items()}))
        return self.inner.run(component, inputs)


# ------------------------------------------------------------------------------------------------- generate


def test_onnx_generates_an_image(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    seen: list[tuple[int, int]] = []
    res = gen(*faces, PROMPT, seed=0, progress=lambda i, n: seen.append((i, n)))
    assert isinstance(res, GenerationResult)
    assert res.image.mode == "RGB" and res.image.size == (64, 64)
    arr = np.asarray(res.image)
    assert arr.std() > 1.0  # not a flat image
    assert res.latents.shape == (1, 4, 16, 16) and res.latents.dtype == np.float32
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {"encode_faces", "encode_text", "denoise", "decode", "total"} <= set(res.timings)
    assert res.settings["sampler"] == "DDIMScheduler" and res.settings["subject_positions"] == [5, 8]
    assert gen.describe()["providers"] == ["CPUExecutionProvider"]


def test_generation_is_deterministic_per_seed(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    a, b, c = (gen(*faces, PROMPT, seed=s, steps=3) for s in (7, 7, 8))
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not np.array_equal(a.latents, c.latents)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_low_memory_holds_one_graph_at_a_time(tiny: dict[str, TinyBundle], faces: tuple[Any, Any],
                                              runtime: str) -> None:
    """--low-memory: each phase's graphs are released when it ends; the image is the same as a normal run's."""
    normal = load_bundle(tiny[runtime].path, num_threads=1)
    low = load_bundle(tiny[runtime].path, num_threads=1, low_memory=True)
    held: list[list[str]] = []
    inner_run = low.runner.run

    def spy(component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = inner_run(component, inputs)
        held.append(low.runner.loaded)
        return out

    low.runner.run = spy  # type: ignore[method-assign]
    a = normal(*faces, PROMPT, seed=2, steps=3)
    b = low(*faces, PROMPT, seed=2, steps=3)
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    assert low.runner.loaded == [] and normal.runner.loaded == sorted(normal.manifest.components)
    assert max(len(h) for h in held) == 3, "only the face encoders share a phase"
    assert all(h == ["unet"] for h in held if "unet" in h), "the UNet runs alone"
    assert held[-1] == ["vae_decoder"]
    low(*faces, PROMPT, seed=2, steps=3)  # graphs load again on the next image
    assert low.runner.loaded == []


def test_onnx_matches_the_torch_reference(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    b = tiny["onnx"]
    gen = load_bundle(b.path, num_threads=1)
    ref = BundleGenerator(gen.manifest, b.reference_runner(), gen.tokenizer)
    x, y = gen(*faces, PROMPT, seed=3), ref(*faces, PROMPT, seed=3)
    assert np.abs(x.latents - y.latents).max() < 1e-4
    assert psnr(x.image, y.image) >= gen.manifest.budget.end_to_end_psnr_db  # type: ignore[union-attr]


def test_onnx_and_openvino_f32_agree(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    ort_gen = load_bundle(tiny["onnx"].path, num_threads=1)
    ov_gen = load_bundle(tiny["openvino"].path, num_threads=1)
    assert ov_gen.runner.providers == ["OpenVINO:CPU:f32"]
    x = ort_gen(*faces, PROMPT, seed=5, steps=6)
    y = ov_gen(*faces, PROMPT, seed=5, steps=6)
    assert np.abs(x.latents - y.latents).max() < 1e-4
    assert psnr(x.image, y.image) >= 40.0


def test_torchscript_bundle_agrees(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    x = load_bundle(tiny["onnx"].path, num_threads=1)(*faces, PROMPT, seed=1, steps=2)
    y = load_bundle(tiny["torchscript"].path, num_threads=1)(*faces, PROMPT, seed=1, steps=2)
    assert np.abs(x.latents - y.latents).max() < 1e-4


def test_the_loop_follows_the_cfg_contract(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    rec = Recorder(gen.runner)
    gen.runner = rec
    gen(*faces, PROMPT, seed=0, steps=2, ip_scale=0.5, layout=[[0, 0, 0.5, 1], [0.5, 0, 1, 1]])
    order = [c for c, _ in rec.calls]
    assert order[:6] == ["identity_encoder", "image_encoder", "face_projection"] * 2
    assert order[6:8] == ["text_encoder", "text_encoder"] and order[8:10] == ["unet", "unet"]
    assert order[-1] == "vae_decoder"
    cond, uncond = rec.calls[6][1], rec.calls[7][1]
    assert cond["subject_positions"].tolist() == [[5, 8]] and cond["face_tokens"].any()
    assert uncond["subject_positions"].tolist() == [[-1, -1]] and not uncond["face_tokens"].any()
    assert uncond["input_ids"][0, :3].tolist() == [1, 2, 0]  # the empty prompt
    unet = rec.calls[8][1]
    assert unet["sample"].shape[0] == 2 and np.array_equal(unet["sample"][0], unet["sample"][1])
    assert not unet["ip_tokens"][0].any() and unet["ip_tokens"][1, :N_ID].any() and unet["ip_tokens"][1, N_ID:].any()
    assert unet["ip_scale"].tolist() == [0.5] and unet["timestep"].dtype == np.float32
    assert unet["timestep"].tolist() == [501.0, 501.0]  # DDIM leading spacing, steps_offset 1
    assert unet["region_mask"][:, 0, :, :8].all() and not unet["region_mask"][:, 0, :, 8:].any()
    # initial latents: the documented NumPy draw
    first = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(unet["sample"][:1], first)
    vae_in = rec.calls[-1][1]["latent_sample"]
    assert vae_in.shape == (1, 4, 16, 16)


def test_cfg_free_student_with_lcm(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["student"].path, num_threads=1)
    assert gen.manifest.unet_batch == 1
    rec = Recorder(gen.runner)
    gen.runner = rec
    a = gen(*faces, "a bride and groom at the wedding", seed=4, steps=4)
    assert a.settings["sampler"] == "LCMScheduler" and a.settings["guidance_scale"] is None
    assert [c for c, _ in rec.calls].count("text_encoder") == 1  # no unconditional branch
    assert rec.calls[7][1]["sample"].shape[0] == 1
    b = gen(*faces, "a bride and groom at the wedding", seed=4, steps=4)
    np.testing.assert_array_equal(a.latents, b.latents)  # LCM's per-step noise comes from the seed too
    with pytest.warns(UserWarning, match="CFG-free"):
        gen(*faces, "a bride and groom", seed=4, steps=1, guidance_scale=7.0)


def test_sdxl_shaped_bundle_runs_both_text_encoders(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["xl"].path, num_threads=1)
    rec = Recorder(gen.runner)
    gen.runner = rec
    res = gen(*faces, PROMPT, seed=0, steps=2)
    assert res.image.size == (64, 64)
    unet = next(i for c, i in rec.calls if c == "unet")
    assert unet["encoder_hidden_states"].shape == (2, 77, 48)
    assert unet["text_embeds"].shape == (2, 16) and unet["time_ids"].tolist()[0] == [64, 64, 0, 0, 64, 64]


def test_samplers_can_be_switched(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    for sampler in ("euler", "lcm", "tcd"):
        res = gen(*faces, PROMPT, seed=0, steps=2, sampler=sampler)
        assert np.isfinite(res.latents).all()


# ------------------------------------------------------------------------------------------------- refusals


def test_user_errors_fail_before_any_graph_runs(tiny: dict[str, TinyBundle], faces: tuple[Any, Any],
                                               tmp_path: Path) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    rec = Recorder(gen.runner)
    gen.runner = rec
    with pytest.raises(PromptError, match="the prompt is empty"):
        gen(*faces, "  ")
    with pytest.raises(PromptError, match="must name both people"):
        gen(*faces, "a photo at the beach")
    with pytest.raises(PromptError, match="does not contain the person word 'groom'"):
        gen(*faces, PROMPT, person_words=("man", "groom"))
    with pytest.raises(LayoutError, match="overlap completely"):
        gen(*faces, PROMPT, layout="[[0,0,1,1],[0,0,1,1]]")
    with pytest.raises(SettingsError, match="steps must be a positive integer"):
        gen(*faces, PROMPT, steps=0)
    with pytest.raises(SettingsError, match="unknown sampler 'dpm'.*--sampler"):
        gen(*faces, PROMPT, sampler="dpm")
    with pytest.raises(SettingsError, match="at most original_inference_steps=50"):
        gen(*faces, PROMPT, sampler="lcm", steps=60)
    with pytest.raises(InputImageError, match="does not exist"):
        gen(tmp_path / "nobody.jpg", faces[1], PROMPT)
    assert rec.calls == []


@pytest.mark.parametrize("setting,value,pattern", [
    ("guidance_scale", float("nan"), r"--guidance must be a finite number \(got nan\)"),
    ("guidance_scale", float("inf"), r"--guidance must be a finite number \(got inf\)"),
    ("ip_scale", float("-inf"), r"--ip-scale must be a finite number \(got -inf\)"),
    ("ip_scale", np.float32("nan"), r"--ip-scale must be a finite number"),
    ("ip_scale", "strong", r"--ip-scale must be a finite number \(got 'strong'\)"),
])
@pytest.mark.parametrize("bundle", ["onnx", "student"])
def test_non_finite_settings_fail_before_any_graph_runs(tiny: dict[str, TinyBundle], faces: tuple[Any, Any],
                                                       setting: str, value: Any, pattern: str, bundle: str) -> None:
    """NaN/Inf guidance or identity strength is a setting error (exit 1), refused before the first graph runs,
    not a NaN fault of a graph (exit 12) after the whole loop; also on a CFG-free bundle that ignores guidance."""
    gen = load_bundle(tiny[bundle].path, num_threads=1)
    rec = Recorder(gen.runner)
    gen.runner = rec
    with pytest.raises(SettingsError, match=pattern) as e:
        gen(*faces, PROMPT, steps=1, **{setting: value})
    assert e.value.exit_code == 1 and rec.calls == []


def test_load_bundle_refusals(tiny: dict[str, TinyBundle], tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="this bundle is for onnx; use --runtime onnx or export for openvino"):
        load_bundle(tiny["onnx"].path, runtime="openvino")
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(tmp_path / "missing")


def test_tampered_bundle_is_refused(tiny: dict[str, TinyBundle], tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny["onnx"].path, tmp_path / "copy"))
    with open(copy / "unet.onnx", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(BundleError, match=r"sha256 mismatch for unet\.onnx \(component unet\)"):
        load_bundle(copy)


def test_warnings_do_not_leak_from_a_normal_run(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    gen = load_bundle(tiny["onnx"].path, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen(*faces, PROMPT, seed=0, steps=1)
