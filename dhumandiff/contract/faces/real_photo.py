"""Whether a photo given to a synthetic-world model is a real photo: the embedded default's one clear line.

The embedded ``tiny`` model and its detector know only the synthetic world's 64-128 px cartoons. On a real photo
the detector "finds" patches of wall or cheek and the model paints cartoon people who resemble no one, so a real
photo must never end in a silent cartoon. The test is deliberately simple and conservative: a photo whose shorter
side exceeds the world's sizes *and* whose pixels are textured almost everywhere (the world's images are flat
colour regions: at least 30 % of a world image's pixels have a near-zero Laplacian, at most 16 % of a real
photo's). A real photo of 256 px or less is not recognised (see the README's "Real photos" section).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: The world renders scenes at 64 or 128 px and faces at 112 px; a photo above this on its shorter side is not
#: one of its images as rendered.
WORLD_MAX_SIDE = 256
#: Share of near-flat pixels below which an image is textured like a photograph.
FLAT_SHARE = 0.2


def flat_share(image: np.ndarray, side: int = 256) -> float:
    """Share of pixels whose grey-level Laplacian is below 1, on a copy at most ``side`` px on its longer side."""
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    w, h = img.size
    scale = side / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    g = np.asarray(img.convert("L"), dtype=np.float32)
    if min(g.shape) < 3:
        return 1.0
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    return float(np.mean(lap < 1.0))


def looks_real(image: np.ndarray) -> bool:
    """True for a photo that is larger than the synthetic world's images and textured like a photograph."""
    return min(image.shape[0], image.shape[1]) > WORLD_MAX_SIDE and flat_share(image) < FLAT_SHARE


def real_photo_message(name: str) -> str:
    """The one line a synthetic-world model answers a real photo with."""
    return (f"{name} looks like a real photo, but this model (the embedded default) knows only its synthetic "
            "64x64 cartoon world and cannot draw real people: use a real DHumanDiff model (README: 'Real photos')")
