"""The one sampler loop: two faces + a prompt -> one image, over any runtime's graphs.

Every backend (onnxruntime, OpenVINO, Core ML, TorchScript) runs through this loop; an adapter only runs
graphs. The loop is written so the PyTorch reference pipeline can reproduce it number for number:

The bundle's conditioning recipe (``bundle.json`` ``recipe``, ``contract/recipe.py``) decides the choices marked
*recipe* below: the project's own, or the official code's for converted official checkpoints.

1. per person (A then B): ``identity_encoder(face)`` -> ``embedding``; ``image_encoder(pixel_values)`` (*recipe*:
   the face crop, or the whole photo resized and centre-cropped) -> ``image_embeds``;
   ``face_projection(image_embeds, id_embedding)`` -> ``ip_tokens`` [1,16,C], ``face_token``.
2. text: ``text_encoder(input_ids, face_tokens=[A, B], subject_positions=[pA, pB])``; for CFG the unconditional
   row encodes the negative prompt (*recipe*: "" or the official one) with positions ``-1`` and zero face tokens,
   read from ``negative_prompt_embeds`` when the recipe's two prompts use different layers. SDXL bundles also
   run ``text_encoder_2`` and concatenate its ``prompt_embeds`` on the last axis.
3. ``region_mask`` from the layout (``layout.py``; *recipe*: all ones when the recipe has no region masks);
   ``ip_tokens`` = concat(A, B) on the token axis; the unconditional row gets (*recipe*) zero ip_tokens or the
   face projection's tokens of an all-zero CLIP input.
4. noise: ONE ``np.random.default_rng(seed)`` per call. Draws, in order: the initial latents
   ``standard_normal((1, C, h, w), dtype=float64).astype(float32) * init_noise_sigma``, then each stochastic
   scheduler step's noise (LCM/TCD), same recipe.
5. each step: ``x_in = scheduler.scale_model_input(latents, t)`` repeated to the UNet batch; ``timestep`` = t as
   float32; CFG (batch 2, uncond first): ``eps = uncond + g * (cond - uncond)``; ``latents = scheduler.step``.
6. ``vae_decoder(latents / scaling_factor)`` -> [-1, 1] -> uint8 (``contract.images.postprocess``).

With a :class:`~dhumandiff.runtimes.conditioning_cache.ConditioningCache` (``conditioning_cache``; off by default)
steps 1 (with the face detection before it) and the unconditional text row of step 2 are looked up first, keyed by
the photo's pixels and the bundle, so another image of the same photos runs only the text encoder, the UNet and the
decoder, and is bit-identical to one made without the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from dhumandiff.errors import PromptError, SettingsError
from dhumandiff.contract import schedulers
from dhumandiff.runtimes.adapters import GraphRunner, RuntimeInfo, available_runtimes, make_runner
from dhumandiff.contract.faces.crop import FaceCropper
from dhumandiff.contract.images import (ImageLike, load_image, postprocess, preprocess_clip, preprocess_clip_photo,
                                       preprocess_face)
from dhumandiff.contract.recipe import NEGATIVE_TEXT_OUTPUT
from dhumandiff.contract.layout import LayoutLike, parse_layout, region_mask
from dhumandiff.contract.bundle import Manifest, load_manifest
from dhumandiff.runtimes.conditioning_cache import (ConditioningCache, PersonKey, TextKey, bundle_identity,
                                                    photo_digest)
from dhumandiff.runtimes.tokenizer import PromptTokenizer
from dhumandiff.utils.cpu import cpu_features
from dhumandiff.utils.numerics import check_vae_precision, finite_setting

__all__ = ["BundleGenerator", "GenerationResult", "RuntimeInfo", "available_runtimes", "describe", "load_bundle"]

ProgressFn = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """The image, the final latents (before ``/ scaling_factor``) and seconds spent per phase."""

    image: Image.Image
    latents: np.ndarray
    timings: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Person:
    ip_tokens: np.ndarray
    face_token: np.ndarray


@dataclass
class _Found:
    """One person's photo after the face lookup: its cache ``key`` (None: no cache), and either the cached
    ``person`` or the ``crop`` to encode; ``warned``: the crop warned (a real photo, several faces)."""

    key: PersonKey | None
    crop: Image.Image | None
    person: _Person | None = None
    warned: bool = False


class BundleGenerator:
    """A loaded bundle ready to generate. Build it with :func:`load_bundle`."""

    def __init__(
        self,
        manifest: Manifest,
        runner: GraphRunner,
        tokenizer: PromptTokenizer,
        tokenizer_2: PromptTokenizer | None = None,
        *,
        low_memory: bool = False,
        conditioning_cache: ConditioningCache | None = None,
    ) -> None:
        self.manifest = manifest
        self.runner = runner
        #: Apple's ``reduceMemory`` for every runtime: each graph is loaded when its phase starts and released
        #: when the phase ends, so an image's peak memory is the largest graph's, not the sum of all of them
        #: (slower: every image loads/compiles each graph again).
        self.low_memory = low_memory
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2 or tokenizer
        self.cropper = FaceCropper(manifest.identity, manifest.root)
        self._uncond_ip: np.ndarray | None = None
        #: Per-photo identity conditioning and the unconditional text row, reused across calls (``None``: off);
        #: may be shared by several generators (its keys hold :attr:`bundle_id`) and set or replaced at any time.
        self.conditioning_cache = conditioning_cache

    @functools.cached_property
    def bundle_id(self) -> str:
        """This bundle as run here (manifest + execution providers), the first part of every cache key."""
        return bundle_identity(self.manifest.to_json(), list(self.runner.providers))

    # ------------------------------------------------------------------------------------------- encoders

    def encode_person(self, face: Image.Image, photo: Image.Image | None = None) -> _Person:
        """Identity tokens for the UNet and the face token for the text encoder, from one face crop (and, for a
        recipe whose CLIP input is the whole photo, that ``photo``)."""
        ident = self.manifest.identity
        emb = self.runner.run(
            "identity_encoder", {"face": preprocess_face(face, ident.face_size, ident.arcface_mean, ident.arcface_std)}
        )["embedding"]
        if self.manifest.recipe.clip_input == "photo":
            pixels = preprocess_clip_photo(photo if photo is not None else face, ident.clip_size, ident.clip_mean,
                                           ident.clip_std)
        else:
            pixels = preprocess_clip(face, ident.clip_size, ident.clip_mean, ident.clip_std)
        clip = self.runner.run("image_encoder", {"pixel_values": pixels})["image_embeds"]
        proj = self.runner.run("face_projection", {"image_embeds": clip, "id_embedding": emb})
        return _Person(proj["ip_tokens"], proj["face_token"])

    def uncond_ip_tokens(self, like: np.ndarray) -> np.ndarray:
        """The unconditional row's ID tokens for both persons (shaped ``like``): zeros, or with the official
        recipe the face projection's ID tokens of an all-zero CLIP input, a constant of the bundle computed once
        (the ArcFace input of the projection does not reach the ID tokens)."""
        if self.manifest.recipe.uncond_id_tokens == "zeros":
            return np.zeros_like(like)
        if self._uncond_ip is None:
            ident = self.manifest.identity
            pixels = np.zeros((1, 3, ident.clip_size, ident.clip_size), np.float32)
            clip = self.runner.run("image_encoder", {"pixel_values": pixels})["image_embeds"]
            emb_dim = self.manifest.components["face_projection"].inputs["id_embedding"].shape[-1]
            emb = np.zeros((1, int(emb_dim) if isinstance(emb_dim, int) else 512), np.float32)
            one = self.runner.run("face_projection", {"image_embeds": clip, "id_embedding": emb})["ip_tokens"]
            self._uncond_ip = np.concatenate([one, one], axis=1).astype(np.float32)
        return self._uncond_ip

    def find_person(self, photo: Image.Image, face_index: int | None, name: str, option: str) -> _Found:
        """The face crop of ``photo`` (refusing it as the cropper does), or with a cache its cached conditioning.
        A hit skips the detector too, unless the crop had warned: then it runs again so the warning is given again,
        in this call's words (a cached value never swallows a warning)."""
        cache = self.conditioning_cache
        if cache is None:
            return _Found(None, self.cropper(photo, face_index, name, option))
        key = PersonKey(self.bundle_id, photo_digest(photo), face_index, self.manifest.recipe.clip_input)
        hit = cache.get(key)
        if hit is not None:
            ip_tokens, face_token, warned = hit
            if warned:
                self.cropper(photo, face_index, name, option)
            return _Found(key, None, _Person(ip_tokens, face_token), warned)
        with _warnings_told() as told:
            crop = self.cropper(photo, face_index, name, option)
        return _Found(key, crop, None, bool(told))

    def person(self, found: _Found, photo: Image.Image) -> _Person:
        """:meth:`encode_person` of a :meth:`find_person` result (a cached one costs nothing; a new one is kept)."""
        if found.person is not None:
            return found.person
        person = self.encode_person(found.crop, photo)  # type: ignore[arg-type]
        if found.key is not None and self.conditioning_cache is not None:
            self.conditioning_cache.put(found.key, (person.ip_tokens, person.face_token, found.warned))
        return person

    def uncond_text(self, negative_prompt: str, like: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The unconditional row's text (:meth:`encode_text` of ``negative_prompt`` with zero face tokens shaped
        ``like`` and no subject positions): a constant per negative prompt, kept in the cache when there is one
        (unless encoding it warned, e.g. a truncated prompt)."""
        cache = self.conditioning_cache
        if cache is None:
            return self.encode_text(negative_prompt, np.zeros_like(like), (-1, -1), negative=True)
        key = TextKey(self.bundle_id, negative_prompt)
        hit = cache.get(key)
        if hit is not None:
            return hit
        with _warnings_told() as told:
            row = self.encode_text(negative_prompt, np.zeros_like(like), (-1, -1), negative=True)
        if not told:
            cache.put(key, row)
        return row

    def encode_text(
        self, prompt: str, face_tokens: np.ndarray, positions: Sequence[int], negative: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(context [1, 77, D(+D2)], pooled [1, D2] or None)`` for one prompt (``negative``: the unconditional
        row, read from the layer the recipe gives the negative prompt)."""
        ids, _ = self.tokenizer.encode(prompt)
        out = self.runner.run(
            "text_encoder",
            {
                "input_ids": ids,
                "face_tokens": face_tokens.astype(np.float32),
                "subject_positions": np.asarray([list(positions)], dtype=np.int64),
            },
        )
        ctx = out[NEGATIVE_TEXT_OUTPUT] if negative and self.manifest.recipe.two_text_layers else out["prompt_embeds"]
        if not self.manifest.is_sdxl:
            return ctx, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the first tokenizer already warned about truncation
            ids2, _ = self.tokenizer_2.encode(prompt)
        out2 = self.runner.run("text_encoder_2", {"input_ids": ids2})
        return np.concatenate([ctx, out2["prompt_embeds"]], axis=-1), out2["pooled_prompt_embeds"]

    def warm_up(self) -> dict[str, float]:
        """Run every graph once now, so the first image costs what the next do (``runtimes/warmup.py``); seconds
        per graph. Nothing to do in low-memory mode, whose every image loads its graphs again."""
        if self.low_memory:
            return {}
        from dhumandiff.runtimes.warmup import warm_up

        return warm_up(self.manifest, self.runner)

    def _done_with(self, *components: str) -> None:
        """In low-memory mode, release the graphs of a finished phase (runners without ``release`` keep them)."""
        release = getattr(self.runner, "release", None)
        if self.low_memory and release is not None:
            for name in components:
                release(name)

    # ----------------------------------------------------------------------------------------- settings

    def _scheduler(self, sampler: str | None, steps: int) -> schedulers.Scheduler:
        name = sampler or self.manifest.defaults.sampler
        try:
            sched = schedulers.from_config(self.manifest.scheduler, sampler=name)
            sched.set_timesteps(steps)
        except ValueError as e:
            raise SettingsError(f"{e}; pick other --steps or --sampler") from None
        return sched

    # ------------------------------------------------------------------------------------------- the loop

    def __call__(
        self,
        face_a: ImageLike,
        face_b: ImageLike,
        prompt: str,
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        ip_scale: float | None = None,
        seed: int = 0,
        layout: LayoutLike = None,
        sampler: str | None = None,
        negative_prompt: str | None = None,
        region_masks: bool | None = None,
        person_words: Sequence[str] | None = None,
        progress: ProgressFn | None = None,
        face_index_a: int | None = None,
        face_index_b: int | None = None,
        vae_precision: str | None = None,
    ) -> GenerationResult:
        """Generate one image of person A (``face_a``) and person B (``face_b``).

        Faces go through the bundle's detector (``identity.detector``): exactly one face per photo (or the
        ``face_index_a``/``face_index_b``-th, 0 = largest), cropped as the reference does; with detector
        ``none`` the photos are taken as aligned face crops (a non-square photo is centre-cropped). Settings left
        as None come from the bundle's ``defaults``. Every user input (prompt, person words, layout, steps,
        sampler, image files) is checked before any graph runs. ``vae_precision`` ("fp32"/"fp16") is checked
        against the precision the VAE decoder was exported in: a bundle cannot change it, so a request it cannot
        honour is refused rather than ignored. ``negative_prompt`` and ``region_masks`` default to the bundle's
        conditioning recipe (``bundle.json`` ``recipe``).
        """
        m = self.manifest
        recipe = m.recipe.with_options(negative_prompt=negative_prompt, region_masks=region_masks)
        d = m.defaults
        t_start = time.perf_counter()
        steps = d.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise SettingsError(f"steps must be a positive integer (got {steps!r})")
        batch = m.unet_batch
        guidance_scale = finite_setting(guidance_scale, "--guidance")
        ip_scale = finite_setting(ip_scale, "--ip-scale")
        if batch == 1 and guidance_scale is not None:
            warnings.warn("this bundle is CFG-free (unet batch 1): guidance_scale is ignored", stacklevel=2)
        g = float(d.guidance_scale if guidance_scale is None else guidance_scale)
        s_ip = float(d.ip_scale if ip_scale is None else ip_scale)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise SettingsError(f"seed must be a non-negative integer (got {seed!r})")

        # fail fast on everything the user typed before touching a graph
        _check_vae_precision(m, vae_precision)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty; describe the scene and name both people, e.g. 'a man and a woman'")
        positions = self.tokenizer.find_person_positions(
            prompt, tuple(person_words) if person_words is not None else None  # type: ignore[arg-type]
        )
        lay = parse_layout(layout, image_size=m.image_size)
        mask = region_mask(lay, m.latent_size)
        if not recipe.region_masks:  # every ID token reaches the whole image, as the official code has it
            mask = np.ones_like(mask)
        sched = self._scheduler(sampler, int(steps))
        photo_a, photo_b = load_image(face_a, "face a"), load_image(face_b, "face b")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        found_a = self.find_person(photo_a, face_index_a, _name(face_a, "face a"), "--face-index-a")
        found_b = self.find_person(photo_b, face_index_b, _name(face_b, "face b"), "--face-index-b")
        timings["find_faces"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pa, pb = self.person(found_a, photo_a), self.person(found_b, photo_b)
        ip_tokens = np.concatenate([pa.ip_tokens, pb.ip_tokens], axis=1)
        uncond_ip = self.uncond_ip_tokens(ip_tokens) if batch == 2 else None  # before the encoders are released
        self._done_with("identity_encoder", "image_encoder", "face_projection")
        timings["encode_faces"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        face_tokens = np.concatenate([pa.face_token, pb.face_token], axis=1)
        ctx, pooled = self.encode_text(prompt, face_tokens, positions)
        if batch == 2:
            uctx, upooled = self.uncond_text(recipe.negative_prompt, face_tokens)
            ctx = np.concatenate([uctx, ctx], axis=0)
            pooled = None if pooled is None else np.concatenate([upooled, pooled], axis=0)  # type: ignore[list-item]
            ip_tokens = np.concatenate([uncond_ip, ip_tokens], axis=0)  # type: ignore[list-item]
        self._done_with("text_encoder", "text_encoder_2")
        timings["encode_text"] = time.perf_counter() - t0

        h, w = m.latent_size
        static = {
            "encoder_hidden_states": ctx,
            "ip_tokens": ip_tokens,
            "region_mask": np.repeat(mask, batch, axis=0),
            "ip_scale": np.asarray([s_ip], dtype=np.float32),
        }
        if m.is_sdxl:
            H, W = m.image_size
            static["text_embeds"] = pooled  # type: ignore[assignment]
            static["time_ids"] = np.tile(np.asarray([[H, W, 0, 0, H, W]], dtype=np.float32), (batch, 1))

        t0 = time.perf_counter()
        rng = np.random.default_rng(int(seed))
        latents = rng.standard_normal((1, m.latent.channels, h, w), dtype=np.float64).astype(np.float32)
        latents = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)
        total = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(latents, t)
            eps = self.runner.run(
                "unet",
                {
                    "sample": np.repeat(x_in, batch, axis=0),
                    "timestep": np.full((batch,), float(t), dtype=np.float32),
                    **static,
                },
            )["noise_pred"].astype(np.float32)
            if batch == 2:
                eps = eps[:1] + np.float32(g) * (eps[1:] - eps[:1])
            latents = sched.step(eps, t, latents, generator_noise=rng)
            if progress is not None:
                progress(i + 1, total)
        self._done_with("unet")
        timings["denoise"] = time.perf_counter() - t0
        timings["unet_per_step"] = timings["denoise"] / max(total, 1)

        t0 = time.perf_counter()
        decoded = self.runner.run(
            "vae_decoder", {"latent_sample": (latents / np.float32(m.latent.scaling_factor)).astype(np.float32)}
        )["sample"]
        image = postprocess(decoded)
        self._done_with("vae_decoder")
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        settings = {
            "steps": int(steps), "guidance_scale": g if batch == 2 else None, "ip_scale": s_ip, "seed": int(seed),
            "sampler": type(sched).__name__, "layout": [list(b) for b in lay.boxes],
            "subject_positions": list(positions), "runtime": m.runtime, "providers": list(self.runner.providers),
            "conditioning_cache": _cache_outcome(found_a, found_b),
        }
        if found_a.key is not None and found_b.key is not None:
            settings["photo_sha256"] = [found_a.key.photo, found_b.key.photo]  # what ConditioningCache.forget takes
        return GenerationResult(image=image, latents=latents, timings=timings, settings=settings)

    def describe(self) -> dict[str, Any]:
        """The loaded bundle, for logs and ``dhumandiff doctor``."""
        m = self.manifest
        return {
            "bundle": str(m.root) if m.root else None,
            "model_name": m.model_name,
            "backbone": m.backbone,
            "runtime": m.runtime,
            "precision": m.precision,
            "image_size": list(m.image_size),
            "cfg": m.unet_batch == 2,
            "components": sorted(m.components),
            "providers": list(self.runner.providers),
            "defaults": dataclasses.asdict(m.defaults),
        }


def graph_precisions(m: Manifest) -> dict[str, str]:
    """Precision each component's graph was exported in (``export.graph_precision``; else the bundle's).

    fp16 exports keep the VAE decoder in fp32, so the bundle-wide ``precision`` alone would give wrong advice.
    """
    export = m.extra.get("export")
    recorded = export.get("graph_precision") if isinstance(export, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    return {name: str(recorded.get(name, m.precision)) for name in m.components}


def _check_vae_precision(m: Manifest, requested: str | None) -> None:
    """A bundle's VAE decoder runs in the precision it was exported in: refuse a request it cannot honour."""
    want = check_vae_precision(requested)
    if want is None:
        return
    have = graph_precisions(m).get("vae_decoder", m.precision)
    have = "fp16" if have.lower() in ("fp16", "float16") else ("fp32" if have.lower() in ("fp32", "float32") else have)
    if want == have:
        return
    if want == "fp32":
        raise SettingsError(f"this bundle's VAE decoder was exported in {have}, so --vae-precision fp32 cannot be "
                            "applied here; re-export with --precision fp32 (fp16 exports keep the VAE decoder fp32)")
    raise SettingsError(f"this bundle's VAE decoder is {have} (exports keep it fp32 so it cannot overflow); "
                        "--vae-precision fp16 only applies to the PyTorch model (--model): drop the option")


def _cache_outcome(*found: _Found) -> str:
    """``"off"`` (no cache), ``"hit"`` (every person's conditioning was cached), ``"miss"`` (none) or
    ``"partial"``."""
    if any(f.key is None for f in found):
        return "off"
    hits = sum(f.person is not None for f in found)
    return "hit" if hits == len(found) else "miss" if hits == 0 else "partial"


@contextlib.contextmanager
def _warnings_told() -> Any:
    """Collect the warnings of the block and give them again when it ends (whatever the filters then do with
    them, and also when the block raises), yielding the list: whether a step warned decides whether its result may
    be cached."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _name(source: ImageLike, default: str) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else default


def warn_if_cpu_unfit(m: Manifest) -> str | None:
    """Warn (and return the line) when a quantised bundle's int8 kernels are inexact on this CPU.

    An ONNX int8 bundle exported on a CPU with VNNI stores s8 weights; onnxruntime multiplies u8 x s8 without
    VNNI through saturating int16 sums, so the image drifts from the one its budget was measured on.
    """
    q = m.extra.get("quantization")
    if m.runtime != "onnx" or not isinstance(q, dict) or cpu_features().vnni:
        return None
    graphs = q.get("graphs") if isinstance(q.get("graphs"), dict) else {}
    kernels = {g.get("int8_kernel", "u8s8") for g in graphs.values() if isinstance(g, dict)}
    if "u8s8" not in kernels:
        return None
    cpu = q.get("cpu")
    made_on = cpu.get("summary", "a CPU with VNNI") if isinstance(cpu, dict) else "a CPU with VNNI"
    line = (f"this int8 bundle was quantised on {made_on} for u8 x s8 kernels; this CPU "
            f"({cpu_features().summary()}) has no VNNI, so its int8 products may saturate and the image drift: "
            "re-export it on this machine (it then stores u8 weights) or pass --int8-kernel u8u8 to export")
    warnings.warn(line, RuntimeWarning, stacklevel=2)
    return line


def load_bundle(
    path: str | os.PathLike,
    device: str = "cpu",
    runtime: str | None = None,
    *,
    num_threads: int | None = None,
    verify: bool = True,
    low_memory: bool = False,
    conditioning_cache: ConditioningCache | None = None,
) -> BundleGenerator:
    """Validate a bundle (sha256 of every file unless ``verify=False``) and prepare its runtime.

    ``runtime``: None takes the bundle's own; a different one is refused with what to do. Graphs are loaded
    on first use, so a bad prompt fails before the UNet is read. ``low_memory``: hold one graph at a time
    (each is released when its phase ends), for devices where the whole pipeline does not fit.
    ``conditioning_cache``: reuse each photo's identity conditioning across calls (``conditioning_cache.py``).
    """
    m = load_manifest(path, runtime=runtime, verify=verify)
    warn_if_cpu_unfit(m)
    root = Path(m.root)  # type: ignore[arg-type]
    runner = make_runner(m.runtime, m.components, root, device=device, precision=m.precision, num_threads=num_threads)
    if hasattr(runner, "graph_precision"):
        runner.graph_precision = graph_precisions(m)
    if low_memory and hasattr(runner, "mapped_weights"):
        runner.mapped_weights = True  # weights stay in their mapped files where the runtime allows it
    tok = PromptTokenizer.from_spec(root / m.tokenizer.file, m.tokenizer)
    tok2 = PromptTokenizer.from_spec(root / m.tokenizer_2.file, m.tokenizer_2) if m.tokenizer_2 else None
    return BundleGenerator(m, runner, tok, tok2, low_memory=low_memory, conditioning_cache=conditioning_cache)


def describe(probe_torch: bool = True) -> dict[str, Any]:
    """What this machine can run, for ``dhumandiff doctor``."""
    return {"runtimes": [dataclasses.asdict(r) for r in available_runtimes(probe_torch=probe_torch)]}
