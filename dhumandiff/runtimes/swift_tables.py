"""Generate ``SchedulerTables.swift`` for the iOS / macOS sample from the NumPy schedulers.

Why generate instead of porting: the Swift sample (``examples/ios``) must sample exactly as
:mod:`dhumandiff.contract.schedulers` does, and a hand-written Swift twin of the LCM/TCD maths would drift
unseen (Swift cannot run here). Every LCM, TCD (and deterministic DDIM) step is *linear* in the current latents,
the model output and the fresh noise (no clipping or thresholding in the supported configs)::

    latents[i + 1] = sample_scale[i] * latents[i] + output_scale[i] * model_output[i] + noise_scale[i] * noise[i]

so this module folds each step into three coefficients by running the NumPy scheduler itself on unit inputs,
and writes them, with the timesteps and ``alphas_cumprod``, as Swift literals. The Swift sampler is then five
lines of arithmetic that cannot disagree with Python; ``tests/test_ios_sample.py`` re-derives the tables,
compares them with the committed file, and replays whole trajectories against the NumPy scheduler.

``python -m dhumandiff.runtimes.swift_tables SOURCE --out FILE`` where SOURCE is a bundle folder (its
``bundle.json`` scheduler section, the exact config the bundle was exported with) or a model folder
(``dhumandiff.json``); ``--check`` exits 1 when FILE is stale. Torch-free, like the rest of ``runtimes``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dhumandiff.errors import BundleError
from dhumandiff.contract import schedulers as S

#: The sample's committed tables come from the shipped few-step student's config.
DEFAULT_SOURCE = Path(__file__).resolve().parent.parent / "assets" / "models" / "tiny-lcm"
DEFAULT_OUT = Path("examples/ios/Sources/DHumanDiffKit/SchedulerTables.swift")
#: (sampler, eta) pairs tabulated; TCD's eta (gamma) is its default 0.3.
SAMPLERS: tuple[tuple[str, float], ...] = (("lcm", 0.0), ("tcd", 0.3))
STEPS: tuple[int, ...] = (1, 2, 4)
#: The config fields the tables depend on; the Swift side compares them with the bundle it loads.
KEY_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
              "original_inference_steps", "timestep_scaling", "set_alpha_to_one", "rescale_betas_zero_snr")


@dataclass(frozen=True)
class StepTable:
    """One (sampler, step count): timesteps and the three coefficients of each step."""

    sampler: str
    eta: float
    timesteps: np.ndarray
    sample_scale: np.ndarray
    output_scale: np.ndarray
    noise_scale: np.ndarray


@dataclass(frozen=True)
class Tables:
    config: dict[str, Any]
    source: str
    alphas_cumprod: np.ndarray
    steps: tuple[StepTable, ...]


# ----------------------------------------------------------------------------------------------- inputs


def load_scheduler_config(source: str | Path) -> tuple[dict[str, Any], str]:
    """``(scheduler config, description)`` from a bundle folder / ``bundle.json`` or a model folder."""
    p = Path(source)
    for f, key in ((p, None), (p / "bundle.json", "bundle"), (p / "dhumandiff.json", "model")):
        if f.is_file():
            raw = json.loads(f.read_text(encoding="utf-8"))
            if key is None:
                key = "bundle" if "format" in raw else "model"
            sched = raw.get("scheduler")
            if not isinstance(sched, dict):
                raise BundleError(f"{f} has no 'scheduler' section; pass a bundle folder or a model folder")
            name = raw.get("model_name") if key == "bundle" else f.parent.name
            return dict(sched), f"the scheduler of {name or f.parent.name}"
    raise BundleError(f"{p} is neither a bundle (bundle.json) nor a model folder (dhumandiff.json)")


def _resolved(config: Mapping[str, Any], sampler: str) -> dict[str, Any]:
    """The config with the NumPy scheduler's defaults filled in (what the tables were computed from)."""
    sched = S.from_config(config, sampler=sampler)
    return dict(sched.config)


# ------------------------------------------------------------------------------------------- the tables


def step_table(config: Mapping[str, Any], sampler: str, steps: int, eta: float = 0.0) -> StepTable:
    """Fold each step of the NumPy ``sampler`` into (sample, output, noise) coefficients.

    One call per step on the 3-vector ``x = [1, 0, 0]``, ``model_output = [0, 1, 0]``, ``noise = [0, 0, 1]``
    returns the three coefficients at once (the step is elementwise and linear). Linearity is then checked on a
    random input, so a config that makes the step non-linear (clipping) is refused instead of tabulated wrong.
    """
    sched = S.from_config(config, sampler=sampler)
    if sched.config.get("clip_sample") or sched.config.get("thresholding"):
        raise BundleError(f"{sampler}: clip_sample/thresholding make the step non-linear; the Swift tables need "
                          "them off (re-export with clip_sample=false)")
    sched.set_timesteps(steps)
    kw = {"eta": eta} if sampler in ("tcd", "ddim") else {}
    probe = S.from_config(config, sampler=sampler)
    probe.set_timesteps(steps)
    rng = np.random.default_rng(0)
    coefs = []
    for t in sched.timesteps:
        c = sched.step(np.array([0.0, 1.0, 0.0]), t, np.array([1.0, 0.0, 0.0]),
                       generator_noise=np.array([0.0, 0.0, 1.0]), **kw).astype(np.float64)
        x, out, noise = rng.standard_normal((3, 5))
        got = probe.step(out, t, x, generator_noise=noise, **kw)
        if not np.allclose(got, c[0] * x + c[1] * out + c[2] * noise, rtol=1e-5, atol=1e-5):
            raise BundleError(f"{sampler} step at t={t} is not linear in (sample, output, noise); cannot tabulate")
        coefs.append(c)
    a = np.asarray(coefs, dtype=np.float32).reshape(-1, 3)
    return StepTable(sampler, float(eta), np.asarray(sched.timesteps, dtype=np.int64), a[:, 0], a[:, 1], a[:, 2])


def build_tables(config: Mapping[str, Any], source: str = "",
                 samplers: Sequence[tuple[str, float]] = SAMPLERS, steps: Sequence[int] = STEPS) -> Tables:
    """All step tables for ``config``, plus the float32 ``alphas_cumprod`` they were computed from."""
    base = S.from_config(config, sampler=samplers[0][0])
    resolved = _resolved(config, samplers[0][0])
    key = {k: resolved.get(k) for k in KEY_FIELDS}
    tables = tuple(step_table(config, s, n, eta) for s, eta in samplers for n in steps)
    return Tables(key, source, np.asarray(base.alphas_cumprod, dtype=np.float32), tables)


# ------------------------------------------------------------------------------------------------ Swift


def _f(x: float) -> str:
    """Shortest decimal that reads back as the same float32 (Swift's ``Float`` literal rounding)."""
    v = np.float32(x)
    if v == 0:
        return "0.0"
    if abs(v) < 1e-4:
        return np.format_float_scientific(v, unique=True, trim="0")
    return np.format_float_positional(v, unique=True, trim="0")


def _floats(values: Sequence[float], per_line: int = 6, indent: str = "        ") -> str:
    items = [_f(v) for v in values]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return (",\n" + indent).join(lines)


def _swift_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if v is None:
        return "nil"
    return json.dumps(str(v))


def render_swift(tables: Tables) -> str:
    """The Swift source: ``SchedulerTables.config``, ``.alphasCumprod`` and ``.steps`` (``[StepTable]``)."""
    sep = ",\n        "
    cfg = sep.join(f'"{k}": {_swift_value(v) if v is not None else "NSNull()"}'
                              for k, v in tables.config.items())
    rows = []
    for t in tables.steps:
        rows.append(
            f'        StepTable(sampler: "{t.sampler}", eta: {_f(t.eta)},\n'
            f'                  timesteps: [{", ".join(str(int(x)) for x in t.timesteps)}],\n'
            f'                  sampleScale: [{", ".join(_f(x) for x in t.sample_scale)}],\n'
            f'                  outputScale: [{", ".join(_f(x) for x in t.output_scale)}],\n'
            f'                  noiseScale: [{", ".join(_f(x) for x in t.noise_scale)}])')
    body = ",\n".join(rows)
    alphas = _floats(tables.alphas_cumprod)
    return f"""// GENERATED by `python -m dhumandiff.runtimes.swift_tables` from {tables.source}. Do not edit:
// regenerate (tests/test_ios_sample.py fails when this file is stale).
//
// Each step of the NumPy LCM / TCD scheduler (dhumandiff/contract/schedulers.py) folded into three
// coefficients: latents' = sampleScale[i] * latents + outputScale[i] * modelOutput + noiseScale[i] * noise.

import Foundation

public enum SchedulerTables {{
    /// The scheduler fields these tables were computed for; `BundleManifest.checkScheduler` compares them
    /// with the bundle's `scheduler` section.
    public static let config: [String: Any] = [
        {cfg}
    ]

    /// float32 alphas_cumprod of the training schedule ({len(tables.alphas_cumprod)} entries).
    public static let alphasCumprod: [Float] = [
        {alphas}
    ]

    public static let steps: [StepTable] = [
{body}
    ]
}}
"""


def generate(source: str | Path = DEFAULT_SOURCE) -> str:
    config, desc = load_scheduler_config(source)
    return render_swift(build_tables(config, desc))


# ------------------------------------------------------------------------------------------- read back


_ROW = (r'StepTable\(sampler: "(?P<sampler>\w+)", eta: (?P<eta>[-0-9.e]+),\s*timesteps: \[(?P<t>[^\]]*)\],\s*'
        r'sampleScale: \[(?P<x>[^\]]*)\],\s*outputScale: \[(?P<o>[^\]]*)\],\s*noiseScale: \[(?P<n>[^\]]*)\]\)')


def parse_swift(text: str) -> Tables:
    """Read the numbers back out of a ``SchedulerTables.swift`` (what the tests compare with Python)."""
    import re

    def nums(s: str, dtype) -> np.ndarray:
        return np.asarray([float(v) for v in s.replace("\n", " ").split(",") if v.strip()], dtype=dtype)

    m = re.search(r"alphasCumprod: \[Float\] = \[(?P<v>[^\]]*)\]", text)
    if m is None:
        raise ValueError("no alphasCumprod table in the Swift source")
    alphas = nums(m.group("v"), np.float32)
    steps = []
    for r in re.finditer(_ROW, text):
        steps.append(StepTable(r["sampler"], float(r["eta"]), nums(r["t"], np.float64).astype(np.int64),
                               nums(r["x"], np.float32), nums(r["o"], np.float32), nums(r["n"], np.float32)))
    cm = re.search(r"config: \[String: Any\] = \[(?P<v>.*?)\n    \]", text, re.S)
    config: dict[str, Any] = {}
    if cm:
        for k, v in re.findall(r'"(\w+)": ([^,\n]+)', cm.group("v")):
            config[k] = None if v == "NSNull()" else json.loads(v)
    return Tables(config, "", alphas, tuple(steps))


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dhumandiff.runtimes.swift_tables", description=__doc__.split("\n")[0])
    ap.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE), help="bundle folder or model folder")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="Swift file to write")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from the generated source")
    args = ap.parse_args(argv)
    try:
        text = generate(args.source)
    except Exception as e:  # one line for a user, like the CLI
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'STALE: regenerate it'}")
        return 0 if same else 1
    from dhumandiff.utils.atomic import write_text_atomic

    write_text_atomic(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
