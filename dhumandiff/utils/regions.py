"""Person boxes -> per-person region masks at latent resolution (NumPy, torch-free).

Shared by training, the torch reference sampler and the runtimes so that every path builds bit-identical masks:
a latent cell belongs to a person when its centre lies inside that person's box (boxes normalised to [0, 1]).
"""

from __future__ import annotations

import numpy as np


def region_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``boxes`` [..., P, 4] normalised ``[x0, y0, x1, y1]`` -> float32 mask [..., P, height, width]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    inside_y = (ys[:, None] >= y0) & (ys[:, None] < y1)
    inside_x = (xs[None, :] >= x0) & (xs[None, :] < x1)
    return (inside_y & inside_x).astype(np.float32)


def default_boxes() -> np.ndarray:
    """The automatic layout: person 1 on the left half, person 2 on the right, with margins. [2, 4]."""
    return np.array([[0.04, 0.08, 0.50, 1.0], [0.50, 0.08, 0.96, 1.0]], dtype=np.float32)
