"""The tiny world's face analysis: palette detector, refusals, encoders, training entry, attribute reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dhumandiff.data import world as W
from dhumandiff.errors import CheckpointError, FaceNotFoundError, InputImageError, MultipleFacesError
from dhumandiff.model.faces import get_face_analyzer
from dhumandiff.model.faces.world import (
    COLOUR_ATTRIBUTES, TinyCLIPVision, WorldAnalyzer, WorldAttributeReader, WorldFaceDetector, WorldIdentityEncoder,
    arcface_normalize, face_crop, tiny_clip_vision_config, train_world_encoders,
)


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def ids():
    return W.make_identities(40, 0)


@pytest.fixture(scope="module")
def detector():
    return WorldFaceDetector()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return WorldIdentityEncoder(arch="a").eval()


@pytest.fixture(scope="module")
def analyzer(encoder):
    return WorldAnalyzer(encoder=encoder)


def _gradient(h=96, w=128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx / w * 255, yy / h * 255, (1 - xx / w) * 200 + 30], -1).astype(np.uint8)


# ------------------------------------------------------------------ detector


def test_one_face_on_every_reference_view(ids, detector):
    for ident in ids[::3]:
        for view in W.reference_views(ident, 2, seed=3):
            faces = detector.detect(np.asarray(view))
            assert len(faces) == 1, ident
            # the box is the aligned crop: the whole 112 px reference view, give or take the pose jitter
            assert _iou(faces[0].bbox, [0, 0, 112, 112]) > 0.6


@pytest.mark.parametrize("size,min_exact", [(64, 11), (128, 12)])
def test_two_faces_on_scenes(ids, detector, size, min_exact):
    rng = np.random.default_rng(size)
    exact = 0
    for _ in range(12):
        spec = W.sample_scene_spec(ids, rng)
        img, _, kps = W.render_scene(spec, size, rng)
        faces = detector.detect(np.asarray(img))
        exact += len(faces) == 2
        gts = [W.face_box_from_keypoints(k, size) for k in kps]
        for f in faces:  # nothing but the two people is ever a face
            assert max(_iou(f.bbox, g) for g in gts) > 0.5
    assert exact >= min_exact


def test_no_face_in_plain_gradient_or_empty_background(detector):
    assert detector.detect(np.full((112, 112, 3), 200, np.uint8)) == []
    assert detector.detect(np.full((64, 64, 3), W.SKIN_RGB["medium"], np.uint8)) == []
    assert detector.detect(_gradient()) == []
    rng = np.random.default_rng(0)
    for setting in W.SETTINGS:
        for size in (64, 128):
            bg = W._draw_background(setting, size * 4, rng).resize((size, size), Image.Resampling.BOX)
            assert detector.detect(np.asarray(bg)) == [], setting


# ------------------------------------------------------------------ refusals (FaceAnalyzer.analyze_single)


def test_refuses_a_photo_without_a_face(analyzer):
    with pytest.raises(FaceNotFoundError, match="no face found in gradient.png: use a clear, front-facing photo"):
        analyzer.analyze_single(_gradient(), name="gradient.png")


def test_refuses_three_faces_unless_face_index(analyzer, ids):
    views = [np.asarray(W.reference_views(i, 1, seed=5)[0]) for i in ids[:3]]
    group = np.concatenate(views, axis=1)
    with pytest.raises(MultipleFacesError, match=r"3 faces found in group\.png; pass --face-index N"):
        analyzer.analyze_single(group, name="group.png")
    face = analyzer.analyze_single(group, face_index=1, name="group.png")
    assert face.embedding.shape == (512,) and abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5
    with pytest.raises(FaceNotFoundError, match="out of range"):
        analyzer.analyze_single(group, face_index=3)


def test_refuses_a_face_too_small(analyzer, ids):
    view = np.asarray(W.reference_views(ids[0], 1, seed=1)[0])
    with pytest.raises(FaceNotFoundError, match=r"face too small in ref\.png .* at least 200 px"):
        analyzer.analyze_single(view, min_face_px=200, name="ref.png")
    small = np.asarray(Image.fromarray(view).resize((9, 9), Image.BOX))
    canvas = np.full((112, 112, 3), W.FACE_BACKGROUND_RGB, np.uint8)
    canvas[50:59, 50:59] = small
    with pytest.raises(FaceNotFoundError):
        analyzer.analyze_single(canvas, name="tiny.png")


def test_paths_and_unreadable_photos(analyzer, ids, tmp_path):
    path = tmp_path / "ref.png"
    W.reference_views(ids[2], 1, seed=4)[0].save(path)
    assert analyzer.analyze_single(path).embedding.shape == (512,)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(InputImageError, match="broken.jpg"):
        analyzer.analyze_single(bad)
    with pytest.raises(InputImageError, match="does not exist"):
        analyzer.analyze_single(tmp_path / "missing.png")
    with pytest.raises(FaceNotFoundError, match="no face found in broken-face.png"):
        analyzer.analyze_single(np.zeros((64, 64, 3), np.uint8), name="broken-face.png")


def test_analyze_single_on_a_reference_view(analyzer, ids, encoder):
    view = np.asarray(W.reference_views(ids[4], 1, seed=2)[0])
    face = analyzer.analyze_single(view, name="ref.png")
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (analyzer.embedding_dim,)
    direct = encoder.embed(face_crop(view, face))[0]
    assert float(direct @ face.embedding) > 0.9999


# ------------------------------------------------------------------ encoders


def test_identity_encoder_shapes_archs_and_roundtrip(tmp_path, encoder):
    x = arcface_normalize(np.zeros((2, 112, 112, 3), np.uint8))
    with torch.no_grad():
        out = encoder(x)
    assert out.shape == (2, 512)
    b = WorldIdentityEncoder(arch="b").eval()
    assert b(x).shape == (2, 512)
    assert sum(p.numel() for p in b.parameters()) != sum(p.numel() for p in encoder.parameters())
    with pytest.raises(ValueError, match="arch"):
        WorldIdentityEncoder(arch="z")
    encoder.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "config.json").is_file()
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "enc").iterdir())
    again = WorldIdentityEncoder.from_pretrained(tmp_path / "enc").eval()
    with torch.no_grad():
        assert torch.allclose(again(x), out, atol=1e-6)


def test_tiny_clip_vision_penultimate_features():
    cfg = tiny_clip_vision_config()
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_size) == (56, 8, 64)
    model = TinyCLIPVision().eval()
    with torch.no_grad():
        out = model(pixel_values=torch.zeros(2, 3, 56, 56), output_hidden_states=True)
    assert out.hidden_states[-2].shape == (2, 50, 64)


def test_train_world_encoders_tiny_run(tmp_path):
    ids = W.make_identities(15, 1)
    m = train_world_encoders(tmp_path / "faces", identities=ids, steps=2, batch=8, views=1, scenes=8,
                             eval_scenes=2, threads=1)
    for key in ("scene_vs_ref_same_cos", "scene_vs_ref_diff_cos", "verification_acc", "attr_acc_mean",
                "seconds_total"):
        assert key in m
    for sub in ("identity_encoder", "image_encoder"):
        folder = tmp_path / "faces" / sub
        assert (folder / "config.json").is_file()
        assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    assert json.loads((tmp_path / "faces" / "metrics.json").read_text())["steps"] == 2
    analyzer = get_face_analyzer("world", encoder=tmp_path / "faces")
    face = analyzer.analyze_single(np.asarray(W.reference_views(ids[0], 1, seed=0)[0]))
    assert face.embedding.shape == (512,)


def test_train_the_evaluator_arch_b(tmp_path):
    m = train_world_encoders(tmp_path / "eval", identities=W.make_identities(10, 2), steps=2, batch=8, views=1,
                             scenes=6, eval_scenes=2, arch="b", threads=1)
    assert m["arch"] == "b" and m["clip_steps"] == 0
    assert not (tmp_path / "eval" / "image_encoder").exists()
    enc = WorldIdentityEncoder.from_pretrained(tmp_path / "eval" / "identity_encoder")
    assert enc.config.arch == "b"


def test_world_analyzer_needs_an_encoder(tmp_path):
    with pytest.raises(CheckpointError, match="identity encoder"):
        WorldAnalyzer()
    with pytest.raises(CheckpointError, match="python -m dhumandiff.model.faces.world"):
        WorldAnalyzer(encoder=tmp_path)


# ------------------------------------------------------------------ attribute reader (no network)


def test_attribute_reader_on_reference_views(ids):
    reader = WorldAttributeReader()
    hits = {a: [] for a in COLOUR_ATTRIBUTES}
    for ident in ids:
        for view in W.reference_views(ident, 1, seed=11):
            got = reader.read(np.asarray(view))
            for a in hits:
                hits[a].append(got[a] == getattr(ident, a))
    acc = {a: float(np.mean(v)) for a, v in hits.items()}
    assert all(v >= 0.9 for v in acc.values()), acc


def test_attribute_reader_on_64px_scene_crops(ids, detector):
    reader = WorldAttributeReader()
    hits = {a: [] for a in COLOUR_ATTRIBUTES}
    rng = np.random.default_rng(7)
    for _ in range(20):
        spec = W.sample_scene_spec(ids, rng)
        img, _, kps = W.render_scene(spec, 64, rng)
        img = np.asarray(img)
        faces = detector.detect(img)
        for person, k in zip(spec.persons, kps):
            gt = W.face_box_from_keypoints(k, 64)
            best = max(faces, key=lambda f: _iou(f.bbox, gt), default=None)
            box = best.bbox if best is not None and _iou(best.bbox, gt) > 0.5 else gt
            got = reader.read(face_crop(img, box))
            for a in hits:
                hits[a].append(got[a] == getattr(person.identity, a))
    acc = {a: float(np.mean(v)) for a, v in hits.items()}
    assert all(v >= 0.75 for v in acc.values()), acc
