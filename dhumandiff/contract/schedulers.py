"""NumPy twins of diffusers' DDIM, Euler (discrete), LCM and TCD schedulers.

Why twins and not diffusers itself: the runtime must not import torch. Each class is built from the same
config dict diffusers saves (``scheduler.save_config``), so a bundle's ``scheduler`` section drives both the
PyTorch reference and the edge sampler, and ``tests/test_runtime_schedulers.py`` checks them step for step.

Numerics: the noise tables (betas, alphas_cumprod) are built as diffusers builds them, in float32 (the tables
the model was trained with; equal to within an ulp), then every step is computed in float64 and returned as float32.

Stochastic steps (LCM, TCD, DDIM with eta > 0) take their noise from the caller: ``generator_noise`` is a
NumPy ``Generator`` (drawn with ``standard_normal(shape, dtype=float64)`` then cast to float32) or the noise
array itself, so a run is reproducible from one seed with no framework RNG involved.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol

import numpy as np

from dhumandiff.errors import BundleError

NoiseSource = np.random.Generator | np.ndarray | None

_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_SPACINGS = ("leading", "trailing", "linspace")


class Scheduler(Protocol):
    """What the sampler loop needs from a scheduler."""

    timesteps: np.ndarray
    init_noise_sigma: float

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray: ...

    def step(
        self, model_output: np.ndarray, timestep: float, sample: np.ndarray, generator_noise: NoiseSource = None
    ) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- tables


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)``: float32 arithmetic, symmetric halves.

    Equal to torch's to within one ulp (torch's vectorised kernel rounds differently per SIMD width)."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    s, e = np.float32(start), np.float32(end)
    step = (e - s) / np.float32(steps - 1)
    idx = np.arange(steps)
    half = steps // 2
    out = np.empty(steps, dtype=np.float32)
    out[:half] = s + step * idx[:half].astype(np.float32)
    out[half:] = e - step * (steps - 1 - idx[half:]).astype(np.float32)
    return out


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch's CPU cumprod of float32 (accumulates in double, stores float32)."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=np.float32
    )


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 like diffusers."""
    alphas = np.float32(1.0) - betas
    ab_sqrt = np.sqrt(_cumprod_f32(alphas))
    a0, at = ab_sqrt[0].copy(), ab_sqrt[-1].copy()
    ab_sqrt = ab_sqrt - at
    ab_sqrt = ab_sqrt * (a0 / (a0 - at))
    ab = ab_sqrt**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]]).astype(np.float32)
    return (np.float32(1.0) - alphas).astype(np.float32)


def make_betas(config: Mapping[str, Any]) -> np.ndarray:
    """The float32 beta table diffusers derives from ``config``."""
    n = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float32)
    elif config["beta_schedule"] == "linear":
        betas = _torch_linspace_f32(config["beta_start"], config["beta_end"], n)
    elif config["beta_schedule"] == "scaled_linear":
        betas = _torch_linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    elif config["beta_schedule"] == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n)
    else:
        raise BundleError(
            f"scheduler beta_schedule {config['beta_schedule']!r} is not supported "
            f"({', '.join(_BETA_SCHEDULES)}); re-export with a supported scheduler"
        )
    if config.get("rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return betas.astype(np.float32)


def _noise(source: NoiseSource, shape: tuple[int, ...]) -> np.ndarray:
    if source is None:
        raise ValueError("this scheduler step is stochastic: pass generator_noise (a numpy Generator or an array)")
    if isinstance(source, np.random.Generator):
        return source.standard_normal(shape, dtype=np.float64).astype(np.float32).astype(np.float64)
    arr = np.asarray(source, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"generator_noise has shape {arr.shape}, expected {shape}")
    return arr


# ------------------------------------------------------------------------------------------------- base


def _real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _config_value_problem(key: str, value: Any, default: Any, config: Mapping[str, Any]) -> str | None:
    """Why ``value`` cannot stand for ``key`` (typed after its default), or None: a config from a tampered or
    hand-edited bundle.json must fail as a BundleError here, not as a TypeError deep in the maths."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        lo = 1 if key in ("num_train_timesteps", "original_inference_steps") else 0
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= 100_000
        return None if ok else f"must be an integer in [{lo}, 100000]"
    if isinstance(default, float):
        if not _real(value) or value <= 0 or (key.startswith("beta_") and value >= 1):
            return "must be a number in (0, 1)" if key.startswith("beta_") else "must be a positive number"
        return None
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    if value is None:
        return None
    if key == "trained_betas":
        n = config.get("num_train_timesteps")
        ok = isinstance(value, (list, tuple)) and len(value) == n and all(_real(b) and 0 < b < 1 for b in value)
        return None if ok else "must be null or num_train_timesteps numbers in (0, 1)"
    if key in ("sigma_min", "sigma_max"):
        return None if _real(value) and value > 0 else "must be null or a positive number"
    return None


class _DiscreteScheduler:
    """Config handling and the alpha tables shared by all four schedulers."""

    _defaults: dict[str, Any] = {}
    class_name = ""

    def __init__(self, **config: Any) -> None:
        cfg = dict(self._defaults)
        cfg.update({k: v for k, v in config.items() if k in self._defaults})
        self.config = cfg
        self._validate()
        self.betas = make_betas(cfg)
        self.alphas = (np.float32(1.0) - self.betas).astype(np.float32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        #: before ``set_timesteps``: every training step, descending (as diffusers' schedulers start)
        self.timesteps = np.arange(0, cfg["num_train_timesteps"])[::-1].copy().astype(np.int64)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "_DiscreteScheduler":
        """Build from a diffusers config dict; keys this scheduler does not use are ignored (as in diffusers)."""
        return cls(**{k: v for k, v in config.items() if not k.startswith("_")})

    def _validate(self) -> None:
        c = self.config
        for key, value in c.items():
            problem = _config_value_problem(key, value, self._defaults.get(key), c)
            if problem:
                raise BundleError(f"scheduler {key} {problem} (got {value!r:.60}); re-export the bundle")
        for key, allowed in (("beta_schedule", _BETA_SCHEDULES), ("prediction_type", _PREDICTIONS),
                             ("timestep_spacing", _SPACINGS)):
            if key in c and c[key] not in allowed and not (key == "beta_schedule" and c.get("trained_betas")):
                raise BundleError(
                    f"scheduler {key} {c[key]!r} is not supported by {self.class_name} "
                    f"({', '.join(allowed)}); re-export with a supported scheduler"
                )
        if c.get("thresholding"):
            raise BundleError(
                f"scheduler thresholding is not supported by the NumPy {self.class_name}; "
                "re-export with thresholding=false (it does not suit latent diffusion)"
            )

    def _check_steps(self, n: int) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer (got {n!r})")
        if n > self.config["num_train_timesteps"]:
            raise ValueError(
                f"num_inference_steps {n} cannot exceed num_train_timesteps {self.config['num_train_timesteps']}"
            )

    def _alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[int(t)])

    def _init_step_index(self, timestep: float) -> None:
        idx = np.nonzero(self.timesteps == timestep)[0]
        if len(idx) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        self._step_index = int(idx[1] if len(idx) > 1 else idx[0])

    def _x0_eps(self, model_output: np.ndarray, sample: np.ndarray, a_t: float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted clean sample and noise from the model output, for any prediction type."""
        b_t = 1.0 - a_t
        p = self.config["prediction_type"]
        if p == "epsilon":
            return (sample - b_t**0.5 * model_output) / a_t**0.5, model_output
        if p == "sample":
            return model_output, (sample - a_t**0.5 * model_output) / b_t**0.5
        return a_t**0.5 * sample - b_t**0.5 * model_output, a_t**0.5 * model_output + b_t**0.5 * sample

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        if self.config.get("clip_sample"):
            r = self.config["clip_sample_range"]
            return np.clip(x0, -r, r)
        return x0

    @property
    def final_alpha_cumprod(self) -> float:
        return 1.0 if self.config["set_alpha_to_one"] else float(self.alphas_cumprod[0])

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: np.ndarray, timestep: float | None = None) -> np.ndarray:
        return sample

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])


_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
#: Options of the schedulers that predict x0 and may clip or threshold it (DDIM, LCM, TCD).
_X0_CLIPPING = {"clip_sample_range": 1.0, "set_alpha_to_one": True, "thresholding": False,
                "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}


# ------------------------------------------------------------------------------------------------- DDIM


class DDIMScheduler(_DiscreteScheduler):
    """Deterministic DDIM (eta = 0) unless ``eta`` is given to :meth:`step`."""

    class_name = "DDIMScheduler"
    _defaults = {**_COMMON, **_X0_CLIPPING, "clip_sample": True}

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        n_train, n = self.config["num_train_timesteps"], num_inference_steps
        self.num_inference_steps = n
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            ts = np.linspace(0, n_train - 1, n).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = n_train // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
            ts += self.config["steps_offset"]
        else:
            ratio = n_train / n
            ts = np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1
        self.timesteps = ts

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator_noise: NoiseSource = None,
        eta: float = 0.0,
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        out = np.asarray(model_output, dtype=np.float64)
        x = np.asarray(sample, dtype=np.float64)
        t = int(timestep)
        prev_t = t - self.config["num_train_timesteps"] // self.num_inference_steps
        a_t = self._alpha(t)
        a_prev = self._alpha(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = self._x0_eps(out, x, a_t)
        x0 = self._clip(x0)
        variance = ((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)
        std = eta * variance**0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            prev = prev + std * _noise(generator_noise, x.shape)
        return prev.astype(np.float32)


# ------------------------------------------------------------------------------------------------ Euler


class EulerDiscreteScheduler(_DiscreteScheduler):
    """Euler (k-diffusion style, sigma space). ``init_noise_sigma`` and ``scale_model_input`` matter here."""

    class_name = "EulerDiscreteScheduler"
    _defaults = {
        **_COMMON,
        "timestep_spacing": "linspace",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    }

    def _validate(self) -> None:
        super()._validate()
        c = self.config
        unsupported = [
            ("use_beta_sigmas", bool(c["use_beta_sigmas"])),
            ("timestep_type='continuous'", c["timestep_type"] != "discrete"),
            ("interpolation_type", c["interpolation_type"] not in ("linear", "log_linear")),
            ("final_sigmas_type", c["final_sigmas_type"] not in ("zero", "sigma_min")),
        ]
        for name, bad in unsupported:
            if bad:
                raise BundleError(
                    f"EulerDiscreteScheduler option {name} is not supported by the NumPy sampler; "
                    "re-export with a supported scheduler config"
                )
        if sum(bool(c[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas")) > 1:
            raise BundleError("scheduler: use only one of use_karras_sigmas / use_exponential_sigmas; re-export")

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if self.config["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = np.float32(2.0**-24)
        n = self.config["num_train_timesteps"]
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)[::-1]
        self.timesteps = np.linspace(0, n - 1, n, dtype=float)[::-1].copy().astype(np.float32)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        m = float(self.sigmas.max())
        return m if self.config["timestep_spacing"] in ("linspace", "trailing") else (m**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        c, n = self.config, num_inference_steps
        n_train = c["num_train_timesteps"]
        self.num_inference_steps = n
        if c["timestep_spacing"] == "linspace":
            ts = np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1].copy()
        elif c["timestep_spacing"] == "leading":
            ratio = n_train // n
            ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
            ts += c["steps_offset"]
        else:
            ratio = n_train / n
            ts = np.arange(n_train, 0, -ratio).round().copy().astype(np.float32) - 1
        base = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # float32, as diffusers
        log_sigmas = np.log(base)
        if c["interpolation_type"] == "linear":
            sigmas = np.interp(ts, np.arange(0, len(base)), base)
        else:
            sigmas = np.exp(np.linspace(np.log(float(base[-1])), np.log(float(base[0])), n + 1, dtype=np.float32))
        if c["use_karras_sigmas"]:
            sigmas = self._karras(sigmas, n)
            ts = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
        elif c["use_exponential_sigmas"]:
            lo, hi = self._range(sigmas)
            sigmas = np.exp(np.linspace(math.log(hi), math.log(lo), n))
            ts = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])
        last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5) \
            if c["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = np.asarray(ts).astype(np.float32)
        self._step_index = None

    def _range(self, sigmas: np.ndarray) -> tuple[float, float]:
        lo = self.config["sigma_min"] if self.config["sigma_min"] is not None else float(sigmas[-1])
        hi = self.config["sigma_max"] if self.config["sigma_max"] is not None else float(sigmas[0])
        return lo, hi

    def _karras(self, sigmas: np.ndarray, n: int) -> np.ndarray:
        lo, hi = self._range(sigmas)
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho

    @staticmethod
    def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, None]
        low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high = low + 1
        w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
        return float(((1 - w) * low + w * high).reshape(()))

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = float(self.sigmas[self._step_index])
        return (np.asarray(sample, dtype=np.float64) / (sigma**2 + 1) ** 0.5).astype(np.float32)

    def step(
        self, model_output: np.ndarray, timestep: float, sample: np.ndarray, generator_noise: NoiseSource = None
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        out = np.asarray(model_output, dtype=np.float64)
        x = np.asarray(sample, dtype=np.float64)
        sigma = float(self.sigmas[self._step_index])
        p = self.config["prediction_type"]
        if p == "sample":
            x0 = out
        elif p == "epsilon":
            x0 = x - sigma * out
        else:
            x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        derivative = (x - x0) / sigma
        prev = x + derivative * (float(self.sigmas[self._step_index + 1]) - sigma)
        self._step_index += 1
        return prev.astype(np.float32)


# -------------------------------------------------------------------------------------------- LCM / TCD


class _ConsistencyScheduler(_DiscreteScheduler):
    """Timestep selection shared by LCM and TCD: a subset of the distillation schedule (skip k)."""

    _defaults = {
        **_COMMON, **_X0_CLIPPING, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "original_inference_steps": 50, "clip_sample": False, "timestep_scaling": 10.0,
    }

    def set_timesteps(self, num_inference_steps: int) -> None:
        self._check_steps(num_inference_steps)
        original = int(self.config["original_inference_steps"])
        n_train = self.config["num_train_timesteps"]
        if original > n_train:
            raise ValueError(f"original_inference_steps {original} cannot exceed num_train_timesteps {n_train}")
        if num_inference_steps > original:
            raise ValueError(
                f"{self.class_name} supports at most original_inference_steps={original} steps "
                f"(got {num_inference_steps})"
            )
        k = n_train // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self._step_index = None


class LCMScheduler(_ConsistencyScheduler):
    """Latent Consistency Model multistep sampling; every step but the last re-noises (needs noise)."""

    class_name = "LCMScheduler"

    def _boundary(self, t: int) -> tuple[float, float]:
        scaled = t * self.config["timestep_scaling"]
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        return c_skip, c_out

    def step(
        self, model_output: np.ndarray, timestep: float, sample: np.ndarray, generator_noise: NoiseSource = None
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        t = int(timestep)
        nxt = self._step_index + 1
        prev_t = int(self.timesteps[nxt]) if nxt < len(self.timesteps) else t
        a_t = self._alpha(t)
        a_prev = self._alpha(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        out = np.asarray(model_output, dtype=np.float64)
        x = np.asarray(sample, dtype=np.float64)
        c_skip, c_out = self._boundary(t)
        x0, _ = self._x0_eps(out, x, a_t)
        x0 = self._clip(x0)
        denoised = c_out * x0 + c_skip * x
        if self._step_index != self.num_inference_steps - 1:
            prev = a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * _noise(generator_noise, x.shape)
        else:
            prev = denoised
        self._step_index += 1
        return prev.astype(np.float32)


class TCDScheduler(_ConsistencyScheduler):
    """Trajectory Consistency Distillation sampling; ``eta`` (gamma) controls the stochasticity (0.3 default)."""

    class_name = "TCDScheduler"

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator_noise: NoiseSource = None,
        eta: float = 0.3,
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"TCD eta must be within [0, 1] (got {eta})")
        if self._step_index is None:
            self._init_step_index(timestep)
        t = int(timestep)
        nxt = self._step_index + 1
        prev_t = int(self.timesteps[nxt]) if nxt < len(self.timesteps) else 0
        s = int(math.floor((1 - eta) * prev_t))
        a_t = self._alpha(t)
        a_prev = self._alpha(prev_t) if prev_t >= 0 else self.final_alpha_cumprod
        a_s = self._alpha(s)
        out = np.asarray(model_output, dtype=np.float64)
        x = np.asarray(sample, dtype=np.float64)
        x0, eps = self._x0_eps(out, x, a_t)
        noised = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps
        if eta > 0 and self._step_index != self.num_inference_steps - 1:
            prev = (a_prev / a_s) ** 0.5 * noised + (1 - a_prev / a_s) ** 0.5 * _noise(generator_noise, x.shape)
        else:
            prev = noised
        self._step_index += 1
        return prev.astype(np.float32)


# ---------------------------------------------------------------------------------------------- factory

#: The sampler registry: ``--sampler`` name -> the NumPy scheduler. Each class is named like the diffusers scheduler
#: it reproduces; the PyTorch reference builds that diffusers class by this name, the bundle reader accepts these
#: class names, and the CLI lists these samplers. Adding a sampler is one class above plus one entry here.
_REGISTERED: dict[str, type[_DiscreteScheduler]] = {
    "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler,
}
#: ``--sampler`` names -> scheduler class names (diffusers' and ours).
SAMPLERS: dict[str, str] = {name: cls.class_name for name, cls in _REGISTERED.items()}
#: Scheduler class names -> NumPy classes (what ``bundle.json``'s ``scheduler._class_name`` may be).
SCHEDULERS: dict[str, type[_DiscreteScheduler]] = {cls.class_name: cls for cls in _REGISTERED.values()}


def sampler_choices(sep: str = ", ") -> str:
    """The ``--sampler`` names for help texts and errors (``ddim, euler, lcm, tcd``)."""
    return sep.join(SAMPLERS)


def from_config(config: Mapping[str, Any], sampler: str | None = None) -> _DiscreteScheduler:
    """Build the scheduler named by ``config['_class_name']``, or by ``sampler`` (ddim/euler/lcm/tcd).

    Switching sampler reuses the config's noise schedule (betas, prediction type, spacing), as diffusers'
    ``OtherScheduler.from_config(pipe.scheduler.config)`` does.
    """
    if sampler is not None:
        key = sampler.lower()
        if key not in SAMPLERS and sampler not in SCHEDULERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        name = SAMPLERS.get(key, sampler)
    else:
        name = config.get("_class_name", "")
    if name not in SCHEDULERS:
        raise BundleError(
            f"scheduler {name!r} is not supported by the NumPy sampler ({', '.join(SCHEDULERS)}); "
            "re-export with a supported scheduler"
        )
    return SCHEDULERS[name].from_config(config)
