"""One call from two face photos and a prompt to a dual portrait, with the PyTorch reference model.

This wires the stages together (photo loading, face analysis, prompt positions, layout, sampler) and owns no
maths; the CLI's ``dhumandiff generate`` and the parity checker call it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..contract import layout as layouts
from ..contract.images import image01_to_pil, load_rgb
from ..errors import SettingsError
from ..utils.numerics import check_vae_precision, finite_setting
from ..utils.prompt import person_positions
from .dhumandiff_model import DHumanDiff
from .face_inputs import FaceInput, prepare_face
from ..contract.faces.base import FaceAnalyzer
from .faces import get_face_analyzer
from .registry import model_overrides, resolve_model
from .sampler import SCHEDULERS, ReferenceSampler, make_scheduler


@dataclass
class Portrait:
    image: Image.Image
    unet_passes: int
    faces: tuple[FaceInput, FaceInput]
    boxes: np.ndarray
    positions: np.ndarray


def load_model(name_or_path: str | None = None) -> DHumanDiff:
    """The embedded default (``tiny``), another embedded model, or a model folder."""
    model = DHumanDiff.from_pretrained(resolve_model(name_or_path))
    model.config.defaults.update(model_overrides(name_or_path))
    return model


def default_analyzer(model: DHumanDiff, backend: str | None = None, root: str | os.PathLike | None = None
                     ) -> FaceAnalyzer:
    """The tiny world's analyzer for models that ship an identity encoder; else the torch-free insightface pack
    pipeline (``contract/faces/insightface_pack.py``, the one the bundles run) from ``root`` or
    ``$DHUMANDIFF_FACE_MODELS``: a converted official model needs a real face pack, which nothing downloads."""
    backend = backend or ("world" if model.identity_encoder is not None else "pack")
    if backend == "world":
        return get_face_analyzer("world", encoder=model.identity_encoder)
    if backend == "pack":
        from ..contract.faces.insightface_pack import PackFaceAnalyzer

        return PackFaceAnalyzer(root)
    if backend == "insightface":
        return get_face_analyzer("insightface", root=None if root is None else str(root))
    return get_face_analyzer(backend)


def check_settings(model: DHumanDiff, steps, seed, sampler: str | None, mode: str) -> int:
    """Refuse steps / seed / sampler / mode values the sampler cannot use; returns the step count to run."""
    steps = model.config.defaults.get("steps", 30) if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SettingsError(f"steps must be a positive integer (got {steps!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SettingsError(f"seed must be a non-negative integer (got {seed!r})")
    if mode not in ("single", "cascade"):
        raise SettingsError(f"mode must be 'single' or 'cascade' (got {mode!r})")
    name = sampler or model.config.defaults.get("sampler", "ddim")
    if name not in SCHEDULERS:
        raise SettingsError(f"unknown sampler {name!r}; pick --sampler {', '.join(SCHEDULERS)}")
    try:
        make_scheduler(model, sampler).set_timesteps(int(steps))
    except ValueError as exc:
        raise SettingsError(f"{str(exc).splitlines()[0]}; pick other --steps or --sampler") from None
    return int(steps)


@torch.no_grad()
def generate_portrait(model: DHumanDiff, face_a, face_b, prompt: str, *, analyzer: FaceAnalyzer | None = None,
                      steps: int | None = None, seed: int = 0, guidance: float | None = None,
                      ip_scale: float | None = None, mode: str = "single", layout=None,
                      face_index_a: int | None = None, face_index_b: int | None = None,
                      person_words: tuple[str, str] | None = None, sampler: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      vae_precision: str | None = None, negative_prompt: str | None = None,
                      region_masks: bool | None = None, cascade_mask: str | None = None,
                      face_models: str | os.PathLike | None = None) -> Portrait:
    """Generate one dual portrait. Faces are paths, bytes, arrays or PIL images (person a, person b).

    Every user input is checked before the model runs (the runtimes refuse the same things). ``vae_precision``
    "fp16" decodes with an fp16 copy of the VAE (what an fp16 deployment does), "fp32"/None with the model's
    own fp32 VAE; every component's output is checked for NaN/Inf (:class:`NumericalError` names it).
    ``negative_prompt``, ``region_masks`` and ``cascade_mask`` depart from the model's conditioning recipe
    (``contract/recipe.py``) for this image; None keeps the recipe's own. ``face_models``: the insightface pack
    folder for models without their own face recogniser (default: ``$DHUMANDIFF_FACE_MODELS``).
    """
    cfg = model.config
    recipe = cfg.conditioning.with_options(negative_prompt=negative_prompt, region_masks=region_masks,
                                           cascade_mask=cascade_mask)
    steps = check_settings(model, steps, seed, sampler, mode)
    guidance, ip_scale = finite_setting(guidance, "--guidance"), finite_setting(ip_scale, "--ip-scale")
    vae_precision = check_vae_precision(vae_precision)
    ids, pos = person_positions(model.tokenizer.backend_tokenizer, prompt, person_words)
    # the runtimes' parser and grid check (each person keeps latent cells of their own), on the float32 boxes
    # this sampler rasterises
    boxes = np.asarray(layouts.parse_layout(layout, (cfg.image_size, cfg.image_size)).boxes, dtype=np.float32)
    layouts.region_mask(layouts.Layout(*(tuple(float(v) for v in b) for b in boxes)), (cfg.latent_size,) * 2)
    analyzer = analyzer or default_analyzer(model, root=face_models)
    faces = []
    for src, idx, label in ((face_a, face_index_a, "face a"), (face_b, face_index_b, "face b")):
        name = str(src) if isinstance(src, (str, os.PathLike)) else label
        image = load_rgb(src, label)  # the runtimes' loader: a file is named by its path, anything else by label
        faces.append(prepare_face(analyzer, image, cfg.face_size, cfg.clip_size, cfg.clip_mean, cfg.clip_std,
                                  face_index=idx, name=name, option=f"--face-index-{label[-1]}",
                                  clip_input=recipe.clip_input))
    out = ReferenceSampler(model).sample(
        (faces[0], faces[1]), torch.from_numpy(ids)[None], torch.from_numpy(pos)[None], boxes,
        steps=steps, seed=seed,
        guidance=cfg.defaults.get("guidance_scale", 5.0) if guidance is None else guidance, ip_scale=ip_scale,
        mode=mode, sampler=sampler, progress=progress, input_ids_2=model.tokenize_2([prompt]),
        vae_precision=vae_precision, recipe=recipe)
    return Portrait(image01_to_pil(out.image.numpy()), out.unet_passes, (faces[0], faces[1]), boxes, pos)
