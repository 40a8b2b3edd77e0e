"""From a face photo to the two identity inputs DHumanDiff needs: an ArcFace-style embedding and CLIP pixels.

One function serves training (reference views), the reference sampler and evaluation, so a face is prepared the
same way everywhere: detect exactly one face (refusing photos without one), take a square crop around it with
context, resize to the identity encoder's 112 px and to the CLIP encoder's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..contract.faces.base import FaceAnalyzer, square_crop
from ..contract.images import preprocess_clip_photo


@dataclass
class FaceInput:
    """One person's identity inputs. ``crop`` is uint8 RGB at ``face_size``; ``clip_pixels`` is [3,S,S] f32."""

    crop: np.ndarray
    id_embedding: np.ndarray
    clip_pixels: np.ndarray
    bbox: tuple[float, float, float, float]


def clip_preprocess(crop: np.ndarray, size: int, mean, std) -> np.ndarray:
    """Resize to the CLIP input size and normalise with CLIP's mean/std -> [3, size, size] float32."""
    img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return img.transpose(2, 0, 1).copy()


def prepare_face(analyzer: FaceAnalyzer, image: np.ndarray, face_size: int, clip_size: int, clip_mean, clip_std,
                 face_index: int | None = None, name: str = "photo", option: str = "--face-index",
                 clip_input: str = "face-crop") -> FaceInput:
    """Detect one face in ``image`` (HxWx3 uint8 RGB) and build its identity inputs (raises if none/many).

    ``option`` is the flag a refusal tells the user to pass (``--face-index-a`` / ``--face-index-b``).
    ``clip_input``: what the CLIP image encoder sees, the face crop (this project) or the whole photo resized and
    centre-cropped (the official recipe)."""
    face = analyzer.analyze_single(image, face_index=face_index, name=name, option=option)
    crop = square_crop(image, face.bbox, face_size, context=1.0)
    emb = face.embedding if face.embedding is not None else analyzer.embed(image, face)
    if clip_input == "photo":
        clip = preprocess_clip_photo(Image.fromarray(image), clip_size, clip_mean, clip_std)[0]
    else:
        clip = clip_preprocess(crop, clip_size, clip_mean, clip_std)
    return FaceInput(crop=crop, id_embedding=np.asarray(emb, np.float32).reshape(-1), clip_pixels=clip,
                     bbox=tuple(face.bbox))
