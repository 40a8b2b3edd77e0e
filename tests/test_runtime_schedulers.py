"""The NumPy schedulers must follow diffusers' schedulers step for step (same config, same inputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from dhumandiff.errors import BundleError  # noqa: E402
from dhumandiff.contract import schedulers as S  # noqa: E402

# diffusers' Euler calls np.array(tensor, copy=False), which numpy 2 flags; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SHAPE = (1, 4, 8, 8)

DDIM_CASES = [
    ({**SD, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}, [1, 4, 30, 50]),
    ({"beta_schedule": "linear", "timestep_spacing": "linspace", "prediction_type": "v_prediction",
      "clip_sample": True}, [3, 25]),
    ({"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing", "prediction_type": "v_prediction",
      "rescale_betas_zero_snr": True, "clip_sample": False}, [2, 10, 20]),
    ({**SD, "prediction_type": "sample", "timestep_spacing": "trailing", "clip_sample": False}, [5]),
    ({**SD, "num_train_timesteps": 500, "steps_offset": 1, "clip_sample": False}, [7]),
]
EULER_CASES = [
    ({**SD}, [1, 5, 30]),
    ({**SD, "timestep_spacing": "leading", "steps_offset": 1}, [4, 25]),
    ({**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, [8]),
    ({"beta_schedule": "linear", "use_karras_sigmas": True}, [10]),
    ({**SD, "use_exponential_sigmas": True, "prediction_type": "v_prediction"}, [6]),
    ({"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
      "prediction_type": "v_prediction", "final_sigmas_type": "zero"}, [4]),
]
LCM_CASES = [
    ({}, [1, 2, 4, 8]),
    ({"prediction_type": "v_prediction", "original_inference_steps": 20}, [3]),
    ({"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True}, [4]),
]


def _outputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(n)]


def _close(mine: np.ndarray, ref: np.ndarray, scale: float = 0.0) -> None:
    """1e-5 relative; near zero, 1e-6 of the largest magnitude in the chain (diffusers rounds in float32)."""
    assert mine.dtype == np.float32
    scale = max(scale, float(np.abs(ref).max()), 1e-3)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6 * scale)


def _run_pair(cls_name: str, config: dict, steps: int, step_kwargs: dict | None = None, noisy: bool = False,
              monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    ref_cls = getattr(diffusers, cls_name)
    ref = ref_cls(**config)
    mine = S.from_config(json.loads(ref.to_json_string()))  # what save_config writes
    assert type(mine).__name__ == cls_name
    ref.set_timesteps(steps)
    mine.set_timesteps(steps)
    ref_ts = ref.timesteps.numpy()
    assert mine.timesteps.dtype == ref_ts.dtype
    if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas"):
        np.testing.assert_allclose(mine.timesteps, ref_ts, rtol=1e-6)  # fractional, from the sigma tables
    else:
        np.testing.assert_array_equal(mine.timesteps, ref_ts)
    np.testing.assert_allclose(float(mine.init_noise_sigma), float(ref.init_noise_sigma), rtol=1e-6)

    outs = _outputs(steps, seed=steps)
    noises = _outputs(steps, seed=1000 + steps)
    x0 = (np.random.default_rng(7).standard_normal(SHAPE) * float(ref.init_noise_sigma)).astype(np.float32)
    x_ref, x_mine = torch.from_numpy(x0.copy()), x0.copy()
    scale = float(np.abs(x0).max())
    step_kwargs = step_kwargs or {}
    for i, t in enumerate(ref.timesteps):
        t_np = mine.timesteps[i]
        in_ref = ref.scale_model_input(x_ref, t)
        in_mine = mine.scale_model_input(x_mine, t_np)
        _close(in_mine, in_ref.numpy(), scale)
        # a model output that depends on the input, so errors would compound as in a real run
        out = (0.3 * in_mine + outs[i]).astype(np.float32)
        kwargs = dict(step_kwargs)
        if noisy and monkeypatch is not None:
            mod = __import__(ref.__class__.__module__, fromlist=["randn_tensor"])
            monkeypatch.setattr(mod, "randn_tensor", lambda *a, _n=noises[i], **k: torch.from_numpy(_n.copy()))
        if cls_name == "DDIMScheduler" and kwargs.get("eta", 0) > 0:
            x_ref = ref.step(torch.from_numpy(out), t, x_ref, variance_noise=torch.from_numpy(noises[i]),
                             **kwargs).prev_sample
        else:
            x_ref = ref.step(torch.from_numpy(out), t, x_ref, **kwargs).prev_sample
        x_mine = mine.step(out, t_np, x_mine, generator_noise=noises[i] if noisy or kwargs.get("eta") else None,
                           **kwargs)
        _close(x_mine, x_ref.numpy(), scale)
        scale = max(scale, float(np.abs(x_mine).max()))


@pytest.mark.parametrize("config,steps", DDIM_CASES)
def test_ddim_matches_diffusers(config: dict, steps: list[int]) -> None:
    for n in steps:
        _run_pair("DDIMScheduler", config, n)


def test_ddim_eta_matches_diffusers() -> None:
    _run_pair("DDIMScheduler", {**SD, "clip_sample": False, "steps_offset": 1}, 10, step_kwargs={"eta": 0.5})


@pytest.mark.parametrize("config,steps", EULER_CASES)
def test_euler_matches_diffusers(config: dict, steps: list[int]) -> None:
    for n in steps:
        _run_pair("EulerDiscreteScheduler", config, n)


@pytest.mark.parametrize("config,steps", LCM_CASES)
def test_lcm_matches_diffusers(config: dict, steps: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    for n in steps:
        _run_pair("LCMScheduler", config, n, noisy=True, monkeypatch=monkeypatch)


@pytest.mark.parametrize("eta,steps", [(0.3, 4), (0.0, 2), (1.0, 6)])
def test_tcd_matches_diffusers(eta: float, steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _run_pair("TCDScheduler", {}, steps, step_kwargs={"eta": eta}, noisy=True, monkeypatch=monkeypatch)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alpha_tables_match(schedule: str, zero_snr: bool) -> None:
    """Same float32 tables up to an ulp in the betas (torch's vectorised linspace rounds per CPU)."""
    ref = diffusers.DDIMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    mine = S.DDIMScheduler(**dict(ref.config))
    # zero-SNR betas are 1 - ratio of near-equal numbers: an ulp upstream becomes ~1e-6 absolute here
    np.testing.assert_allclose(mine.betas, ref.betas.numpy(), rtol=5e-7, atol=1e-5 if zero_snr else 0)
    np.testing.assert_allclose(mine.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-7)


def test_lcm_generator_noise_is_reproducible() -> None:
    def run(seed: int) -> np.ndarray:
        s = S.from_config({"_class_name": "LCMScheduler"})
        s.set_timesteps(4)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(SHAPE).astype(np.float32)
        for t in s.timesteps:
            x = s.step(np.zeros(SHAPE, np.float32), t, x, generator_noise=rng)
        return x

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_stochastic_step_without_noise_is_refused() -> None:
    s = S.from_config({"_class_name": "LCMScheduler"})
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="generator_noise"):
        s.step(np.zeros(SHAPE, np.float32), s.timesteps[0], np.zeros(SHAPE, np.float32))


def test_sampler_override_and_refusals() -> None:
    cfg = {"_class_name": "DDIMScheduler", **SD}
    assert isinstance(S.from_config(cfg, sampler="euler"), S.EulerDiscreteScheduler)
    assert isinstance(S.from_config(cfg, sampler="lcm"), S.LCMScheduler)
    with pytest.raises(ValueError, match="unknown sampler"):
        S.from_config(cfg, sampler="dpm++")
    with pytest.raises(BundleError, match="PNDMScheduler"):
        S.from_config({"_class_name": "PNDMScheduler"})
    with pytest.raises(BundleError, match="beta_schedule"):
        S.from_config({"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"})
    with pytest.raises(BundleError, match="thresholding"):
        S.from_config({"_class_name": "DDIMScheduler", "thresholding": True})
    with pytest.raises(ValueError, match="original_inference_steps"):
        S.from_config({"_class_name": "LCMScheduler"}).set_timesteps(51)
