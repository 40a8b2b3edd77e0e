"""Core ML weight compression with ``coremltools.optimize.coreml``, on the exporter's own compress hook.

* ``palettize-8`` / ``palettize-6`` / ``palettize-4``: k-means palettisation (``OpPalettizerConfig``): each
  weight becomes ``2**bits`` fp16 values plus ``bits``-wide indices (``constexpr_lut_to_dense`` ops), expanded on
  the device at load. Apple ships Stable Diffusion 6-bit palettised.
* ``linear-int8``: symmetric per-channel int8 weights (``OpLinearQuantizerConfig``; ``constexpr_affine_dequantize``
  / ``constexpr_blockwise_shift_scale``).
* ``mixed-bit``: Apple's mixed-bit recipe: the UNet's bits per layer from the sensitivity analysis
  (``calibration.sensitivity.mixed_bit_recipe``: the most faithful assignment whose parameter-weighted average
  fits ``--avg-bits``); layers that miss even at 8 bits stay fp16.

All of it goes through :func:`~.coreml_export.compress_mlpackage` (``op_name_configs`` carries the per-layer
choices; sensitive layers get ``None``, i.e. stay fp16). A layer is found by the weight constant that stores it
(:func:`~.coreml_export.match_weights`: by name, or by value for re-laid-out split-einsum weights).

Core ML cannot predict on Linux, so a compressed package is proved there by its weights: they are read back
(decompressed, :func:`~.coreml_export.mlpackage_weights`) into the torch wrapper, which is run against the fp32
reference; on macOS the package itself is run. :func:`decompressed_model` does the same for a whole bundle, so
``dhumandiff parity --weights-only`` can measure a Core ML bundle's end-to-end fidelity on Linux (weights exactly
as shipped, activations in float32 rather than Core ML's fp16). Its blind spot: weights the converter folds
(a BatchNorm into its convolution, as in the tiny world's identity encoder) have no torch counterpart to load
into, so their compression error is not seen there (``weights_not_stored`` in the export's validation).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import DHumanDiffError
from ..model.dhumandiff_model import DHumanDiff
from .quantize_modes import QuantJob

#: Core ML's default: weights with fewer elements are never compressed (biases, norms, small projections).
WEIGHT_THRESHOLD = 2048
#: The ops a compressed mlprogram decompresses its weights with.
CONSTEXPR_PREFIX = "constexpr_"


def _packages(root: Path, files: Sequence[str]) -> list[Path]:
    return [root / f for f in files if f.endswith(".mlpackage")]


def op_types(path: Path) -> dict[str, int]:
    """How many ops of each type the package's main function holds (``constexpr_lut_to_dense``: palettised)."""
    from coremltools.converters.mil.frontend.milproto import load as milproto

    from .coreml_export import _ct

    ct = _ct()
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    prog = milproto.load(spec, spec.specificationVersion, model.weights_dir)
    out: dict[str, int] = {}
    for op in prog.functions["main"].operations:
        out[op.op_type] = out.get(op.op_type, 0) + 1
    return out


def _layer_consts(module: torch.nn.Module, path: Path, layer_paths: Sequence[str],
                  ) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """What one (uncompressed) package stores: ``(wrapper layer path -> the const op holding its weight, consts
    that cannot be compressed, torch weights found only by value -> their const's key)``.

    Layers not in this package are left out. Constants holding Inf (a causal attention mask: float32's minimum
    is -Inf in fp16) are not weights, and k-means cannot cluster them: they stay as they are. Weights the
    converter re-laid out (split-einsum's 1x1 convolutions) are matched by value, which compression ends: their
    names are kept (``renamed_weights`` in the manifest) so the compressed values can still be read back.
    """
    from .coreml_export import match_weights, mlpackage_weights, weight_key

    consts = mlpackage_weights(path, decompress=False)
    match = match_weights(module, consts)
    odd = [n for n, v in consts.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    renamed = {t: weight_key(c) for t, c in match.const.items() if match.by[t] == "value"}
    return {p: match.const[f"{p}.weight"] for p in layer_paths if f"{p}.weight" in match.const}, odd, renamed


@torch.no_grad()
def load_package_weights(module: torch.nn.Module, paths: Sequence[Path],
                         renamed: Mapping[str, str] | None = None) -> dict[str, int]:
    """Copy the (decompressed) weights stored in ``paths`` into ``module``, in place; returns match counts.

    By name, by value, and for weights the converter re-laid out, by the const key recorded before compression
    (``renamed``). Weights the converter folded away (BatchNorm into the preceding convolution) have no stored
    counterpart and keep their torch values: the count of those is returned as ``unmatched``.
    """
    from .coreml_export import match_weights, mlpackage_weights, torch_weights, weight_key

    consts = mlpackage_weights(list(paths))
    match = match_weights(module, consts)
    by_key = {weight_key(n): n for n in consts}
    for tname, key in (renamed or {}).items():
        if tname not in match.const and key in by_key:
            match.const[tname] = by_key[key]
    tensors = torch_weights(module)
    for tname, cname in match.const.items():
        t = tensors[tname]
        t.copy_(torch.from_numpy(consts[cname].astype(np.float32)).reshape(t.shape))
    return {"matched": len(match.const), "unmatched": len(tensors) - len(match.const)}


def quantize(job: QuantJob) -> list[str]:
    """Compress ``job``'s mlpackage(s) in place in the bundle folder; returns the (unchanged) file list."""
    import coremltools.optimize.coreml as cto

    from .coreml_export import compress_mlpackage

    name = job.mode.name
    recipe = job.info.get("recipe")
    keep = list(job.layer_modules())
    bits_of = {job.layer_paths[n]: b for n, b in (recipe or {}).get("bits", {}).items()}
    found: set[str] = set()
    constexpr = 0
    for pkg in _packages(job.root, job.files):
        consts, not_weights, renamed = _layer_consts(job.module, pkg, list(dict.fromkeys([*keep, *bits_of])))
        job.cache.setdefault("renamed", {}).update(renamed)
        found |= set(consts)
        overrides: dict[str, Any] = {name: None for name in not_weights}
        for layer, bits in bits_of.items():
            if layer in consts:
                overrides[consts[layer]] = None if bits >= 16 else cto.OpPalettizerConfig(
                    mode="kmeans", nbits=int(bits), weight_threshold=WEIGHT_THRESHOLD)
        overrides.update({consts[layer]: None for layer in keep if layer in consts})
        if name.startswith("palettize-"):
            compress_mlpackage(pkg, "palettize", int(name.split("-")[1]), weight_threshold=WEIGHT_THRESHOLD,
                               op_name_configs=overrides)
        elif name == "linear-int8":
            compress_mlpackage(pkg, "linear_int8", weight_threshold=WEIGHT_THRESHOLD, op_name_configs=overrides)
        elif name == "mixed-bit":
            # Weights the analysis did not cover (none of the UNet's Conv/Linear) get the safe 8 bits.
            compress_mlpackage(pkg, "palettize", 8, weight_threshold=WEIGHT_THRESHOLD, op_name_configs=overrides)
        else:
            raise DHumanDiffError(f"no Core ML compressor for mode {name!r}")
        constexpr += sum(n for t, n in op_types(pkg).items() if t.startswith(CONSTEXPR_PREFIX))
    missing = [p for p in [*keep, *bits_of] if p not in found]
    if missing:
        raise DHumanDiffError(f"{job.name}: layer(s) {missing[:3]} were not found among the mlpackage's weights")
    if constexpr == 0:
        raise DHumanDiffError(f"{job.name}: coremltools compressed no weight (no constexpr op in the package); "
                              f"its weights may all be under {WEIGHT_THRESHOLD} elements")
    job.info.update({"constexpr_ops": constexpr, "fp16_layers": len(keep)})
    return list(job.files)


def run(job: QuantJob, files: list[str], example: Mapping[str, torch.Tensor],
        output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The compressed component's outputs: the package itself on macOS; on Linux, the torch wrapper run with the
    package's decompressed weights (what compression does to the numbers, computed in float32)."""
    from .coreml_export import can_predict, predict_mlpackages

    paths = _packages(job.root, files)
    if can_predict():
        job.info.setdefault("validation", {})["measured_by"] = "coreml predict"
        return predict_mlpackages(paths, {n: t.numpy() for n, t in example.items()})
    if "twin" not in job.cache:  # the wrapper, copied, holding the package's decompressed weights
        twin = copy.deepcopy(job.module).eval()
        counts = load_package_weights(twin, paths, job.cache.get("renamed"))
        job.cache["twin"] = twin
        job.info.setdefault("validation", {}).update({"measured_by": "decompressed weights in torch (Linux)",
                                                      "weights_matched": counts["matched"],
                                                      "weights_not_stored": counts["unmatched"]})
    with torch.no_grad():
        value = job.cache["twin"](*example.values())
    values = value if isinstance(value, (tuple, list)) else (value,)
    return {n: v.detach().float().cpu().numpy() for n, v in zip(output_names, values)}


def describe(component, job: QuantJob) -> None:
    """Record the compression in the component's ``coreml`` manifest entry (and its new weight size)."""
    from .coreml_chunk import weight_file_bytes

    info = getattr(component, "coreml", None)
    if info is None:
        return
    info["compression"] = {"mode": job.mode.name, "constexpr_ops": job.info.get("constexpr_ops"),
                           "fp16_layers": job.info.get("fp16_layers", 0)}
    info["renamed_weights"] = dict(sorted(job.cache.get("renamed", {}).items()))
    info["weight_bytes"] = sum(weight_file_bytes(p) for p in _packages(job.root, [component.file,
                                                                                   *component.extra_files]))


# ------------------------------------------------------------------------------------------ whole bundles


@torch.no_grad()
def decompressed_model(model: DHumanDiff, bundle: str | Path, components: Mapping[str, Any]) -> DHumanDiff:
    """A copy of ``model`` holding the weights a Core ML bundle ships (decompressed, as float32).

    ``components``: the manifest's components (name -> entry with ``file``/``extra_files``). Running this copy
    (its wrappers, or the reference sampler) is the bundle's arithmetic on its exact weights, in float32.
    """
    import json

    from .specs import get_spec

    twin = copy.deepcopy(model).eval()
    root = Path(bundle)
    raw = json.loads((root / "bundle.json").read_text(encoding="utf-8"))["components"]
    for name in components:
        entry = raw[name]
        load_package_weights(get_spec(name).build(twin), _packages(root, [entry["file"], *entry["extra_files"]]),
                             (entry.get("coreml") or {}).get("renamed_weights"))
    return twin


class DecompressedRunner:
    """A ``GraphRunner`` over a Core ML bundle's weights in torch (Linux stand-in for ``CoreMLRunner``)."""

    def __init__(self, model: DHumanDiff, bundle: str | Path, components: Mapping[str, Any]) -> None:
        from .specs import get_spec

        self.model = decompressed_model(model, bundle, components)
        self.wrappers = {name: get_spec(name).build(self.model).eval() for name in components}
        self.components = components

    @property
    def providers(self) -> list[str]:
        return ["torch (Core ML bundle weights, float32)"]

    @torch.no_grad()
    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .specs import get_spec

        spec = get_spec(component, self.model)
        names = spec.input_names(self.model)
        value = self.wrappers[component](*[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names])
        values = value if isinstance(value, (tuple, list)) else (value,)
        return {n: v.detach().float().cpu().numpy() for n, v in zip(spec.outputs, values)}
