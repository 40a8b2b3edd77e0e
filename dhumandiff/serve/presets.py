"""What a kiosk guest can pick without typing: scenes (prompt presets) and layouts (where each person stands).

Data, not code: the page and ``GET /api/presets`` list these, ``POST /api/generate`` resolves the ids. Scene
prompts name person a first (the first uploaded photo) and use words the embedded tiny model was trained on
(bride, groom, chapel, beach, sea, garden, flowers, city, street), so they also work with the default bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import LayoutError, PromptError


@dataclass(frozen=True)
class Scene:
    id: str
    label: str
    prompt: str


@dataclass(frozen=True)
class LayoutChoice:
    """Two normalised boxes ``[x0, y0, x1, y1]``: person a's (first photo) then person b's."""

    id: str
    label: str
    boxes: tuple[tuple[float, float, float, float], tuple[float, float, float, float]]


SCENES: tuple[Scene, ...] = (
    Scene("wedding", "Wedding", "a photo of a groom and a bride in a chapel"),
    Scene("beach", "Beach", "a photo of a man and a woman on the beach by the sea"),
    Scene("garden", "Garden", "a photo of a man and a woman in a garden with flowers"),
    Scene("city", "City", "a photo of a man and a woman standing on a city street"),
)

LAYOUTS: tuple[LayoutChoice, ...] = (
    LayoutChoice("side-by-side", "Side by side (first photo on the left)",
                 ((0.04, 0.08, 0.50, 1.0), (0.50, 0.08, 0.96, 1.0))),
    LayoutChoice("swapped", "Side by side (first photo on the right)",
                 ((0.50, 0.08, 0.96, 1.0), (0.04, 0.08, 0.50, 1.0))),
    LayoutChoice("close", "Close together",
                 ((0.12, 0.08, 0.58, 1.0), (0.42, 0.08, 0.88, 1.0))),
)

DEFAULT_LAYOUT = LAYOUTS[0].id

#: At most this many characters of anything a guest sent are quoted back in a refusal.
ECHO_CHARS = 200


def shown(value: object, limit: int = ECHO_CHARS, quote: bool = True) -> str:
    """``value`` for a refusal: its ``repr`` (without the quotes unless ``quote``), cut to ``limit`` characters of
    the input, so a 20 MB form field is not echoed back."""
    text = value if isinstance(value, str) else str(value)
    part = repr(text[:limit])
    tail = f"... ({len(text)} characters)" if len(text) > limit else ""
    return (part if quote else part[1:-1]) + tail


def scene_prompt(scene: str | None, prompt: str | None) -> tuple[str, str | None]:
    """``(prompt, scene id)``: a typed prompt wins; otherwise the preset scene's prompt."""
    if prompt is not None and prompt.strip():
        return prompt.strip(), None
    if scene is None or not scene.strip():
        raise PromptError("no prompt and no scene: type a prompt naming both people or pick a scene "
                          f"({', '.join(s.id for s in SCENES)})")
    for s in SCENES:
        if s.id == scene.strip().lower():
            return s.prompt, s.id
    raise PromptError(f"unknown scene {shown(scene)}; pick one of {', '.join(s.id for s in SCENES)} or type a prompt")


def layout_boxes(layout: str | None) -> tuple[str, list[list[float]]]:
    """``(layout id, boxes)`` for a layout id (empty -> the default)."""
    key = (layout or DEFAULT_LAYOUT).strip().lower()
    for choice in LAYOUTS:
        if choice.id == key:
            return choice.id, [list(b) for b in choice.boxes]
    raise LayoutError(f"unknown layout {shown(layout)}; pick one of {', '.join(c.id for c in LAYOUTS)}")


def as_json() -> dict[str, Any]:
    """The presets as ``GET /api/presets`` returns them."""
    return {
        "scenes": [asdict(s) for s in SCENES],
        "layouts": [{**asdict(c), "boxes": [list(b) for b in c.boxes]} for c in LAYOUTS],
        "default_scene": SCENES[0].id,
        "default_layout": DEFAULT_LAYOUT,
    }
