"""Typed schema of the real PairHuman annotation JSON (docs/design.md section 1), strict where it matters.

Required fields (image size, caption text, people with boxes, keypoint shapes) are validated strictly and every
failure raises :class:`~dhumandiff.errors.AnnotationError` naming the file and the field path, e.g.
``ann/000001.json: field 'people[1].unique_coordinate': expected 4 numbers [x_min,y_min,x_max,y_max], got [3, 1]``.
Optional fields may be missing, and unknown fields are kept in ``extra`` dicts, because the public release is
only partly documented and the synthetic generator adds its own fields (``people[i].identity_id``, ``split``).
``parse_annotation(a.to_json()) == a`` holds for every parsed annotation.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dhumandiff.errors import AnnotationError

#: Free-text attribute value: real annotations use strings; lists of strings are tolerated.
Text = str | list[str] | None

_PERSON_TEXT_FIELDS = ("gender", "age_group", "facial_traits", "hair_detail", "skin_tone", "action", "expression",
                       "details_of_clothes_and_shoes", "accessories")
_OBJECT_TEXT_FIELDS = ("appearance", "interaction")
N_KEYPOINTS = 17


# --------------------------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Information:
    """``Information``: image size (required) plus category ("couples", ...) and photo settings (optional)."""

    height: int
    width: int
    image_category: Text = None  # JSON key "Image category"
    photo_settings: Any = None  # JSON key "Photo Settings" (free form: str or dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PersonSpan:
    """One ``person_info`` entry: the person's words in a sentence and their (ambiguous) span indices."""

    words: str
    start_idx: int
    end_idx: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchInfo:
    """One ``match_info`` entry: a sentence of the caption and the persons it mentions."""

    sentence: str
    person_info: list[PersonSpan] = field(default_factory=list)
    sentence_id: int | str | None = None  # JSON key "sentence_ID"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageCaption:
    """``image_caption``: the full caption (often longer than 77 CLIP tokens) and its sentence matches."""

    text: str
    match_info: list[MatchInfo] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Person:
    """One ``people`` entry. Only ``unique_coordinate`` is required; keypoints are COCO-17 ``(x, y, conf)``."""

    unique_coordinate: tuple[float, float, float, float]
    object_id: int | str | None = None
    gender: Text = None
    age_group: Text = None
    facial_traits: Text = None
    hair_detail: Text = None
    skin_tone: Text = None
    action: Text = None
    expression: Text = None
    details_of_clothes_and_shoes: Text = None
    accessories: Text = None
    keypoints: tuple[tuple[float, float, float], ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.unique_coordinate

    @property
    def identity_id(self) -> str | None:
        """Synthetic data only: which identity (folder under ``faces/``) this person is."""
        v = self.extra.get("identity_id")
        return v if isinstance(v, str) else None


@dataclass
class ObjectInfo:
    """One ``objects`` entry (props the people hold or interact with); all fields optional."""

    object_id: int | str | None = None
    count: int | str | None = None
    appearance: Text = None
    interaction: Text = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Annotation:
    """One image's annotation. ``source`` (file path) is for messages only and does not take part in ``==``."""

    information: Information
    image_caption: ImageCaption
    people: list[Person]
    objects: list[ObjectInfo] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="<memory>", compare=False)

    @property
    def split(self) -> str | None:
        v = self.extra.get("split")
        return v if isinstance(v, str) else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object (key names of the real schema); optional fields that are ``None`` are omitted."""
        info: dict[str, Any] = dict(self.information.extra)
        info.update({"height": self.information.height, "width": self.information.width})
        _put(info, "Image category", self.information.image_category)
        _put(info, "Photo Settings", self.information.photo_settings)
        cap: dict[str, Any] = dict(self.image_caption.extra)
        cap["text"] = self.image_caption.text
        cap["match_info"] = [_match_json(m) for m in self.image_caption.match_info]
        out: dict[str, Any] = {
            "Information": info,
            "image_caption": cap,
            "people": [_person_json(p) for p in self.people],
            "objects": [_object_json(o) for o in self.objects],
        }
        for k, v in self.extra.items():
            if k not in out:
                out[k] = v
        return out


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _num_json(v: float) -> int | float:
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)


def _match_json(m: MatchInfo) -> dict[str, Any]:
    d: dict[str, Any] = dict(m.extra)
    _put(d, "sentence_ID", m.sentence_id)
    d["sentence"] = m.sentence
    d["person_info"] = [{**s.extra, "words": s.words, "start_idx": s.start_idx, "end_idx": s.end_idx}
                        for s in m.person_info]
    return d


def _person_json(p: Person) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _put(d, "object_id", p.object_id)
    _put(d, "gender", p.gender)
    _put(d, "age_group", p.age_group)
    d["unique_coordinate"] = [_num_json(v) for v in p.unique_coordinate]
    for k in _PERSON_TEXT_FIELDS[2:]:
        _put(d, k, getattr(p, k))
    if p.keypoints is not None:
        d["keypoints"] = [[_num_json(v) for v in kp] for kp in p.keypoints]
    for k, v in p.extra.items():
        d.setdefault(k, v)
    return d


def _object_json(o: ObjectInfo) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _put(d, "object_id", o.object_id)
    _put(d, "count", o.count)
    _put(d, "appearance", o.appearance)
    _put(d, "interaction", o.interaction)
    for k, v in o.extra.items():
        d.setdefault(k, v)
    return d


# --------------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------------


class _Ctx:
    """Carries the source name so every helper can build a message naming file and field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: Any = ..., ) -> AnnotationError:
        msg = f"{self.source}: field '{path}': expected {expected}"
        if got is not ...:
            msg += f", got {_short(got)}"
        return AnnotationError(msg)


def _short(v: Any, limit: int = 80) -> str:
    try:
        r = repr(v)
    except Exception:  # pragma: no cover - repr of JSON values does not fail
        r = f"<{type(v).__name__}>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite_float(ctx: _Ctx, path: str, v: Any, expected: str) -> float:
    if not _is_number(v):
        raise ctx.fail(path, expected, v)
    try:
        f = float(v)
    except OverflowError:
        raise ctx.fail(path, expected, v) from None
    if not math.isfinite(f):
        raise ctx.fail(path, expected, v)
    return f


def _dict(ctx: _Ctx, path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ctx.fail(path, "an object", v)
    return v


def _text(ctx: _Ctx, path: str, v: Any) -> Text:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise ctx.fail(path, "a string (or a list of strings)", v)


def _id(ctx: _Ctx, path: str, v: Any) -> int | str | None:
    if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise ctx.fail(path, "an integer or a string", v)


def _extra(d: dict[str, Any], known: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in known}


def _parse_information(ctx: _Ctx, v: Any) -> Information:
    d = _dict(ctx, "Information", v)
    size = {}
    for key in ("height", "width"):
        if key not in d:
            raise ctx.fail(f"Information.{key}", "a positive integer (missing)")
        x = d[key]
        if not (isinstance(x, int) and not isinstance(x, bool)) or x <= 0:
            raise ctx.fail(f"Information.{key}", "a positive integer", x)
        size[key] = x
    return Information(
        height=size["height"], width=size["width"],
        image_category=_text(ctx, "Information.Image category", d.get("Image category")),
        photo_settings=d.get("Photo Settings"),
        extra=_extra(d, ("height", "width", "Image category", "Photo Settings")),
    )


def _parse_span(ctx: _Ctx, path: str, v: Any) -> PersonSpan:
    d = _dict(ctx, path, v)
    words = d.get("words")
    if not isinstance(words, str):
        raise ctx.fail(f"{path}.words", "a string", words)
    idx = {}
    for key in ("start_idx", "end_idx"):
        x = d.get(key)
        if not (isinstance(x, int) and not isinstance(x, bool)) or x < 0:
            raise ctx.fail(f"{path}.{key}", "a non-negative integer", x)
        idx[key] = x
    if idx["end_idx"] < idx["start_idx"]:
        raise ctx.fail(f"{path}.end_idx", f"end_idx >= start_idx ({idx['start_idx']})", idx["end_idx"])
    return PersonSpan(words, idx["start_idx"], idx["end_idx"], _extra(d, ("words", "start_idx", "end_idx")))


def _parse_match(ctx: _Ctx, path: str, v: Any) -> MatchInfo:
    d = _dict(ctx, path, v)
    sentence = d.get("sentence")
    if not isinstance(sentence, str):
        raise ctx.fail(f"{path}.sentence", "a string", sentence)
    pinfo = d.get("person_info", [])
    if pinfo is None:
        pinfo = []
    if not isinstance(pinfo, list):
        raise ctx.fail(f"{path}.person_info", "a list", pinfo)
    spans = [_parse_span(ctx, f"{path}.person_info[{i}]", s) for i, s in enumerate(pinfo)]
    return MatchInfo(sentence=sentence, person_info=spans, sentence_id=_id(ctx, f"{path}.sentence_ID",
                                                                           d.get("sentence_ID")),
                     extra=_extra(d, ("sentence", "person_info", "sentence_ID")))


def _parse_caption(ctx: _Ctx, v: Any) -> ImageCaption:
    d = _dict(ctx, "image_caption", v)
    text = d.get("text")
    if not isinstance(text, str):
        if "text" not in d:
            raise ctx.fail("image_caption.text", "a string (missing)")
        raise ctx.fail("image_caption.text", "a string", text)
    mi = d.get("match_info", [])
    if mi is None:
        mi = []
    if not isinstance(mi, list):
        raise ctx.fail("image_caption.match_info", "a list", mi)
    return ImageCaption(text=text,
                        match_info=[_parse_match(ctx, f"image_caption.match_info[{i}]", m) for i, m in enumerate(mi)],
                        extra=_extra(d, ("text", "match_info")))


def _parse_box(ctx: _Ctx, path: str, v: Any) -> tuple[float, float, float, float]:
    expected = "4 numbers [x_min,y_min,x_max,y_max]"
    if not isinstance(v, list) or len(v) != 4 or not all(_is_number(x) for x in v):
        raise ctx.fail(path, expected, v)
    x0, y0, x1, y1 = (_finite_float(ctx, path, x, expected + " (finite)") for x in v)
    if not (x0 < x1 and y0 < y1):
        raise ctx.fail(path, "x_min < x_max and y_min < y_max", v)
    return (x0, y0, x1, y1)


def _parse_keypoints(ctx: _Ctx, path: str, v: Any) -> tuple[tuple[float, float, float], ...] | None:
    if v is None or (isinstance(v, list) and len(v) == 0):
        return None
    expected = f"{N_KEYPOINTS} [x,y,conf] triples (COCO-17) or {3 * N_KEYPOINTS} numbers"
    if not isinstance(v, list):
        raise ctx.fail(path, expected, v)
    if len(v) == 3 * N_KEYPOINTS and all(_is_number(x) for x in v):
        v = [v[i: i + 3] for i in range(0, len(v), 3)]
    if len(v) != N_KEYPOINTS:
        raise ctx.fail(path, expected, v)
    out = []
    for i, kp in enumerate(v):
        if not isinstance(kp, list) or len(kp) != 3:
            raise ctx.fail(f"{path}[{i}]", "[x, y, conf]", kp)
        out.append(tuple(_finite_float(ctx, f"{path}[{i}]", x, "[x, y, conf] finite numbers") for x in kp))
    return tuple(out)  # type: ignore[return-value]


def _parse_person(ctx: _Ctx, path: str, v: Any) -> Person:
    d = _dict(ctx, path, v)
    if "unique_coordinate" not in d:
        raise ctx.fail(f"{path}.unique_coordinate", "4 numbers [x_min,y_min,x_max,y_max] (missing)")
    texts = {k: _text(ctx, f"{path}.{k}", d.get(k)) for k in _PERSON_TEXT_FIELDS}
    known = ("object_id", "unique_coordinate", "keypoints") + _PERSON_TEXT_FIELDS
    return Person(
        unique_coordinate=_parse_box(ctx, f"{path}.unique_coordinate", d["unique_coordinate"]),
        object_id=_id(ctx, f"{path}.object_id", d.get("object_id")),
        keypoints=_parse_keypoints(ctx, f"{path}.keypoints", d.get("keypoints")),
        extra=_extra(d, known),
        **texts,
    )


def _parse_object(ctx: _Ctx, path: str, v: Any) -> ObjectInfo:
    d = _dict(ctx, path, v)
    return ObjectInfo(
        object_id=_id(ctx, f"{path}.object_id", d.get("object_id")),
        count=_id(ctx, f"{path}.count", d.get("count")),
        appearance=_text(ctx, f"{path}.appearance", d.get("appearance")),
        interaction=_text(ctx, f"{path}.interaction", d.get("interaction")),
        extra=_extra(d, ("object_id", "count", "appearance", "interaction")),
    )


def parse_annotation(obj: Any, source: str = "<memory>") -> Annotation:
    """Validate a decoded JSON object and build an :class:`Annotation`; ``source`` names it in errors."""
    ctx = _Ctx(str(source))
    if not isinstance(obj, dict):
        raise AnnotationError(f"{ctx.source}: field '<root>': expected a JSON object, got {_short(obj)}")
    for key in ("Information", "image_caption", "people"):
        if key not in obj:
            raise ctx.fail(key, "present (required field is missing)")
    people = obj["people"]
    if not isinstance(people, list) or len(people) < 1:
        raise ctx.fail("people", "a list with at least 1 person", people)
    objects = obj.get("objects", [])
    if objects is None:
        objects = []
    if not isinstance(objects, list):
        raise ctx.fail("objects", "a list", objects)
    return Annotation(
        information=_parse_information(ctx, obj["Information"]),
        image_caption=_parse_caption(ctx, obj["image_caption"]),
        people=[_parse_person(ctx, f"people[{i}]", p) for i, p in enumerate(people)],
        objects=[_parse_object(ctx, f"objects[{i}]", o) for i, o in enumerate(objects)],
        extra=_extra(obj, ("Information", "image_caption", "people", "objects")),
        source=ctx.source,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_annotation(path: str | os.PathLike) -> Annotation:
    """Read and validate one annotation file; every failure (unreadable, not JSON, bad field) is an
    :class:`AnnotationError` that names the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise AnnotationError(f"{p}: cannot read annotation file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{p}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise AnnotationError(f"{p}: not valid JSON: {e}") from None
    return parse_annotation(obj, source=str(p))


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def dump_annotation(ann: Annotation) -> str:
    """Canonical text of an annotation file: stable key order, 2-space indent, number lists (boxes, keypoint
    triples) on one line so a file stays readable, trailing newline."""
    text = json.dumps(ann.to_json(), indent=2, ensure_ascii=False, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Span conventions
# --------------------------------------------------------------------------------------------------------------

_WS_TOKENS = re.compile(r"\S+")
_PUNCT_TOKENS = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
_STRIP = " \t\n\r.,;:!?\"'()[]{}"


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).strip(_STRIP)


def resolve_person_span(
    sentence: str, person_info: PersonSpan, source: str = "<memory>", field: str = "person_info"
) -> tuple[int, int]:
    """Character span ``[start, end)`` of a person's words in ``sentence``, whatever the index convention.

    PairHuman does not document whether ``start_idx``/``end_idx`` are character offsets or word indices, nor
    whether the end is inclusive; each reading is tried and accepted only if the indexed text equals ``words``
    (case and surrounding punctuation ignored). Raises :class:`AnnotationError` when no reading matches.
    """
    words = _norm(person_info.words)
    s, e = person_info.start_idx, person_info.end_idx
    if not words:
        raise AnnotationError(f"{source}: field '{field}.words': expected the person's words, got ''")
    n = len(sentence)
    # character offsets, end exclusive then inclusive
    for end in (e, e + 1):
        if 0 <= s < end <= n and _norm(sentence[s:end]) == words:
            return _trim(sentence, s, end)
    # word indices over whitespace tokens, then over word/punctuation tokens
    for pattern in (_WS_TOKENS, _PUNCT_TOKENS):
        toks = [(m.start(), m.end()) for m in pattern.finditer(sentence)]
        for end in (e, e + 1):
            if 0 <= s < end <= len(toks):
                a, b = toks[s][0], toks[end - 1][1]
                if _norm(sentence[a:b]) == words:
                    return _trim(sentence, a, b)
    raise AnnotationError(
        f"{source}: field '{field}': words {person_info.words!r} are not at start_idx={s}, end_idx={e} of the "
        f"sentence {_short(sentence, 60)} as character offsets or word indices (end exclusive or inclusive)")


def _trim(sentence: str, a: int, b: int) -> tuple[int, int]:
    """Shrink a span to the words themselves (drop surrounding spaces and punctuation)."""
    while a < b and sentence[a] in _STRIP:
        a += 1
    while b > a and sentence[b - 1] in _STRIP:
        b -= 1
    return a, b
