"""dlib backend on insightface's bundled group photo (six real faces), fully offline."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("dlib")
insightface = pytest.importorskip("insightface")

from dhumandiff.errors import FaceNotFoundError, MultipleFacesError  # noqa: E402
from dhumandiff.model.faces import get_face_analyzer, load_rgb  # noqa: E402
from dhumandiff.contract.faces.dlib_faces import DlibAnalyzer  # noqa: E402

T1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return get_face_analyzer("dlib")


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    return load_rgb(T1)


@pytest.fixture(scope="module")
def faces(analyzer, group):
    return analyzer.detect(group)


def _crop(image, face, margin=0.8):
    x0, y0, x1, y1 = face.bbox
    w, h = x1 - x0, y1 - y0
    H, W = image.shape[:2]
    xa, ya = int(max(0, x0 - margin * w)), int(max(0, y0 - margin * h))
    xb, yb = int(min(W, x1 + margin * w)), int(min(H, y1 + margin * h))
    return np.ascontiguousarray(image[ya:yb, xa:xb])


def test_detects_six_faces_sorted_by_area(faces):
    assert len(faces) == 6
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert all(f.kps is not None and f.kps.shape == (5, 2) for f in faces)


def test_group_photo_is_refused_without_face_index(analyzer):
    with pytest.raises(MultipleFacesError, match=r"6 faces found in t1\.jpg.*--face-index"):
        analyzer.analyze_single(T1)


def test_face_index_picks_the_largest(analyzer, group, faces):
    face = analyzer.analyze_single(group, face_index=0, name="t1.jpg")
    assert np.allclose(face.bbox, faces[0].bbox)
    assert face.embedding.shape == (analyzer.embedding_dim,) == (128,)
    assert face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    with pytest.raises(FaceNotFoundError, match="out of range"):
        analyzer.analyze_single(group, face_index=6)


def test_cropped_face_same_identity_and_others_differ(analyzer, group, faces):
    ref = analyzer.embed(group, faces[1])
    crop = _crop(group, faces[1])
    single = analyzer.analyze_single(crop, name="crop")
    assert float(single.embedding @ ref) >= 0.99
    others = [float(analyzer.embed(group, f) @ ref) for i, f in enumerate(faces) if i != 1]
    assert max(others) < 0.95


def test_no_face_in_a_gradient_is_refused(analyzer):
    ramp = np.linspace(0, 255, 320, dtype=np.float32)
    img = np.stack([np.tile(ramp, (240, 1)), np.tile(ramp[::-1], (240, 1)), np.full((240, 320), 128.0)], -1)
    with pytest.raises(FaceNotFoundError, match="no face found in gradient.png: use a clear, front-facing photo"):
        analyzer.analyze_single(img.astype(np.uint8), name="gradient.png")


def test_face_too_small_is_refused(analyzer, group, faces):
    crop = _crop(group, faces[1])
    with pytest.raises(FaceNotFoundError, match="face too small .* at least 500 px"):
        analyzer.analyze_single(crop, min_face_px=500, name="crop")
