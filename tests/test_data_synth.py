"""The tiny world, synthetic captions, ``synthesize`` and ``check_folder``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dhumandiff.data import captions as C
from dhumandiff.data import world as W
from dhumandiff.data.check import check_folder
from dhumandiff.data.layout import DatasetLayout
from dhumandiff.data.schema import load_annotation
from dhumandiff.data.synth import synthesize


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda k: float(np.abs(rgb - np.array(palette[k])).sum()))


def _small(tmp_path: Path, name: str = "ds", **kw) -> Path:
    args = dict(count=8, seed=5, n_identities=16, refs_per_identity=2, heldout_fraction=0.25)
    args.update(kw)
    return synthesize(tmp_path / name, **args)


# ---------------------------------------------------------------------------------------------------------- world


def test_identities_are_distinct_stable_and_consistent() -> None:
    ids = W.make_identities(40, 3)
    assert [i.identity_id for i in ids] == [f"id{k:04d}" for k in range(40)]
    assert len({tuple(i.attributes().values()) for i in ids}) == 40
    assert ids == W.make_identities(40, 3) and ids != W.make_identities(40, 4)
    for i in ids:
        for k, v in i.attributes().items():
            assert v in W.ATTRIBUTES[k]
        assert (i.hair_color == "grey") == (i.age_group == "elderly")
        if i.beard:
            assert i.gender == "male" and not i.is_child
    for kind in (("male", "child"), ("female", "adult")):
        assert any((i.gender, i.age_group) == kind for i in ids)


def test_render_face_is_deterministic_and_aligned() -> None:
    ident = W.make_identities(4, 0)[1]
    a = W.render_face(ident)
    assert a.size == (112, 112) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(W.render_face(ident)))
    arr = np.asarray(a).astype(float)
    # cheek (below the eyes, above any beard) is the skin colour, the fringe is the hair colour
    assert _nearest(arr[int(0.58 * 112), int(0.33 * 112)], W.SKIN_RGB) == ident.skin_tone
    assert _nearest(arr[int(0.22 * 112), 56], W.HAIR_RGB) == ident.hair_color
    assert _nearest(arr[int(W.EYE_Y_FRAC * 112), int(0.34 * 112) + 3], W.EYE_RGB) == ident.eye_color
    views = W.reference_views(ident, 3, seed=1)
    assert len(views) == 3 and all(v.size == (112, 112) for v in views)
    assert not np.array_equal(np.asarray(views[0]), np.asarray(views[1]))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(views, W.reference_views(ident, 3, 1)))


@pytest.mark.parametrize("size", [64, 128])
def test_scene_faces_match_their_identities(size: int) -> None:
    """A face crop of a scene person shows that person's palette: the evaluator reads identity from pixels."""
    ids = W.make_identities(24, 1)
    rng = np.random.default_rng(0)
    for setting in W.SETTINGS:
        spec = W.sample_scene_spec(ids, rng, setting=setting)
        img, boxes, kps = W.render_scene(spec, size, rng)
        assert img.size == (size, size)
        arr = np.asarray(img).astype(float)
        centres = []
        for p, box, kp in zip(spec.persons, boxes, kps):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert len(kp) == 17 and all(len(k) == 3 for k in kp)
            assert all(k[2] == 1.0 for k in kp[:7])  # head and shoulders are in the frame
            fx0, fy0, fx1, fy1 = W.face_box_from_keypoints(kp, size)
            side = fx1 - fx0
            assert 0.2 * size < 0.6 * side < 0.32 * size  # face width ~0.25-0.3 of the frame (children smaller)
            cheek = arr[int(fy0 + 0.58 * side), int(fx0 + 0.33 * side)]
            assert _nearest(cheek, W.SKIN_RGB) == p.identity.skin_tone
            hair = arr[int(fy0 + 0.24 * side), int(fx0 + 0.5 * side)]
            assert _nearest(hair, W.HAIR_RGB) == p.identity.hair_color
            torso = arr[min(size - 1, int(y1 - 0.12 * size)), int((x0 + x1) / 2)]
            assert _nearest(torso, W.CLOTHES_RGB) == p.clothes_color or p.clothes_type == "suit"
            centres.append((x0 + x1) / 2)
        assert centres[0] < centres[1] and [p.side for p in spec.persons] == ["left", "right"]


def test_topics_decide_who_is_in_the_picture() -> None:
    ids = W.make_identities(40, 2)
    rng = np.random.default_rng(3)
    for topic in W.TOPICS:
        for _ in range(5):
            spec = W.sample_scene_spec(ids, rng, topic=topic)
            people = [p.identity for p in spec.persons]
            genders = sorted(i.gender for i in people)
            if topic in ("couples", "weddings"):
                assert genders == ["female", "male"] and not any(i.is_child for i in people)
            if topic == "weddings":
                clothes = {(p.identity.gender, p.clothes_color, p.clothes_type) for p in spec.persons}
                assert clothes == {("female", "white", "dress"), ("male", "black", "suit")}
            if topic == "female friends":
                assert genders == ["female", "female"]
            if topic == "parent-child":
                assert sum(i.is_child for i in people) == 1
            assert spec.persons[0].word != spec.persons[1].word
            assert people[0].identity_id != people[1].identity_id


def test_face_box_fallbacks() -> None:
    kps = [[0.0, 0.0, 0.0]] * 17
    with pytest.raises(ValueError):
        W.face_box_from_keypoints(kps, 64)
    box = W.face_box_from_keypoints(kps, 64, person_box=[10, 5, 30, 60])
    assert box[1] == 5 and box[2] - box[0] == pytest.approx(12)
    ears = [list(k) for k in kps]
    ears[3], ears[4] = [40.0, 20.0, 1.0], [20.0, 20.0, 1.0]
    b = W.face_box_from_keypoints(ears, (64, 48))
    assert (b[0] + b[2]) / 2 == pytest.approx(30) and b[2] - b[0] == pytest.approx(20 / W.FACE_WIDTH_FRAC)


# -------------------------------------------------------------------------------------------------------- captions


def test_captions_use_the_vocabulary_and_unique_person_words() -> None:
    vocab = set(C.world_vocabulary())
    face_words = {"hair", "glasses", "beard", "skin", "eyes", "eye", "blonde", "grey", "curly", "bald", "wrinkles"}
    assert not vocab & face_words  # identity comes from the reference face, never from the text
    ids = W.make_identities(24, 0)
    rng = np.random.default_rng(1)
    for _ in range(60):
        spec = W.sample_scene_spec(ids, rng)
        text, match = C.build_caption(spec, rng)
        words = re.findall(r"[\w-]+|\.", text)
        assert set(words) <= vocab, set(words) - vocab
        spans = [(p.start_idx, p.end_idx) for p in match[0].person_info]
        assert [text[a:b] for a, b in spans] == [p.word for p in spec.persons]
        for p in spec.persons:
            assert words.count(p.word) == 1
        assert spec.persons[0].clothes_color in text and spec.action in text
    assert len(C.caption_corpus(5, 0)) == 5 and C.caption_corpus(5, 0) == C.caption_corpus(5, 0)


# ----------------------------------------------------------------------------------------------- synth and check


def test_synth_writes_a_valid_pairhuman_folder(tmp_path: Path) -> None:
    root = _small(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["format"] == "pairhuman" and meta["version"] == 1 and meta["generator"] == "dhumandiff.synth"
    assert meta["seed"] == 5 and meta["image_size"] == 64
    assert meta["layout"] == {"images": "images", "annotations": "annotations", "faces": "faces"}
    report = check_folder(root)
    assert report.problems == [] and report.ok_count == 8
    identities = json.loads((root / "identities.json").read_text())
    assert len(identities) == 16 and set(identities["id0000"]) == set(W.ATTRIBUTES) | {"split"}
    split_of = {k: v["split"] for k, v in identities.items()}
    assert sorted(set(split_of.values())) == ["heldout", "train"]
    seen_splits = set()
    for path in sorted((root / "annotations").glob("*.json")):
        ann = load_annotation(path)
        img = Image.open(root / "images" / f"{path.stem}.png")
        assert img.size == (64, 64) and img.format == "PNG"
        seen_splits.add(ann.split)
        for p in ann.people:  # clean splits: held-out identities only in held-out images and vice versa
            assert split_of[p.identity_id] == ann.split
            assert p.facial_traits and p.hair_detail and p.skin_tone and p.accessories
        assert [p.object_id for p in ann.people] == [1, 2]
        assert ann.people[0].box[0] < ann.people[1].box[0]
    assert seen_splits == {"train", "heldout"}
    for iid in identities:
        faces = sorted((root / "faces" / iid).iterdir())
        assert [f.name for f in faces] == ["0.png", "1.png"]
        assert Image.open(faces[0]).size == (112, 112)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_synth_is_deterministic(tmp_path: Path) -> None:
    a, b = _small(tmp_path, "a", count=5), _small(tmp_path, "b", count=5)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + 2 * 5 + 2 * 16
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = _small(tmp_path, "c", count=5, seed=6)
    assert (a / "images/000000.png").read_bytes() != (c / "images/000000.png").read_bytes()


def test_synth_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    root = _small(tmp_path, count=2, heldout_fraction=0.0)
    with pytest.raises(FileExistsError):
        _small(tmp_path, count=2)
    _small(tmp_path, count=3, overwrite=True, heldout_fraction=0.0)
    assert len(list((root / "images").iterdir())) == 3
    with pytest.raises(ValueError):
        synthesize(tmp_path / "x", count=0, seed=0)


def test_synth_at_128(tmp_path: Path) -> None:
    root = _small(tmp_path, count=2, image_size=128, heldout_fraction=0.0)
    assert Image.open(root / "images/000001.png").size == (128, 128)
    assert check_folder(root).ok


def test_check_reports_each_problem_with_its_file(tmp_path: Path) -> None:
    root = _small(tmp_path, count=6)
    ann_dir = root / "annotations"

    def edit(name: str, fn) -> None:
        obj = json.loads((ann_dir / name).read_text())
        fn(obj)
        (ann_dir / name).write_text(json.dumps(obj))

    edit("000000.json", lambda o: o["people"][1].__setitem__("unique_coordinate", [30, 0, 90, 64]))
    edit("000001.json", lambda o: o["Information"].__setitem__("width", 65))
    edit("000002.json", lambda o: o["people"][0].__setitem__("identity_id", "nobody"))
    edit("000003.json", lambda o: o["people"][0].__setitem__("unique_coordinate", [3, 1]))
    (root / "images/000004.png").unlink()
    (ann_dir / "000005.json").write_text("{not json")
    bad_face = root / "faces/id0003/1.png"
    bad_face.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = check_folder(root)
    assert report.ok_count == 0
    by_file: dict[str, str] = {}
    for f, msg in report.problems:
        by_file[Path(f).name] = by_file.get(Path(f).name, "") + msg
    assert "people[1].unique_coordinate" in by_file["000000.json"] and "outside" in by_file["000000.json"]
    assert "do not match the image" in by_file["000001.json"]
    assert "'nobody' is not in identities.json" in by_file["000002.json"]
    assert "people[0].unique_coordinate" in by_file["000003.json"]
    assert "no image" in by_file["000004.json"]
    assert "not valid JSON" in by_file["000005.json"]
    assert "cannot be read" in by_file["1.png"]


def test_check_refuses_records_that_cannot_be_dual_person_records(tmp_path: Path) -> None:
    """The schema accepts any number of people; a PairHuman dual-person record needs exactly two, with boxes of
    positive area and two different identities."""
    root = _small(tmp_path, count=4, heldout_fraction=0.0)
    ann_dir = root / "annotations"

    def edit(name: str, fn) -> None:
        obj = json.loads((ann_dir / name).read_text())
        fn(obj)
        (ann_dir / name).write_text(json.dumps(obj))

    edit("000000.json", lambda o: o["people"].pop())
    edit("000001.json", lambda o: o["people"].append(dict(o["people"][0])))
    edit("000002.json", lambda o: o["people"][1].__setitem__("identity_id", o["people"][0]["identity_id"]))
    edit("000003.json", lambda o: o["people"][0].__setitem__("unique_coordinate", [10, 5, 10, 40]))
    report = check_folder(root)
    by_file: dict[str, str] = {}
    for f, msg in report.problems:
        by_file[Path(f).name] = by_file.get(Path(f).name, "") + msg
    assert "exactly 2 people, this one 1" in by_file["000000.json"]
    assert "exactly 2 people, this one 3" in by_file["000001.json"]
    assert "two different people" in by_file["000002.json"]
    assert "x_min < x_max" in by_file["000003.json"]  # the schema itself refuses a box without area
    assert report.ok_count == 0


def test_layout_is_configurable(tmp_path: Path) -> None:
    root = _small(tmp_path, count=2, heldout_fraction=0.0)
    (root / "images").rename(root / "img")
    (root / "annotations").rename(root / "ann")
    meta = json.loads((root / "dataset.json").read_text())
    meta["layout"] = {"images": "img", "annotations": "ann", "faces": "faces", "image_ext": [".png"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert DatasetLayout.from_root(root) == DatasetLayout("img", "ann", "faces", (".png",))
    report = check_folder(root)
    assert report.ok and report.ok_count == 2
    # a plain folder without dataset.json uses the defaults
    assert DatasetLayout.from_root(tmp_path) == DatasetLayout()
    meta["layout"]["images"] = "../elsewhere"
    (root / "dataset.json").write_text(json.dumps(meta))
    assert not check_folder(root).ok


def test_hugging_boxes_stay_on_their_person() -> None:
    ids = W.make_identities(24, 1)
    rng = np.random.default_rng(4)
    spec = W.sample_scene_spec(ids, rng, topic="couples")
    spec = W.SceneSpec(spec.setting, spec.topic, tuple(
        W.PersonSpec(p.identity, p.word, p.clothes_color, p.clothes_type, "hugging", p.side) for p in spec.persons))
    _, boxes, _ = W.render_scene(spec, 64, rng)
    assert boxes[0][2] < 40 and boxes[1][0] > 24  # boxes overlap at most a little in the middle


def test_importing_the_data_stage_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, dhumandiff.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
