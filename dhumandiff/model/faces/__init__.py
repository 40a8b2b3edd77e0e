"""Face analyzers of the PyTorch side: the tiny world's encoders, insightface packs and dlib, by name.

The torch-free pieces every analyzer and runtime shares (the ``Face`` record, the refusals, the crop, the
tiny world's detector, the insightface pack pipeline, dlib) live in :mod:`dhumandiff.contract.faces`; ``world``
(the tiny world's trained encoders) needs torch.
"""

from __future__ import annotations

from typing import Any

from ...contract.faces.base import Face, FaceAnalyzer, as_rgb_uint8, l2_normalize, load_rgb, square_crop

ANALYZERS = ("world", "insightface", "dlib")

__all__ = ["ANALYZERS", "Face", "FaceAnalyzer", "as_rgb_uint8", "get_face_analyzer", "l2_normalize", "load_rgb",
           "square_crop"]


def get_face_analyzer(name: str = "world", **kw: Any) -> FaceAnalyzer:
    """Build a face analyzer by name.

    ``"world"``: the tiny synthetic world (default for the tiny backbone; ``encoder=`` folder or module).
    ``"insightface"``: buffalo_l-style local models folder (``root=``, offline). ``"dlib"``: dlib HOG + ResNet.
    """
    key = (name or "world").lower()
    if key == "world":
        from .world import WorldAnalyzer

        return WorldAnalyzer(**kw)
    if key == "insightface":
        from .insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(**kw)
    if key == "dlib":
        from ...contract.faces.dlib_faces import DlibAnalyzer

        return DlibAnalyzer(**kw)
    raise ValueError(f"unknown face analyzer {name!r}: choose one of {', '.join(ANALYZERS)}")
