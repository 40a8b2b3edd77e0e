"""insightface backend, offline: a local buffalo_l-style folder holding the exported world encoder as recogniser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("insightface")
pytest.importorskip("onnxruntime")

from insightface.model_zoo import model_zoo  # noqa: E402
from insightface.model_zoo.arcface_onnx import ArcFaceONNX  # noqa: E402

from dhumandiff.data import world as W  # noqa: E402
from dhumandiff.errors import CheckpointError, FaceNotFoundError, MultipleFacesError  # noqa: E402
from dhumandiff.model.faces import get_face_analyzer  # noqa: E402
from dhumandiff.model.faces.insightface_backend import InsightFaceAnalyzer  # noqa: E402
from dhumandiff.model.faces.world import (  # noqa: E402
    WorldAnalyzer, WorldIdentityEncoder, arcface_normalize, export_arcface_onnx, face_crop,
)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    enc = WorldIdentityEncoder(arch="a")
    # non-trivial BatchNorm statistics, so the export is checked on more than an identity map
    with torch.no_grad():
        enc.train()
        enc(arcface_normalize(np.random.default_rng(0).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)))
    return enc.eval()


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("insightface") / "models" / "buffalo_l"
    root.mkdir(parents=True)
    export_arcface_onnx(encoder, root / "w600k_r50.onnx")
    return root


@pytest.fixture(scope="module")
def view():
    return np.asarray(W.reference_views(W.make_identities(3, 0)[1], 1, seed=0)[0])


def test_export_is_an_arcface_model_with_the_same_numbers(buffalo, encoder, view):
    rec = model_zoo.get_model(str(buffalo / "w600k_r50.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(rec, ArcFaceONNX)
    assert rec.input_size == (112, 112) and rec.input_mean == 127.5 and rec.input_std == 127.5
    assert rec.output_names == ["embedding"]
    crop = face_crop(view, [0, 0, 112, 112])
    feat = rec.get_feat(np.ascontiguousarray(crop[:, :, ::-1]))  # insightface reads BGR
    with torch.no_grad():
        ref = encoder(arcface_normalize(crop)).numpy()
    assert feat.shape == (1, 512)
    np.testing.assert_allclose(feat, ref, atol=1e-4, rtol=0)


def test_insightface_analyzer_with_world_detector_end_to_end(buffalo, encoder, view):
    ana = get_face_analyzer("insightface", root=buffalo.parent.parent, detector="world")
    assert isinstance(ana, InsightFaceAnalyzer) and ana.embedding_dim == 512
    face = ana.analyze_single(view, name="ref.png")
    assert abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-5
    same = WorldAnalyzer(encoder=encoder).analyze_single(view, name="ref.png")
    np.testing.assert_allclose(face.bbox, same.bbox)
    assert float(face.embedding @ same.embedding) > 0.9999
    ids = W.make_identities(3, 0)
    group = np.concatenate([np.asarray(W.reference_views(i, 1, seed=2)[0]) for i in ids], axis=1)
    with pytest.raises(MultipleFacesError, match="3 faces found .*--face-index"):
        ana.analyze_single(group, name="group.png")
    with pytest.raises(FaceNotFoundError, match="no face found"):
        ana.analyze_single(np.full((112, 112, 3), 128, np.uint8), name="grey.png")


def test_missing_folder_and_missing_files(tmp_path, buffalo):
    with pytest.raises(CheckpointError, match="does not exist"):
        InsightFaceAnalyzer(root=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="w600k_r50.onnx"):
        InsightFaceAnalyzer(root=empty, detector="world")
    # only a recogniser: fine with the world detector, refused (naming the detector file) for insightface's
    with pytest.raises(CheckpointError, match=r"det_10g\.onnx.*detector='world'"):
        InsightFaceAnalyzer(root=buffalo)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "w600k_r50.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(CheckpointError, match="no recognition model"):
        InsightFaceAnalyzer(root=junk, detector="world")
