"""Finding the face in a photo before the identity graphs run — the same refusals as the PyTorch reference.

The bundle names its detector (``identity.detector``). ``world`` is the tiny world's palette detector, pure
NumPy/SciPy, shared with the reference through :mod:`dhumandiff.model.faces` (which holds no torch in these
modules); the crop is the reference's crop (square around the detected box, resized to the identity encoder's
size), so the graphs see exactly what the reference model saw. ``none`` takes photos as aligned face crops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pathlib import Path

from .base import as_rgb_uint8, largest_first, select_face, square_crop
from .real_photo import looks_real

from ...errors import BundleError
from ..bundle import IdentitySpec


class FaceCropper:
    """Detects exactly one face (or the ``face_index``-th) and returns its aligned crop as a PIL image.

    ``scrfd`` (a converted official model's bundle): the bundle's insightface SCRFD detector (``root`` /
    ``detector_file``, run with onnxruntime), the largest face of a real photo (a warning says so when there are
    several), aligned onto ArcFace's 112 px template by its five landmarks, exactly as the reference's
    :class:`~dhumandiff.contract.faces.insightface_pack.PackFaceAnalyzer` does."""

    def __init__(self, spec: IdentitySpec, root: Path | None = None) -> None:
        self.spec = spec
        self.detector = None
        self.scrfd = None
        if spec.detector == "world":
            from .world_detect import WorldFaceDetector

            self.detector = WorldFaceDetector()
        elif spec.detector == "scrfd":
            from .insightface_pack import ScrfdDetector

            if root is None or spec.detector_file is None:
                raise BundleError("this bundle's face detector needs the bundle folder: load it with load_bundle()")
            self.scrfd = ScrfdDetector(Path(root) / spec.detector_file)

    def __call__(self, image: Image.Image, face_index: int | None = None, name: str = "the photo",
                 option: str = "--face-index") -> Image.Image:
        if self.scrfd is not None:
            return self._scrfd_crop(image, face_index, name, option)
        if self.detector is None:
            return image
        rgb = as_rgb_uint8(np.asarray(image.convert("RGB")), name)
        faces = largest_first(self.detector.detect(rgb))
        real = self.spec.detector == "world" and looks_real(rgb)
        face = select_face(faces, face_index, self.spec.min_face_px, name, option, real_photo=real)
        return Image.fromarray(square_crop(rgb, face.bbox, self.spec.face_size, context=1.0))

    def _scrfd_crop(self, image: Image.Image, face_index: int | None, name: str, option: str) -> Image.Image:
        from .insightface_pack import aligned_face, scrfd_faces

        rgb = as_rgb_uint8(np.asarray(image.convert("RGB")), name)
        faces = largest_first(scrfd_faces(self.scrfd, rgb))  # type: ignore[arg-type]
        face = select_face(faces, face_index, self.spec.min_face_px, name, option, pick_largest=True)
        return Image.fromarray(aligned_face(rgb, face, self.spec.face_size))
