"""Small, fast training fixtures: a synthesised folder and a random tiny model with a random world encoder."""

from __future__ import annotations

from pathlib import Path

import torch

from dhumandiff.data.synth import synthesize
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.faces import get_face_analyzer
from dhumandiff.model.faces.world import WorldIdentityEncoder
from dhumandiff.training.tensors import encode_latents, load_training_tensors


def small_world(tmp: Path, count: int = 24, seed: int = 0) -> Path:
    return synthesize(tmp / "world", count=count, seed=seed, n_identities=12, refs_per_identity=2)


def random_tiny(seed: int = 0) -> DHumanDiff:
    model = DHumanDiff.from_backbone("tiny", seed=seed)
    torch.manual_seed(seed)
    model.identity_encoder = WorldIdentityEncoder(arch="a").eval()
    return model


def tensors_for(model: DHumanDiff, root: Path, split: str | None = "train"):
    analyzer = get_face_analyzer("world", encoder=model.identity_encoder)
    data = load_training_tensors(root, model, analyzer, split=split, max_views=2)
    encode_latents(data, model)
    return data
