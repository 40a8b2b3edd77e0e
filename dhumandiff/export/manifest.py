"""``bundle.json`` as the exporter writes it: plain JSON built from the model's config and the written graphs.

The format (name, version, component I/O, digests) is :mod:`dhumandiff.contract.bundle`'s, the module the
runtimes read it with; this module gathers the values from the model and writes through the contract's writer,
which refuses anything its reader would refuse.
Everything a torch-free runtime needs to reproduce the reference sampler is here: image and latent geometry,
the resolved scheduler config, tokenizer ids, identity preprocessing constants, sampling defaults and the
fidelity budget that ``dhumandiff parity`` checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..contract.bundle import FORMAT, FORMAT_VERSION, write_manifest
from ..model.dhumandiff_model import DHumanDiff
from ..model.sampler import make_scheduler
from .artifacts import ExportedComponent
from .specs import DEFAULT_TOLERANCES, END_TO_END_BUDGETS, unet_batch
from .validate import Tolerance

TOKENIZER_FILE = "tokenizer/tokenizer.json"
TOKENIZER_2_FILE = "tokenizer_2/tokenizer.json"
#: The identity encoder's input normalisation, ``(RGB 0..255 - mean) / std`` (ArcFace's convention).
ARCFACE_MEAN = 127.5
ARCFACE_STD = 127.5


def face_detector(model: DHumanDiff) -> dict:
    """Which torch-free detector the runtime runs before the identity graphs (the tiny world's, or none)."""
    from ..model.faces.world import WorldAnalyzer, WorldIdentityEncoder

    if isinstance(model.identity_encoder, WorldIdentityEncoder):
        return {"detector": "world", "min_face_px": int(WorldAnalyzer.min_face_px)}
    return {"detector": "none"}


def scheduler_config(model: DHumanDiff) -> dict[str, Any]:
    """The resolved config of the scheduler the reference sampler builds, with its ``_class_name``.

    Resolved (every field, defaults filled in) so the NumPy sampler never depends on diffusers' defaults.
    """
    sched = make_scheduler(model)
    cfg = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
    return {"_class_name": type(sched).__name__, **json.loads(json.dumps(cfg, default=_jsonable))}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} into bundle.json")


def tokenizer_entry(tokenizer: Any, file: str, sha256: str) -> dict[str, Any]:
    eos = int(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    return {"file": file, "max_length": 77, "pad_token_id": int(eos if pad is None else pad),
            "bos_token_id": int(tokenizer.bos_token_id), "eos_token_id": eos, "sha256": sha256}


def budget(precision: str, tolerances: Mapping[str, Tolerance],
           end_to_end: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The bundle's fidelity budget: per-component gates (at each graph's own precision) + end to end.

    ``end_to_end`` replaces the precision's end-to-end gates (a quantised variant's own budget). Quantised graphs
    are gated by cosine and PSNR only (``atol`` None); ``component_max_abs``, which every bundle carries, is then
    the largest atol among the float graphs, or the fp16 one when every graph is quantised.
    """
    atols = [t.atol for t in tolerances.values() if t.atol is not None]
    if not atols and end_to_end is None:
        raise ValueError("the bundle format needs a component_max_abs: give at least one component an atol")
    return {
        "component_max_abs": max(atols) if atols else float(DEFAULT_TOLERANCES["fp16"].atol),  # type: ignore[arg-type]
        "component_min_cosine": min(t.min_cosine for t in tolerances.values()),
        **(END_TO_END_BUDGETS[precision] if end_to_end is None else dict(end_to_end)),
        "components": {name: t.to_dict() for name, t in tolerances.items()},
    }


def quantized_end_to_end(quantization: Mapping[str, Any]) -> dict[str, float]:
    """The end-to-end gates of a quantised bundle: its recorded PSNR budget, and a floor on the plain face
    cosine (the budget's identity delta is checked separately by ``dhumandiff parity``)."""
    from .quantize_modes import IDENTITY_MIN_COSINE

    return {"end_to_end_psnr_db": float(quantization["budget"]["psnr_db"]), "identity_min_cosine": IDENTITY_MIN_COSINE}


def build_manifest(model: DHumanDiff, runtime: str, precision: str, components: list[ExportedComponent],
                   tokenizers: Mapping[str, dict[str, Any]], tolerances: Mapping[str, Tolerance],
                   model_name: str, source_model: str | None, export_info: Mapping[str, Any],
                   quantization: Mapping[str, Any] | None = None,
                   identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``bundle.json`` dict (format_version 1). ``tokenizers`` maps ``tokenizer``/``tokenizer_2`` to entries.

    ``quantization`` (a quantised variant, ``quantize_modes.py``) is recorded as the ``quantization`` section;
    the bundle's ``precision`` becomes the variant's label (``int8``, ``int4``, ``palettized6``, ...) and its
    end-to-end budget the variant's.
    """
    cfg = model.config
    vae = model.vae.config
    defaults = cfg.defaults
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": cfg.name,
        "runtime": runtime,
        "precision": precision if quantization is None else str(quantization["precision"]),
        "model_name": model_name,
        "image_size": [int(cfg.image_size), int(cfg.image_size)],
        "latent": {"channels": int(vae.latent_channels), "downscale": 2 ** (len(vae.block_out_channels) - 1),
                   "scaling_factor": float(vae.scaling_factor)},
        "scheduler": scheduler_config(model),
        **dict(tokenizers),
        "identity": {"num_id_tokens": int(cfg.num_id_tokens), "face_size": int(cfg.face_size),
                     "clip_size": int(cfg.clip_size), "clip_mean": [float(v) for v in cfg.clip_mean],
                     "clip_std": [float(v) for v in cfg.clip_std], "arcface_mean": ARCFACE_MEAN,
                     "arcface_std": ARCFACE_STD, **face_detector(model), **dict(identity or {})},
        "defaults": {"steps": int(defaults.get("steps", 30)),
                     "guidance_scale": float(defaults.get("guidance_scale", 5.0)),
                     "ip_scale": float(defaults.get("ip_scale", 1.0)), "sampler": str(defaults.get("sampler", "ddim")),
                     "cfg": unet_batch(model) == 2},
        "components": {c.name: c.manifest_entry() for c in components},
        "recipe": cfg.conditioning.to_dict(),
        "budget": budget(precision, tolerances, None if quantization is None else quantized_end_to_end(quantization)),
        "created_by": f"dhumandiff {__version__}",
    }
    if quantization is not None:
        manifest["quantization"] = {**dict(quantization), "base_precision": precision}
    if source_model is not None:
        manifest["source_model"] = source_model
    manifest["export"] = {**dict(export_info), "torch": torch.__version__,
                          "graph_precision": {c.name: c.precision for c in components},
                          "validation": {c.name: c.validation for c in components if c.validation is not None}}
    return manifest


def write(root: Path, manifest: Mapping[str, Any]) -> Path:
    """Validate and write ``bundle.json`` (inside the export's temporary folder: the folder rename is the atomic
    step); a manifest the bundle reader would refuse is never written."""
    return write_manifest(root, manifest)

