"""A PairHuman-format folder turned into in-memory training tensors.

The tiny world fits in memory, and precomputing everything that stays frozen (VAE latents, CLIP features and
identity embeddings of every reference view) makes each step only the trainable maths. Batches are then drawn by
index with a per-step seeded generator, which is what makes ``--resume`` continue a run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..model.dhumandiff_model import DHumanDiff
from ..errors import FaceNotFoundError, MultipleFacesError
from ..model.face_inputs import FaceInput, clip_preprocess, prepare_face
from ..contract.faces.base import Face, FaceAnalyzer, l2_normalize, square_crop
from ..model.tokenizer import tokenize


@dataclass
class TrainingTensors:
    """Everything a diffusion step needs, indexed by image (N) and by identity/view (I, V)."""

    pixels: torch.Tensor          # [N, 3, H, W] in [-1, 1]
    input_ids: torch.Tensor       # [N, 77]
    positions: torch.Tensor       # [N, 2] token index of each person's word (-1 if absent)
    boxes: torch.Tensor           # [N, 2, 4] normalised person boxes, person 1 first
    face_boxes: torch.Tensor      # [N, 2, 4] normalised square face boxes (the identity loss's crops)
    person_ids: torch.Tensor      # [N, 2] index into the identity table
    view_feats: torch.Tensor      # [I, V, T, H] CLIP penultimate features of each reference view
    view_embeds: torch.Tensor     # [I, V, 512] identity-encoder embeddings of each reference view
    identity_names: list[str]
    captions: list[str]
    latents: torch.Tensor | None = None  # [N, 4, h, w] VAE means (unscaled), filled by encode_latents

    def __len__(self) -> int:
        return self.pixels.shape[0]


def load_training_tensors(root: str | Path, model: DHumanDiff, analyzer: FaceAnalyzer, split: str | None = "train",
                          max_views: int = 4) -> TrainingTensors:
    """Read a PairHuman-format folder through the data stage's Dataset and precompute frozen features."""
    from ..data.dataset import PairHumanDataset

    ds = PairHumanDataset(root, tokenizer=model.tokenizer, split=split, use_reference_faces=False)
    pixels, ids, pos, boxes, face_boxes, names, captions = [], [], [], [], [], [], []
    for i in range(len(ds)):
        item = ds[i]
        pixels.append(item["pixel_values"])
        ids.append(item["input_ids"])
        pos.append(item["person_positions"])
        boxes.append(item["boxes"])
        face_boxes.append(item["face_boxes"])
        names.append(list(item["identity_ids"]))
        captions.append(item["caption"])
    identity_names = sorted({n for pair in names for n in pair})
    index = {n: k for k, n in enumerate(identity_names)}
    cfg = model.config
    feats, embeds = [], []
    faces_dir = Path(root) / "faces"
    with torch.no_grad():
        for name in identity_names:
            files = sorted((faces_dir / name).glob("*.png"))[:max_views]
            clip_px, emb = [], []
            for f in files:
                fi = prepare_reference(analyzer, np.asarray(Image.open(f).convert("RGB")), cfg, str(f))
                clip_px.append(torch.from_numpy(fi.clip_pixels))
                emb.append(torch.from_numpy(fi.id_embedding))
            while len(clip_px) < max_views:  # identities with fewer views repeat their last one
                clip_px.append(clip_px[-1])
                emb.append(emb[-1])
            feats.append(model.image_features(torch.stack(clip_px)))
            embeds.append(torch.stack(emb))
    return TrainingTensors(
        pixels=torch.stack(pixels), input_ids=torch.stack(ids).long(), positions=torch.stack(pos).long(),
        boxes=torch.stack(boxes).float(), face_boxes=torch.stack(face_boxes).float(),
        person_ids=torch.tensor([[index[a], index[b]] for a, b in names]),
        view_feats=torch.stack(feats), view_embeds=torch.stack(embeds), identity_names=identity_names,
        captions=captions)


def prepare_reference(analyzer: FaceAnalyzer, image: np.ndarray, cfg, name: str) -> FaceInput:
    """A reference view's identity inputs; a view the detector misses is used whole (views are aligned crops)."""
    try:
        return prepare_face(analyzer, image, cfg.face_size, cfg.clip_size, cfg.clip_mean, cfg.clip_std, name=name)
    except (FaceNotFoundError, MultipleFacesError):
        h, w = image.shape[:2]
        crop = square_crop(image, (0, 0, w, h), cfg.face_size, context=1.0)
        emb = l2_normalize(analyzer.embed(image, Face(bbox=(0, 0, w, h)))).reshape(-1)
        return FaceInput(crop=crop, id_embedding=emb, clip_pixels=clip_preprocess(crop, cfg.clip_size, cfg.clip_mean,
                                                                                   cfg.clip_std), bbox=(0, 0, w, h))


@torch.no_grad()
def encode_latents(tensors: TrainingTensors, model: DHumanDiff, batch: int = 64) -> None:
    """Fill ``tensors.latents`` with the VAE posterior means (unscaled)."""
    model.vae.eval()
    out = [model.vae.encode(tensors.pixels[i:i + batch]).latent_dist.mean for i in range(0, len(tensors), batch)]
    tensors.latents = torch.cat(out)


def empty_prompt_ids(model: DHumanDiff) -> torch.Tensor:
    """Token ids of the empty prompt: the unconditional branch of classifier-free guidance."""
    return tokenize(model.tokenizer, [""])[0]
