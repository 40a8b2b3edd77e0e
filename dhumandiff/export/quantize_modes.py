"""Quantised bundles: which variants exist (the registry, ``quantize_table.py``), what each promises (its fidelity
budget), and the generic loop.

A quantised export is an ordinary export first: every graph is written in float and proved against torch
(``bundle.py``); then, inside the same atomic folder, the chosen components' graphs are replaced by their
quantised versions (``quantize_onnx`` / ``quantize_openvino`` / ``quantize_coreml``: one runtime each, the
libraries' own quantisers), each is run back against the torch fp32 wrapper on the spec's fixed inputs (a gross
break stops the export), and ``bundle.json`` records the variant::

    "quantization": {"mode": "int8-static", "components": [...], "excluded_layers": [...],
                     "calibration": {seed, steps, sampler, data/tensors sha256}, "settings": {...},
                     "budget": {"psnr_db": 30.0, "identity_delta": 0.02}}

The budget is the promise ``dhumandiff parity`` holds the bundle to: end-to-end PSNR of the generated image
against the fp32 reference (same seed and noise), and the identity similarity of the generated faces (to the
reference photos, by an evaluator encoder) within ``identity_delta`` of the fp32 image's. Budgets are fixed per
weight width and written down here; excluding sensitive layers (``calibration/sensitivity.py``) is the lever
for meeting them, not a looser budget.

The graphs keep their file names and I/O contract: the runtimes load a QDQ ONNX, a compressed IR or a palettised
mlpackage exactly like a float one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import DHumanDiffError, ParityError
from ..model.dhumandiff_model import DHumanDiff
from ..contract.bundle import component_digests
from ..utils.cpu import cpu_features
from . import isolate
from .artifacts import ExportedComponent
from .quantize_table import DEFAULT_COMPONENTS, MODES, QuantMode, get_mode, modes_for  # noqa: F401 (the registry)
from .reference import torch_outputs
from .specs import get_spec, unet_batch
from .validate import Tolerance, compare_outputs, worst

Progress = Callable[[int, int, str], None]

#: End-to-end budgets by weight width (bits of the narrowest quantised weights). The int8 numbers are the
#: project's requirement; 6- and 4-bit variants trade fidelity for size and promise less, in the open.
BUDGETS: dict[int, dict[str, float]] = {
    8: {"psnr_db": 30.0, "identity_delta": 0.02},
    6: {"psnr_db": 27.0, "identity_delta": 0.03},
    4: {"psnr_db": 22.0, "identity_delta": 0.05},
}
#: Per-graph gates of quantised components on real inputs (recorded calibration samples) and, for weight-only
#: variants, on the spec's example inputs too. They stop a broken graph (a wrong one scores near cosine 0); the
#: end-to-end budget judges fidelity. Measured on the tiny default: static int8 UNet outputs at the last sampler
#: step (small v-predictions, the hardest case) reach cosine 0.96-0.98.
COMPONENT_TOLERANCES: dict[int, Tolerance] = {
    8: Tolerance(atol=None, min_cosine=0.9, min_psnr_db=15.0),
    6: Tolerance(atol=None, min_cosine=0.9, min_psnr_db=12.0),
    4: Tolerance(atol=None, min_cosine=0.85, min_psnr_db=10.0),
}
#: Graphs with quantised *activations* on the spec's random example inputs (what ``dhumandiff parity`` feeds each
#: component): their ranges were fitted on real inputs, and random ones (uniform noise for a face) fall partly
#: outside and clip. Only a gross failure (a wrong or broken graph) is gated there.
RANDOM_INPUT_TOLERANCE = Tolerance(atol=None, min_cosine=0.8, min_psnr_db=10.0)
#: How many recorded samples (spread over the set) each quantised graph is checked on at export.
CHECK_SAMPLES = 4
#: Quantised bundles keep the plain face-embedding gate only as a floor against a broken identity path; the
#: budget's identity delta is the real measure.
IDENTITY_MIN_COSINE = 0.9
@dataclass(frozen=True)
class QuantizeOptions:
    """What ``export_bundle(..., quantization=...)`` does beyond the float export.

    ``calibration``: a folder from ``dhumandiff calibrate`` (activation ranges, and the sensitivity report that
    names the layers kept float). ``keep_float``: keep the N most sensitive UNet layers float (None: every layer
    under ``layer_threshold_db``, the report's threshold by default; 0: none). ``exclude``: more UNet layers to
    keep float (model paths, fnmatch patterns). ``budget``: replaces the mode's budget (recorded as given).
    """

    mode: str
    calibration: str | Path | None = None
    components: tuple[str, ...] | None = None
    keep_float: int | None = None
    layer_threshold_db: float | None = None
    exclude: tuple[str, ...] = ()
    group_size: int = 64
    ratio: float = 1.0
    symmetric: bool = False
    avg_bits: float = 6.0
    int8_kernel: str = "auto"
    samples: int | None = None
    budget: Mapping[str, float] | None = None

    def settings(self) -> dict[str, Any]:
        """The knobs that shaped the graphs, for ``bundle.json``."""
        d = {k: v for k, v in asdict(self).items() if k not in ("mode", "calibration", "budget", "components")}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class QuantJob:
    """One component to quantise in place inside the bundle folder (what a runtime's ``quantize`` receives)."""

    name: str
    root: Path
    files: list[str]
    mode: QuantMode
    options: QuantizeOptions
    module: torch.nn.Module
    samples: list[dict[str, np.ndarray]] | None
    excluded_layers: list[str]
    layer_paths: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: The backend's loaded graph, reused across the checks of one component (not recorded anywhere).
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def layer_modules(self) -> dict[str, torch.nn.Module]:
        """Excluded layers as wrapper-relative path -> module (how each exporter finds them in its graph)."""
        return {self.layer_paths[n]: self.module.get_submodule(self.layer_paths[n]) for n in self.excluded_layers}

    def excluded_paths(self) -> list[str]:
        """The excluded layers' wrapper-relative paths (for quantisers that find layers by name, no module needed)."""
        return [self.layer_paths[n] for n in self.excluded_layers]

    def without_module(self) -> "QuantJob":
        """This job for a child process (``isolate.py``): no module, no cache (a backend that declares
        ``NEEDS_MODULE = False`` works from the files and names alone)."""
        return dataclasses.replace(self, module=None, cache={})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- resolving


def wrapper_paths(model: DHumanDiff, module: torch.nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Model module paths (``unet.down_blocks.0...``) -> the same module's path inside an export wrapper."""
    inside = {id(m): p for p, m in module.named_modules()}
    out = {}
    for n in names:
        try:
            target = model.get_submodule(n)
        except AttributeError:
            raise DHumanDiffError(f"the model has no layer {n!r}; pass layer names from the sensitivity report "
                                  f"(`dhumandiff calibrate` writes them)") from None
        if id(target) not in inside:
            raise DHumanDiffError(f"layer {n!r} is not part of the exported UNet graph")
        out[n] = inside[id(target)]
    return out


def resolve_excluded(model: DHumanDiff, mode: QuantMode, options: QuantizeOptions,
                     sensitivity: Mapping[str, Any] | None) -> list[str]:
    """UNet layers to keep float: the sensitive ones for this mode, plus any named in ``options.exclude``."""
    import fnmatch

    from ..calibration.sensitivity import analysable_layers, sensitive_layers

    chosen: list[str] = []
    if mode.exclusion_metric and sensitivity is not None and options.keep_float != 0:
        metric = mode.exclusion_metric
        if metric.startswith("bits:") and metric.split(":")[1] not in {str(b) for b in sensitivity.get("bits", [])}:
            metric = "int8_weights_psnr_db"  # the report has no column for this width: fall back to int8 weights
        chosen = sensitive_layers(sensitivity, metric, options.layer_threshold_db, options.keep_float)
    if options.exclude:
        names = list(analysable_layers(model.unet, 1, prefix="unet"))
        for pattern in options.exclude:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise DHumanDiffError(f"--exclude {pattern!r} matches no UNet Conv/Linear layer "
                                      f"(names look like {names[1]!r})")
            chosen += [h for h in hits if h not in chosen]
    return chosen


def budget_for(mode: QuantMode, options: QuantizeOptions, recipe: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The mode's written budget (mixed-bit: that of the width its average rounds down to), or the override."""
    if options.budget is not None:
        return {k: float(v) for k, v in options.budget.items()}
    bits = mode.bits
    if recipe is not None:
        avg = float(recipe["average_bits"])
        bits = 8 if avg >= 8 else 6 if avg >= 6 else 4
    return dict(BUDGETS[bits])


def component_tolerance(mode: QuantMode) -> Tolerance:
    return COMPONENT_TOLERANCES[8 if mode.bits >= 8 else 6 if mode.bits >= 6 else 4]


def check_options(runtime: str, precision: str, options: QuantizeOptions) -> QuantMode:
    """Refuse a variant that cannot be made, before anything is exported (mode, base precision, calibration)."""
    from ..calibration.store import META_FILE, SENSITIVITY_FILE

    mode = get_mode(runtime, options.mode)
    if runtime != "coreml" and precision != "fp32":
        raise DHumanDiffError(f"--quantize {mode.name} starts from the fp32 graphs; export without --precision "
                              f"{precision}")
    if mode.needs_calibration and options.calibration is None:
        raise DHumanDiffError(f"--quantize {mode.name} needs a calibration set: make one with `dhumandiff calibrate "
                              f"MODEL --data DIR --out CALIB` and pass --calibration CALIB")
    if options.calibration is not None:
        root = Path(options.calibration)
        if not (root / META_FILE).is_file():
            raise DHumanDiffError(f"{root} is not a calibration folder (no {META_FILE}); make one with "
                                  f"`dhumandiff calibrate MODEL --data DIR --out {root}`")
        if mode.needs_sensitivity and not (root / SENSITIVITY_FILE).is_file():
            raise DHumanDiffError(f"--quantize {mode.name} needs the sensitivity analysis in {root}; re-run "
                                  f"`dhumandiff calibrate` without --no-sensitivity")
    if options.keep_float:
        if mode.exclusion_metric is None:
            raise DHumanDiffError(f"--keep-float does not apply to {mode.name}: its recipe already keeps the layers "
                                  f"that miss at 8 bits in fp16")
        if options.calibration is None or not (Path(options.calibration) / SENSITIVITY_FILE).is_file():
            raise DHumanDiffError("--keep-float picks layers from the sensitivity analysis: pass --calibration "
                                  "CALIB made by `dhumandiff calibrate` (with its sensitivity.json)")
    return mode


# ------------------------------------------------------------------------------------------------- the loop


def _backend(runtime: str):
    return importlib.import_module(f"dhumandiff.export.quantize_{runtime}")


def _quantize_in_child(runtime: str, job: QuantJob) -> list[str]:
    files, info = isolate.call(_child_quantize, runtime, job.without_module(), what=f"quantising {job.name}")
    job.info.update(info)
    return files


def _child_quantize(runtime: str, job: QuantJob) -> tuple[list[str], dict[str, Any]]:
    """(In the child.) The backend's ``quantize``; returns the files and what it recorded in ``job.info``."""
    files = _backend(runtime).quantize(job)
    return files, job.info


def _run_in_child(runtime: str, job: QuantJob, files: list[str], example: Mapping[str, torch.Tensor],
                  output_names: Sequence[str]) -> dict[str, np.ndarray]:
    arrays = {n: t.numpy() for n, t in example.items()}
    return isolate.call(_child_run, runtime, job.without_module(), files, arrays, tuple(output_names),
                        what=f"running the quantised {job.name}")


def _child_run(runtime: str, job: QuantJob, files: list[str], arrays: Mapping[str, np.ndarray],
               output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    example = {n: torch.from_numpy(a) for n, a in arrays.items()}
    return _backend(runtime).run(job, files, example, output_names)


def _bytes(root: Path, files: Sequence[str]) -> int:
    total = 0
    for rel in files:
        p = root / rel
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total


@torch.no_grad()
def apply_quantization(model: DHumanDiff, root: Path, runtime: str, components: list[ExportedComponent],
                       options: QuantizeOptions, seed: int = 0, progress: Progress | None = None,
                       ) -> tuple[list[ExportedComponent], dict[str, Tolerance], dict[str, Any]]:
    """Quantise the chosen components of a freshly exported float bundle in ``root`` (see the module doc).

    Returns the updated components, the per-component tolerances of the quantised graphs, and the
    ``quantization`` section of ``bundle.json``.
    """
    from ..calibration.store import CalibrationSet

    base = "fp16" if any(c.precision == "fp16" for c in components) else "fp32"
    mode = check_options(runtime, base, options)
    calib = CalibrationSet.load(options.calibration) if options.calibration is not None else None
    sensitivity = calib.sensitivity() if calib is not None else None
    if calib is not None and calib.meta.get("backbone") != model.config.name:
        raise DHumanDiffError(f"the calibration set in {calib.root} was recorded with a {calib.meta.get('backbone')} "
                              f"model, this is a {model.config.name} model; re-run `dhumandiff calibrate`")
    wanted = [c for c in (options.components or mode.components)]
    by_name = {c.name: c for c in components}
    unknown = [c for c in wanted if c not in by_name and c not in DEFAULT_COMPONENTS]
    if unknown:
        raise DHumanDiffError(f"cannot quantise {', '.join(unknown)}: the bundle holds {', '.join(by_name)}")
    targets = [c for c in components if c.name in wanted]
    excluded = resolve_excluded(model, mode, options, sensitivity)
    recipe = None
    if mode.needs_sensitivity:
        from ..calibration.sensitivity import mixed_bit_recipe

        recipe = mixed_bit_recipe(sensitivity, options.avg_bits)  # type: ignore[arg-type]
    tol = component_tolerance(mode)
    tolerances: dict[str, Tolerance] = {}
    report: dict[str, Any] = {}
    backend = _backend(runtime)
    for i, comp in enumerate(targets):
        if progress:
            progress(i, len(targets), f"quantise {comp.name}")
        spec = get_spec(comp.name, model)
        module = spec.build(model).eval()
        example = spec.example(model, unet_batch(model), seed)
        samples = None
        if calib is not None and comp.name in calib.components:
            calib.check_shapes(comp.name, {n: tuple(t.shape) for n, t in example.items()})
            samples = list(calib.samples(comp.name, limit=options.samples))
        layers = excluded if comp.name == "unet" else []
        job = QuantJob(comp.name, root, [comp.file, *comp.extra_files], mode, options, module, samples, layers,
                       wrapper_paths(model, module, layers))
        if recipe is not None and comp.name == "unet":
            job.info["recipe"] = recipe
            job.layer_paths.update(wrapper_paths(model, module, list(recipe["bits"])))
        tol_example = RANDOM_INPUT_TOLERANCE if mode.quantizes_activations(comp.name) else tol
        before = _bytes(root, job.files)
        # a large graph is quantised and run in child processes (isolate.py): their memory goes back at exit
        child = isolate.wanted(isolate.weight_bytes(module), can=not getattr(backend, "NEEDS_MODULE", True))
        quantize, run = backend.quantize, backend.run
        if child:
            quantize = functools.partial(_quantize_in_child, runtime)
            run = functools.partial(_run_in_child, runtime)
        files = quantize(job)
        checks = {"example": (example, tol_example)}
        if samples:
            for k, sample in enumerate(calib.samples(comp.name, limit=CHECK_SAMPLES)):  # type: ignore[union-attr]
                checks[f"calibration sample {k}"] = ({n: torch.from_numpy(v) for n, v in sample.items()}, tol)
        measured = {}
        for label, (inputs, gate) in checks.items():
            summary = worst(compare_outputs(torch_outputs(spec, module, inputs),
                                            run(job, files, inputs, spec.outputs)))
            failures = summary.failures(gate)
            if failures:
                raise ParityError(f"{comp.name} quantised ({runtime} {mode.name}) misses the quantised-graph gate on "
                                  f"the {label} inputs ({'; '.join(failures)}); keep more layers float "
                                  f"(--keep-float) or choose a wider mode; nothing was written")
            measured[label] = {**summary.to_dict(), "tolerance": gate.to_dict()}
        comp.file, comp.extra_files = files[0], files[1:]
        comp.sha256 = component_digests(root, files)
        comp.precision = mode.precision
        comp.validation = {**(comp.validation or {}), "quantized": {**measured, **job.info.get("validation", {})}}
        backend.describe(comp, job)
        tolerances[comp.name] = tol_example
        report[comp.name] = {"bytes_before": before, "bytes_after": _bytes(root, files),
                             **{k: v for k, v in job.info.items() if k not in ("recipe", "validation")}}
    if progress:
        progress(len(targets), len(targets), "quantised")
    section: dict[str, Any] = {
        "mode": mode.name, "runtime": runtime, "precision": mode.precision, "weight_bits": mode.bits,
        "activations": mode.activations, "components": [c.name for c in targets],
        "activation_components": [c.name for c in targets if mode.quantizes_activations(c.name)],
        "excluded_layers": excluded,
        "settings": options.settings(), "graphs": report,
        "budget": budget_for(mode, options, recipe),
        # int8 kernels and their exactness differ per CPU (utils/cpu.py): what this bundle was calibrated on
        "cpu": cpu_features().to_dict(),
    }
    if calib is not None:
        section["calibration"] = calib.summary()
    if recipe is not None:
        section["recipe"] = recipe
    return components, tolerances, section

