"""The official DHumanDiff checkpoints <-> this project's safetensors layout.

Official release (read with ``torch.load(weights_only=True)``, never unpickled freely):

* ``ip_adapter_ca.pt`` — ``ModuleList(unet.attn_processors.values())`` state dict: ``"{i}.to_k_ip1.weight"`` ...
* ``face_projection.pt`` — the IP-Adapter-Plus ``Resampler`` (``latents``, ``proj_in``, ``layers.{i}.0.to_kv`` ...)
* ``face_projection2.pt`` — ``ProjPlusModel`` (``proj.0``, ``proj.2``, ``norm``, ``perceiver_resampler.*``)
* ``mapping.pt`` — the subject MLP (``layernorm``, ``fc1``, ``fc2``)

Key renames are data (``_RESAMPLER_RULES``); the only reshaping is the Resampler's fused ``to_kv``, split into
diffusers' ``to_k``/``to_v`` and fused again on the way back, so conversion is a strict, lossless round trip.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError

OFFICIAL_FILES = {
    "ip_adapter": "ip_adapter_ca.pt",
    "resampler": "face_projection.pt",
    "face_proj": "face_projection2.pt",
    "subject_mlp": "mapping.pt",
}

# (official pattern, ours) for one perceiver layer stack; {p} is the prefix, {i} the layer index.
_LAYER_RULES = [
    (r"layers\.(\d+)\.0\.norm1\.", "layers.{i}.ln0."),
    (r"layers\.(\d+)\.0\.norm2\.", "layers.{i}.ln1."),
    (r"layers\.(\d+)\.0\.to_q\.", "layers.{i}.attn.to_q."),
    (r"layers\.(\d+)\.0\.to_out\.", "layers.{i}.attn.to_out.0."),
    (r"layers\.(\d+)\.1\.0\.", "layers.{i}.ff.0."),
    (r"layers\.(\d+)\.1\.1\.", "layers.{i}.ff.1.net.0.proj."),
    (r"layers\.(\d+)\.1\.3\.", "layers.{i}.ff.1.net.2."),
]


def safe_torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` with clear errors; a pickle that is not plain weights is refused.

    The weights-only unpickler never imports or calls anything outside tensors and containers, so a malicious
    checkpoint's payload cannot run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint {path.name} not found in {path.parent}: put the four DHumanDiff "
                              f"files ({', '.join(OFFICIAL_FILES.values())}) there")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} was refused: it contains code or objects, not plain weights "
                              f"({str(exc).splitlines()[0][:160]}); only load checkpoints from a trusted source") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:160]}); "
                              f"download it again") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; is it the right file?")
    return obj


# ---------------------------------------------------------------------------------------------- perceiver layers
def _layers_to_ours(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(src):
            continue
        rest = key[len(src):]
        m = re.match(r"layers\.(\d+)\.0\.to_kv\.(.+)$", rest)
        if m:
            k, v = value.chunk(2, dim=0)
            out[f"{dst}layers.{m.group(1)}.attn.to_k.{m.group(2)}"] = k
            out[f"{dst}layers.{m.group(1)}.attn.to_v.{m.group(2)}"] = v
            continue
        for pattern, repl in _LAYER_RULES:
            m = re.match(pattern, rest)
            if m:
                rest = repl.format(i=m.group(1)) + rest[m.end():]
                break
        out[dst + rest] = value
    return out


def _layers_to_official(state: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(src):
            continue
        rest = key[len(src):]
        m = re.match(r"layers\.(\d+)\.attn\.to_([kv])\.(.+)$", rest)
        if m:
            if m.group(2) == "k":
                v = state[f"{src}layers.{m.group(1)}.attn.to_v.{m.group(3)}"]
                out[f"{dst}layers.{m.group(1)}.0.to_kv.{m.group(3)}"] = torch.cat([value, v], dim=0)
            continue
        for pattern, repl in _LAYER_RULES:
            ours = re.escape(repl.replace("{i}", "@")).replace("@", r"(\d+)")
            m = re.match(ours, rest)
            if m:
                official = pattern.replace(r"(\d+)", m.group(1)).replace("\\.", ".")
                rest = official + rest[m.end():]
                break
        out[dst + rest] = value
    return out


# ---------------------------------------------------------------------------------------------- per file
def resampler_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``face_projection.pt`` -> :class:`Resampler` state dict."""
    return _layers_to_ours(state, "", "proj.")


def resampler_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _layers_to_official(state, "proj.", "")


def face_proj_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``face_projection2.pt`` (ProjPlusModel) -> :class:`FaceProjPlus` state dict."""
    out = _layers_to_ours(state, "perceiver_resampler.", "proj.")
    direct = {"proj.0.": "proj.proj.net.0.proj.", "proj.2.": "proj.proj.net.2.", "norm.": "proj.norm."}
    for key, value in state.items():
        for a, b in direct.items():
            if key.startswith(a):
                out[b + key[len(a):]] = value
        if not key.startswith("perceiver_resampler.") and not any(key.startswith(a) for a in direct):
            out["unexpected." + key] = value  # surfaces as an 'unexpected key' in strict loading
    return out


def face_proj_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    direct = {"proj.proj.net.0.proj.": "proj.0.", "proj.proj.net.2.": "proj.2.", "proj.norm.": "norm."}
    layer_keys = {k: v for k, v in state.items() if not any(k.startswith(a) for a in direct)}
    out = _layers_to_official(layer_keys, "proj.", "perceiver_resampler.")
    for key, value in state.items():
        for a, b in direct.items():
            if key.startswith(a):
                out[b + key[len(a):]] = value
    return out


def load_official_adapters(weights_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """All four official files as *our* state dicts: ``{"ip_adapter", "resampler", "face_proj", "subject_mlp"}``."""
    weights_dir = Path(weights_dir)
    raw = {name: safe_torch_load(weights_dir / fname) for name, fname in OFFICIAL_FILES.items()}
    return {
        "ip_adapter": raw["ip_adapter"],
        "resampler": resampler_to_ours(raw["resampler"]),
        "face_proj": face_proj_to_ours(raw["face_proj"]),
        "subject_mlp": raw["subject_mlp"],
    }


def export_official(model, out_dir: Path) -> dict[str, Path]:
    """Write a model's adapters back in the official four-file format (for the round-trip proof and sharing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from ..utils.atomic import atomic_path

    states = {
        "ip_adapter": model.ip_state_dict(),
        "resampler": resampler_to_official(model.resampler.state_dict()),
        "face_proj": face_proj_to_official(model.face_proj.state_dict()),
        "subject_mlp": dict(model.subject_mlp.state_dict()),
    }
    paths = {}
    for name, state in states.items():
        target = out_dir / OFFICIAL_FILES[name]
        with atomic_path(target) as tmp:
            torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, tmp)
        paths[name] = target
    return paths
