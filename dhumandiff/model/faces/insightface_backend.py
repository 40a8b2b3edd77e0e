"""insightface (ArcFace) face analysis from a local, buffalo_l-style models folder. Never downloads.

``root`` is a folder laid out like insightface's ``~/.insightface/models/buffalo_l/``: a detector ``det_*.onnx``
(SCRFD, e.g. ``det_10g.onnx``) and a recogniser (``w600k_r50.onnx``, or any ONNX that insightface's
``model_zoo.get_model`` routes to ``ArcFaceONNX``: square input >= 112 divisible by 16, one output). A folder
holding only a recogniser works with ``detector="world"`` or ``"dlib"``.

insightface works in BGR; this class takes and returns RGB like every analyzer and converts at the boundary.
The embedding is ArcFace's ``normed_embedding`` (the recogniser's output, L2-normalised).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CheckpointError, RuntimeUnavailableError
from ...contract.faces.base import Face, FaceAnalyzer, as_rgb_uint8, l2_normalize, square_crop

__all__ = ["InsightFaceAnalyzer", "find_insightface_models", "ARCFACE_TEMPLATE"]

# insightface's 112x112 ArcFace landmark template (left eye, right eye, nose, left / right mouth corner).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# buffalo_l's non-recognition models (never tried as the recogniser).
_NOT_RECOGNITION = ("det_", "1k3d68", "2d106det", "genderage")
_PREFERRED_RECOGNITION = ("w600k_r50.onnx", "w600k_mbf.onnx", "glintr100.onnx")


def _resolve_root(root: str | os.PathLike) -> Path:
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise CheckpointError(f"insightface models folder {root} does not exist: copy a buffalo_l folder "
                              f"(det_10g.onnx, w600k_r50.onnx) there from a connected machine (nothing is downloaded)")
    if not any(root.glob("*.onnx")):
        for sub in (root / "models" / "buffalo_l", root / "buffalo_l"):
            if sub.is_dir() and any(sub.glob("*.onnx")):
                return sub
    return root


def find_insightface_models(root: str | os.PathLike) -> dict[str, Path | None]:
    """``{"detection": det_*.onnx or None, "recognition": candidates...}`` found in ``root`` (no model loaded)."""
    folder = _resolve_root(root)
    dets = sorted(folder.glob("det_*.onnx"))
    recs = [folder / n for n in _PREFERRED_RECOGNITION if (folder / n).is_file()]
    recs += [p for p in sorted(folder.glob("*.onnx"))
             if p not in recs and not p.name.startswith(_NOT_RECOGNITION)]
    return {"folder": folder, "detection": dets[-1] if dets else None, "recognition": recs}


class InsightFaceAnalyzer(FaceAnalyzer):
    """ArcFace embeddings (insightface) with insightface's SCRFD detector, or the world / dlib detector.

    ``detector``: ``"auto"`` (the folder's ``det_*.onnx``), ``"insightface"``, ``"world"``, ``"dlib"``, or any
    object with ``detect(rgb) -> list[Face]``. ``det_size``: SCRFD input size. ``threads``: onnxruntime intra-op
    threads (None: onnxruntime's default).
    """

    name = "insightface"
    min_face_px = 32

    def __init__(self, root: str | os.PathLike, detector: Any = "auto", det_size: tuple[int, int] = (640, 640),
                 det_thresh: float = 0.5, threads: int | None = None, providers: list[str] | None = None,
                 **detector_kw: Any) -> None:
        try:
            import onnxruntime as ort
            from insightface.model_zoo import model_zoo
            from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        except ImportError:
            raise RuntimeUnavailableError("the insightface backend needs insightface and onnxruntime: "
                                          "pip install 'dhumandiff[faces]'") from None
        found = find_insightface_models(root)
        self.folder: Path = found["folder"]
        kw: dict[str, Any] = {"providers": list(providers or ["CPUExecutionProvider"])}
        if threads is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
            kw["sess_options"] = so

        self.recognizer = None
        rejected = []
        for path in found["recognition"]:
            try:
                model = model_zoo.get_model(str(path), **kw)
            except Exception as exc:  # a corrupt file must not hide a good one beside it
                rejected.append(f"{path.name} ({exc.__class__.__name__})")
                continue
            if isinstance(model, ArcFaceONNX):
                self.recognizer = model
                self.recognition_path = path
                break
            rejected.append(f"{path.name} (not an ArcFace model)")
        if self.recognizer is None:
            extra = f" (rejected: {', '.join(rejected)})" if rejected else ""
            raise CheckpointError(f"no recognition model in {self.folder}{extra}: put buffalo_l's w600k_r50.onnx there "
                                  f"(an ArcFace ONNX with a square 112x112 input and one output)")
        self.recognizer.prepare(ctx_id=-1)
        self._input_size = int(self.recognizer.input_size[0])
        self._dim = int(self.recognizer.output_shape[-1])

        self.det_model = None
        self.detector = None
        if isinstance(detector, str):
            key = detector.lower()
            if key in ("auto", "insightface"):
                if found["detection"] is None:
                    raise CheckpointError(f"no detection model det_*.onnx in {self.folder}: put buffalo_l's "
                                          f"det_10g.onnx there, or pass detector='world' or 'dlib'")
                self.det_model = model_zoo.get_model(str(found["detection"]), **kw)
                if self.det_model is None or getattr(self.det_model, "taskname", None) != "detection":
                    raise CheckpointError(f"{found['detection']} is not an insightface detection model: put "
                                          f"buffalo_l's det_10g.onnx there, or pass detector='world' or 'dlib'")
                self.det_model.prepare(ctx_id=-1, input_size=tuple(det_size), det_thresh=float(det_thresh))
                self.detection_path = found["detection"]
            elif key == "world":
                from ...contract.faces.world_detect import WorldFaceDetector

                self.detector = WorldFaceDetector(**detector_kw)
                self.min_face_px = 12
            elif key == "dlib":
                from ...contract.faces.dlib_faces import DlibAnalyzer

                self.detector = DlibAnalyzer(**detector_kw)
                self.min_face_px = DlibAnalyzer.min_face_px
            else:
                raise ValueError(f"unknown detector {detector!r}: choose auto, insightface, world or dlib")
        else:
            if not hasattr(detector, "detect"):
                raise TypeError("detector must be a name or an object with detect(image) -> list[Face]")
            self.detector = detector

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def detect(self, image: np.ndarray) -> list[Face]:
        image = as_rgb_uint8(image)
        if self.det_model is None:
            return self._sorted(list(self.detector.detect(image)))
        bboxes, kpss = self.det_model.detect(np.ascontiguousarray(image[:, :, ::-1]), max_num=0)
        faces = []
        for i in range(bboxes.shape[0]):
            faces.append(Face(bbox=bboxes[i, :4], score=float(bboxes[i, 4]),
                              kps=None if kpss is None else kpss[i], kps_format=None if kpss is None else "arcface"))
        return self._sorted(faces)

    def aligned_crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The recogniser's input crop (RGB, ``input_size`` square) of ``face``.

        With ArcFace landmarks: insightface's ``norm_crop``; with dlib landmarks: a similarity transform mapping
        the eye centres onto ArcFace's template; without landmarks: a square crop around the box.
        """
        import cv2

        size = self._input_size
        if face.kps is not None and face.kps_format == "arcface" and face.kps.shape == (5, 2):
            from insightface.utils import face_align

            return face_align.norm_crop(image, landmark=face.kps, image_size=size)
        if face.kps is not None and face.kps_format == "dlib5" and face.kps.shape == (5, 2):
            eyes = sorted([face.kps[0:2].mean(0), face.kps[2:4].mean(0)], key=lambda p: float(p[0]))
            src = np.asarray(eyes, np.float32)
            dst = ARCFACE_TEMPLATE[:2] * (size / 112.0)
            # Similarity transform from two point pairs (exact): z -> a*z + b in complex form.
            zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
            a = (zd[1] - zd[0]) / (zs[1] - zs[0]) if abs(zs[1] - zs[0]) > 1e-6 else 1.0
            b = zd[0] - a * zs[0]
            m = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float32)
            return cv2.warpAffine(image, m, (size, size), borderValue=0.0)
        return square_crop(image, face.bbox, size, context=1.0)

    def embed_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        """Normed embedding of an already aligned RGB crop (resized to the recogniser's input if needed)."""
        feat = self.recognizer.get_feat(np.ascontiguousarray(as_rgb_uint8(crop_rgb)[:, :, ::-1]))
        return l2_normalize(np.asarray(feat, np.float32).reshape(-1))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        image = as_rgb_uint8(image)
        return self.embed_crop(self.aligned_crop(image, face))
