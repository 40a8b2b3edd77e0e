"""Tiny but real bundles for tests: random torch modules that follow the bundle I/O contract, exported for
real (torch.onnx.export, OpenVINO IR, TorchScript), plus a real ``tokenizers`` tokenizer.json.

Reusable by any stage's tests (``from runtime_fixtures import build_tiny_bundle``). torch is imported inside
the functions that need it, so torch-free tests can still use :func:`manifest_dict` and
:func:`write_fake_bundle`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dhumandiff.contract.bundle import component_digests, write_manifest, manifest_from_dict

IMAGE = 64
DOWNSCALE = 4
LATENT = IMAGE // DOWNSCALE
CHANNELS = 4
N_ID = 16
FACE = 112
CLIP = 224
CLIP_HIDDEN = 32
CLIP_TOKENS = (CLIP // 16) ** 2
IP_DIM = 32
FACE_TOKEN_DIM = 24
TEXT_DIM = 32
TEXT2_DIM = 16
MAX_LEN = 77
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

WORDS = (
    "a photo of the man and woman at beach park wedding bride groom friend friends two smiling portrait "
    "in on with her his their standing together mother father son daughter boy girl person , . !"
).split()
SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")

DDIM_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.39.0", "num_train_timesteps": 1000,
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "trained_betas": None,
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "rescale_betas_zero_snr": False,
}
LCM_CONFIG: dict[str, Any] = {
    "_class_name": "LCMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "original_inference_steps": 50, "prediction_type": "epsilon",
    "timestep_scaling": 10.0, "set_alpha_to_one": True, "clip_sample": False,
}


def _spec(shape: list[int], dtype: str = "float32") -> dict[str, Any]:
    return {"shape": shape, "dtype": dtype}


def component_io(batch: int = 2, sdxl: bool = False) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Inputs/outputs (in forward-argument order) of each tiny component."""
    d = TEXT_DIM + (TEXT2_DIM if sdxl else 0)
    io: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "identity_encoder": ({"face": _spec([1, 3, FACE, FACE])}, {"embedding": _spec([1, 512])}),
        "image_encoder": (
            {"pixel_values": _spec([1, 3, CLIP, CLIP])}, {"image_embeds": _spec([1, CLIP_TOKENS, CLIP_HIDDEN])}
        ),
        "face_projection": (
            {"image_embeds": _spec([1, CLIP_TOKENS, CLIP_HIDDEN]), "id_embedding": _spec([1, 512])},
            {"ip_tokens": _spec([1, N_ID, IP_DIM]), "face_token": _spec([1, 1, FACE_TOKEN_DIM])},
        ),
        "text_encoder": (
            {"input_ids": _spec([1, MAX_LEN], "int64"), "face_tokens": _spec([1, 2, FACE_TOKEN_DIM]),
             "subject_positions": _spec([1, 2], "int64")},
            {"prompt_embeds": _spec([1, MAX_LEN, TEXT_DIM])},
        ),
        "unet": (
            {"sample": _spec([batch, CHANNELS, LATENT, LATENT]), "timestep": _spec([batch]),
             "encoder_hidden_states": _spec([batch, MAX_LEN, d]), "ip_tokens": _spec([batch, 2 * N_ID, IP_DIM]),
             "region_mask": _spec([batch, 2, LATENT, LATENT]), "ip_scale": _spec([1])},
            {"noise_pred": _spec([batch, CHANNELS, LATENT, LATENT])},
        ),
        "vae_decoder": (
            {"latent_sample": _spec([1, CHANNELS, LATENT, LATENT])}, {"sample": _spec([1, 3, IMAGE, IMAGE])}
        ),
    }
    if sdxl:
        io["unet"][0].update({"text_embeds": _spec([batch, TEXT2_DIM]), "time_ids": _spec([batch, 6])})
        io["text_encoder_2"] = (
            {"input_ids": _spec([1, MAX_LEN], "int64")},
            {"prompt_embeds": _spec([1, MAX_LEN, TEXT2_DIM]), "pooled_prompt_embeds": _spec([1, TEXT2_DIM])},
        )
    return io


def write_tokenizer(path: Path) -> dict[str, Any]:
    """A WordLevel tokenizer (lowercase, whitespace/punctuation split) and its manifest section."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return {"file": path.name, "max_length": MAX_LEN, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def manifest_dict(
    root: Path,
    runtime: str,
    files: dict[str, tuple[str, list[str]]],
    *,
    batch: int = 2,
    sdxl: bool = False,
    scheduler: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """A valid bundle.json dict for files already in ``root`` (sha256 computed here)."""
    io = component_io(batch, sdxl)
    components = {}
    for name, (main, extra) in files.items():
        ins, outs = io[name]
        components[name] = {
            "file": main, "extra_files": extra, "sha256": component_digests(root, [main, *extra]),
            "inputs": ins, "outputs": outs,
        }
    sched = dict(scheduler or DDIM_CONFIG)
    return {
        "format": "dhumandiff-bundle", "format_version": 1, "backbone": "xl" if sdxl else "tiny",
        "runtime": runtime, "precision": precision, "model_name": "tiny-test", "image_size": [IMAGE, IMAGE],
        "latent": {"channels": CHANNELS, "downscale": DOWNSCALE, "scaling_factor": 0.18215},
        "scheduler": sched,
        "tokenizer": {"file": "tokenizer.json", "max_length": MAX_LEN, "pad_token_id": 0, "bos_token_id": 1,
                      "eos_token_id": 2},
        "identity": {"num_id_tokens": N_ID, "face_size": FACE, "clip_size": CLIP, "clip_mean": CLIP_MEAN,
                     "clip_std": CLIP_STD, "arcface_mean": 127.5, "arcface_std": 127.5},
        "defaults": {"steps": 4, "guidance_scale": 5.0, "ip_scale": 0.7,
                     "sampler": {"DDIMScheduler": "ddim", "LCMScheduler": "lcm", "TCDScheduler": "tcd",
                                 "EulerDiscreteScheduler": "euler"}[sched["_class_name"]],
                     "cfg": batch == 2},
        "components": components,
        "budget": {"component_max_abs": 1e-4, "end_to_end_psnr_db": 40.0},
        "created_by": "dhumandiff 0.1.0 (tests)",
    }


def write_fake_bundle(root: Path, runtime: str = "onnx", **kw: Any) -> dict[str, Any]:
    """A bundle whose graphs are placeholder bytes: enough for manifest validation, not for running."""
    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root / "tokenizer.json")
    files: dict[str, tuple[str, list[str]]] = {}
    for name in component_io(kw.get("batch", 2), kw.get("sdxl", False)):
        (root / f"{name}.onnx").write_bytes(f"graph {name}".encode())
        extra = []
        if name == "unet":
            (root / "unet.onnx.data").write_bytes(b"\0" * 64)
            extra = ["unet.onnx.data"]
        files[name] = (f"{name}.onnx", extra)
    d = manifest_dict(root, runtime, files, **kw)
    (root / "bundle.json").write_text(json.dumps(d, indent=2))
    return d


# ------------------------------------------------------------------------------------------ torch modules


def make_modules(seed: int = 0, sdxl: bool = False) -> dict[str, Any]:
    """Random tiny torch modules, one per component, forward args in contract order."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(seed)
    vocab = len(SPECIAL) + len(dict.fromkeys(WORDS))
    d_ctx = TEXT_DIM + (TEXT2_DIM if sdxl else 0)

    class IdentityEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 8, stride=8)
            self.fc = nn.Linear(8 * 4, 512)

        def forward(self, face: torch.Tensor) -> torch.Tensor:
            x = F.adaptive_avg_pool2d(F.silu(self.conv(face)), 2).flatten(1)
            return F.normalize(self.fc(x), dim=-1)

    class ImageEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, CLIP_HIDDEN, 16, stride=16)
            self.norm = nn.LayerNorm(CLIP_HIDDEN)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.norm(self.patch(pixel_values).flatten(2).transpose(1, 2))

    class FaceProjection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ip = nn.Linear(CLIP_HIDDEN + 512, N_ID * IP_DIM)
            self.face = nn.Linear(CLIP_HIDDEN + 512, FACE_TOKEN_DIM)

        def forward(self, image_embeds: torch.Tensor, id_embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
            z = torch.cat([image_embeds.mean(1), id_embedding * 8.0], dim=-1)
            return torch.tanh(self.ip(z)).reshape(1, N_ID, IP_DIM), torch.tanh(self.face(z)).reshape(1, 1, -1)

    class TextEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, TEXT_DIM)
            self.fuse = nn.Linear(FACE_TOKEN_DIM, TEXT_DIM)
            self.out = nn.Linear(TEXT_DIM, TEXT_DIM)

        def forward(self, input_ids: torch.Tensor, face_tokens: torch.Tensor,
                    subject_positions: torch.Tensor) -> torch.Tensor:
            x = self.emb(input_ids)
            pos = torch.arange(MAX_LEN, device=input_ids.device).unsqueeze(0)
            for k in range(2):
                hit = (pos == subject_positions[:, k : k + 1]).to(x.dtype).unsqueeze(-1)
                x = x + hit * self.fuse(face_tokens[:, k]).unsqueeze(1)
            return self.out(torch.tanh(x))

    class TextEncoder2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, TEXT2_DIM)
            self.out = nn.Linear(TEXT2_DIM, TEXT2_DIM)

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.out(torch.tanh(self.emb(input_ids)))
            return x, x.mean(1)

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = nn.Conv2d(CHANNELS, 16, 3, padding=1)
            self.time = nn.Linear(1, 16)
            self.text = nn.Linear(d_ctx, 16)
            self.ip = nn.Linear(IP_DIM, 16)
            self.add = nn.Linear(TEXT2_DIM + 6, 16) if sdxl else None
            self.conv_out = nn.Conv2d(16, CHANNELS, 3, padding=1)

        def forward(self, sample, timestep, encoder_hidden_states, ip_tokens, region_mask, ip_scale,
                    text_embeds=None, time_ids=None):  # type: ignore[no-untyped-def]
            h = self.conv_in(sample)
            h = h + self.time((timestep / 1000.0).unsqueeze(-1))[..., None, None]
            h = h + self.text(encoder_hidden_states.mean(1))[..., None, None]
            ip_a = self.ip(ip_tokens[:, :N_ID].mean(1))[..., None, None]
            ip_b = self.ip(ip_tokens[:, N_ID:].mean(1))[..., None, None]
            h = h + ip_scale * (region_mask[:, 0:1] * ip_a + region_mask[:, 1:2] * ip_b)
            if self.add is not None:
                h = h + self.add(torch.cat([text_embeds, time_ids / 64.0], dim=-1))[..., None, None]
            return torch.tanh(self.conv_out(F.silu(h)))

    class VAEDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = nn.Conv2d(CHANNELS, 16, 3, padding=1)
            self.conv_out = nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
            h = F.interpolate(F.silu(self.conv_in(latent_sample * 0.18215)), scale_factor=DOWNSCALE, mode="nearest")
            return torch.tanh(self.conv_out(h) * 2.0)

    mods: dict[str, Any] = {
        "identity_encoder": IdentityEncoder(), "image_encoder": ImageEncoder(), "face_projection": FaceProjection(),
        "text_encoder": TextEncoder(), "unet": UNet(), "vae_decoder": VAEDecoder(),
    }
    if sdxl:
        mods["text_encoder_2"] = TextEncoder2()
    return {k: m.eval() for k, m in mods.items()}


def example_inputs(name: str, io: dict[str, tuple[dict[str, Any], dict[str, Any]]], seed: int = 0) -> dict[str, Any]:
    """Plausible NumPy inputs for one component (ids within the vocab, positions within the window)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, spec in io[name][0].items():
        if n == "input_ids":
            out[n] = rng.integers(0, len(SPECIAL) + 10, size=spec["shape"]).astype(np.int64)
        elif n == "subject_positions":
            out[n] = np.array([[2, 5]], dtype=np.int64)
        else:
            out[n] = rng.standard_normal(spec["shape"]).astype(np.float32)
    return out


class TorchModuleRunner:
    """The reference: a GraphRunner that runs the torch modules themselves (inputs in contract order)."""

    def __init__(self, modules: dict[str, Any], io: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self.modules, self.io = modules, io

    @property
    def providers(self) -> list[str]:
        return ["torch-reference"]

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ins, outs = self.io[component]
        with torch.no_grad():
            res = self.modules[component](*[torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in ins])
        res = res if isinstance(res, tuple) else (res,)
        return {n: r.numpy() for n, r in zip(outs, res)}


# ------------------------------------------------------------------------------------------------ bundles


@dataclass
class TinyBundle:
    path: Path
    modules: dict[str, Any]
    io: dict[str, tuple[dict[str, Any], dict[str, Any]]]
    manifest: dict[str, Any] = field(default_factory=dict)

    def reference_runner(self) -> TorchModuleRunner:
        return TorchModuleRunner(self.modules, self.io)


def _export_onnx(module: Any, name: str, io: dict[str, Any], path: Path) -> None:
    import torch

    ins, outs = io[name]
    args = tuple(torch.from_numpy(v) for v in example_inputs(name, io).values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is the contract's choice
        torch.onnx.export(module, args, str(path), input_names=list(ins), output_names=list(outs),
                          opset_version=17, dynamo=False, do_constant_folding=True)


def build_tiny_bundle(
    dest: Path,
    runtime: str = "onnx",
    *,
    cfg: bool = True,
    sdxl: bool = False,
    scheduler: dict[str, Any] | None = None,
    seed: int = 0,
    modules: dict[str, Any] | None = None,
) -> TinyBundle:
    """Export random tiny modules to a complete bundle at ``dest`` for ``runtime`` (onnx/openvino/torchscript).

    Pass ``modules`` to export the same weights to several runtimes (for cross-runtime comparisons).
    """
    import torch

    batch = 2 if cfg else 1
    io = component_io(batch, sdxl)
    mods = modules if modules is not None else make_modules(seed, sdxl)
    dest.mkdir(parents=True, exist_ok=True)
    write_tokenizer(dest / "tokenizer.json")
    files: dict[str, tuple[str, list[str]]] = {}
    for name, module in mods.items():
        if runtime == "torchscript":
            args = tuple(torch.from_numpy(v) for v in example_inputs(name, io).values())
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.trace(module, args, check_trace=False).save(str(dest / f"{name}.pt"))
            files[name] = (f"{name}.pt", [])
            continue
        onnx_path = dest / f"{name}.onnx"
        _export_onnx(module, name, io, onnx_path)
        if runtime == "openvino":
            import openvino as ov

            ov.save_model(ov.convert_model(str(onnx_path)), str(dest / f"{name}.xml"), compress_to_fp16=False)
            onnx_path.unlink()
            files[name] = (f"{name}.xml", [f"{name}.bin"])
        else:
            files[name] = (f"{name}.onnx", [])
    d = manifest_dict(dest, runtime, files, batch=batch, sdxl=sdxl, scheduler=scheduler)
    write_manifest(dest, manifest_from_dict(d))
    return TinyBundle(dest, mods, io, d)


def copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def face_images(seed: int = 0, size: int = 96) -> tuple[Any, Any]:
    """Two different synthetic 'faces' (PIL RGB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    b = np.clip(a.astype(np.int16)[::-1] + 40, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB"), Image.fromarray(b, "RGB")


class CountingRunner:
    """A real runner that counts the graphs it runs (to see which ones a cached portrait skips)."""

    def __init__(self, inner: Any) -> None:
        from collections import Counter

        self.inner, self.calls = inner, Counter()

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls[component] += 1
        return self.inner.run(component, inputs)
