"""Face analysis: detection, refusal of unusable photos, identity embeddings (world / insightface / dlib).

``base`` is torch-free; ``world`` (the tiny synthetic world's detector, encoders, attribute reader) needs torch.
"""

from .base import ANALYZERS, Face, FaceAnalyzer, as_rgb_uint8, get_face_analyzer, l2_normalize, load_rgb, square_crop

__all__ = ["ANALYZERS", "Face", "FaceAnalyzer", "as_rgb_uint8", "get_face_analyzer", "l2_normalize", "load_rgb",
           "square_crop"]
