"""Where each person goes: two boxes -> the UNet's two-channel ``region_mask`` at latent resolution.

The mask routes person 1's identity tokens to box 1 and person 2's to box 2 (the layout conditioning of the
edge toolkit). Rasterisation and the automatic layout are delegated to :mod:`dhumandiff.utils.regions`, which
training and the PyTorch reference sampler use too, so every path builds bit-identical masks (a latent cell
belongs to a person when its centre lies inside that person's box; where boxes overlap both channels are 1).
This module adds what a user-facing layout needs on top: the one ``--layout`` parser (:func:`parse_layout`, for the
runtimes and the PyTorch reference alike), pixel units, and refusals that say what to do. The same grid check
(each person keeps latent cells of their own) runs in :func:`region_mask` on both paths.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dhumandiff.errors import LayoutError
from dhumandiff.utils import regions

Box = tuple[float, float, float, float]
_EXAMPLE = "e.g. --layout '[[0.05,0.1,0.5,0.95],[0.5,0.1,0.95,0.95]]'"
_TOL = 1e-6
#: Longest ``--layout`` text or file accepted, in characters (two boxes take under 100).
MAX_LAYOUT_CHARS = 65_536
#: Deepest JSON nesting accepted (``[[...],[...]]`` and ``{"person_a": [...]}`` are 2 deep).
MAX_LAYOUT_DEPTH = 8
#: Longest integer accepted, in digits (pixel coordinates have a handful).
MAX_NUMBER_DIGITS = 20


@dataclass(frozen=True)
class Layout:
    """Two normalised boxes ``[x0, y0, x1, y1]`` in [0, 1]: person A (face A) then person B (face B)."""

    person_a: Box
    person_b: Box

    @property
    def boxes(self) -> tuple[Box, Box]:
        return (self.person_a, self.person_b)


def automatic_layout() -> Layout:
    """Person A on the left half, person B on the right half, with margins (the shared default boxes)."""
    a, b = (tuple(float(v) for v in box) for box in regions.default_boxes())
    return Layout(a, b)  # type: ignore[arg-type]


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a refusal quotes what it got without echoing a megabyte."""
    head = value[:16] if isinstance(value, (list, tuple)) and len(value) > 16 else value  # never repr it all
    try:
        text = repr(head)
    except ValueError:  # an int past Python's 4300-digit conversion limit
        return f"a {type(value).__name__} too large to show"
    return text if head is value and len(text) <= limit else text[: limit - 3] + "..."


def _finite(v: Any) -> float | None:
    """``v`` as a finite float, or None (not a number, NaN/Inf, or an int too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _as_box(value: Any, who: str) -> Box:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise LayoutError(f"the box for {who} must be 4 numbers [x0, y0, x1, y1] (got {_short(value)}); {_EXAMPLE}")
    out = [_finite(v) for v in value]
    if any(v is None for v in out):
        raise LayoutError(f"the box for {who} must hold finite numbers (got {_short(value)}); {_EXAMPLE}")
    return (out[0], out[1], out[2], out[3])  # type: ignore[return-value]


def make_layout(
    boxes: Sequence[Sequence[float]],
    image_size: tuple[int, int] | None = None,
    units: str = "auto",
) -> Layout:
    """Validate two boxes and normalise them.

    ``units``: ``"normalized"`` (fractions of the image), ``"pixel"`` (needs ``image_size`` = (height, width)),
    or ``"auto"``: pixel when every coordinate is a whole number and one exceeds 1, else normalised (so a
    typo like 1.2 is reported as outside the image rather than read as 1.2 pixels).
    """
    if len(boxes) != 2:
        raise LayoutError(f"a layout needs exactly two boxes, one per person (got {len(boxes)}); {_EXAMPLE}")
    a, b = _as_box(boxes[0], "person A"), _as_box(boxes[1], "person B")
    if units not in ("auto", "normalized", "pixel"):
        raise ValueError(f"units must be auto, normalized or pixel (got {units!r})")
    if units == "auto":
        whole = all(float(v).is_integer() for v in (*a, *b))
        units = "pixel" if whole and max(*a, *b) > 1.0 else "normalized"
    if units == "pixel":
        if image_size is None:
            raise LayoutError("pixel boxes need the image size; give normalised boxes in [0, 1] instead")
        h, w = image_size
        for who, box in (("person A", a), ("person B", b)):
            x0, y0, x1, y1 = box
            if min(box) < -_TOL or x1 > w + _TOL or x0 > w + _TOL or y1 > h + _TOL or y0 > h + _TOL:
                raise LayoutError(
                    f"the box for {who} {list(box)} lies outside the {w}x{h} image; keep x in [0, {w}] and "
                    f"y in [0, {h}]"
                )
        a = (a[0] / w, a[1] / h, a[2] / w, a[3] / h)
        b = (b[0] / w, b[1] / h, b[2] / w, b[3] / h)
    layout = Layout(a, b)
    validate_layout(layout)
    return layout


def validate_layout(layout: Layout) -> None:
    """Refuse boxes outside [0, 1], with no area, or where one person's box swallows the other's."""
    for who, box in (("person A", layout.person_a), ("person B", layout.person_b)):
        x0, y0, x1, y1 = box
        if min(box) < -_TOL or max(box) > 1 + _TOL:
            raise LayoutError(
                f"the box for {who} {list(box)} lies outside the image; normalised coordinates must be in [0, 1] "
                "(pixel boxes: use whole numbers)"
            )
        if x1 - x0 <= _TOL or y1 - y0 <= _TOL:
            raise LayoutError(
                f"the box for {who} {list(box)} has zero area; give [x0, y0, x1, y1] with x1 > x0 and y1 > y0"
            )
    a, b = layout.person_a, layout.person_b
    if _contains(a, b) or _contains(b, a):
        raise LayoutError(
            "the two person boxes overlap completely (one lies inside the other), so the people cannot be told "
            "apart; give each person their own area, e.g. left half and right half"
        )


def _contains(outer: Box, inner: Box) -> bool:
    return (outer[0] <= inner[0] + _TOL and outer[1] <= inner[1] + _TOL
            and outer[2] >= inner[2] - _TOL and outer[3] >= inner[3] - _TOL)


def region_mask(layout: Layout, latent_size: tuple[int, int]) -> np.ndarray:
    """``[1, 2, h, w]`` float32: channel k is 1 inside person k's box, 0 outside (overlaps are 1 in both).

    Refuses a layout where, at this resolution, a box covers no cell centre or one person has no cell of
    their own.
    """
    validate_layout(layout)
    h, w = latent_size
    mask = regions.region_mask(np.asarray(layout.boxes, dtype=np.float64), h, w)[None].astype(np.float32)
    for k, who in enumerate(("person A", "person B")):
        if not mask[0, k].any():
            raise LayoutError(
                f"the box for {who} {list(layout.boxes[k])} is too small for the {w}x{h} latent grid (it holds no "
                "cell centre); make it larger"
            )
    own_a = (mask[0, 0] > 0) & (mask[0, 1] == 0)
    own_b = (mask[0, 1] > 0) & (mask[0, 0] == 0)
    if not own_a.any() or not own_b.any():
        who = "person A" if not own_a.any() else "person B"
        raise LayoutError(
            f"at the {w}x{h} latent grid {who}'s box is entirely covered by the other box; make the boxes "
            "overlap less or make them larger"
        )
    return mask


LayoutLike = Layout | str | os.PathLike | Mapping[str, Any] | Sequence[Sequence[float]] | np.ndarray | None


def parse_layout(layout: LayoutLike, image_size: tuple[int, int] | None = None) -> Layout:
    """The one ``--layout`` parser (the runtimes, the PyTorch reference, the kiosk's presets).

    Accepts ``None`` / ``""`` / ``"auto"`` (the automatic layout), a :class:`Layout`, the JSON text
    ``[[x0,y0,x1,y1],[x0,y0,x1,y1]]`` or ``{"person_a": [...], "person_b": [...]}``, the path of a JSON file
    holding either, or the same list / dict / ``[2, 4]`` array in Python. Boxes are normalised, or pixels of
    ``image_size`` = (height, width) (see :func:`make_layout`); every refusal is a :class:`LayoutError`.
    """
    if layout is None:
        return automatic_layout()
    if isinstance(layout, Layout):
        validate_layout(layout)
        return layout
    data: Any = layout
    if isinstance(layout, (str, os.PathLike)):
        text = os.fspath(layout)
        if text.strip().lower() in ("", "auto", "automatic"):
            return automatic_layout()
        if not text.lstrip().startswith(("[", "{")) and _is_file(text):
            text = _read_layout_file(Path(text))
        data = _loads(text)
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if isinstance(data, Mapping):
        missing = [k for k in ("person_a", "person_b") if k not in data]
        extra = [k for k in data if k not in ("person_a", "person_b")]
        if missing or extra:
            raise LayoutError(
                f"--layout object needs exactly the keys person_a and person_b (missing {missing}, unknown "
                f"{_short(extra)}); {_EXAMPLE}"
            )
        boxes = [data["person_a"], data["person_b"]]
    elif isinstance(data, (list, tuple)):
        boxes = data
    else:
        raise LayoutError(f"--layout must be a list of two boxes or an object with person_a/person_b; {_EXAMPLE}")
    return make_layout(boxes, image_size=image_size)



def _is_file(text: str) -> bool:
    """Whether ``--layout`` names an existing file (a name too long or holding NUL is not one, not a crash)."""
    if len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _read_layout_file(path: Path) -> str:
    """The text of a ``--layout`` file, refused (not read) when it is larger than any layout can be."""
    try:
        size = path.stat().st_size
        if size > MAX_LAYOUT_CHARS * 4:  # UTF-8: at most 4 bytes a character
            raise LayoutError(f"--layout file {path} is {size} bytes; a layout is two boxes (at most "
                              f"{MAX_LAYOUT_CHARS} characters), {_EXAMPLE}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise LayoutError(f"--layout file {path} is not UTF-8 text; write the boxes as JSON, {_EXAMPLE}") from None
    except OSError as e:
        raise LayoutError(f"cannot read --layout file {path} ({e.strerror or e}); check the file and its "
                          "permissions") from None


def _json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of ``text`` (brackets inside strings count too: a layout holds no strings)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    steps = np.zeros(len(codes), np.int64)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _parse_int(digits: str) -> int:
    n = len(digits.lstrip("-"))
    if n > MAX_NUMBER_DIGITS:
        raise LayoutError(f"--layout holds a number with {n} digits; coordinates are fractions in [0, 1] or "
                          f"pixels, {_EXAMPLE}")
    return int(digits)


def _loads(text: str) -> Any:
    """``json.loads`` with bounded cost: size, nesting and integer length are refused before they are parsed."""
    if len(text) > MAX_LAYOUT_CHARS:
        raise LayoutError(f"--layout is {len(text)} characters long; a layout is two boxes (at most "
                          f"{MAX_LAYOUT_CHARS} characters), {_EXAMPLE}")
    depth = _json_depth(text)
    if depth > MAX_LAYOUT_DEPTH:
        raise LayoutError(f"--layout is nested {depth} levels deep; a layout is a list of two boxes (2 levels), "
                          f"{_EXAMPLE}")
    try:
        return json.loads(text, parse_int=_parse_int)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LayoutError(f"--layout is not valid JSON ({detail[:120]}); {_EXAMPLE}") from None
