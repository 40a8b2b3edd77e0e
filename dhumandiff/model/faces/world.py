"""The tiny synthetic world's face analysis: detector, identity encoders, CLIP stand-in, attribute reader.

The tiny backbone cannot use insightface's ArcFace (real faces) or OpenCLIP ViT-H, so this module provides their
stand-ins for the world of :mod:`dhumandiff.data.world`, trained here in a few minutes on two CPU threads:

- :class:`WorldFaceDetector` (palette + geometry, no network) finds the faces of reference photos and scenes;
- :class:`WorldIdentityEncoder` is the ArcFace stand-in: ``[N,3,112,112]`` normalised like ArcFace
  (``(x - 127.5) / 127.5``) to a 512-d embedding (L2-normalised by callers, like ``normed_embedding``). Arch
  ``"a"`` is the one the model trains with; arch ``"b"`` (different widths, depth, normalisation and pooling)
  is trained separately and used only to *evaluate*, so an identity loss never games its own judge;
- :func:`TinyCLIPVision` is the CLIP ViT-H stand-in (a tiny ``transformers.CLIPVisionModel``; the model stage
  reads ``hidden_states[-2]``, ``[N, 50, 64]``), trained to see every face attribute;
- :class:`WorldAttributeReader` reads attributes back from pixels without any network;
- :class:`WorldAnalyzer` is the :class:`FaceAnalyzer` of the world (detector + identity encoder);
- :func:`export_arcface_onnx` writes the identity encoder as an ONNX model insightface loads as ``ArcFaceONNX``.

``python -m dhumandiff.model.faces.world --out DIR --steps N`` trains both encoders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ...data import world as W
from ...errors import CheckpointError
from ...utils.atomic import atomic_dir, atomic_path, write_text_atomic
from ...contract.faces.base import Face, FaceAnalyzer, as_rgb_uint8, l2_normalize, square_crop
from ...contract.faces.world_detect import (COLOUR_ATTRIBUTES, WorldAttributeReader, WorldFaceDetector, box_iou,
                                            skin_mask)

__all__ = [
    "WorldFaceDetector", "WorldAttributeReader", "WorldIdentityEncoder", "TinyCLIPVision", "tiny_clip_vision_config",
    "WorldAnalyzer", "train_world_encoders", "export_arcface_onnx", "arcface_normalize", "clip_normalize",
    "face_crop", "COLOUR_ATTRIBUTES", "skin_mask", "FACE_SIZE", "CLIP_SIZE",
]

FACE_SIZE = 112
CLIP_SIZE = 56
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------


def arcface_normalize(crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB crops ``[N,112,112,3]`` (or one) -> ``[N,3,112,112]`` float ``(x - 127.5) / 127.5``."""
    arr = np.asarray(crops)
    if arr.ndim == 3:
        arr = arr[None]
    t = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(0, 3, 1, 2)
    return (t - 127.5) / 127.5


def clip_normalize(crops_112: torch.Tensor | np.ndarray, size: int = CLIP_SIZE) -> torch.Tensor:
    """Face crops (uint8 ``[N,H,W,3]`` or ArcFace-normalised ``[N,3,H,W]``) -> CLIP pixels ``[N,3,size,size]``."""
    if isinstance(crops_112, np.ndarray):
        crops_112 = arcface_normalize(crops_112)
    x = (crops_112 * 127.5 + 127.5) / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(_CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _conv(cin: int, cout: int, stride: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU() if act == "relu" else nn.SiLU())


class WorldIdentityEncoder(ModelMixin, ConfigMixin):
    """The world's ArcFace stand-in: ``[N,3,112,112]`` in ``(x-127.5)/127.5`` -> ``[N, embedding_dim]`` (unnormalised).

    ``arch="a"``: 2x average-pool, four BatchNorm/ReLU conv stages (32-64-64-96 channels, to 7x7), flatten +
    linear + BatchNorm1d (ArcFace's "flatten" head: keeps where each colour is). ``arch="b"`` (the evaluator's): no
    pooling in front, five GroupNorm/SiLU stages (16-32-64-128-128), global average + max pooling + linear.
    """

    @register_to_config
    def __init__(self, arch: str = "a", embedding_dim: int = 512, input_size: int = FACE_SIZE) -> None:
        super().__init__()
        if arch not in ("a", "b"):
            raise ValueError(f"unknown identity encoder arch {arch!r}: use 'a' (training) or 'b' (evaluation)")
        if input_size % 16:
            raise ValueError("input_size must be divisible by 16")
        if arch == "a":
            self.features = nn.Sequential(
                nn.AvgPool2d(2), _conv(3, 32, 2, "relu"), _conv(32, 64, 2, "relu"), _conv(64, 64, 1, "relu"),
                _conv(64, 96, 2, "relu"))
            side = input_size // 16
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(96 * side * side, embedding_dim),
                                      nn.BatchNorm1d(embedding_dim))
            self.pool = None
        else:
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 4, 4, bias=False), nn.BatchNorm2d(16), nn.SiLU(),  # 4x4 patchify stem
                _conv(16, 48, 1, "silu"), _conv(48, 48, 2, "silu"), _conv(48, 96, 1, "silu"),
                _conv(96, 128, 2, "silu"))
            self.pool = True
            self.head = nn.Sequential(nn.Linear(256, embedding_dim), nn.LayerNorm(embedding_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.features(pixels)
        if self.pool:
            h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.head(h)

    @torch.no_grad()
    def embed(self, crops: np.ndarray | Sequence[np.ndarray], batch: int = 128) -> np.ndarray:
        """L2-normalised embeddings ``[N, D]`` float32 of uint8 RGB 112x112 crops."""
        arr = np.asarray(crops)
        if arr.ndim == 3:
            arr = arr[None]
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(arr), batch):
            out.append(self(arcface_normalize(arr[i:i + batch]).to(self.device)).float().cpu().numpy())
        self.train(was)
        return l2_normalize(np.concatenate(out, 0))


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """The tiny backbone's CLIP vision config (56 px, patch 8 -> 49 + 1 tokens, hidden 64): the model stage's own."""
    from ..configs import get_backbone_config

    return CLIPVisionConfig(**get_backbone_config("tiny").image_encoder)


def TinyCLIPVision(config: CLIPVisionConfig | None = None) -> CLIPVisionModel:  # noqa: N802 - a constructor
    """A tiny ``CLIPVisionModel`` (the CLIP ViT-H stand-in); features are ``hidden_states[-2]`` ``[N, 50, 64]``."""
    return CLIPVisionModel(config or tiny_clip_vision_config())


# --------------------------------------------------------------------------------------------------------------
# Analyzer
# --------------------------------------------------------------------------------------------------------------


def face_crop(image: np.ndarray, face: Face | Sequence[float], size: int = FACE_SIZE) -> np.ndarray:
    """The square crop of a face box resized to ``size`` (the same crop everywhere a world face is embedded)."""
    bbox = face.bbox if isinstance(face, Face) else face
    return square_crop(as_rgb_uint8(image), bbox, size, context=1.0)


def _load_encoder(encoder: Any) -> WorldIdentityEncoder:
    if isinstance(encoder, WorldIdentityEncoder):
        return encoder
    path = Path(encoder)
    for cand in (path, path / "identity_encoder"):
        if (cand / "config.json").is_file():
            try:
                return WorldIdentityEncoder.from_pretrained(cand).eval()
            except Exception as exc:  # noqa: BLE001 - one line that says what to do
                raise CheckpointError(f"cannot load the world identity encoder from {cand} "
                                      f"({exc.__class__.__name__}): re-run `python -m dhumandiff.model.faces.world "
                                      f"--out DIR`") from None
    raise CheckpointError(f"no world identity encoder in {path} (expected config.json and weights, or an "
                          f"identity_encoder/ folder): train one with `python -m dhumandiff.model.faces.world "
                          f"--out {path}`")


class WorldAnalyzer(FaceAnalyzer):
    """:class:`FaceAnalyzer` of the tiny world: :class:`WorldFaceDetector` + a :class:`WorldIdentityEncoder`.

    ``encoder``: a module, or a folder written by :func:`train_world_encoders` (its ``identity_encoder/``, or
    the encoder folder itself). The face crop is the detector's square box resized to 112 (:func:`face_crop`).
    """

    name = "world"
    min_face_px = 12
    synthetic_world = True

    def __init__(self, encoder: Any = None, detector: WorldFaceDetector | None = None, **detector_kw: Any) -> None:
        if encoder is None:
            raise CheckpointError("the world face analyzer needs its identity encoder: pass encoder=<folder made by "
                                  "`python -m dhumandiff.model.faces.world --out DIR`>")
        self.encoder = _load_encoder(encoder).eval()
        self.detector = detector or WorldFaceDetector(**detector_kw)

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.config.embedding_dim)

    def detect(self, image: np.ndarray) -> list[Face]:
        return self._sorted(self.detector.detect(as_rgb_uint8(image)))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        return self.encoder.embed(face_crop(image, face))[0]

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Normalised embeddings of already cropped 112x112 faces."""
        return self.encoder.embed(crops)


# --------------------------------------------------------------------------------------------------------------
# ONNX export (insightface ArcFaceONNX compatible)
# --------------------------------------------------------------------------------------------------------------


def export_arcface_onnx(encoder: WorldIdentityEncoder, path: str | os.PathLike, opset: int = 17,
                        dynamic_batch: bool = True) -> Path:
    """Export ``encoder`` as an ArcFace-style ONNX model that ``insightface.model_zoo.get_model`` routes to
    ``ArcFaceONNX``: input ``input.1`` ``[N,3,112,112]`` (insightface normalises with mean/std 127.5 itself),
    one output named ``embedding`` (not a bare number). Written atomically."""
    import copy

    path = Path(path)
    model = copy.deepcopy(encoder).float().eval().cpu()
    size = int(encoder.config.input_size)
    dummy = torch.zeros(1, 3, size, size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the opset-17 path on purpose
        torch.onnx.export(model, (dummy,), str(tmp), input_names=["input.1"], output_names=["embedding"],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}} if dynamic_batch else None)
    return path


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


class _Pool:
    """Pre-rendered training images: reference views (the aligned crop is the whole view) and scenes with the
    face boxes of their persons."""

    def __init__(self, identities: Sequence[W.Identity], views: int, scenes: int, seed: int,
                 scene_sizes: Sequence[int] = (64, 64, 64, 128)) -> None:
        self.ids = list(identities)
        index = {i.identity_id: k for k, i in enumerate(self.ids)}
        self.ref_img: list[np.ndarray] = []
        self.ref_lab: list[int] = []
        for k, ident in enumerate(self.ids):
            for v in W.reference_views(ident, views, seed):
                self.ref_img.append(np.asarray(v))
                self.ref_lab.append(k)
        self.scene_img: list[np.ndarray] = []
        self.scene_box: list[tuple[int, list[float]]] = []
        self.scene_lab: list[int] = []
        rng = np.random.default_rng([seed, 0x5CE])
        for _ in range(scenes):
            spec = W.sample_scene_spec(self.ids, rng)
            size = int(scene_sizes[int(rng.integers(len(scene_sizes)))])
            im, _, kps = W.render_scene(spec, size, rng)
            self.scene_img.append(np.asarray(im))
            for p, k in zip(spec.persons, kps):
                self.scene_box.append((len(self.scene_img) - 1, W.face_box_from_keypoints(k, size)))
                self.scene_lab.append(index[p.identity.identity_id])
        self.ref_lab_a = np.asarray(self.ref_lab)
        self.scene_lab_a = np.asarray(self.scene_lab)

    def attr_table(self) -> dict[str, np.ndarray]:
        return {a: np.array([list(vals).index(getattr(i, a)) for i in self.ids]) for a, vals in W.ATTRIBUTES.items()}


def _jitter_box(box: Sequence[float], rng: np.random.Generator, amount: float) -> list[float]:
    x0, y0, x1, y1 = [float(v) for v in box]
    s = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2 + rng.uniform(-amount, amount) * s, (y0 + y1) / 2 + rng.uniform(-amount, amount) * s
    s *= math.exp(rng.uniform(-1.5 * amount, 1.5 * amount))
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def _sample_batch(pool: _Pool, n: int, rng: np.random.Generator, scene_share: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray]:
    crops = np.empty((n, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for j in range(n):
        if rng.random() < scene_share:
            i = int(rng.integers(len(pool.scene_box)))
            si, box = pool.scene_box[i]
            crop = square_crop(pool.scene_img[si], _jitter_box(box, rng, 0.06), FACE_SIZE)
            labels[j] = pool.scene_lab[i]
        else:
            i = int(rng.integers(len(pool.ref_img)))
            img = pool.ref_img[i]
            crop = square_crop(img, _jitter_box([0, 0, FACE_SIZE, FACE_SIZE], rng, 0.05), FACE_SIZE)
            if rng.random() < 0.35:  # a reference photo seen as small as a scene face
                r = int(rng.integers(18, 44))
                crop = np.asarray(Image.fromarray(crop).resize((r, r), Image.BOX).resize(
                    (FACE_SIZE, FACE_SIZE), Image.BICUBIC))
            labels[j] = pool.ref_lab[i]
        if rng.random() < 0.4:  # light and a small colour cast (generated images drift)
            gain = rng.uniform(0.85, 1.15) * rng.uniform(0.96, 1.04, size=3)
            crop = np.clip(crop.astype(np.float32) * gain[None, None, :], 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops[j] = crop
    return crops, labels


class _CosFace(nn.Module):
    """Normalised softmax with an additive cosine margin (CosFace / ArcFace family)."""

    def __init__(self, dim: int, classes: int, scale: float = 20.0, margin: float = 0.3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb) @ F.normalize(self.weight).t()
        logits = self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
        return F.cross_entropy(logits, labels)


def _schedule(opt: torch.optim.Optimizer, step: int, steps: int, lr: float, warmup: int) -> None:
    if step < warmup:
        f = (step + 1) / warmup
    else:
        f = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    for g in opt.param_groups:
        g["lr"] = lr * max(f, 0.02)


def _held_out_eval(identity: WorldIdentityEncoder, clip: CLIPVisionModel | None, heads: nn.ModuleDict | None,
                   held: Sequence[W.Identity], seed: int, scenes: int = 48) -> dict[str, Any]:
    """Verification on held-out identities: scene faces (found by the detector) against reference views."""
    det = WorldFaceDetector()
    refs, ref_lab = [], []
    for k, ident in enumerate(held):
        for v in W.reference_views(ident, 4, seed + 7919):
            img = np.asarray(v)
            found_ref = det.detect(img)  # the analyzer's path: the detector's box, not the known frame
            refs.append(face_crop(img, found_ref[0] if len(found_ref) == 1 else [0, 0, FACE_SIZE, FACE_SIZE]))
            ref_lab.append(k)
    rng = np.random.default_rng([seed, 0xE7A1])
    index = {i.identity_id: k for k, i in enumerate(held)}
    crops, lab, found, total = [], [], 0, 0
    for _ in range(scenes):
        spec = W.sample_scene_spec(held, rng)
        im, _, kps = W.render_scene(spec, 64, rng)
        img = np.asarray(im)
        faces = det.detect(img)
        for p, k in zip(spec.persons, kps):
            gt = W.face_box_from_keypoints(k, 64)
            total += 1
            best = max(faces, key=lambda f: box_iou(f.bbox, gt), default=None)
            if best is not None and box_iou(best.bbox, gt) > 0.4:
                found += 1
                crops.append(face_crop(img, best))
                lab.append(index[p.identity.identity_id])
    refs_a, crops_a = np.stack(refs), np.stack(crops)
    ref_lab_a, lab_a = np.asarray(ref_lab), np.asarray(lab)
    er, ec = identity.embed(refs_a), identity.embed(crops_a)
    sim = ec @ er.T
    same = lab_a[:, None] == ref_lab_a[None, :]
    rr = er @ er.T
    rsame = (ref_lab_a[:, None] == ref_lab_a[None, :]) & ~np.eye(len(er), dtype=bool)
    rdiff = ref_lab_a[:, None] != ref_lab_a[None, :]
    # identification: nearest reference identity (mean of its views)
    centroids = l2_normalize(np.stack([er[ref_lab_a == k].mean(0) for k in range(len(held))]))
    rank1 = float((np.argmax(ec @ centroids.T, 1) == lab_a).mean())
    thr = np.linspace(-0.2, 1.0, 121)
    accs = [((sim >= t) == same).mean() for t in thr]
    out: dict[str, Any] = {
        "held_out_identities": len(held),
        "scene_faces_detected": f"{found}/{total}",
        "scene_vs_ref_same_cos": float(sim[same].mean()),
        "scene_vs_ref_diff_cos": float(sim[~same].mean()),
        "scene_vs_ref_diff_cos_p95": float(np.percentile(sim[~same], 95)),
        "ref_vs_ref_same_cos": float(rr[rsame].mean()),
        "ref_vs_ref_diff_cos": float(rr[rdiff].mean()),
        "verification_acc": float(max(accs)),
        "verification_threshold": float(thr[int(np.argmax(accs))]),
        "rank1_identification": rank1,
    }
    if clip is not None and heads is not None:
        attrs = {a: np.array([list(v).index(getattr(i, a)) for i in held]) for a, v in W.ATTRIBUTES.items()}
        clip.eval()
        with torch.no_grad():
            for name, arr, labs in (("ref", refs_a, ref_lab_a), ("scene", crops_a, lab_a)):
                pooled = clip(pixel_values=clip_normalize(arr)).pooler_output
                for a in W.ATTRIBUTES:
                    pred = heads[a](pooled).argmax(1).numpy()
                    out[f"attr_acc_{name}_{a}"] = float((pred == attrs[a][labs]).mean())
        out["attr_acc_mean"] = float(np.mean([v for k, v in out.items() if k.startswith("attr_acc_")]))
    return out


def hold_out_every_nth(identities: Sequence[W.Identity], held_out_every: int = 5) -> tuple[list, list]:
    """(train, held-out): every ``held_out_every``-th identity is held out (balanced over gender and age), by
    position, no randomness: the encoders' metrics split. The data set's seeded split by (gender, age) group is
    another algorithm: :func:`dhumandiff.data.synth.split_identities`."""
    train = [i for k, i in enumerate(identities) if k % held_out_every != held_out_every - 1]
    held = [i for k, i in enumerate(identities) if k % held_out_every == held_out_every - 1]
    return train, held


def train_world_encoders(out_dir: str | os.PathLike, identities: Sequence[W.Identity] | None = None,
                         n_identities: int = 160, steps: int = 300, seed: int = 0, arch: str = "a", batch: int = 64,
                         threads: int | None = None, image_encoder: bool | None = None, clip_steps: int | None = None,
                         views: int = 8, scenes: int | None = None, lr: float = 3e-3, overwrite: bool = True,
                         eval_scenes: int = 48, log: Any = None) -> dict[str, Any]:
    """Train the world's identity encoder (and, for arch ``"a"``, the TinyCLIPVision) and save them.

    Identities: ``identities`` or ``make_identities(n_identities, seed)``; every 5th is held out for the
    metrics. ``steps`` trains the identity encoder, ``clip_steps`` (default 3x ``steps``) the CLIP stand-in.
    Data are rendered up front: ``views`` reference views per identity and ``scenes`` scenes (64 and
    128 px) whose face crops (the aligned box from the keypoints, jittered) are resized to 112 like the
    analyzer does, so scene faces and reference photos embed alike. The identity encoder learns with a
    normalised-softmax loss with an additive cosine margin over the training identities; the CLIP stand-in
    learns linear heads predicting every face attribute from its pooled output (heads discarded).

    Writes ``out_dir/identity_encoder/`` (and ``out_dir/image_encoder/``) with ``save_pretrained``
    (config.json + safetensors), atomically, plus ``out_dir/metrics.json``. Returns the metrics.
    """
    t0 = time.time()
    if threads is not None:
        torch.set_num_threads(int(threads))
    image_encoder = (arch == "a") if image_encoder is None else bool(image_encoder)
    # the ViT stand-in learns slower than the CNN (eye colours appear after ~800 steps): 3x the steps
    clip_steps = 3 * steps if clip_steps is None else int(clip_steps)
    out_dir = Path(out_dir)
    say = log or (lambda *_: None)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0xFACE])
    ids = list(identities) if identities is not None else W.make_identities(n_identities, seed)
    train_ids, held = hold_out_every_nth(ids)
    if len(train_ids) < 2 or len(held) < 2:
        raise ValueError("need at least 10 identities (every 5th is held out for the metrics)")
    scenes = int(scenes if scenes is not None else 12 * len(train_ids))
    pool = _Pool(train_ids, views, scenes, seed)
    t_data = time.time() - t0
    say(f"rendered {len(pool.ref_img)} reference views and {len(pool.scene_box)} scene faces in {t_data:.1f}s")

    enc = WorldIdentityEncoder(arch=arch)
    loss_fn = _CosFace(enc.config.embedding_dim, len(train_ids))
    opt = torch.optim.AdamW(list(enc.parameters()) + list(loss_fn.parameters()), lr=lr, weight_decay=5e-4)
    clip = heads = copt = None
    attr_tab = pool.attr_table()
    if image_encoder:
        clip = TinyCLIPVision()
        heads = nn.ModuleDict({a: nn.Linear(clip.config.hidden_size, len(v)) for a, v in W.ATTRIBUTES.items()})
        copt = torch.optim.AdamW(list(clip.parameters()) + list(heads.parameters()), lr=2e-3, weight_decay=0.01)
    enc.train()
    last = {}
    t1 = time.time()
    for step in range(max(steps, clip_steps if image_encoder else 0)):
        crops, labels = _sample_batch(pool, batch, rng)
        x = arcface_normalize(crops)
        y = torch.from_numpy(labels)
        if step < steps:
            _schedule(opt, step, steps, lr, max(1, steps // 20))
            loss = loss_fn(enc(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last["id_loss"] = float(loss.detach())
        if image_encoder and step < clip_steps:
            _schedule(copt, step, clip_steps, 2e-3, max(1, clip_steps // 20))
            pooled = clip(pixel_values=clip_normalize(x)).pooler_output
            closs = sum(F.cross_entropy(heads[a](pooled), torch.from_numpy(attr_tab[a][labels]))
                        for a in W.ATTRIBUTES)
            copt.zero_grad(set_to_none=True)
            closs.backward()
            copt.step()
            last["attr_loss"] = float(closs.detach())
        if step % 50 == 0:
            say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
    t_train = time.time() - t1
    enc.eval()
    metrics = _held_out_eval(enc, clip, heads, held, seed, scenes=eval_scenes)
    metrics.update({"arch": arch, "steps": steps, "clip_steps": clip_steps if image_encoder else 0, "batch": batch,
                    "train_identities": len(train_ids), "seconds_data": round(t_data, 1),
                    "seconds_train": round(t_train, 1), "seconds_total": round(time.time() - t0, 1),
                    "threads": torch.get_num_threads(), **{f"final_{k}": v for k, v in last.items()}})
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir / "identity_encoder", overwrite=overwrite) as tmp:
        enc.save_pretrained(tmp, safe_serialization=True)
    if clip is not None:
        clip.eval()
        with atomic_dir(out_dir / "image_encoder", overwrite=overwrite) as tmp:
            clip.save_pretrained(tmp, safe_serialization=True)
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dhumandiff.model.faces.world",
                                 description="Train the tiny world's face identity encoder and CLIP stand-in.")
    ap.add_argument("--out", required=True, help="output folder (identity_encoder/, image_encoder/, metrics.json)")
    ap.add_argument("--steps", type=int, default=300, help="identity encoder steps")
    ap.add_argument("--clip-steps", type=int, default=None, help="CLIP stand-in steps (default 3x --steps)")
    ap.add_argument("--arch", choices=("a", "b"), default="a")
    ap.add_argument("--identities", type=int, default=160)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-image-encoder", action="store_true")
    args = ap.parse_args(argv)
    m = train_world_encoders(args.out, n_identities=args.identities, steps=args.steps, seed=args.seed,
                             arch=args.arch, batch=args.batch, threads=args.threads,
                             image_encoder=False if args.no_image_encoder else None, clip_steps=args.clip_steps,
                             log=print)
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
