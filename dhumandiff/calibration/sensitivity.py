"""Per-layer sensitivity of the UNet to weight (and activation) quantisation, from a calibration set.

Apple's mixed-bit palettisation recipe (ml-stable-diffusion's pre-analysis): compress *one* layer at a time,
run the model on real inputs, and measure the PSNR of its output against the uncompressed model. A layer whose
PSNR stays high at 4 bits can be compressed hard; one that drops at 8 bits should stay in float. The output
measured here is the *denoised prediction* x0 (the classifier-free-guided model output turned into a clean
latent with the scheduler's own ``alphas_cumprod`` and prediction type), on UNet inputs recorded at every step
of real generations (``record.py``), all samples in one batch.

Per layer (every ``Conv2d``/``Linear`` of the exported UNet wrapper with at least ``min_params`` weights):

* ``psnr_db[bits]``: the weight alone compressed to ``bits`` — ``method="palettize"``: a k-means look-up table
  of ``2**bits`` fp16 values per tensor (the clustering Core ML's ``OpPalettizerConfig(mode="kmeans")`` runs:
  scikit-learn ``KMeans``, one init, ``random_state=0``, over the distinct fp16 values weighted by their count);
  ``method="linear"``: symmetric per-output-channel integers (``torch.fake_quantize_per_channel_affine``);
* ``int8_weights_psnr_db``: symmetric per-channel int8 weights (ONNX ``quantize_dynamic``, NNCF
  ``compress_weights``, Core ML ``linear_int8``);
* ``int8_psnr_db``: int8 weights *and* the layer's input quantised per tensor to uint8 over the range it takes
  on the calibration batch (min/max, as onnxruntime's default calibrator and NNCF's do) — what static QDQ int8
  and ``nncf.quantize`` do to that layer;
* ``tolerates``: the bit widths whose PSNR reaches ``threshold_db``.

Layer names are module paths in the :class:`DHumanDiff` model (``unet.down_blocks.0.resnets.0.conv1``); the
export stage maps them to its wrapper's paths, from which torch.onnx scopes, OpenVINO's ``__module.`` node names
and Core ML's weight names derive (``export/quantize_*.py``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..contract.metrics import psnr_db  # capped at 200 dB, as export.validate and parity report it
from ..errors import DHumanDiffError
from ..model.dhumandiff_model import DHumanDiff
from .store import CalibrationSet

FORMAT = "dhumandiff-sensitivity"
FORMAT_VERSION = 1
DEFAULT_BITS = (8, 6, 4)
METHODS = ("palettize", "linear")
#: A layer "tolerates" a bit width when quantising it alone keeps the denoised output above this PSNR. The
#: errors of all layers add up (a UNet has ~250 of them: 10 log10 250 = 24 dB) and the sampler carries them
#: through every step, so a layer's share of a 30 dB end-to-end budget sits near 60 dB.
DEFAULT_THRESHOLD_DB = 60.0
#: Core ML's default ``weight_threshold``: smaller weights are never compressed, so they are not analysed.
DEFAULT_MIN_PARAMS = 2048
FLOAT_BITS = 16

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------- quantisers


def linear_weights(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel ``bits``-bit integers (scale = max |w| / (2**(bits-1) - 1))."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / qmax).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.detach().float(), scale, zero, 0, -qmax, qmax)


def palettized_weights(w: torch.Tensor, bits: int) -> torch.Tensor:
    """A k-means look-up table of ``2**bits`` entries per tensor, over the fp16 weights (Core ML's palettiser)."""
    from sklearn.cluster import KMeans

    half = w.detach().cpu().numpy().astype(np.float16).ravel()
    values, inverse, counts = np.unique(half, return_inverse=True, return_counts=True)
    k = min(len(values), 2 ** bits)
    if k == len(values):  # already representable exactly
        return torch.from_numpy(half.astype(np.float32)).reshape(w.shape)
    km = KMeans(k, init="k-means++", tol=1e-2, n_init=1, random_state=0)
    km.fit(values.astype(np.float32)[:, None], sample_weight=counts)
    lut = km.cluster_centers_[:, 0].astype(np.float16).astype(np.float32)
    return torch.from_numpy(lut[km.labels_][inverse.ravel()]).reshape(w.shape)


def quantized_weights(w: torch.Tensor, bits: int, method: str) -> torch.Tensor:
    if method == "palettize":
        return palettized_weights(w, bits)
    if method == "linear":
        return linear_weights(w, bits)
    raise DHumanDiffError(f"unknown sensitivity method {method!r}; choose one of {', '.join(METHODS)}")


@contextlib.contextmanager
def swapped_weight(layer: nn.Module, weight: torch.Tensor) -> Iterator[None]:
    """Run ``layer`` with ``weight`` and put its own weight back afterwards, whatever happens."""
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.copy_(weight.reshape(saved.shape).to(saved.dtype))
        yield
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)


@contextlib.contextmanager
def quantized_input(layer: nn.Module, lo: float, hi: float) -> Iterator[None]:
    """Quantise ``layer``'s input per tensor to uint8 over ``[lo, hi]`` (the calibration range, 0 included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zero = int(min(max(round(-lo / scale), 0), 255))

    def hook(_mod, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero, 0, 255), *args[1:])

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------------ the batch


def _batch(calib: CalibrationSet, samples: int) -> tuple[dict[str, torch.Tensor], np.ndarray, int]:
    """Up to ``samples`` recorded UNet calls concatenated along the batch axis; their timesteps; rows/call."""
    calls = list(calib.samples("unet", limit=samples))
    if not calls:
        raise DHumanDiffError(f"the calibration set in {calib.root} holds no UNet inputs; re-run `dhumandiff calibrate`")
    rows = int(calls[0]["sample"].shape[0])
    scales = {float(c["ip_scale"].reshape(-1)[0]) for c in calls}
    if len(scales) > 1:
        raise DHumanDiffError(f"the calibration set mixes IP scales {sorted(scales)}; record it at one scale")
    batch = {}
    for name in calls[0]:
        if name == "ip_scale":
            batch[name] = torch.from_numpy(calls[0][name])
        else:
            batch[name] = torch.from_numpy(np.concatenate([c[name] for c in calls]))
    timesteps = np.asarray([float(c["timestep"].reshape(-1)[0]) for c in calls])
    return batch, timesteps, rows


def denoised(model: DHumanDiff, calib: CalibrationSet, output: torch.Tensor, sample: torch.Tensor,
             timesteps: np.ndarray, rows: int) -> np.ndarray:
    """The clean-latent prediction x0 per call: CFG-combined output -> x0 with the scheduler's alphas."""
    from ..model.sampler import make_scheduler

    sched = make_scheduler(model, calib.meta.get("sampler"))
    n = len(timesteps)
    out = output.reshape(n, rows, *output.shape[1:]).double()
    x = sample.reshape(n, rows, *sample.shape[1:])[:, -1].double()
    g = float(calib.meta.get("guidance_scale", 1.0))
    pred = out[:, 0] + g * (out[:, 1] - out[:, 0]) if rows == 2 else out[:, 0]
    idx = torch.from_numpy(np.clip(np.round(timesteps), 0, len(sched.alphas_cumprod) - 1).astype(np.int64))
    a = sched.alphas_cumprod[idx].double().view(n, 1, 1, 1)
    kind = sched.config.prediction_type
    if kind == "epsilon":
        x0 = (x - (1 - a).sqrt() * pred) / a.sqrt()
    elif kind == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * pred
    else:  # "sample"
        x0 = pred
    return x0.numpy()


def analysable_layers(module: nn.Module, min_params: int = DEFAULT_MIN_PARAMS,
                      patterns: Sequence[str] | None = None, prefix: str = "") -> dict[str, nn.Module]:
    """``Conv2d``/``Linear`` layers with at least ``min_params`` weights (optionally fnmatch ``patterns``),
    named ``prefix.path``."""
    out = {}
    for path, mod in module.named_modules():
        name = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.numel() >= min_params:
            if patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns):
                out[name] = mod
    return out


# ------------------------------------------------------------------------------------------------ analysis


@torch.no_grad()
def analyze_sensitivity(model: DHumanDiff, calib: CalibrationSet, *, bits: Sequence[int] = DEFAULT_BITS,
                        method: str = "palettize", samples: int = 8, threshold_db: float = DEFAULT_THRESHOLD_DB,
                        min_params: int = DEFAULT_MIN_PARAMS, layers: Sequence[str] | None = None,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Quantise each UNet layer alone and measure the denoised output's PSNR against fp32 (see module doc)."""
    if method not in METHODS:
        raise DHumanDiffError(f"unknown sensitivity method {method!r}; choose one of {', '.join(METHODS)}")
    bits = sorted({int(b) for b in bits}, reverse=True)
    if any(b < 1 or b > 8 for b in bits):
        raise DHumanDiffError(f"bit widths must be between 1 and 8, got {bits}")
    model.eval()
    module = model.identity_unet  # what the exported UNet wrapper calls, inputs in the same order
    batch, timesteps, rows = _batch(calib, samples)
    names = [n for n in ("sample", "timestep", "encoder_hidden_states", "ip_tokens", "region_mask", "ip_scale",
                         "text_embeds", "time_ids") if n in batch]
    args = [batch[n] for n in names]
    targets = analysable_layers(model.unet, min_params, layers, prefix="unet")
    if not targets:
        raise DHumanDiffError(f"no UNet layer matches {list(layers or [])} with at least {min_params} weights")

    ranges: dict[str, list[float]] = {}

    def watch(name: str):
        def hook(_mod, a):
            ranges[name] = [float(a[0].min()), float(a[0].max())]
        return hook

    handles = [layer.register_forward_pre_hook(watch(n)) for n, layer in targets.items()]
    try:
        ref = denoised(model, calib, module(*args), batch["sample"], timesteps, rows)
    finally:
        for h in handles:
            h.remove()

    def measure() -> float:
        got = denoised(model, calib, module(*args), batch["sample"], timesteps, rows)
        return round(psnr_db(ref, got), 3)

    report_layers = []
    for i, (name, layer) in enumerate(targets.items()):
        if progress:
            progress(i, len(targets), name)
        w = layer.weight.detach()
        entry: dict[str, Any] = {"name": name, "type": type(layer).__name__, "params": int(w.numel()), "psnr_db": {}}
        for b in bits:
            with swapped_weight(layer, quantized_weights(w, b, method)):
                entry["psnr_db"][str(b)] = measure()
        with swapped_weight(layer, linear_weights(w, 8)):
            same = method == "linear" and 8 in bits  # the 8-bit column already is this measurement
            entry["int8_weights_psnr_db"] = entry["psnr_db"]["8"] if same else measure()
            with quantized_input(layer, *ranges[name]):
                entry["int8_psnr_db"] = measure()
        entry["tolerates"] = [b for b in bits if entry["psnr_db"][str(b)] >= threshold_db]
        report_layers.append(entry)
    if progress:
        progress(len(targets), len(targets), "done")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "component": "unet", "method": method, "bits": bits,
        "metric": "PSNR (dB) of the denoised prediction x0 (CFG-combined) against fp32, one layer quantised at "
                  "a time, over recorded UNet inputs",
        "samples": int(len(timesteps)), "threshold_db": float(threshold_db), "min_params": int(min_params),
        "calibration": {"tensors_sha256": calib.meta.get("tensors_sha256"), "model": calib.meta.get("model")},
        "layers": report_layers,
    }


# ------------------------------------------------------------------------------------------ using a report


def check_report(report: Mapping[str, Any]) -> None:
    if report.get("format") != FORMAT or report.get("format_version") != FORMAT_VERSION:
        raise DHumanDiffError(f"not a {FORMAT} v{FORMAT_VERSION} report; re-run `dhumandiff calibrate`")


def sensitive_layers(report: Mapping[str, Any], metric: str = "int8_psnr_db", threshold_db: float | None = None,
                     keep: int | None = None) -> list[str]:
    """Layers to keep in float: the ``keep`` most sensitive by ``metric``, or all under ``threshold_db``.

    ``metric`` is ``int8_psnr_db`` (weights + activations: static QDQ, NNCF full/hybrid), ``int8_weights_psnr_db``
    (weight-only int8) or ``"bits:N"`` (the N-bit weight column). Most sensitive first.
    """
    check_report(report)

    def value(layer: Mapping[str, Any]) -> float:
        if metric.startswith("bits:"):
            return float(layer["psnr_db"][metric.split(":", 1)[1]])
        return float(layer[metric])

    ranked = sorted(report["layers"], key=value)
    if keep is not None:
        return [layer["name"] for layer in ranked[:max(int(keep), 0)]]
    limit = float(report.get("threshold_db", DEFAULT_THRESHOLD_DB) if threshold_db is None else threshold_db)
    return [layer["name"] for layer in ranked if value(layer) < limit]


def mixed_bit_recipe(report: Mapping[str, Any], target_bits: float) -> dict[str, Any]:
    """Bits per layer for an average of at most ``target_bits`` (Apple's mixed-bit recipe).

    For a PSNR bar ``t``, each layer takes the fewest bits whose single-layer PSNR reaches ``t`` (16 = stays
    fp16 when even 8 bits misses it); the average is weighted by parameter count. The highest bar whose average
    fits ``target_bits`` wins: the most faithful model of that size.
    """
    check_report(report)
    layers = report["layers"]
    bits = sorted(int(b) for b in report["bits"])
    total = sum(int(layer["params"]) for layer in layers)
    if not layers or total == 0:
        raise DHumanDiffError("the sensitivity report lists no layers; re-run `dhumandiff calibrate`")
    if target_bits < bits[0]:
        raise DHumanDiffError(f"target average {target_bits} bits is below the smallest analysed width {bits[0]}")

    def assign(bar: float) -> dict[str, int]:
        return {layer["name"]: next((b for b in bits if layer["psnr_db"][str(b)] >= bar), FLOAT_BITS)
                for layer in layers}

    def average(choice: Mapping[str, int]) -> float:
        return sum(choice[layer["name"]] * int(layer["params"]) for layer in layers) / total

    bars = sorted({float(v) for layer in layers for v in layer["psnr_db"].values()} | {math.inf}, reverse=True)
    for bar in bars:  # from the strictest bar down: the first that fits is the most faithful
        choice = assign(bar)
        if average(choice) <= target_bits + 1e-9:
            return {"target_bits": float(target_bits), "threshold_db": bar if math.isfinite(bar) else None,
                    "average_bits": round(average(choice), 4), "bits": choice}
    choice = {layer["name"]: bits[0] for layer in layers}  # every layer at the smallest width
    return {"target_bits": float(target_bits), "threshold_db": None, "average_bits": round(average(choice), 4),
            "bits": choice}
