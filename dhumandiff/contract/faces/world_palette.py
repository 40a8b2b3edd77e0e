"""The tiny world's identity colours: what its faces are drawn with and what its detector reads back.

The synthetic world (``dhumandiff.data.world``) draws faces with these colours; the torch-free face detector
(:mod:`.world_detect`), which every runtime runs before the identity graphs, finds faces by them. They live here,
below both, so a runtime never imports the data stage.
"""

from __future__ import annotations

SKIN_TONES = ("light", "medium", "tan", "dark")
HAIR_COLORS = ("black", "brown", "blonde", "red", "grey")
EYE_COLORS = ("brown", "blue", "green")

RGB = tuple[int, int, int]

# Palettes are chosen far apart in RGB (and from each other's neighbours: hair vs skin) so that a nearest-colour
# classifier on a few pixels is reliable even after the VAE.
SKIN_RGB: dict[str, RGB] = {"light": (246, 210, 182), "medium": (214, 160, 112), "tan": (166, 110, 68),
                            "dark": (96, 60, 40)}
HAIR_RGB: dict[str, RGB] = {"black": (28, 24, 24), "brown": (118, 68, 28), "blonde": (236, 200, 92),
                            "red": (200, 62, 24), "grey": (172, 172, 178)}
EYE_RGB: dict[str, RGB] = {"brown": (100, 54, 20), "blue": (40, 110, 232), "green": (36, 170, 70)}
GLASSES_RGB: RGB = (18, 18, 22)
EYE_WHITE_RGB: RGB = (250, 250, 250)
PUPIL_RGB: RGB = (14, 14, 14)
