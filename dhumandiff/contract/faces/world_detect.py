"""Face detection and attribute reading for the tiny synthetic world, from the renderer's palette. No network.

Faces of :mod:`dhumandiff.data.world` are flat-filled shapes in a known palette (skin, hair, eyes, glasses,
lips), lit by a global factor 0.7-1.3 with a small per-channel tint.

Skin: a pixel is palette tone ``t`` when ``pixel / SKIN_RGB[t]`` is nearly the same factor in every channel
(hue, light-invariant; a saturated 255 channel only says "at least"). Among those loose skin pixels, the image's
own skin colours are its most frequent *flat* colours (the renderer fills skin flat; a skin-coloured background,
sand or a blend along an edge is a gradient or a thin line), and each gives one tight mask: that colour times a
shading factor 0.6-1.12 (ears, nose, neck).

:class:`WorldFaceDetector`: in each mask, a top-down sweep over row runs proposes heads (a head ends at its neck,
where it narrows to under 40 % of its widest row, so a neckline, an arm or a hug never joins a head; pieces cut
apart by glasses frames or a beard are joined again). Around each proposal, square windows are scored on the
renderer's face layout (cheeks, nose bridge and forehead are skin; eyes, mouth and the hair above the forehead
are not; nothing skin-coloured beyond the ears), upright or tilted for large faces. The best windows give the
face box: the *aligned crop* of the renderer (eyes at 0.46 of the side), so a crop of a scene face frames it like
a reference photo. A few rules of this world then drop impossible faces (inside another face, on a chest under
a face, far smaller than the others, or spanning two people).

:class:`WorldAttributeReader` reads the colour attributes back from the pixels of an aligned face crop, by
palette votes in the regions the renderer draws, after a white balance on the eye whites: the evaluator's check
that no network can game.

Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from . import world_palette as W
from .base import Face, as_rgb_uint8

__all__ = ["WorldFaceDetector", "WorldAttributeReader", "skin_mask", "COLOUR_ATTRIBUTES"]

_SKIN = np.array([W.SKIN_RGB[t] for t in W.SKIN_TONES], np.float32)
#: Face extent (ears included) as a fraction of the aligned crop side, averaged over face shapes.
_HEAD_W = 0.66
COLOUR_ATTRIBUTES = ("skin_tone", "hair_color", "eye_color", "glasses", "beard")


def _ratio_fit(x: np.ndarray, p: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: (relative spread of ``x / p`` over the channels, mean factor); inf spread = no fit.

    The spread is ``(max - min) / mean`` of the channel ratios, so it measures hue, not brightness. A saturated
    channel (255) only says "ratio >= 255 / p": it widens the spread only when that bound lies above the other
    channels' ratios.
    """
    # channel by channel: the arithmetic of max/min/sum over the last axis, in the same order (so the same bits),
    # without NumPy's slow reduction over a length-3 axis (10x faster on a megapixel photo)
    limit = 255.0 / p
    rmax = rmin = bound = total = allclip = unclipped = None
    for c in range(x.shape[-1]):
        r = x[..., c] / p[c]
        clipped = x[..., c] >= 254.5
        parts = (np.where(clipped, -np.inf, r), np.where(clipped, np.inf, r), np.where(clipped, limit[c], -np.inf),
                 np.where(clipped, 0.0, r))
        if c == 0:
            rmax, rmin, bound, total = parts
            allclip, unclipped = clipped, (~clipped).astype(np.int64)
        else:
            rmax, rmin = np.maximum(rmax, parts[0]), np.minimum(rmin, parts[1])
            bound, total = np.maximum(bound, parts[2]), total + parts[3]
            allclip, unclipped = allclip & clipped, unclipped + ~clipped
    mean = total / np.maximum(unclipped, 1)
    spread = (np.maximum(rmax, bound) - rmin) / np.maximum(mean, 1e-3)
    ok = (mean >= lo) & (mean <= hi) & ~allclip
    return np.where(ok, spread, np.inf), mean


def palette_skin(image: np.ndarray, spread: float = 0.18, lo: float = 0.5, hi: float = 1.45
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, tone_index)``: pixels whose colour is a skin palette colour times one light factor (loose).

    ``spread`` bounds the channel-ratio disagreement (tint, blending); ``lo``/``hi`` bound the factor (light
    0.7-1.3 times the renderer's shading 0.78-0.92 for ears, nose and neck).
    """
    x = np.asarray(image, np.float32)
    best = np.full(x.shape[:2], np.inf, np.float32)
    tone = np.zeros(x.shape[:2], np.int64)
    for i, p in enumerate(_SKIN):
        sp, _ = _ratio_fit(x, p, lo, hi)
        better = sp < best
        best = np.where(better, sp, best)
        tone = np.where(better, i, tone)
    return best < spread, tone


def _near_colour(x: np.ndarray, c: np.ndarray, spread: float, lo: float, hi: float) -> np.ndarray:
    """Pixels equal to ``c`` (within 4 levels) or ``c`` times one factor in [lo, hi] (channel ratios agree)."""
    # channel by channel, as in _ratio_fit: the same arithmetic as the reductions over the last axis, faster
    scale = np.maximum(c, 1.0)
    exact = n = rmax = rmin = total = None
    for k in range(x.shape[-1]):
        xk, ck = x[..., k], c[k]
        r = xk / scale[k]
        usable = (xk < 254.5) & (ck < 254.5)
        parts = (np.abs(xk - ck), usable.astype(np.int64), np.where(usable, r, -np.inf), np.where(usable, r, np.inf),
                 np.where(usable, r, 0.0))
        if k == 0:
            exact, n, rmax, rmin, total = parts
        else:
            exact, n = np.maximum(exact, parts[0]), n + parts[1]
            rmax, rmin, total = np.maximum(rmax, parts[2]), np.minimum(rmin, parts[3]), total + parts[4]
    exact = exact <= 4.0
    mean = total / np.maximum(n, 1)
    # a channel saturated in x but not in c must be one that the factor saturates; and vice versa
    ok = np.ones(mean.shape, bool)
    for k in range(x.shape[-1]):
        xk, ck = x[..., k], c[k]
        if ck < 254.5:
            ok &= np.where(xk >= 254.5, ck * mean >= 235.0, True)
        else:
            ok &= np.where(xk < 254.5, xk >= 255.0 * mean - 14.0, True)
    ratio = (n >= 2) & (rmax - rmin < spread) & (mean >= lo) & (mean <= hi) & ok
    return exact | ratio


def skin_colours(image: np.ndarray, loose: np.ndarray | None = None, bin_size: int = 6, max_colours: int = 4,
                 min_share: float = 0.2, max_spread: float = 0.16) -> list[np.ndarray]:
    """The image's skin colours: the most frequent (binned) colours among palette-skin pixels.

    The renderer fills skin flat, so a face's skin is one colour (times the image's light and tint) while a
    skin-coloured background or sand is a gradient spread over many colours; in blurry (generated) images the
    skin still peaks in a few bins.
    """
    x = np.asarray(image, np.float32)
    if loose is None:
        loose, _ = palette_skin(x)
    px = x[loose]
    if len(px) == 0:
        return []
    q = (px // bin_size).astype(np.int64)
    nb = 256 // bin_size + 1
    key = (q[:, 0] * nb + q[:, 1]) * nb + q[:, 2]
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    # each bin's palette tone and fit; a bin competes only with bins of its own tone (two people of different
    # tones can show very different amounts of skin)
    means = np.zeros((len(uniq), 3), np.float64)
    np.add.at(means, inv, px)
    means /= counts[:, None]
    fits = np.stack([_ratio_fit(means[None].astype(np.float32), p, 0.5, 1.45)[0][0] for p in _SKIN], 1)
    tone = fits.argmin(1)
    spread = fits.min(1)
    # flat fills: most of a bin's pixels share one exact colour (a face's skin), unlike gradients and textures
    exact = ((px[:, 0].astype(np.int64) * 256 + px[:, 1].astype(np.int64)) * 256 + px[:, 2].astype(np.int64))
    pair = inv.astype(np.int64) * (1 << 24) + exact
    pu, pc = np.unique(pair, return_counts=True)
    mode = np.zeros(len(uniq), np.int64)
    np.maximum.at(mode, pu >> 24, pc)
    flat = (mode >= 0.5 * counts) & (mode >= 6)
    out: list[np.ndarray] = []
    for require_flat in (True, False):  # blurry (generated) images have no flat fills: take the peaks then
        for t in range(len(_SKIN)):
            sel = np.flatnonzero((tone == t) & (spread <= max_spread) & (flat | (not require_flat)))
            if len(sel) == 0:
                continue
            sel = sel[np.argsort(-counts[sel])]
            top = counts[sel[0]]
            for k in sel[:max_colours]:
                if counts[k] < max(6, min_share * top):
                    break
                out.append(means[k].astype(np.float32))
        if out:
            break
    return out


def skin_masks(image: np.ndarray, spread: float = 0.1, min_solid: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(colour, mask)]``: one mask per distinct skin colour of the image (shades of one colour grouped)."""
    x = np.asarray(image, np.float32)
    loose, _ = palette_skin(x)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for c in skin_colours(x, loose):
        if any(_near_colour(c[None, None, :], oc, spread, 0.6, 1.12)[0, 0] for oc, _ in out):
            continue  # a shade (ear, nose, neck) of a colour already there
        m = _near_colour(x, c, spread, 0.6, 1.12)
        # skin is a solid area; blends along the edges of other shapes (lit windows, hair on a bright sky) are
        # thin lines of one colour: they vanish under an erosion
        if ndi.binary_erosion(m, np.ones((3, 3), bool)).sum() < min_solid:
            continue
        out.append((c, m))
    return out


def skin_mask(image: np.ndarray, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, tone_index, colours)``: skin pixels of this image (its own skin colours, each times 0.6-1.12).

    First the palette (any light, any tint) proposes skin pixels loosely; the most frequent of their colours are
    this image's skin colours; the final mask holds pixels that are one of those colours times a shading factor
    (ears, nose, neck), with channel ratios agreeing within ``spread``.
    """
    x = np.asarray(image, np.float32)
    loose, tone = palette_skin(x)
    colours = skin_colours(x, loose)
    mask = np.zeros(x.shape[:2], bool)
    for c in colours:
        mask |= _near_colour(x, c, spread, 0.6, 1.12)
    return mask, tone, np.asarray(colours, np.float32).reshape(-1, 3)


@dataclass
class _Region:
    """Skin rows of one head candidate: ``rows[y]`` = runs ``[x0, x1)``."""

    rows: dict[int, list[tuple[int, int]]]
    top: int
    width: int = 0  # widest row extent seen so far
    necked: bool = False  # ended where it narrowed to a neck

    def extent(self, y: int) -> tuple[int, int]:
        runs = self.rows[y]
        return min(r[0] for r in runs), max(r[1] for r in runs)

    @property
    def bottom(self) -> int:
        return max(self.rows) + 1

    @property
    def x0(self) -> int:
        return min(r[0] for rr in self.rows.values() for r in rr)

    @property
    def x1(self) -> int:
        return max(r[1] for rr in self.rows.values() for r in rr)

    @property
    def area(self) -> int:
        return sum(b - a for rr in self.rows.values() for a, b in rr)

    def absorb(self, other: "_Region") -> None:
        for y, rr in other.rows.items():
            self.rows.setdefault(y, []).extend(rr)
        self.top = min(self.top, other.top)
        self.width = max(self.width, other.width)
        self.necked = self.necked or other.necked
        other.rows = {}


def _row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist()))


def _sweep(mask: np.ndarray, neck_ratio: float = 0.4, min_width: int = 7) -> list[_Region]:
    """Top-down sweep over row runs: a region appearing from above is a head until it narrows to a neck.

    Everything connected below a neck (torso skin, arms, a partner reached by a hug) is body and is dropped.
    Regions narrower than ``min_width`` (stray edge pixels) never form a neck, and a run much wider than every
    region it touches starts a head of its own (a face is not the tail of a speck of hair edge above it).
    """
    regs: list[_Region] = []
    prev: list[list[int]] = []  # [x0, x1, owner] of the previous row; owner -1 = body
    for y in range(mask.shape[0]):
        cur: list[list[int]] = []
        for x0, x1 in _row_runs(mask[y]):
            owners = {o for (a, b, o) in prev if a <= x1 and b >= x0}
            if owners and -1 not in owners and all(regs[o].width < min_width and 2 * regs[o].width < x1 - x0
                                                   for o in owners):
                owners = set()
            if not owners:
                regs.append(_Region(rows={}, top=y))
                owner = len(regs) - 1
            elif -1 in owners or any(regs[o].necked for o in owners):
                owner = -1
            else:
                owner = min(owners)
                for o in owners - {owner}:  # pieces of one head meeting again (split by eyes, brows)
                    regs[owner].absorb(regs[o])
                    for run in cur + prev:
                        if run[2] == o:
                            run[2] = owner
            if owner >= 0:
                regs[owner].rows.setdefault(y, []).append((x0, x1))
            cur.append([x0, x1, owner])
        for o in {run[2] for run in cur if run[2] >= 0}:
            r = regs[o]
            a, b = r.extent(y)
            if r.width >= min_width and (b - a) < neck_ratio * r.width and (y - r.top) > 0.45 * r.width:
                del r.rows[y]
                r.necked = True
                for run in cur:
                    if run[2] == o:
                        run[2] = -1
            else:
                r.width = max(r.width, b - a)
        prev = cur
    return [r for r in regs if r.rows]


def _merge_split_heads(regs: list[_Region]) -> list[_Region]:
    """Join the pieces of one head: cut in two by a horizontal dark line (glasses frames and arms), or into
    side-by-side fragments a pixel or two apart (glasses and a beard on a small face).

    Every pair is still considered in the same order as a plain double loop would (so the merges are the same), but
    each region's bounds are kept in arrays and only pairs less than 3 px apart horizontally (the only ones either
    rule can join) are looked at: a real photo gives the synthetic world's detector thousands of skin specks, and
    the plain loop took 45 s on a 512 px photo."""
    regs = sorted(regs, key=lambda r: r.top)
    n = len(regs)
    alive = np.array([bool(r.rows) and not r.necked for r in regs], bool)
    x0 = np.array([r.x0 if r.rows else 0 for r in regs], np.int64)
    x1 = np.array([r.x1 if r.rows else 0 for r in regs], np.int64)
    top = [r.top for r in regs]
    bottom = [r.bottom if r.rows else 0 for r in regs]
    rowsets = [set(r.rows) for r in regs]
    changed = True
    while changed:
        changed = False
        for i in range(n):
            if not alive[i]:
                continue
            start = 0
            while start < n:
                overlap = np.minimum(x1[i], x1[start:]) - np.maximum(x0[i], x0[start:])
                near = np.flatnonzero(alive[start:] & (overlap >= -2)) + start  # neither rule joins a wider gap
                start = n
                for j in near.tolist():
                    if j == i:
                        continue
                    wa, wb = int(x1[i] - x0[i]), int(x1[j] - x0[j])
                    ov = min(int(x1[i]), int(x1[j])) - max(int(x0[i]), int(x0[j]))
                    vgap = top[j] - bottom[i]
                    stacked = (top[j] >= top[i] and vgap <= max(2.0, 0.3 * max(wa, wb))
                               and ov >= 0.6 * min(wa, wb) and min(wa, wb) >= 0.45 * max(wa, wb))
                    shared = len(rowsets[i] & rowsets[j])
                    beside = (-ov <= 2 and shared >= 0.5 * min(len(rowsets[i]), len(rowsets[j])) and shared >= 2)
                    if stacked or beside:
                        regs[i].absorb(regs[j])
                        alive[j] = False
                        x0[i], x1[i] = min(x0[i], x0[j]), max(x1[i], x1[j])
                        top[i], bottom[i] = regs[i].top, max(bottom[i], bottom[j])
                        rowsets[i] |= rowsets[j]
                        changed = True
                        start = j + 1  # a grew: the rest of the row is looked at with its new bounds
                        break
    return [r for r in regs if r.rows]


# Window features in aligned-crop units: (u0, v0, u1, v1, want_skin, min_fraction, may_leave_the_image). The
# renderer draws cheeks at v 0.5-0.63 (beards start at 0.635), the nose bridge between the eyes, eyes at v 0.46 /
# u 0.34, 0.66, the fringe above v 0.31, lips at v 0.65-0.72 and nothing but hair or background beyond the ears.
_FEATURES = (
    (0.27, 0.54, 0.36, 0.62, True, 0.5, False),  # left cheek
    (0.64, 0.54, 0.73, 0.62, True, 0.5, False),  # right cheek
    (0.45, 0.47, 0.55, 0.52, True, 0.5, False),  # nose bridge
    (0.28, 0.43, 0.40, 0.49, False, 0.3, False),  # left eye
    (0.60, 0.43, 0.72, 0.49, False, 0.3, False),  # right eye
    (0.38, 0.18, 0.62, 0.27, False, 0.6, True),  # hair above the forehead
    (0.42, 0.35, 0.58, 0.41, True, 0.5, False),  # forehead between the brows (skin above the eye line)
    (0.45, 0.66, 0.55, 0.70, False, 0.3, False),  # mouth (or beard)
    (0.00, 0.44, 0.10, 0.60, False, 0.6, True),  # beyond the left ear
    (0.90, 0.44, 1.00, 0.60, False, 0.6, True),  # beyond the right ear
)


def _integral(m: np.ndarray) -> np.ndarray:
    ii = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(m, 0), 1)
    return ii


def _box_fraction(ii: np.ndarray, x0, y0, x1, y1) -> tuple[np.ndarray, np.ndarray]:
    """(skin fraction, in-image pixel count) of integer boxes, clipped to the image."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    x0, x1 = np.minimum(np.maximum(x0, 0), w), np.minimum(np.maximum(x1, 0), w)
    y0, y1 = np.minimum(np.maximum(y0, 0), h), np.minimum(np.maximum(y1, 0), h)
    n = (x1 - x0) * (y1 - y0)
    k = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return np.where(n > 0, k / np.maximum(n, 1), np.nan), n


def _score_windows(ii: np.ndarray, X: np.ndarray, Y: np.ndarray, S: np.ndarray, angle: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(passes every feature, summed feature score) of square windows (X, Y = top-left, S = side).

    ``angle`` (degrees, the renderer's convention) moves each feature box's centre as the face rotates about
    its centre (0.5, 0.53); the boxes themselves stay axis-aligned.
    """
    ok = np.ones(X.shape, bool)
    score = np.zeros(X.shape)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for u0, v0, u1, v1, want, thr, may_leave in _FEATURES:
        if angle:
            du, dv = 0.5 * (u0 + u1) - 0.5, 0.5 * (v0 + v1) - 0.53
            # PIL rotates counter-clockwise on screen (y down): u' = cx + du cos + dv sin, v' = cy - du sin + dv cos
            nu, nv = 0.5 + du * ca + dv * sa, 0.53 - du * sa + dv * ca
            u0, u1 = u0 + nu - 0.5 * (u0 + u1), u1 + nu - 0.5 * (u0 + u1)
            v0, v1 = v0 + nv - 0.5 * (v0 + v1), v1 + nv - 0.5 * (v0 + v1)
        bx0 = np.rint(X + u0 * S).astype(np.int64)
        bx1 = np.maximum(np.rint(X + u1 * S).astype(np.int64), bx0 + 1)
        by0 = np.rint(Y + v0 * S).astype(np.int64)
        by1 = np.maximum(np.rint(Y + v1 * S).astype(np.int64), by0 + 1)
        frac, _ = _box_fraction(ii, bx0, by0, bx1, by1)
        missing = 1.0 if may_leave else 0.0
        f = np.where(np.isnan(frac), missing, frac if want else 1.0 - frac)
        ok &= f >= thr
        score += f
    return ok, score


class WorldFaceDetector:
    """Finds the tiny world's faces (reference close-ups, people in 64/128-px scenes) from palette colours.

    Skin regions found by the top-down sweep propose a head (position and scale from its width); around each
    proposal, square windows are scored on the renderer's face layout (cheeks and nose bridge are skin, eyes
    and the hair above the forehead are not, nothing skin-like beyond the ears). The best window per head,
    refined by averaging the near-best ones, is the face box: the aligned crop (eyes at 0.46 of the side). A
    photo with no face gives no proposal that passes, whatever its colours.

    ``min_width``: the narrowest skin region (ears included) that proposes a head; ``min_side``: the smallest
    face box, in pixels. Faces are returned largest first.
    """

    def __init__(self, min_width: int = 7, min_side: int = 14) -> None:
        self.min_width = int(min_width)
        self.min_side = int(min_side)

    def __call__(self, image: np.ndarray) -> list[Face]:
        return self.detect(image)

    def detect(self, image: np.ndarray) -> list[Face]:
        img = as_rgb_uint8(image)
        x = img.astype(np.float32)
        cands = []
        # one skin mask per skin colour of the image (a face's skin, ears, nose and neck are one colour times a
        # shading factor), so a skin-coloured background of another shade never joins or surrounds a face
        for colour, mask in skin_masks(x):
            ii = _integral(mask.astype(np.float64))
            for region in _merge_split_heads(_sweep(mask, min_width=self.min_width)):
                c = self._search(region, ii)
                if c is not None:
                    cands.append((c[0], c[1], colour))
        cands.sort(key=lambda c: -c[0])
        # a window spanning two people (their eyes and cheeks read as one big face) holds two smaller candidates
        # side by side, each about half its size: drop it
        def spans_two(box: np.ndarray) -> bool:
            side = box[2] - box[0]
            inner = [c[1] for c in cands
                     if 0.38 * side <= c[1][2] - c[1][0] <= 0.7 * side and _centre_inside(c[1], box)]
            return any(box_iou(a, b) < 0.1 and abs((a[0] + a[2]) - (b[0] + b[2])) / 2 >= 0.35 * side
                       for i, a in enumerate(inner) for b in inner[i + 1:])

        cands = [c for c in cands if not spans_two(c[1])]
        faces: list[Face] = []
        for score, box, colour in cands:
            if any(box_iou(box, f.bbox) > 0.3 or _centre_inside(box, f.bbox) for f in faces):
                continue
            fits = [float(_ratio_fit(colour[None, None, :], p, 0.5, 1.45)[0][0, 0]) for p in _SKIN]
            faces.append(Face(bbox=box, score=float(score) / len(_FEATURES),
                              extra={"skin_rgb": colour, "skin_tone": W.SKIN_TONES[int(np.argmin(fits))]}))
        # faces never overlap much in this world: a smaller "face" mostly inside a larger one is a part of it (an
        # eye, a brow), and one on a chest right below a face is a torso pattern (people stand side by side)
        faces = [f for f in faces if not any(g.area > f.area and _inside_share(f.bbox, g.bbox) >= 0.4
                                             for g in faces if g is not f)]
        faces = [f for f in faces if not any(_stacked_below(f.bbox, g.bbox) for g in faces if g is not f)]
        # people in one photo of this world are about the same size (a child's face is 0.8 of an adult's)
        if faces:
            biggest = max(f.width for f in faces)
            faces = [f for f in faces if f.width >= 0.4 * biggest]
        return sorted(faces, key=lambda f: -f.area)

    def _search(self, reg: _Region, ii: np.ndarray) -> tuple[float, np.ndarray] | None:
        width = reg.x1 - reg.x0
        if width < self.min_width:
            return None
        s0 = max(width / _HEAD_W, 1.5 * self.min_width)
        sides = s0 * np.exp(np.linspace(np.log(0.7), np.log(1.45), 14))
        cx = 0.5 * (reg.x0 + reg.x1)
        grids = []
        for s in sides:
            st = max(0.5, s / 32)
            xs = np.arange(cx - 0.75 * s, cx - 0.25 * s + 1e-6, st)
            ys = np.arange(reg.top - 0.6 * s, reg.top - 0.05 * s + 1e-6, st)
            X, Y = np.meshgrid(xs, ys)
            grids.append(np.stack([X.ravel(), Y.ravel(), np.full(X.size, s)], 1))
        g = np.concatenate(grids, 0)
        X, Y, S = g[:, 0], g[:, 1], g[:, 2]
        best_ok = []
        # large faces may be tilted (reference photos: +-15 degrees); small scene faces are upright
        for angle in ((0.0, -11.0, 11.0) if sides[-1] >= 40 else (0.0,)):
            sel = np.ones(len(S), bool) if angle == 0.0 else S >= 40
            ok, score = _score_windows(ii, X[sel], Y[sel], S[sel], angle)
            if ok.any():
                best_ok.append(np.stack([score[ok] - 0.05 * abs(angle) / 11.0, X[sel][ok], Y[sel][ok],
                                         S[sel][ok]], 1))
        if not best_ok:
            return None
        allc = np.concatenate(best_ok, 0)
        top = allc[allc[:, 0] >= allc[:, 0].max() - 0.1]
        bx, by, bs = top[:, 1].mean(), top[:, 2].mean(), top[:, 3].mean()
        if bs < self.min_side:
            return None
        return float(allc[:, 0].max()), np.array([bx, by, bx + bs, by + bs], np.float32)


def box_iou(a, b) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when the union is empty)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _stacked_below(a, b) -> bool:
    """``a`` lies below ``b`` (its centre under ``b``'s centre) and overlaps it horizontally by >= 40 %."""
    wa, wb = a[2] - a[0], b[2] - b[0]
    overlap = min(a[2], b[2]) - max(a[0], b[0])
    below = 0.5 * (a[1] + a[3]) > 0.5 * (b[1] + b[3]) + 0.25 * (b[3] - b[1])
    return bool(below and overlap >= 0.4 * min(wa, wb) and 0.4 * wb <= wa <= 2.5 * wb)


def _inside_share(a, b) -> float:
    """Share of ``a``'s area inside ``b``."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1])
    return float(inter / area) if area > 0 else 0.0


def _centre_inside(a, b) -> bool:
    cx, cy = 0.5 * (a[0] + a[2]), 0.5 * (a[1] + a[3])
    return bool(b[0] <= cx <= b[2] and b[1] <= cy <= b[3])


# --------------------------------------------------------------------------------------------------------------
# Attribute reading (no network)
# --------------------------------------------------------------------------------------------------------------

_HAIR = np.array([W.HAIR_RGB[h] for h in W.HAIR_COLORS], np.float32)
_EYES = np.array([W.EYE_RGB[e] for e in W.EYE_COLORS], np.float32)
_WHITE = float(W.EYE_WHITE_RGB[0])


def _region(img: np.ndarray, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
    s = img.shape[0]
    a, b = int(round(v0 * s)), max(int(round(v1 * s)), int(round(v0 * s)) + 1)
    c, d = int(round(u0 * s)), max(int(round(u1 * s)), int(round(u0 * s)) + 1)
    return img[a:b, c:d].reshape(-1, 3)


class WorldAttributeReader:
    """Reads a world face's colour attributes from the pixels of its aligned crop. No network, nothing learnt.

    The crop is the face box of :class:`WorldFaceDetector` (or ``face_box_from_keypoints``), any size. Light and
    tint are undone with the eye whites (the renderer draws them ``EYE_WHITE_RGB`` times the light), then each
    attribute is a vote of palette-nearest pixels in the region where the renderer draws it: skin on the cheeks
    and forehead, hair above the fringe, irises in the eyes, glasses frames on the nose bridge, a beard on the
    chin. ``read`` returns ``skin_tone``, ``hair_color``, ``eye_color``, ``glasses`` and ``beard``.
    """

    attributes = COLOUR_ATTRIBUTES

    def __init__(self, size: int = 112) -> None:
        self.size = int(size)

    def _prepare(self, crop: np.ndarray) -> tuple[np.ndarray, bool]:
        """The crop at ``size``, white-balanced on the eye whites; ``reliable``: unsaturated whites were found."""
        from PIL import Image

        img = as_rgb_uint8(crop)
        if img.shape[0] != self.size or img.shape[1] != self.size:
            img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BICUBIC))
        x = img.astype(np.float32)
        # white balance from the brightest near-neutral eye pixels (light 0.7-1.3 times a small tint)
        eyes = np.concatenate([_region(x, 0.24, 0.40, 0.44, 0.52), _region(x, 0.56, 0.40, 0.76, 0.52)])
        neutral = eyes[(eyes.max(1) - eyes.min(1) < 0.16 * eyes.max(1)) & (eyes.min(1) > 120)]
        gain = np.ones(3, np.float32)
        reliable = False
        if len(neutral) >= 2:
            white = np.sort(neutral, axis=0)[-max(1, len(neutral) // 10):].mean(0)
            if (white >= 250).any():  # a saturated white only says the light is >= 1
                gain = np.minimum(np.clip(_WHITE / np.maximum(white, 1.0), 1 / 1.35, 1 / 0.7), 1.0)
            else:
                gain = np.clip(_WHITE / np.maximum(white, 1.0), 1 / 1.35, 1 / 0.7)
                reliable = True
        return x * gain.astype(np.float32)[None, None, :], reliable

    @staticmethod
    def _nearest(px: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.linalg.norm(px[:, None, :] - palette[None, :, :], axis=-1)
        return d.argmin(1), d.min(1)

    def read(self, face_crop_rgb: np.ndarray) -> dict[str, object]:
        x, reliable = self._prepare(face_crop_rgb)
        out: dict[str, object] = {}
        # skin: the median of cheeks and forehead, matched by hue (channel ratios: light-invariant, saturation-
        # aware) and, after the white balance, by brightness (tan and dark share a hue)
        skin_px = np.concatenate([_region(x, 0.27, 0.54, 0.36, 0.62), _region(x, 0.64, 0.54, 0.73, 0.62),
                                  _region(x, 0.42, 0.34, 0.58, 0.40)])
        med = np.median(skin_px, 0).astype(np.float32)
        costs = []
        for p in _SKIN:
            sp, f = _ratio_fit(med[None, None, :], p, 0.2, 5.0)
            sp, f = float(sp[0, 0]), float(f[0, 0])
            if not np.isfinite(sp):  # fully saturated: only the light skin does that
                sp = 0.0 if p[0] == _SKIN.max(0)[0] else 1.0
                f = 1.0
            lo, hi = (0.75, 1.15) if reliable else (0.75, 1.4)
            costs.append(sp + 2.0 * max(0.0, math.log(lo / max(f, 1e-3)), math.log(max(f, 1e-3) / hi)))
        tone = int(np.argmin(costs))
        out["skin_tone"] = W.SKIN_TONES[tone]
        skin = _SKIN[tone]
        # hair: above the fringe line, the majority of pixels nearest a hair colour at some light
        hair_px = np.concatenate([_region(x, 0.32, 0.17, 0.68, 0.29), _region(x, 0.13, 0.32, 0.21, 0.48),
                                  _region(x, 0.79, 0.32, 0.87, 0.48)])
        scales = (0.9, 1.0, 1.1) if reliable else (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
        pal = np.concatenate([_HAIR * k for k in scales] + [skin[None] * k for k in scales])
        idx, dist = self._nearest(np.clip(hair_px, 0, 255), np.clip(pal, 0, 255))
        n_h = len(_HAIR)
        hair_idx = np.where(idx < n_h * len(scales), idx % n_h, -1)
        hv = np.bincount(hair_idx[(hair_idx >= 0) & (dist < 70)], minlength=n_h)
        out["hair_color"] = W.HAIR_COLORS[int(hv.argmax())] if hv.sum() else W.HAIR_COLORS[0]
        # eyes: irises inside the eye boxes (white, pupil, skin and frames compete)
        eye_px = np.concatenate([_region(x, 0.28, 0.41, 0.40, 0.51), _region(x, 0.60, 0.41, 0.72, 0.51)])
        pal = np.concatenate([_EYES, np.array([[_WHITE] * 3, W.PUPIL_RGB, W.GLASSES_RGB], np.float32), skin[None],
                              _HAIR * 0.85])
        idx, dist = self._nearest(eye_px, pal)
        ev = np.bincount(idx[(idx < len(_EYES)) & (dist < 60)], minlength=len(_EYES)).astype(np.float32)
        ev[W.EYE_COLORS.index("brown")] *= 0.6  # brown irises look like brows, shadows and dark skin
        out["eye_color"] = W.EYE_COLORS[int(ev.argmax())] if ev.sum() else "brown"
        # glasses: dark frames on the nose bridge and under the eyes, where the face is otherwise skin
        bridge = _region(x, 0.455, 0.42, 0.545, 0.48)
        under = np.concatenate([_region(x, 0.25, 0.49, 0.43, 0.56), _region(x, 0.57, 0.49, 0.75, 0.56)])
        lum = lambda p: p.mean(1)  # noqa: E731
        ref = float(skin.mean())
        dark_b = float((lum(bridge) < 0.6 * ref).mean() if ref > 80 else (lum(bridge) < 0.55 * ref).mean())
        dark_u = float((lum(under) < 0.6 * ref).mean())
        out["glasses"] = bool(dark_b > 0.2 and dark_u > 0.08)
        # beard: the chin (below the mouth) is not skin
        chin = _region(x, 0.40, 0.74, 0.60, 0.82)
        shades = np.concatenate([skin[None] * k for k in scales])
        sidx, _ = self._nearest(chin, np.concatenate([shades, _HAIR * 0.72]))
        beard_votes = (sidx >= len(shades)).mean()
        out["beard"] = bool(beard_votes > 0.5)
        return out
