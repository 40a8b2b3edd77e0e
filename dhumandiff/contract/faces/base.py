"""Face analysis shared by every backend: the ``Face`` record, the ``FaceAnalyzer`` contract and the refusals.

A face photo goes through one door, :meth:`FaceAnalyzer.analyze_single`: it detects the faces, refuses a photo
without a face (never embeds it as noise), refuses a photo with several faces unless ``face_index`` picks one
(faces are ordered by area, 0 = largest), refuses a face too small to carry an identity, and returns the chosen
face with its L2-normalised embedding. Backends only implement ``detect`` and ``embed``.

Images are ``HxWx3`` RGB ``uint8`` NumPy arrays everywhere (insightface's BGR convention stays inside its
backend). This module is torch-free.
"""

from __future__ import annotations

import warnings

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PIL import Image

from ...errors import FaceNotFoundError, InputImageError, MultipleFacesError
from ..images import load_rgb  # the one photo loader (re-exported: analyzers take paths too)
from .real_photo import looks_real, real_photo_message

__all__ = ["Face", "FaceAnalyzer", "as_rgb_uint8", "l2_normalize", "load_rgb", "select_face", "square_crop"]


@dataclass
class Face:
    """One detected face.

    ``bbox`` is ``[x0, y0, x1, y1]`` in pixels (float32); ``score`` the detector's confidence; ``kps`` optional
    landmarks ``[5, 2]`` whose order is named by ``kps_format`` (``"arcface"``: left eye, right eye, nose, left
    and right mouth corner, as insightface; ``"dlib5"``: dlib's 5-point predictor order); ``embedding`` optional,
    float32 and L2-normalised once set by an analyzer.
    """

    bbox: np.ndarray
    score: float = 1.0
    kps: np.ndarray | None = None
    embedding: np.ndarray | None = None
    kps_format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bbox = np.asarray(self.bbox, dtype=np.float32).reshape(4)
        self.score = float(self.score)
        if self.kps is not None:
            self.kps = np.asarray(self.kps, dtype=np.float32).reshape(-1, 2)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size_px(self) -> float:
        """The face's smaller side in pixels (what ``min_face_px`` is compared with)."""
        return min(self.width, self.height)


def l2_normalize(vec: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``vec / ||vec||`` over the last axis, float32."""
    vec = np.asarray(vec, dtype=np.float32)
    return (vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), eps)).astype(np.float32)


def as_rgb_uint8(image: Any, name: str = "the photo") -> np.ndarray:
    """Coerce an in-memory image to contiguous HxWx3 uint8 RGB: an HxWx3 uint8 array as is (the detectors' hot
    path), anything else (grey, RGBA, wide or float pixels, a PIL image) by the loader's rules
    (:func:`dhumandiff.contract.images.load_rgb`), so a photo gets the same pixels whichever door it came in by."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 \
            and image.shape[0] >= 1 and image.shape[1] >= 1:
        return np.ascontiguousarray(image)
    if not isinstance(image, (np.ndarray, Image.Image)):
        raise InputImageError(f"{name} is not an image array ({type(image).__name__}): pass an HxWx3 RGB uint8 array "
                              f"or a path to a photo")
    return load_rgb(image, name)


def square_crop(image: np.ndarray, bbox, size: int, context: float = 1.0) -> np.ndarray:
    """A square crop centred on ``bbox``, side ``max(w, h) * context``, edge-padded, resized (bicubic) to ``size``.

    The one crop every analyzer and trainer uses in front of a 112-px identity encoder, so a face embeds the
    same whether it came from a reference photo or from a generated scene.
    """
    x0, y0, x1, y1 = [float(v) for v in np.asarray(bbox).reshape(4)]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0, 1.0) * context / 2
    pad = int(np.ceil(half)) + 2
    padded = Image.fromarray(np.pad(np.asarray(image, np.uint8), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    box = (cx - half + pad, cy - half + pad, cx + half + pad, cy + half + pad)
    return np.asarray(padded.resize((size, size), Image.BICUBIC, box=box))


class FaceAnalyzer(abc.ABC):
    """Detects faces and embeds one of them. Subclasses implement :meth:`detect`, :meth:`embed`, ``embedding_dim``.

    ``min_face_px`` is the smallest face side :meth:`analyze_single` accepts by default (backend-specific: what
    its detector and recogniser still read reliably).
    """

    name: str = "face analyzer"
    min_face_px: int = 32
    #: True for the synthetic world's analyzer: a real photo then gets ``real_photo.py``'s one line
    synthetic_world: bool = False
    #: True for real-photo analyzers: of several faces the largest is taken (with a warning), not refused
    pick_largest: bool = False

    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """Length of :meth:`embed`'s vector."""

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in an HxWx3 RGB uint8 image, largest area first (no embeddings)."""

    @abc.abstractmethod
    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The L2-normalised float32 embedding ``[embedding_dim]`` of ``face`` in ``image``."""

    # ------------------------------------------------------------------ shared
    @staticmethod
    def _sorted(faces: list[Face]) -> list[Face]:
        return largest_first(faces)

    def analyze(self, image: np.ndarray) -> list[Face]:
        """Every face, largest first, each with its embedding."""
        image = as_rgb_uint8(image)
        faces = self.detect(image)
        for face in faces:
            face.embedding = self.embed(image, face)
        return faces

    def analyze_single(self, image: np.ndarray | str | os.PathLike, face_index: int | None = None,
                       min_face_px: int | None = None, name: str | None = None,
                       option: str = "--face-index") -> Face:
        """The one face of a photo of one person, embedded; refuses photos it cannot use.

        ``image`` is an RGB array or a path. ``face_index`` picks a face when the photo shows several (0 = largest).
        Raises :class:`FaceNotFoundError` (no face / index out of range / face smaller than ``min_face_px``) or
        :class:`MultipleFacesError` (several faces and no ``face_index``). ``option`` is the flag the messages
        tell the user to pass (``--face-index-b`` for the second photo).
        """
        if isinstance(image, (str, os.PathLike)):
            name = name or Path(image).name
            image = load_rgb(image)
        name = name or "the photo"
        image = as_rgb_uint8(image, name)
        min_px = self.min_face_px if min_face_px is None else int(min_face_px)
        real = self.synthetic_world and looks_real(image)
        face = select_face(self._sorted(self.detect(image)), face_index, min_px, name, option, real_photo=real,
                           pick_largest=self.pick_largest)
        face.embedding = l2_normalize(self.embed(image, face)).reshape(-1)
        return face


def largest_first(faces: list[Face]) -> list[Face]:
    """Faces largest first (ties: leftmost, then topmost): the order ``face_index`` counts in everywhere."""
    return sorted(faces, key=lambda f: (-f.area, float(f.bbox[0]), float(f.bbox[1])))


def select_face(faces: list[Face], face_index: int | None, min_face_px: int, name: str,
                option: str = "--face-index", real_photo: bool = False, pick_largest: bool = False) -> Face:
    """The refusals every face photo goes through, given its detections sorted largest first.

    Shared by the analyzers and by the torch-free runtimes (which detect but embed through a graph), so a photo is
    accepted or refused, with the same one-line message, whatever runs the model. ``option`` is the flag that
    picks a face for this photo (``--face-index-a`` / ``--face-index-b``); a refusal names it and lists the faces.
    ``real_photo``: a synthetic-world detector was given what looks like a real photo (``real_photo.py``): when it
    does not find exactly one face the refusal says so (not "pass --face-index", which cannot help), and when
    it does, the same line is a warning. ``pick_largest`` (real-photo detectors: people in the background are
    normal): several faces and no ``face_index`` take the largest, and a warning says so.
    """
    if real_photo and (not faces or (face_index is None and len(faces) > 1)):
        raise FaceNotFoundError(real_photo_message(name))
    if real_photo:
        warnings.warn(real_photo_message(name) + "; generating anyway", stacklevel=2)
    if not faces:
        raise FaceNotFoundError(f"no face found in {name}: use a clear, front-facing photo of one person")
    if face_index is None:
        if len(faces) > 1 and pick_largest:
            warnings.warn(f"{len(faces)} faces found in {name}; using the largest ({_describe(faces, 1)}); pass "
                          f"{option} N to pick another", stacklevel=2)
        elif len(faces) > 1:
            raise MultipleFacesError(f"{len(faces)} faces found in {name}; pass {option} N to pick one (0 = largest; "
                                     f"here {_describe(faces)}) or crop the photo to one person")
        face = faces[0]
    else:
        idx = int(face_index)
        if not 0 <= idx < len(faces):
            raise FaceNotFoundError(f"{option} {idx} is out of range: {len(faces)} face(s) found in {name} "
                                    f"(valid: 0..{len(faces) - 1}, 0 = largest)")
        face = faces[idx]
    if face.size_px < min_face_px:
        raise FaceNotFoundError(f"face too small in {name} ({face.width:.0f}x{face.height:.0f} px): use a photo "
                                f"where the face is at least {min_face_px} px")
    return face


def _describe(faces: list[Face], limit: int = 4) -> str:
    """``#0 44x44 px at x=10 y=12, #1 ...``: enough to tell which index is which person."""
    parts = [f"#{i} {f.width:.0f}x{f.height:.0f} px at x={f.bbox[0]:.0f} y={f.bbox[1]:.0f}"
             for i, f in enumerate(faces[:limit])]
    return ", ".join(parts) + (f", ... ({len(faces) - limit} more)" if len(faces) > limit else "")
