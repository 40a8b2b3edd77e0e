"""The procedural "tiny world": identities, their faces, and half-body scenes of two people.

Everything here is pure NumPy + PIL and deterministic from a seed, so a synthetic PairHuman-format dataset can
be rebuilt byte for byte. The world is designed to be *learnable on a CPU* (docs/design.md section 6):

- identity is carried by a few well-separated colours (skin, hair, eyes) and shapes (face shape, hair style,
  glasses, beard), exported as palette constants so an evaluator can read attributes back from pixels;
- scenes use half-body framing so each face is large (face width ~0.25-0.3 of the frame, ~16-19 px at 64 px);
- faces in scenes are drawn by exactly the same code as the reference close-ups (:func:`render_face`), so a
  face crop of a scene person is a low-resolution version of that identity's reference views.

Drawing is done at ``_SS`` times the output resolution and box-filtered down, which gives anti-aliased edges
without any dependency beyond PIL.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# The colours a detector reads back from pixels live with the detector in the torch-free contract layer.
from ..contract.faces.world_palette import (EYE_COLORS, EYE_RGB, EYE_WHITE_RGB, GLASSES_RGB, HAIR_COLORS, HAIR_RGB,
                                            PUPIL_RGB, RGB, SKIN_RGB, SKIN_TONES)

# --------------------------------------------------------------------------------------------------------------
# Attribute vocabulary and palettes
# --------------------------------------------------------------------------------------------------------------

GENDERS = ("male", "female")
AGE_GROUPS = ("child", "young adult", "adult", "elderly")
FACE_SHAPES = ("round", "oval", "square")
HAIR_STYLES = ("short", "long", "bun", "curly")

#: Every face attribute and its possible values (what an evaluator may try to read back from pixels).
ATTRIBUTES: dict[str, tuple] = {
    "gender": GENDERS,
    "age_group": AGE_GROUPS,
    "face_shape": FACE_SHAPES,
    "skin_tone": SKIN_TONES,
    "hair_color": HAIR_COLORS,
    "hair_style": HAIR_STYLES,
    "eye_color": EYE_COLORS,
    "glasses": (False, True),
    "beard": (False, True),
}

CLOTHES_COLORS = ("red", "blue", "green", "yellow", "white", "black", "purple")
CLOTHES_RGB: dict[str, RGB] = {
    "red": (212, 38, 40),
    "blue": (40, 78, 204),
    "green": (34, 150, 64),
    "yellow": (242, 212, 40),
    "white": (246, 246, 246),
    "black": (30, 30, 36),
    "purple": (132, 58, 172),
}
CLOTHES_TYPES = ("shirt", "t-shirt", "dress", "suit")
LIP_RGB: RGB = (196, 78, 82)
FACE_BACKGROUND_RGB: RGB = (206, 208, 214)

SETTINGS = ("beach", "garden", "city", "chapel")
TOPICS = ("couples", "weddings", "female friends", "parent-child")
ACTIONS = ("standing side by side", "holding hands", "waving", "hugging")
EXPRESSION = "smiling"

#: COCO-17 keypoint order (person's left/right: for a front-facing person "left_eye" is on the image's right).
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# Face geometry in units of the aligned crop side (ArcFace-like: eyes at y=0.46, eye distance 0.32 of the crop).
EYE_Y_FRAC = 0.46
EYE_DIST_FRAC = 0.32
_EYE_X = (0.5 - EYE_DIST_FRAC / 2, 0.5 + EYE_DIST_FRAC / 2)
_FACE_CY = 0.53
_NOSE_Y = 0.59
_EAR_Y = 0.51
_FACE_DIMS = {"round": (0.62, 0.68), "oval": (0.54, 0.74), "square": (0.60, 0.70)}
#: Nominal face width as a fraction of the crop (what "face width" means for scene layout).
FACE_WIDTH_FRAC = 0.60

_SS = 4  # supersampling factor

Box = list[float]
Keypoints = list[list[float]]


# --------------------------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """One person of the tiny world. Frozen so it can be a dict key and is safe to share."""

    identity_id: str
    gender: str
    age_group: str
    face_shape: str
    skin_tone: str
    hair_color: str
    hair_style: str
    eye_color: str
    glasses: bool
    beard: bool

    def attributes(self) -> dict[str, str | bool]:
        """The face attributes (everything but the id), keyed like :data:`ATTRIBUTES`."""
        d = asdict(self)
        d.pop("identity_id")
        return d

    @property
    def is_child(self) -> bool:
        return self.age_group == "child"


# Ages cycle in pairs (male, female) so every (gender, age) group is represented even for small n, which the
# topics need (parent-child needs children, weddings need adults of both genders).
_AGE_CYCLE = ("young adult", "adult", "child", "elderly")


def make_identities(n: int, seed: int) -> list[Identity]:
    """``n`` identities with distinct attribute combinations and stable ids ``id0000``, ``id0001``...

    Gender alternates and age groups cycle so the population is balanced; the remaining attributes are drawn
    from ``seed``. Elderly people always have grey hair and nobody else does (grey is an age cue); beards are
    only for adult males. Identities also try to differ in their *visible-at-low-resolution* attributes
    (skin, hair colour, hair style, glasses) before repeating such a combination.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng([int(seed), 0x1D])
    out: list[Identity] = []
    seen_full: set[tuple] = set()
    seen_coarse: set[tuple] = set()
    for i in range(n):
        gender = GENDERS[i % 2]
        age = _AGE_CYCLE[(i // 2) % len(_AGE_CYCLE)]
        best: Identity | None = None
        for attempt in range(400):
            hair_color = "grey" if age == "elderly" else str(rng.choice(HAIR_COLORS[:-1]))
            styles = HAIR_STYLES if gender == "female" else ("short", "curly", "short")
            ident = Identity(
                identity_id=f"id{i:04d}",
                gender=gender,
                age_group=age,
                face_shape=str(rng.choice(FACE_SHAPES)),
                skin_tone=str(rng.choice(SKIN_TONES)),
                hair_color=hair_color,
                hair_style=str(rng.choice(styles)),
                eye_color=str(rng.choice(EYE_COLORS)),
                glasses=bool(rng.random() < 0.3),
                beard=bool(gender == "male" and age != "child" and rng.random() < 0.35),
            )
            full = tuple(ident.attributes().values())
            coarse = (gender, age, ident.skin_tone, ident.hair_color, ident.hair_style, ident.glasses)
            if full in seen_full:
                continue
            best = ident
            if coarse not in seen_coarse or attempt > 100:
                break
        if best is None:
            raise ValueError(f"cannot make {n} distinct identities")
        seen_full.add(tuple(best.attributes().values()))
        seen_coarse.add((gender, age, best.skin_tone, best.hair_color, best.hair_style, best.glasses))
        out.append(best)
    return out


# --------------------------------------------------------------------------------------------------------------
# Face drawing (shared by close-ups and scenes)
# --------------------------------------------------------------------------------------------------------------


def _scale(c: Sequence[int], f: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _face_dims(identity: Identity) -> tuple[float, float]:
    w, h = _FACE_DIMS[identity.face_shape]
    if identity.is_child:  # children: rounder faces
        w, h = w * 1.03, h * 0.93
    return w, h


def _face_layer(identity: Identity, crop: float) -> tuple[Image.Image, float]:
    """Draw one head on a transparent layer; returns (RGBA layer, pad).

    The aligned face crop (side ``crop`` pixels) sits at offset ``pad`` inside the layer; the margin leaves
    room for buns, curls and rotation. All coordinates are fractions of the crop, so the same face is drawn
    at any resolution: that is what makes a scene face a low-res copy of the reference views.
    """
    pad = 0.3 * crop
    side = int(math.ceil(crop + 2 * pad))
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    def P(u: float) -> float:
        return pad + u * crop

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [P(x0), P(y0), P(x1), P(y1)]

    def lw(frac: float) -> int:
        return max(1, int(round(frac * crop)))

    skin = SKIN_RGB[identity.skin_tone]
    hair_name = "grey" if identity.age_group == "elderly" else identity.hair_color
    hair = HAIR_RGB[hair_name]
    fw, fh = _face_dims(identity)
    cx, cy = 0.5, _FACE_CY
    fx0, fy0, fx1, fy1 = cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2
    top = fy0
    style = identity.hair_style

    # 1. hair behind the head
    if style == "long":
        d.rounded_rectangle(box(fx0 - 0.07, top - 0.04, fx1 + 0.07, 1.08), radius=0.2 * crop, fill=hair)
    elif style == "bun":
        d.ellipse(box(cx - 0.11, top - 0.17, cx + 0.11, top + 0.04), fill=hair)
    elif style == "curly":
        rx, ry = fw / 2 + 0.03, fh / 2 + 0.02
        for a in range(150, 391, 18):
            t = math.radians(a)
            x, y = cx + rx * math.cos(t), cy + ry * math.sin(t)
            if y < cy + 0.06:
                d.ellipse(box(x - 0.075, y - 0.075, x + 0.075, y + 0.075), fill=hair)
    # every style has a hair rim around the top of the head
    d.ellipse(box(fx0 - 0.035, top - 0.045, fx1 + 0.035, cy + 0.07), fill=hair)

    # 2. ears, 3. face
    ear = _scale(skin, 0.92)
    for ex in (fx0, fx1):
        d.ellipse(box(ex - 0.04, _EAR_Y - 0.07, ex + 0.04, _EAR_Y + 0.07), fill=ear)
    if identity.face_shape == "square":
        d.rounded_rectangle(box(fx0, fy0, fx1, fy1), radius=0.13 * crop, fill=skin)
    else:
        d.ellipse(box(fx0, fy0, fx1, fy1), fill=skin)

    # 4. beard: the lower face in a darkened hair colour (same shape as the face, below the nose)
    if identity.beard:
        mask = Image.new("L", layer.size, 0)
        md = ImageDraw.Draw(mask)
        if identity.face_shape == "square":
            md.rounded_rectangle(box(fx0, fy0, fx1, fy1 + 0.02), radius=0.13 * crop, fill=255)
        else:
            md.ellipse(box(fx0, fy0, fx1, fy1 + 0.02), fill=255)
        md.rectangle(box(-1, -1, 2, 0.635), fill=0)
        md.ellipse(box(0.36, 0.52, 0.64, 0.645), fill=255)  # moustache
        layer.paste(Image.new("RGBA", layer.size, _scale(hair, 0.72) + (255,)), (0, 0), mask)

    # 5. fringe over the forehead
    fringe_bottom = 0.31 if not identity.is_child else 0.33
    d.chord(box(fx0 - 0.02, top - 0.035, fx1 + 0.02, 2 * fringe_bottom - top + 0.035), 180, 360, fill=hair)
    if style == "curly":
        n = 6
        for k in range(n):
            x = fx0 + 0.03 + k * (fw - 0.06) / (n - 1)
            d.ellipse(box(x - 0.045, fringe_bottom - 0.06, x + 0.045, fringe_bottom + 0.025), fill=hair)
    if style == "long":  # side locks framing the face
        d.rectangle(box(fx0 - 0.03, fringe_bottom - 0.05, fx0 + 0.035, 0.78), fill=hair)
        d.rectangle(box(fx1 - 0.035, fringe_bottom - 0.05, fx1 + 0.03, 0.78), fill=hair)

    # 6. eyebrows, 7. eyes
    brow = _scale(hair, 0.85)
    big = 1.12 if identity.is_child else 1.0
    ew, eh, ir = 0.075 * big, 0.044 * big, 0.039 * big
    for ex in _EYE_X:
        d.line([(P(ex - 0.07), P(0.385)), (P(ex + 0.07), P(0.38))], fill=brow, width=lw(0.024))
        d.ellipse(box(ex - ew, EYE_Y_FRAC - eh, ex + ew, EYE_Y_FRAC + eh), fill=EYE_WHITE_RGB)
        d.ellipse(box(ex - ir, EYE_Y_FRAC - ir, ex + ir, EYE_Y_FRAC + ir), fill=EYE_RGB[identity.eye_color])
        d.ellipse(box(ex - 0.016, EYE_Y_FRAC - 0.016, ex + 0.016, EYE_Y_FRAC + 0.016), fill=PUPIL_RGB)

    # 8. nose, 9. mouth (smiling)
    nose = _scale(skin, 0.78)
    d.ellipse(box(0.47, _NOSE_Y - 0.018, 0.53, _NOSE_Y + 0.018), fill=nose)
    mw = 0.07 if identity.is_child else 0.09
    lips = _mix(_scale(skin, 0.8), LIP_RGB, 0.6)
    d.chord(box(0.5 - mw, 0.645, 0.5 + mw, 0.725), 0, 180, fill=lips)

    # 10. age cues: wrinkles on forehead and around the mouth
    if identity.age_group == "elderly":
        wr = _scale(skin, 0.68)
        for y in (0.335, 0.355):
            d.line([(P(0.41), P(y)), (P(0.59), P(y))], fill=wr, width=lw(0.01))
        d.line([(P(0.42), P(0.62)), (P(0.40), P(0.70))], fill=wr, width=lw(0.012))
        d.line([(P(0.58), P(0.62)), (P(0.60), P(0.70))], fill=wr, width=lw(0.012))

    # 11. glasses: dark frames, bridge and arms
    if identity.glasses:
        gw = lw(0.03)
        for ex in _EYE_X:
            d.rounded_rectangle(box(ex - 0.105, EYE_Y_FRAC - 0.07, ex + 0.105, EYE_Y_FRAC + 0.07),
                                radius=0.04 * crop, outline=GLASSES_RGB, width=gw)
        d.line([(P(_EYE_X[0] + 0.105), P(EYE_Y_FRAC - 0.01)), (P(_EYE_X[1] - 0.105), P(EYE_Y_FRAC - 0.01))],
               fill=GLASSES_RGB, width=gw)
        d.line([(P(fx0 - 0.01), P(EYE_Y_FRAC - 0.03)), (P(_EYE_X[0] - 0.105), P(EYE_Y_FRAC - 0.03))],
               fill=GLASSES_RGB, width=gw)
        d.line([(P(_EYE_X[1] + 0.105), P(EYE_Y_FRAC - 0.03)), (P(fx1 + 0.01), P(EYE_Y_FRAC - 0.03))],
               fill=GLASSES_RGB, width=gw)
    return layer, pad


def _face_background(size: int, rng: np.random.Generator | None) -> Image.Image:
    """Plain (no rng) or softly textured neutral background for a face close-up."""
    if rng is None:
        return Image.new("RGB", (size, size), FACE_BACKGROUND_RGB)
    base = np.array(FACE_BACKGROUND_RGB, dtype=np.float32) + rng.uniform(-18, 18, size=3)
    coarse = rng.uniform(-10, 10, size=(4, 4, 1)).astype(np.float32)
    noise = np.asarray(Image.fromarray(((coarse[..., 0] + 10) * 12.75).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 12.75 - 10
    grad = np.linspace(-8, 8, size, dtype=np.float32)[:, None]
    arr = base[None, None, :] + (noise + grad)[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _apply_light(img: Image.Image, light: float, tint: Sequence[float]) -> Image.Image:
    if light == 1.0 and tuple(tint) == (1.0, 1.0, 1.0):
        return img
    arr = np.asarray(img, dtype=np.float32) * (np.asarray(tint, dtype=np.float32) * float(light))[None, None, :]
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")


def render_face(
    identity: Identity,
    size: int = 112,
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0),
    light: float = 1.0,
    rng: np.random.Generator | None = None,
    scale: float = 1.0,
    tint: Sequence[float] = (1.0, 1.0, 1.0),
) -> Image.Image:
    """A front-facing face close-up, aligned like an ArcFace crop (eyes at y=0.46, face ~70% of the frame).

    ``pose`` is ``(dx, dy, rotation_degrees)`` with shifts as fractions of ``size``; ``scale`` zooms the face;
    ``light`` multiplies brightness and ``tint`` is a per-channel colour cast. ``rng`` only textures the
    background (``None``: plain background), so the face itself is identical for equal arguments.
    """
    dx, dy, rot = pose
    hr = size * _SS
    canvas = _face_background(size, rng).resize((hr, hr), Image.Resampling.BILINEAR)
    crop = hr * scale
    layer, pad = _face_layer(identity, crop)
    if rot:
        # rotate about the face centre, which sits at (0.5, _FACE_CY) of the crop
        centre = (pad + 0.5 * crop, pad + _FACE_CY * crop)
        layer = layer.rotate(rot, resample=Image.Resampling.NEAREST, center=centre)  # box-downsampled later
    ox = (hr - crop) / 2 + dx * hr - pad
    oy = (hr - crop) / 2 + dy * hr - pad
    canvas.paste(layer, (int(round(ox)), int(round(oy))), layer)
    out = canvas.resize((size, size), Image.Resampling.BOX)
    return _apply_light(out, light, tint)


def reference_views(identity: Identity, k: int, seed: int) -> list[Image.Image]:
    """``k`` 112x112 reference photos of one identity: small shifts, rotations (+-15 deg), zoom and lighting.

    The generator is seeded from ``seed`` and the identity id, so views are stable per identity no matter
    which other identities exist.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(identity.identity_id.encode()), 0x4EF])
    views = []
    for _ in range(k):
        pose = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-15, 15)))
        views.append(render_face(
            identity, 112, pose=pose, light=float(rng.uniform(0.7, 1.3)), rng=rng,
            scale=float(rng.uniform(0.9, 1.1)), tint=tuple(float(t) for t in rng.uniform(0.93, 1.07, size=3)),
        ))
    return views


# --------------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonSpec:
    """One person in a scene: who, how the caption names them, what they wear and do, and where they stand."""

    identity: Identity
    word: str
    clothes_color: str
    clothes_type: str
    action: str
    side: str  # "left" | "right"


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render a scene and write its caption; ``persons`` is ordered (left, right)."""

    setting: str
    topic: str
    persons: tuple[PersonSpec, PersonSpec]

    @property
    def action(self) -> str:
        return self.persons[0].action


def _adult(i: Identity) -> bool:
    return not i.is_child


_TOPIC_RULES = {
    # topic: (predicate for person A, predicate for person B)
    "couples": (lambda i: _adult(i) and i.gender == "male", lambda i: _adult(i) and i.gender == "female"),
    "weddings": (lambda i: i.gender == "male" and i.age_group in ("young adult", "adult"),
                 lambda i: i.gender == "female" and i.age_group in ("young adult", "adult")),
    "female friends": (lambda i: _adult(i) and i.gender == "female", lambda i: _adult(i) and i.gender == "female"),
    "parent-child": (lambda i: i.age_group in ("young adult", "adult"), lambda i: i.is_child),
}


def feasible_topics(identities: Sequence[Identity]) -> list[str]:
    """Topics for which ``identities`` contains a valid pair (two distinct people matching the topic)."""
    out = []
    for topic in TOPICS:
        pa, pb = _TOPIC_RULES[topic]
        a = [i for i in identities if pa(i)]
        b = [i for i in identities if pb(i)]
        if a and b and len({x.identity_id for x in a} | {x.identity_id for x in b}) >= 2:
            out.append(topic)
    return out


def _person_words(topic: str, a: Identity, b: Identity, rng: np.random.Generator) -> tuple[str, str]:
    """Caption nouns for persons A and B of a topic; always two different words so each is findable."""
    if topic == "couples":
        return [("man", "woman"), ("husband", "wife"), ("boyfriend", "girlfriend")][int(rng.integers(3))]
    if topic == "weddings":
        return "groom", "bride"
    if topic == "female friends":
        return [("woman", "friend"), ("lady", "friend"), ("woman", "lady")][int(rng.integers(3))]
    parent = {"male": ("father", "dad"), "female": ("mother", "mom")}[a.gender]
    child = {"male": ("son", "boy"), "female": ("daughter", "girl")}[b.gender]
    j = int(rng.integers(2))
    return parent[j], child[j]


def _clothes(topic: str, role: int, ident: Identity, rng: np.random.Generator, avoid: str | None) -> tuple[str, str]:
    if topic == "weddings":
        return ("black", "suit") if role == 0 else ("white", "dress")
    if ident.gender == "female":
        types = ("dress", "shirt", "t-shirt")
    elif ident.is_child:
        types = ("shirt", "t-shirt")
    else:
        types = ("suit", "shirt", "t-shirt")
    colors = [c for c in CLOTHES_COLORS if c != avoid]
    return str(rng.choice(colors)), str(rng.choice(types))


def sample_scene_spec(
    identities: Sequence[Identity],
    rng: np.random.Generator,
    topic: str | None = None,
    setting: str | None = None,
) -> SceneSpec:
    """Pick a topic (among those the pool allows), a matching pair, clothes, an action and sides."""
    topics = feasible_topics(identities)
    if not topics:
        raise ValueError("the identity pool cannot form any topic's pair (need e.g. an adult man and woman)")
    if topic is None:
        topic = str(rng.choice(topics))
    elif topic not in topics:
        raise ValueError(f"topic {topic!r} is not possible with these identities (possible: {topics})")
    if setting is None:
        setting = str(rng.choice(SETTINGS))
    elif setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    pa, pb = _TOPIC_RULES[topic]
    cand_a = [i for i in identities if pa(i)]
    a = cand_a[int(rng.integers(len(cand_a)))]
    cand_b = [i for i in identities if pb(i) and i.identity_id != a.identity_id]
    if not cand_b:  # a was the only B candidate too: redraw A among the others
        cand_a = [i for i in cand_a if any(pb(j) and j.identity_id != i.identity_id for j in identities)]
        a = cand_a[int(rng.integers(len(cand_a)))]
        cand_b = [i for i in identities if pb(i) and i.identity_id != a.identity_id]
    b = cand_b[int(rng.integers(len(cand_b)))]
    wa, wb = _person_words(topic, a, b, rng)
    ca = _clothes(topic, 0, a, rng, None)
    cb = _clothes(topic, 1, b, rng, ca[0])
    action = str(rng.choice(ACTIONS))
    a_left = bool(rng.integers(2))
    left, right = ((a, wa, ca), (b, wb, cb)) if a_left else ((b, wb, cb), (a, wa, ca))
    persons = (
        PersonSpec(left[0], left[1], left[2][0], left[2][1], action, "left"),
        PersonSpec(right[0], right[1], right[2][0], right[2][1], action, "right"),
    )
    return SceneSpec(setting=setting, topic=topic, persons=persons)


def _draw_background(setting: str, hr: int, rng: np.random.Generator) -> Image.Image:
    """A distinctive procedural backdrop per setting, drawn at the supersampled resolution ``hr``."""
    img = Image.new("RGB", (hr, hr))
    d = ImageDraw.Draw(img)
    u = lambda f: f * hr  # noqa: E731

    def vgrad(y0: float, y1: float, c0: RGB, c1: RGB) -> None:
        a, b = int(u(y0)), int(u(y1))
        for y in range(a, b):
            t = (y - a) / max(1, b - a - 1)
            d.line([(0, y), (hr, y)], fill=_mix(c0, c1, t))

    if setting == "beach":
        horizon = 0.46 + rng.uniform(-0.03, 0.03)
        shore = horizon + 0.15
        vgrad(0, horizon, (110, 180, 240), (180, 220, 248))
        sx = rng.choice([0.12, 0.88]) + rng.uniform(-0.04, 0.04)
        d.ellipse([u(sx - 0.06), u(0.06), u(sx + 0.06), u(0.18)], fill=(255, 236, 120))
        vgrad(horizon, shore, (28, 96, 160), (44, 130, 182))
        for k in range(4):
            y = horizon + 0.03 + k * 0.03
            x0 = rng.uniform(0, 0.5)
            d.line([(u(x0), u(y)), (u(x0 + 0.35), u(y))], fill=(120, 180, 220), width=max(1, hr // 128))
        vgrad(shore, 1.0001, (224, 204, 150), (206, 182, 126))
    elif setting == "garden":
        vgrad(0, 0.18, (170, 215, 235), (200, 230, 240))
        vgrad(0.18, 1.0001, (70, 146, 62), (44, 104, 40))
        for _ in range(40):  # hedge texture
            x, y, r = rng.uniform(0, 1), rng.uniform(0.15, 1), rng.uniform(0.03, 0.07)
            d.ellipse([u(x - r), u(y - r), u(x + r), u(y + r)], fill=(52, 118, 48))
        flowers = [(236, 110, 170), (250, 230, 70), (250, 250, 250), (220, 50, 60)]
        for _ in range(26):
            x, y, r = rng.uniform(0, 1), rng.uniform(0.2, 1), rng.uniform(0.012, 0.022)
            c = flowers[int(rng.integers(len(flowers)))]
            d.ellipse([u(x - r), u(y - r), u(x + r), u(y + r)], fill=c)
    elif setting == "city":
        vgrad(0, 1.0001, (196, 202, 214), (222, 224, 230))
        x = -rng.uniform(0, 0.1)
        while x < 1:
            w = rng.uniform(0.14, 0.26)
            top = rng.uniform(0.04, 0.3)
            g = int(rng.integers(95, 150))
            d.rectangle([u(x), u(top), u(x + w), hr], fill=(g, g, g + 6))
            lit = (240, 214, 120)
            dark = (64, 74, 96)
            for wy in np.arange(top + 0.04, 1.0, 0.08):
                for wx in np.arange(x + 0.025, x + w - 0.04, 0.06):
                    c = lit if rng.random() < 0.4 else dark
                    d.rectangle([u(wx), u(wy), u(wx + 0.03), u(wy + 0.04)], fill=c)
            x += w + rng.uniform(0.0, 0.03)
        d.rectangle([0, u(0.9), hr, hr], fill=(78, 78, 84))
    elif setting == "chapel":
        vgrad(0, 1.0001, (246, 234, 236), (236, 218, 224))
        for px in (0.08, 0.92):
            d.rectangle([u(px - 0.025), 0, u(px + 0.025), hr], fill=(252, 246, 248))
        ax = 0.5 + rng.uniform(-0.03, 0.03)
        aw, at = 0.17, 0.1 + rng.uniform(-0.02, 0.02)
        d.rectangle([u(ax - aw - 0.035), u(at + aw - 0.035), u(ax + aw + 0.035), hr], fill=(218, 160, 176))
        d.ellipse([u(ax - aw - 0.035), u(at - 0.035), u(ax + aw + 0.035), u(at + 2 * aw + 0.035)],
                  fill=(218, 160, 176))
        d.rectangle([u(ax - aw), u(at + aw), u(ax + aw), hr], fill=(112, 78, 92))
        d.ellipse([u(ax - aw), u(at), u(ax + aw), u(at + 2 * aw)], fill=(112, 78, 92))
        d.rectangle([0, u(0.72), hr, u(0.75)], fill=(226, 170, 186))
    else:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    return img


@dataclass
class _Layout:
    """Where one person is, in output pixels (floats)."""

    hx: float
    hy: float
    crop: float
    face_w: float
    face_h: float

    @property
    def crop_x0(self) -> float:
        return self.hx - 0.5 * self.crop

    @property
    def crop_y0(self) -> float:
        return self.hy - _FACE_CY * self.crop

    @property
    def chin(self) -> float:
        return self.hy + self.face_h / 2 * self.crop

    @property
    def shoulder_y(self) -> float:
        return self.chin + 0.16 * self.crop

    @property
    def shoulder_half(self) -> float:
        return 0.4 * self.crop


def _person_layout(p: PersonSpec, size: int, rng: np.random.Generator, hugging: bool) -> _Layout:
    base = 0.31 if hugging else 0.27
    hx = (base if p.side == "left" else 1 - base) + rng.uniform(-0.025, 0.025)
    hy = 0.30 + rng.uniform(-0.02, 0.02)
    fw = rng.uniform(0.25, 0.29)
    if p.identity.is_child:  # children are drawn smaller and lower
        fw *= 0.8
        hy += 0.1
    crop = fw / FACE_WIDTH_FRAC * size
    w, h = _face_dims(p.identity)
    return _Layout(hx * size, hy * size, crop, w, h)


def _arm_path(lay: _Layout, outward: int, action: str, role: str, size: int,
              partner: _Layout | None) -> list[tuple[float, float]]:
    """Shoulder, elbow and wrist points (output px) for one arm.

    ``outward`` is -1 for the arm on the image-left side of the person, +1 for the image-right side;
    ``role`` is "outer" (away from the partner) or "inner".
    """
    C, sw, ys = lay.crop, lay.shoulder_half, lay.shoulder_y
    sx = lay.hx + outward * (sw - 0.06 * C)
    sy = ys + 0.06 * C
    if action == "waving" and role == "outer":
        return [(sx, sy), (lay.hx + outward * (sw + 0.1 * C), ys + 0.22 * C),
                (lay.hx + outward * (sw + 0.08 * C), ys - 0.4 * C)]
    if action == "holding hands" and role == "inner" and partner is not None:
        mid = (lay.hx + partner.hx) / 2
        return [(sx, sy), (lay.hx + outward * (sw + 0.04 * C), ys + 0.5 * C), (mid, ys + 0.95 * C)]
    if action == "hugging" and role == "inner" and partner is not None:
        # arm around the partner: across to the partner's far shoulder (left person) or waist (right person)
        far = partner.hx + outward * 0.6 * partner.shoulder_half
        y = ys + (0.22 if outward > 0 else 0.75) * C
        return [(sx, sy), ((lay.hx + partner.hx) / 2, y), (far, y + 0.02 * C)]
    return [(sx, sy), (lay.hx + outward * (sw + 0.01 * C), ys + 0.62 * C),
            (lay.hx + outward * (sw + 0.02 * C), ys + 1.22 * C)]


def _draw_torso(d: ImageDraw.ImageDraw, lay: _Layout, p: PersonSpec, size: int) -> None:
    k = _SS
    C, sw, ys = lay.crop, lay.shoulder_half, lay.shoulder_y
    hx = lay.hx
    cloth = CLOTHES_RGB[p.clothes_color]
    shade = _scale(cloth, 0.72) if p.clothes_color != "black" else (70, 70, 80)
    skin = SKIN_RGB[p.identity.skin_tone]
    bottom = size * 1.3
    S = lambda pts: [(x * k, y * k) for x, y in pts]  # noqa: E731
    # neck (slightly shadowed skin)
    d.rectangle([(hx - 0.09 * C) * k, (lay.chin - 0.08 * C) * k, (hx + 0.09 * C) * k, (ys + 0.1 * C) * k],
                fill=_scale(skin, 0.9))
    flare = 1.25 if p.clothes_type == "dress" else 1.0
    body = [(hx - sw, ys + 0.14 * C), (hx - sw + 0.14 * C, ys), (hx + sw - 0.14 * C, ys), (hx + sw, ys + 0.14 * C),
            (hx + sw * flare, bottom), (hx - sw * flare, bottom)]
    d.polygon(S(body), fill=cloth)
    t = p.clothes_type
    if t == "suit":
        shirt_c = (245, 245, 245) if p.clothes_color != "white" else (200, 210, 230)
        d.polygon(S([(hx - 0.11 * C, ys), (hx + 0.11 * C, ys), (hx, ys + 0.5 * C)]), fill=shirt_c)
        tie = (150, 20, 40) if p.clothes_color != "red" else (30, 30, 80)
        d.polygon(S([(hx - 0.025 * C, ys + 0.02 * C), (hx + 0.025 * C, ys + 0.02 * C),
                     (hx + 0.04 * C, ys + 0.4 * C), (hx, ys + 0.47 * C), (hx - 0.04 * C, ys + 0.4 * C)]), fill=tie)
        for o in (-1, 1):
            d.line(S([(hx + o * 0.11 * C, ys), (hx + o * 0.02 * C, ys + 0.52 * C)]), fill=shade,
                   width=max(1, int(0.03 * C * k)))
    elif t == "shirt":
        for o in (-1, 1):
            d.polygon(S([(hx, ys + 0.03 * C), (hx + o * 0.14 * C, ys - 0.02 * C), (hx + o * 0.1 * C, ys + 0.12 * C)]),
                      fill=_mix(cloth, (255, 255, 255), 0.35))
        for j in range(4):
            y = ys + (0.18 + 0.18 * j) * C
            r = 0.018 * C
            d.ellipse(S([(hx - r, y - r), (hx + r, y + r)]), fill=shade)
    elif t == "t-shirt":
        d.chord(S([(hx - 0.13 * C, ys - 0.1 * C), (hx + 0.13 * C, ys + 0.1 * C)]), 0, 180, fill=_scale(skin, 0.9))
    elif t == "dress":
        d.polygon(S([(hx - sw + 0.1 * C, ys - 0.01 * C), (hx + sw - 0.1 * C, ys - 0.01 * C), (hx, ys + 0.24 * C)]),
                  fill=skin)
        d.rectangle(S([(hx - sw * 1.05, ys + 0.75 * C), (hx + sw * 1.05, ys + 0.81 * C)]), fill=shade)


def _draw_arm(d: ImageDraw.ImageDraw, path: list[tuple[float, float]], lay: _Layout, p: PersonSpec) -> None:
    k = _SS
    C = lay.crop
    cloth = CLOTHES_RGB[p.clothes_color]
    skin = SKIN_RGB[p.identity.skin_tone]
    w = 0.16 * C
    pts = [(x * k, y * k) for x, y in path]
    t = p.clothes_type
    arm_col = skin if t in ("dress", "t-shirt") else cloth
    d.line(pts, fill=arm_col, width=max(1, int(w * k)), joint="curve")
    for x, y in pts[:2]:
        r = w * k / 2
        d.ellipse([x - r, y - r, x + r, y + r], fill=arm_col)
    if t == "t-shirt":  # short sleeve over the upper half of the upper arm
        (x0, y0), (x1, y1) = pts[0], pts[1]
        mid = (x0 + (x1 - x0) * 0.55, y0 + (y1 - y0) * 0.55)
        d.line([pts[0], mid], fill=cloth, width=max(1, int(w * 1.15 * k)))
        r = w * 1.15 * k / 2
        d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=cloth)
    hx, hy = pts[2]
    r = 0.085 * C * k
    d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=skin)


def _keypoints(lay: _Layout, arms: dict[int, list[tuple[float, float]]], size: int) -> Keypoints:
    """COCO-17 keypoints in output pixels; conf 1 inside the frame, 0 outside."""
    C = lay.crop
    x0, y0 = lay.crop_x0, lay.crop_y0
    # person's left (COCO "left_*") is on the image right (+1) for a front-facing person
    pts = [
        (x0 + 0.5 * C, y0 + _NOSE_Y * C),
        (x0 + _EYE_X[1] * C, y0 + EYE_Y_FRAC * C),
        (x0 + _EYE_X[0] * C, y0 + EYE_Y_FRAC * C),
        (x0 + (0.5 + lay.face_w / 2) * C, y0 + _EAR_Y * C),
        (x0 + (0.5 - lay.face_w / 2) * C, y0 + _EAR_Y * C),
        arms[+1][0], arms[-1][0], arms[+1][1], arms[-1][1], arms[+1][2], arms[-1][2],
    ]
    ys = lay.shoulder_y
    for o in (+1, -1):  # hips
        pts.append((lay.hx + o * 0.6 * lay.shoulder_half, ys + 1.5 * C))
    for o in (+1, -1):  # knees
        pts.append((lay.hx + o * 0.5 * lay.shoulder_half, ys + 2.5 * C))
    for o in (+1, -1):  # ankles
        pts.append((lay.hx + o * 0.5 * lay.shoulder_half, ys + 3.5 * C))
    out = []
    for x, y in pts:
        inside = 0 <= x < size and 0 <= y < size
        out.append([round(float(x), 2), round(float(y), 2), 1.0 if inside else 0.0])
    return out


def _person_box(lay: _Layout, arms: dict[int, list[tuple[float, float]]], size: int) -> Box:
    C = lay.crop
    xs = [lay.hx - lay.shoulder_half * 1.25, lay.hx + lay.shoulder_half * 1.25,
          lay.crop_x0 + (0.5 - lay.face_w / 2 - 0.1) * C, lay.crop_x0 + (0.5 + lay.face_w / 2 + 0.1) * C]
    ys = [lay.crop_y0 + 0.02 * C]
    for path in arms.values():
        for x, y in path:
            xs += [x - 0.1 * C, x + 0.1 * C]
            ys.append(y - 0.1 * C)
    x0 = max(0, math.floor(min(xs)))
    x1 = min(size, math.ceil(max(xs)))
    y0 = max(0, math.floor(min(ys)))
    return [float(x0), float(y0), float(x1), float(size)]


def render_scene(
    spec: SceneSpec, size: int = 64, rng: np.random.Generator | None = None
) -> tuple[Image.Image, list[Box], list[Keypoints]]:
    """Render a half-body photo of the two persons of ``spec`` in its setting.

    Returns the RGB image, one ``[x_min, y_min, x_max, y_max]`` box per person (pixels, ordered like
    ``spec.persons``; an arm hugging the partner is not included) and one COCO-17 keypoint list per person.
    ``rng`` drives background details and small position jitter; ``None`` means a fixed generator (seed 0).
    """
    if rng is None:
        rng = np.random.default_rng(0)
    hr = size * _SS
    img = _draw_background(spec.setting, hr, rng)
    d = ImageDraw.Draw(img)
    hugging = spec.action == "hugging"
    lays = [_person_layout(p, size, rng, hugging) for p in spec.persons]
    sides = [p.side for p in spec.persons]
    partner = {0: lays[1], 1: lays[0]}
    arms: list[dict[int, list[tuple[float, float]]]] = []
    for idx, (p, lay) in enumerate(zip(spec.persons, lays)):
        inner = +1 if sides[idx] == "left" else -1
        arms.append({o: _arm_path(lay, o, p.action, "inner" if o == inner else "outer", size, partner[idx])
                     for o in (-1, +1)})
    crossing = lambda idx, o: (spec.persons[idx].action == "hugging"  # noqa: E731
                               and o == (+1 if sides[idx] == "left" else -1))
    for idx, (p, lay) in enumerate(zip(spec.persons, lays)):
        _draw_torso(d, lay, p, size)
        for o in (-1, +1):
            if not crossing(idx, o):
                _draw_arm(d, arms[idx][o], lay, p)
    for idx, (p, lay) in enumerate(zip(spec.persons, lays)):
        for o in (-1, +1):
            if crossing(idx, o):
                _draw_arm(d, arms[idx][o], lay, p)
    for p, lay in zip(spec.persons, lays):
        layer, pad = _face_layer(p.identity, lay.crop * _SS)
        img.paste(layer, (int(round(lay.crop_x0 * _SS - pad)), int(round(lay.crop_y0 * _SS - pad))), layer)
    out = img.resize((size, size), Image.Resampling.BOX)
    # an arm around the partner is left out of the box, so each box stays on its own person (region masks)
    boxes = [_person_box(lay, {o: path for o, path in a.items() if not crossing(idx, o)}, size)
             for idx, (lay, a) in enumerate(zip(lays, arms))]
    kps = [_keypoints(lay, a, size) for lay, a in zip(lays, arms)]
    return out, boxes, kps


# --------------------------------------------------------------------------------------------------------------
# Face boxes from keypoints (synthetic and real annotations)
# --------------------------------------------------------------------------------------------------------------


def face_box_from_keypoints(
    keypoints: Sequence[Sequence[float]],
    image_size: int | tuple[int, int],
    person_box: Sequence[float] | None = None,
    min_conf: float = 0.05,
) -> Box:
    """A square ``[x_min, y_min, x_max, y_max]`` face box from COCO-17 head keypoints (nose, eyes, ears).

    With both eyes it inverts the aligned-crop geometry of :func:`render_face` (eye distance = 0.32 of the
    side, eyes at 0.46 of the height), so a crop of a scene face is framed like a reference view; with fewer
    points it falls back to ears, then nose + shoulders, then the top of ``person_box``. The box may extend
    past the image (crop with padding). Raises ``ValueError`` when nothing usable is given.
    ``image_size`` is ``size`` or ``(width, height)`` and bounds the box side.
    """
    w, h = (image_size, image_size) if isinstance(image_size, (int, float)) else image_size
    pts = {}
    for name, kp in zip(COCO_KEYPOINTS, keypoints):
        if len(kp) >= 3 and kp[2] > min_conf:
            pts[name] = (float(kp[0]), float(kp[1]))
    side = cx = top = None
    if "left_eye" in pts and "right_eye" in pts:
        (lx, ly), (rx, ry) = pts["left_eye"], pts["right_eye"]
        dist = math.hypot(lx - rx, ly - ry)
        if dist > 0:
            side = dist / EYE_DIST_FRAC
            cx, ey = (lx + rx) / 2, (ly + ry) / 2
            top = ey - EYE_Y_FRAC * side
    if side is None and "left_ear" in pts and "right_ear" in pts:
        (lx, ly), (rx, ry) = pts["left_ear"], pts["right_ear"]
        dist = math.hypot(lx - rx, ly - ry)
        if dist > 0:
            side = dist / FACE_WIDTH_FRAC
            cx, ey = (lx + rx) / 2, (ly + ry) / 2
            top = ey - _EAR_Y * side
    if side is None and "nose" in pts and "left_shoulder" in pts and "right_shoulder" in pts:
        (lx, ly), (rx, ry) = pts["left_shoulder"], pts["right_shoulder"]
        side = max(1.0, math.hypot(lx - rx, ly - ry) * 1.1)
        cx = pts["nose"][0]
        top = pts["nose"][1] - _NOSE_Y * side
    if side is None and person_box is not None:
        x0, y0, x1, y1 = (float(v) for v in person_box)
        side = max(1.0, min(x1 - x0, y1 - y0) * 0.6)
        cx, top = (x0 + x1) / 2, y0
    if side is None or cx is None or top is None:
        raise ValueError("no usable head keypoints (eyes, ears, nose+shoulders) and no person box")
    side = min(max(side, 2.0), float(max(w, h)))
    x0 = cx - side / 2
    return [x0, top, x0 + side, top + side]
