"""Finding the face in a photo before the identity graphs run — the same refusals as the PyTorch reference.

The bundle names its detector (``identity.detector``). ``world`` is the tiny world's palette detector, pure
NumPy/SciPy, shared with the reference through :mod:`dhumandiff.model.faces` (which holds no torch in these
modules); the crop is the reference's crop (square around the detected box, resized to the identity encoder's
size), so the graphs see exactly what the reference model saw. ``none`` takes photos as aligned face crops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import as_rgb_uint8, select_face, square_crop
from .real_photo import looks_real

from ..bundle import IdentitySpec


class FaceCropper:
    """Detects exactly one face (or the ``face_index``-th) and returns its aligned crop as a PIL image."""

    def __init__(self, spec: IdentitySpec) -> None:
        self.spec = spec
        self.detector = None
        if spec.detector == "world":
            from .world_detect import WorldFaceDetector

            self.detector = WorldFaceDetector()

    def __call__(self, image: Image.Image, face_index: int | None = None, name: str = "the photo",
                 option: str = "--face-index") -> Image.Image:
        if self.detector is None:
            return image
        rgb = as_rgb_uint8(np.asarray(image.convert("RGB")), name)
        faces = sorted(self.detector.detect(rgb), key=lambda f: (-f.area, float(f.bbox[0]), float(f.bbox[1])))
        real = self.spec.detector == "world" and looks_real(rgb)
        face = select_face(faces, face_index, self.spec.min_face_px, name, option, real_photo=real)
        return Image.fromarray(square_crop(rgb, face.bbox, self.spec.face_size, context=1.0))
