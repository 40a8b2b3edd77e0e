"""dlib face analysis, fully offline: HOG frontal detector + 5-point shape predictor + 128-d ResNet recogniser.

The model files come from the ``face_recognition_models`` package. Its own path helpers import
``pkg_resources`` (gone from current setuptools), so the paths are built here from the package folder without
importing it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, RuntimeUnavailableError
from .base import Face, FaceAnalyzer, as_rgb_uint8, l2_normalize

__all__ = ["DlibAnalyzer", "face_recognition_models_dir"]

SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"


def face_recognition_models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeUnavailableError("the dlib face backend needs face_recognition_models: "
                                      "pip install 'dhumandiff[faces]' (or pass models_dir=)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibAnalyzer(FaceAnalyzer):
    """dlib HOG detection, 5-point landmarks, 128-d ResNet embedding (L2-normalised).

    ``upsample``: HOG pyramid upsampling (1 finds faces down to ~40 px). ``models_dir``: folder holding
    ``shape_predictor_5_face_landmarks.dat`` and ``dlib_face_recognition_resnet_model_v1.dat`` (default: the
    ``face_recognition_models`` package). ``num_jitters`` > 0 averages jittered crops (slower, steadier).
    """

    name = "dlib"
    min_face_px = 40

    def __init__(self, models_dir: str | os.PathLike | None = None, upsample: int = 1, adjust_threshold: float = 0.0,
                 num_jitters: int = 0, padding: float = 0.25) -> None:
        try:
            import dlib
        except ImportError:
            raise RuntimeUnavailableError("the dlib face backend needs dlib: pip install dlib-bin "
                                          "(or 'dhumandiff[faces]')") from None
        folder = Path(models_dir) if models_dir is not None else face_recognition_models_dir()
        paths = {}
        for fname in (SHAPE_PREDICTOR_5, RECOGNITION_RESNET):
            p = folder / fname
            if not p.is_file():
                raise CheckpointError(f"dlib model file {p} is missing: install face_recognition_models==0.3.0 or "
                                      f"put {fname} in {folder}")
            paths[fname] = p
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(paths[SHAPE_PREDICTOR_5]))
        self.recognizer = dlib.face_recognition_model_v1(str(paths[RECOGNITION_RESNET]))
        self.upsample = int(upsample)
        self.adjust_threshold = float(adjust_threshold)
        self.num_jitters = int(num_jitters)
        self.padding = float(padding)

    @property
    def embedding_dim(self) -> int:
        return 128

    def _rect(self, face: Face):
        x0, y0, x1, y1 = [int(round(float(v))) for v in face.bbox]
        return self._dlib.rectangle(x0, y0, x1, y1)

    def detect(self, image: np.ndarray) -> list[Face]:
        image = as_rgb_uint8(image)
        rects, scores, _ = self.detector.run(image, self.upsample, self.adjust_threshold)
        h, w = image.shape[:2]
        faces = []
        for rect, score in zip(rects, scores):
            bbox = [max(rect.left(), 0), max(rect.top(), 0), min(rect.right(), w - 1), min(rect.bottom(), h - 1)]
            face = Face(bbox=bbox, score=float(score))
            shape = self.shape_predictor(image, rect)
            face.kps = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float32)
            face.kps_format = "dlib5"
            face.extra["dlib_rect"] = (rect.left(), rect.top(), rect.right(), rect.bottom())
            faces.append(face)
        return self._sorted(faces)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        image = as_rgb_uint8(image)
        if "dlib_rect" in face.extra:
            rect = self._dlib.rectangle(*face.extra["dlib_rect"])
        else:
            rect = self._rect(face)
        shape = self.shape_predictor(image, rect)
        desc = self.recognizer.compute_face_descriptor(image, shape, self.num_jitters, self.padding)
        return l2_normalize(np.asarray(desc, dtype=np.float32)).reshape(-1)
