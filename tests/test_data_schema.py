"""PairHuman annotation schema: real-format files parse, broken ones are rejected naming file and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhumandiff.data.captions import caption_person_spans
from dhumandiff.data.schema import (
    Annotation, PersonSpan, dump_annotation, load_annotation, parse_annotation, resolve_person_span,
)
from dhumandiff.errors import AnnotationError

SENTENCE = "A bride in a lace gown and her groom in a navy suit walk hand in hand along the beach."
SECOND = "Waves roll in behind them under a pale sky."


def _kps(x: float, y: float) -> list[list[float]]:
    return [[x + i, y + 2 * i, 0.9] for i in range(17)]


def real_annotation(spans: str = "char") -> dict[str, Any]:
    """A hand-written annotation in the real PairHuman schema (as documented in docs/design.md section 1)."""
    if spans == "char":
        p1 = {"words": "bride", "start_idx": 2, "end_idx": 7}
        p2 = {"words": "groom", "start_idx": 31, "end_idx": 36}
    elif spans == "word":  # word indices, end exclusive
        p1 = {"words": "bride", "start_idx": 1, "end_idx": 2}
        p2 = {"words": "groom", "start_idx": 8, "end_idx": 9}
    else:  # word indices, end inclusive
        p1 = {"words": "bride", "start_idx": 1, "end_idx": 1}
        p2 = {"words": "groom", "start_idx": 8, "end_idx": 8}
    return {
        "Information": {"height": 768, "width": 512, "Image category": "weddings",
                        "Photo Settings": "outdoor, natural light, full body"},
        "image_caption": {
            "text": f"{SENTENCE} {SECOND}",
            "match_info": [
                {"sentence_ID": 1, "sentence": SENTENCE, "person_info": [p1, p2]},
                {"sentence_ID": 2, "sentence": SECOND, "person_info": []},
            ],
        },
        "people": [
            {"object_id": 1, "gender": "female", "age_group": "young adult",
             "unique_coordinate": [40, 80, 250, 760], "facial_traits": "oval face, brown eyes",
             "hair_detail": "long wavy brown hair", "skin_tone": "fair", "action": "walking",
             "expression": "smiling", "details_of_clothes_and_shoes": "white lace gown, white heels",
             "accessories": "veil, earrings", "keypoints": _kps(140, 150)},
            {"object_id": 2, "gender": "male", "age_group": "adult",
             "unique_coordinate": [260.5, 60, 480, 766.25], "facial_traits": "square jaw",
             "hair_detail": "short black hair", "skin_tone": "tan", "action": "walking",
             "expression": "laughing", "details_of_clothes_and_shoes": "navy suit, brown shoes",
             "accessories": None, "keypoints": _kps(360, 130)},
        ],
        "objects": [{"object_id": 3, "count": 1, "appearance": "bouquet of roses", "interaction": "held by bride"}],
    }


def write(tmp_path: Path, obj: Any, name: str = "a.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


@pytest.mark.parametrize("spans", ["char", "word", "word-inclusive"])
def test_real_schema_parses_and_spans_resolve(tmp_path: Path, spans: str) -> None:
    ann = load_annotation(write(tmp_path, real_annotation(spans)))
    assert ann.information.width == 512 and ann.information.height == 768
    assert ann.information.image_category == "weddings"
    assert ann.people[1].unique_coordinate == (260.5, 60.0, 480.0, 766.25)
    assert len(ann.people[0].keypoints) == 17
    assert ann.objects[0].appearance == "bouquet of roses"
    got = caption_person_spans(ann)
    text = ann.image_caption.text
    assert [text[a:b] for a, b in got] == ["bride", "groom"]


def test_resolve_person_span_conventions() -> None:
    s = "Two friends, a woman and a lady, smile."
    assert resolve_person_span(s, PersonSpan("woman", 15, 20)) == (15, 20)  # chars, exclusive
    assert resolve_person_span(s, PersonSpan("woman", 15, 19)) == (15, 20)  # chars, inclusive
    assert resolve_person_span(s, PersonSpan("woman", 3, 4)) == (15, 20)  # words (whitespace), exclusive
    assert resolve_person_span(s, PersonSpan("lady", 6, 6)) == (27, 31)  # words, inclusive ("lady," stripped)
    assert resolve_person_span(s, PersonSpan("lady", 7, 8)) == (27, 31)  # word+punctuation tokens
    with pytest.raises(AnnotationError, match=r"f\.json: field 'p': words 'man'"):
        resolve_person_span(s, PersonSpan("man", 30, 33), source="f.json", field="p")


def test_span_mismatch_is_reported_with_field(tmp_path: Path) -> None:
    obj = real_annotation()
    obj["image_caption"]["match_info"][0]["person_info"][1]["start_idx"] = 50
    obj["image_caption"]["match_info"][0]["person_info"][1]["end_idx"] = 55
    path = write(tmp_path, obj)
    ann = load_annotation(path)  # spans are checked when resolved, not at parse time
    with pytest.raises(AnnotationError) as e:
        caption_person_spans(ann)
    assert str(path) in str(e.value) and "match_info[0].person_info[1]" in str(e.value)


def test_optional_fields_may_be_missing_and_extras_are_kept() -> None:
    obj = {
        "Information": {"height": 64, "width": 64},
        "image_caption": {"text": "a man and a woman"},
        "people": [{"unique_coordinate": [0, 0, 10, 10], "identity_id": "id0001", "pose": {"yaw": 3}}],
        "split": "heldout",
    }
    ann = parse_annotation(obj)
    assert ann.objects == [] and ann.image_caption.match_info == []
    assert ann.people[0].identity_id == "id0001" and ann.people[0].extra["pose"] == {"yaw": 3}
    assert ann.people[0].keypoints is None and ann.people[0].gender is None
    assert ann.split == "heldout"
    out = ann.to_json()
    assert out["split"] == "heldout" and out["people"][0]["identity_id"] == "id0001"
    assert parse_annotation(out) == ann


def test_flat_coco_keypoints_are_accepted() -> None:
    obj = real_annotation()
    obj["people"][0]["keypoints"] = [v for kp in _kps(1, 2) for v in kp]
    ann = parse_annotation(obj)
    assert ann.people[0].keypoints[3] == (4.0, 8.0, 0.9)


def test_round_trip_of_real_file(tmp_path: Path) -> None:
    ann = load_annotation(write(tmp_path, real_annotation("word")))
    assert parse_annotation(ann.to_json()) == ann
    assert parse_annotation(json.loads(dump_annotation(ann))) == ann


def _mutated(path: list[Any], value: Any, delete: bool = False) -> dict[str, Any]:
    obj = copy.deepcopy(real_annotation())
    cur = obj
    for key in path[:-1]:
        cur = cur[key]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return obj


BROKEN = [
    (["people"], None, True, "'people'"),
    (["people"], [], False, "'people': expected a list with at least 1 person"),
    (["Information"], None, True, "'Information'"),
    (["Information", "height"], "768", False, "'Information.height': expected a positive integer"),
    (["Information", "width"], 0, False, "'Information.width'"),
    (["Information", "width"], True, False, "'Information.width'"),
    (["image_caption", "text"], 42, False, "'image_caption.text': expected a string"),
    (["image_caption", "text"], None, True, "'image_caption.text'"),
    (["image_caption", "match_info"], "x", False, "'image_caption.match_info'"),
    (["image_caption", "match_info", 0, "person_info", 1, "start_idx"], -1, False,
     "'image_caption.match_info[0].person_info[1].start_idx'"),
    (["people", 1, "unique_coordinate"], [3, 1], False,
     "'people[1].unique_coordinate': expected 4 numbers [x_min,y_min,x_max,y_max], got [3, 1]"),
    (["people", 1, "unique_coordinate"], [30, 0, 10, 20], False,
     "'people[1].unique_coordinate': expected x_min < x_max"),
    (["people", 0, "unique_coordinate"], ["0", 0, 1, 1], False, "'people[0].unique_coordinate'"),
    (["people", 0, "unique_coordinate"], None, True, "'people[0].unique_coordinate'"),
    (["people", 0, "keypoints"], [[1, 2, 1]] * 16, False, "'people[0].keypoints': expected 17"),
    (["people", 0, "keypoints", 4], [1, 2], False, "'people[0].keypoints[4]'"),
    (["people", 0, "gender"], 3, False, "'people[0].gender': expected a string"),
    (["people", 1], "a person", False, "'people[1]': expected an object"),
    (["objects"], {"a": 1}, False, "'objects': expected a list"),
]


@pytest.mark.parametrize("path,value,delete,needle", BROKEN)
def test_broken_fields_are_rejected_with_file_and_field(tmp_path: Path, path, value, delete, needle) -> None:
    p = write(tmp_path, _mutated(path, value, delete), "broken.json")
    with pytest.raises(AnnotationError) as e:
        load_annotation(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: field "), msg
    assert needle in msg, msg


def test_unreadable_files_are_annotation_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"Information": {"height": 1,', encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"bad\.json: not valid JSON"):
        load_annotation(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AnnotationError, match=r"bin\.json"):
        load_annotation(binary)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(real_annotation()).replace("760", "NaN"), encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"nan\.json"):
        load_annotation(nan)
    with pytest.raises(AnnotationError, match=r"missing\.json: cannot read"):
        load_annotation(tmp_path / "missing.json")
    listed = write(tmp_path, [1, 2], "list.json")
    with pytest.raises(AnnotationError, match=r"list\.json: field '<root>'"):
        load_annotation(listed)


def test_annotation_error_has_its_exit_code() -> None:
    with pytest.raises(AnnotationError) as e:
        parse_annotation({})
    assert e.value.exit_code == 8


# ---------------------------------------------------------------------------------------------------- properties

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_num = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_opt_text = st.none() | _text | st.lists(_text, max_size=3)
_json_scalar = st.none() | st.booleans() | st.integers(-1000, 1000) | _num | _text
_json = st.recursive(_json_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
                     max_leaves=8)


@st.composite
def _box(draw: Any) -> list[float]:
    x0, y0 = draw(_num), draw(_num)
    return [x0, y0, x0 + draw(st.floats(0.5, 1e4)), y0 + draw(st.floats(0.5, 1e4))]


def _extra(known: set[str]) -> Any:
    return st.dictionaries(_text.filter(lambda k: k not in known), _json, max_size=2)


@st.composite
def valid_annotations(draw: Any) -> dict[str, Any]:
    def opt(d: dict[str, Any], key: str, strat: Any) -> None:
        if draw(st.booleans()):
            d[key] = draw(strat)

    info: dict[str, Any] = {"height": draw(st.integers(1, 10**5)), "width": draw(st.integers(1, 10**5))}
    opt(info, "Image category", _text)
    opt(info, "Photo Settings", _json)
    match = []
    for _ in range(draw(st.integers(0, 2))):
        m: dict[str, Any] = {"sentence": draw(_text), "person_info": []}
        opt(m, "sentence_ID", st.integers(0, 9) | _text)
        for _ in range(draw(st.integers(0, 2))):
            a = draw(st.integers(0, 50))
            m["person_info"].append({"words": draw(_text), "start_idx": a, "end_idx": a + draw(st.integers(0, 5))})
        match.append(m)
    people = []
    for _ in range(draw(st.integers(1, 3))):
        p: dict[str, Any] = {"unique_coordinate": draw(_box())}
        opt(p, "object_id", st.integers(0, 9) | _text)
        for k in ("gender", "age_group", "facial_traits", "hair_detail", "skin_tone", "action", "expression",
                  "details_of_clothes_and_shoes", "accessories"):
            opt(p, k, _opt_text)
        opt(p, "keypoints", st.lists(st.tuples(_num, _num, st.floats(0, 1)).map(list), min_size=17, max_size=17))
        p.update(draw(_extra(set(p) | {"keypoints", "object_id", "unique_coordinate", "gender", "age_group",
                                       "facial_traits", "hair_detail", "skin_tone", "action", "expression",
                                       "details_of_clothes_and_shoes", "accessories"})))
        people.append(p)
    obj: dict[str, Any] = {"Information": info, "image_caption": {"text": draw(_text), "match_info": match},
                           "people": people}
    opt(obj, "objects", st.lists(st.fixed_dictionaries({}, optional={
        "object_id": st.integers(0, 9), "count": st.integers(0, 5), "appearance": _text, "interaction": _text}),
        max_size=2))
    obj.update(draw(_extra({"Information", "image_caption", "people", "objects"})))
    return obj


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_annotations())
def test_valid_annotations_round_trip(obj: dict[str, Any]) -> None:
    ann = parse_annotation(obj)
    again = parse_annotation(ann.to_json())
    assert again == ann
    assert parse_annotation(json.loads(dump_annotation(ann))) == ann


def _check_junk(obj: Any) -> None:
    try:
        ann = parse_annotation(obj, source="junk.json")
    except AnnotationError as e:
        assert str(e).startswith("junk.json: ")
    else:
        assert isinstance(ann, Annotation)
        try:
            caption_person_spans(ann)
        except AnnotationError:
            pass


@settings(max_examples=150, deadline=None, database=None)
@given(_json)
def test_random_junk_parses_or_raises_annotation_error(obj: Any) -> None:
    _check_junk(obj)


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_mutated_real_annotations_parse_or_raise_annotation_error(data: Any) -> None:
    """Junk deep inside an otherwise valid file (where a parser is most likely to trip)."""
    obj = real_annotation(data.draw(st.sampled_from(["char", "word"])))
    cur: Any = obj
    while isinstance(cur, (dict, list)) and cur and data.draw(st.booleans()):
        keys = list(cur.keys()) if isinstance(cur, dict) else list(range(len(cur)))
        key = data.draw(st.sampled_from(keys))
        if not isinstance(cur[key], (dict, list)) or data.draw(st.booleans()):
            cur[key] = data.draw(_json | st.integers() | st.floats())
            break
        cur = cur[key]
    _check_junk(obj)
