"""One call from two face photos and a prompt to a dual portrait, with the PyTorch reference model.

This wires the stages together (photo loading, face analysis, prompt positions, layout, sampler) and owns no
maths; the CLI's ``dhumandiff generate`` and the parity checker call it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import LayoutError, SettingsError
from ..utils.images import load_rgb, to_pil
from ..utils.numerics import check_vae_precision
from ..utils.prompt import person_positions
from ..utils.regions import default_boxes, region_mask
from .dhumandiff_model import DHumanDiff
from .face_inputs import FaceInput, prepare_face
from .faces.base import FaceAnalyzer, get_face_analyzer
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


def default_analyzer(model: DHumanDiff, backend: str | None = None, root: str | None = None) -> FaceAnalyzer:
    """The tiny world's analyzer for models that ship an identity encoder, else insightface from ``root``."""
    backend = backend or ("world" if model.identity_encoder is not None else "insightface")
    if backend == "world":
        return get_face_analyzer("world", encoder=model.identity_encoder)
    if backend == "insightface":
        return get_face_analyzer("insightface", root=root)
    return get_face_analyzer(backend)


def parse_layout(layout: str | os.PathLike | list | dict | None) -> np.ndarray:
    """``None``/"auto" -> the default left/right layout; else two normalised boxes ``[[x0,y0,x1,y1], ...]``.

    Accepts a JSON string, a path to a JSON file, a list of two boxes, or ``{"person_a": box, "person_b": box}``.
    """
    if layout is None or (isinstance(layout, str) and layout.strip().lower() in ("", "auto", "automatic")):
        return default_boxes()
    data = layout
    if isinstance(layout, (str, os.PathLike)):
        text = str(layout)
        if not text.lstrip().startswith(("[", "{")) and Path(text).is_file():
            text = Path(text).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LayoutError(f"--layout is not valid JSON ({exc.msg}); pass '[[x0,y0,x1,y1],[x0,y0,x1,y1]]' with "
                              f"values in 0..1, or 'auto'") from None
    if isinstance(data, dict):
        data = [data.get("person_a"), data.get("person_b")]
    try:
        boxes = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        boxes = np.zeros((0,))
    if boxes.shape != (2, 4) or not np.isfinite(boxes).all():
        raise LayoutError("--layout needs two boxes [[x0,y0,x1,y1],[x0,y0,x1,y1]] (values in 0..1, one per person)")
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        who = "person a" if k == 0 else "person b"
        if x1 <= x0 or y1 <= y0:
            raise LayoutError(f"the box of {who} has zero area ({[x0, y0, x1, y1]}): use x0 < x1 and y0 < y1")
        if min(x0, y0) < 0 or max(x1, y1) > 1:
            raise LayoutError(f"the box of {who} lies outside the image ({[x0, y0, x1, y1]}): keep values in 0..1")
    a, b = boxes
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    if inter >= 0.9 * smaller:
        raise LayoutError("the two layout boxes overlap (almost) fully, so the identities cannot be told apart: "
                          "place the people side by side")
    return boxes.astype(np.float32)


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


def check_layout_grid(boxes: np.ndarray, height: int, width: int) -> None:
    """Each person needs latent cells of their own, else their identity reaches nowhere (as the runtimes check)."""
    mask = region_mask(boxes, height, width)
    for k, who in enumerate(("person a", "person b")):
        own = (mask[k] > 0) & (mask[1 - k] == 0)
        if not own.any():
            raise LayoutError(f"the box of {who} {[round(float(v), 4) for v in boxes[k]]} holds no cell of its own on "
                              f"the {width}x{height} latent grid: make it larger or overlap the other box less")


@torch.no_grad()
def generate_portrait(model: DHumanDiff, face_a, face_b, prompt: str, *, analyzer: FaceAnalyzer | None = None,
                      steps: int | None = None, seed: int = 0, guidance: float | None = None,
                      ip_scale: float | None = None, mode: str = "single", layout=None,
                      face_index_a: int | None = None, face_index_b: int | None = None,
                      person_words: tuple[str, str] | None = None, sampler: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      vae_precision: str | None = None) -> Portrait:
    """Generate one dual portrait. Faces are paths, bytes, arrays or PIL images (person a, person b).

    Every user input is checked before the model runs (the runtimes refuse the same things). ``vae_precision``
    "fp16" decodes with an fp16 copy of the VAE (what an fp16 deployment does), "fp32"/None with the model's
    own fp32 VAE; every component's output is checked for NaN/Inf (:class:`NumericalError` names it).
    """
    cfg = model.config
    steps = check_settings(model, steps, seed, sampler, mode)
    vae_precision = check_vae_precision(vae_precision)
    ids, pos = person_positions(model.tokenizer.backend_tokenizer, prompt, person_words)
    boxes = parse_layout(layout)
    check_layout_grid(boxes, cfg.latent_size, cfg.latent_size)
    analyzer = analyzer or default_analyzer(model)
    faces = []
    for src, idx, label in ((face_a, face_index_a, "face a"), (face_b, face_index_b, "face b")):
        name = str(src) if isinstance(src, (str, os.PathLike)) else label
        image = load_rgb(src, name=name)
        faces.append(prepare_face(analyzer, image, cfg.face_size, cfg.clip_size, cfg.clip_mean, cfg.clip_std,
                                  face_index=idx, name=name, option=f"--face-index-{label[-1]}"))
    out = ReferenceSampler(model).sample(
        (faces[0], faces[1]), torch.from_numpy(ids)[None], torch.from_numpy(pos)[None], boxes,
        steps=steps, seed=seed,
        guidance=cfg.defaults.get("guidance_scale", 5.0) if guidance is None else guidance, ip_scale=ip_scale,
        mode=mode, sampler=sampler, progress=progress, input_ids_2=model.tokenize_2([prompt]),
        vae_precision=vae_precision)
    return Portrait(to_pil(out.image.numpy()), out.unet_passes, (faces[0], faces[1]), boxes, pos)
