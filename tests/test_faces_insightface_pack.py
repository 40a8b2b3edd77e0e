"""The torch-free insightface pack pipeline agrees with insightface's own ``FaceAnalysis``.

Nothing is downloaded: the test builds an SCRFD-shaped detector (9 outputs in insightface's order, whose scores,
boxes and keypoints are planted at chosen anchors and nudged by the pixels under them, so the letterbox resize
and the normalisation matter) and an ArcFace-shaped recogniser (a seeded random conv net, 112x112 -> 512) with
the ``onnx`` helper API, lays them out as ``models/buffalo_l/`` and runs both pipelines on real photos.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

insightface = pytest.importorskip("insightface")

import cv2  # noqa: E402  (an insightface dependency)
from PIL import Image  # noqa: E402

from dhumandiff.contract.faces.insightface_pack import (  # noqa: E402
    FACE_MODELS_ENV, PackFaceAnalyzer, arcface_input_normalisation, estimate_norm, find_pack, resize_linear,
    warp_affine_linear,
)
from dhumandiff.errors import CheckpointError  # noqa: E402
from face_pack_fixtures import build_recogniser, make_pack  # noqa: E402

#: insightface's own norm_crop calls scikit-image's deprecated ``SimilarityTransform.estimate``
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

T1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def app(pack_root):
    from insightface.app import FaceAnalysis

    fa = FaceAnalysis(name="buffalo_l", root=str(pack_root), providers=["CPUExecutionProvider"],
                      allowed_modules=["detection", "recognition"])
    fa.prepare(ctx_id=-1, det_size=(640, 640))
    return fa


@pytest.fixture(scope="module")
def ours(pack_root) -> PackFaceAnalyzer:
    return PackFaceAnalyzer(pack_root, det_size=(640, 640))


def _astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut())


def _t1() -> np.ndarray:
    return np.asarray(Image.open(T1).convert("RGB"))


def _agreement(app, ours, rgb):
    """insightface on BGR vs ours on RGB, face by face in insightface's order.

    Returns both face lists, the largest box and landmark differences (px), the smallest embedding cosine and
    the largest score difference."""
    theirs = app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
    mine = ours.detect_raw(rgb)
    assert len(theirs) == len(mine) > 0
    box = max(float(np.abs(t.bbox - m.bbox).max()) for t, m in zip(theirs, mine))
    kps = max(float(np.abs(t.kps - m.kps).max()) for t, m in zip(theirs, mine))
    cos = min(float(t.normed_embedding @ ours.embed(rgb, m)) for t, m in zip(theirs, mine))
    score = max(abs(float(t.det_score) - m.score) for t, m in zip(theirs, mine))
    return theirs, mine, box, kps, cos, score


def test_resize_and_warp_reproduce_opencv():
    rng = np.random.default_rng(3)
    ast, t1 = _astronaut(), _t1()
    images = [ast, t1, rng.integers(0, 256, (333, 517, 3), dtype=np.uint8),
              rng.integers(0, 256, (1000, 750, 3), dtype=np.uint8)]
    for img in images:
        for w, h in ((640, 640), (640, 443), (333, 201), (1024, 1000), (img.shape[1] // 2, img.shape[0] // 2)):
            np.testing.assert_array_equal(resize_linear(img, w, h), cv2.resize(img, (w, h)), err_msg=f"{w}x{h}")
    mats = []
    for _ in range(12):
        ang, s = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 2.5)
        mats.append(np.array([[s * np.cos(ang), -s * np.sin(ang), rng.uniform(-300, 50)],
                              [s * np.sin(ang), s * np.cos(ang), rng.uniform(-300, 50)]]))
    default_off = 0
    for m in mats:
        ref = cv2.warpAffine(ast, m, (112, 112), borderValue=0.0)
        diff = np.abs(warp_affine_linear(ast, m, 112).astype(int) - ref)
        assert diff.max() <= 1
        default_off += int((diff > 0).sum())
    assert default_off <= 1e-3 * len(mats) * 112 * 112 * 3
    use_ipp = cv2.ipp.useIPP()
    try:  # OpenCV's own kernel (IPP off) is reproduced to the bit
        cv2.ipp.setUseIPP(False)
        for m in mats:
            np.testing.assert_array_equal(warp_affine_linear(ast, m, 112),
                                          cv2.warpAffine(ast, m, (112, 112), borderValue=0.0))
    finally:
        cv2.ipp.setUseIPP(use_ipp)
    print(f"\nwarpAffine vs OpenCV default (IPP): {default_off} of {len(mats) * 112 * 112 * 3} values off by 1")


def test_alignment_matrix_is_insightfaces():
    from insightface.utils import face_align

    rng = np.random.default_rng(5)
    for size in (112, 128, 224):
        for _ in range(5):
            lmk = (face_align.arcface_dst * rng.uniform(0.5, 4) + rng.uniform(-50, 400, 2)
                   + rng.normal(0, 3, (5, 2))).astype(np.float32)
            np.testing.assert_array_equal(estimate_norm(lmk, size), face_align.estimate_norm(lmk, size))


@pytest.mark.parametrize("photo", ["astronaut", "t1"])
def test_agrees_with_insightface_face_analysis(app, ours, photo):
    rgb = _astronaut() if photo == "astronaut" else _t1()
    theirs, mine, box, kps, cos, score = _agreement(app, ours, rgb)
    print(f"\n{photo} {rgb.shape[1]}x{rgb.shape[0]}: {len(mine)} faces; max box diff {box:.2e} px, "
          f"max landmark diff {kps:.2e} px, max score diff {score:.1e}, min embedding cosine {cos:.7f}")
    # NMS dropped the two near-duplicates and the sub-threshold anchor: 4 of the 7 planted detections remain
    assert len(mine) == 4
    assert box <= 1.0 and kps <= 1.0 and cos >= 0.9999
    # tighter: the network saw the same pixels (a PIL resize or a /127.5 here would move boxes by 0.01-0.06 px)
    assert box <= 1e-3 and kps <= 1e-3 and score < 1e-6
    for t, m in zip(theirs, mine):
        assert m.kps_format == "arcface" and m.kps.shape == (5, 2)
        assert abs(float(np.linalg.norm(ours.embed(rgb, m))) - 1) < 1e-5


def test_analyze_single_selects_largest_and_refuses_groups(app, ours):
    rgb = _astronaut()
    with pytest.warns(UserWarning, match="4 faces found .*using the largest .*--face-index"):
        largest = ours.analyze_single(rgb, name="astronaut.png")  # real photos: the largest face, and it says so
    face = ours.analyze_single(rgb, face_index=0, name="astronaut.png")
    assert np.array_equal(largest.bbox, face.bbox)
    theirs = max(app.get(np.ascontiguousarray(rgb[:, :, ::-1])),
                 key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    assert np.abs(face.bbox - theirs.bbox).max() <= 1.0
    assert float(face.embedding @ theirs.normed_embedding) >= 0.9999
    areas = [f.area for f in ours.detect(rgb)]
    assert areas == sorted(areas, reverse=True)
    assert ours.embedding_dim == 512


def test_recogniser_normalisation_follows_insightface(tmp_path):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from dhumandiff.contract.faces.insightface_pack import ArcFaceRecogniser

    crop = np.asarray(Image.fromarray(_astronaut()[40:200, 150:290]).resize((112, 112)))
    for mx in (False, True):
        path = tmp_path / f"rec_{int(mx)}.onnx"
        build_recogniser(path, mxnet_style=mx, seed=7)
        ref = ArcFaceONNX(model_file=str(path))
        assert arcface_input_normalisation(path) == (ref.input_mean, ref.input_std) == \
            ((0.0, 1.0) if mx else (127.5, 127.5))
        feat = ref.get_feat(np.ascontiguousarray(crop[:, :, ::-1])).reshape(-1)
        mine = ArcFaceRecogniser(path).raw_feature(crop)
        np.testing.assert_allclose(mine, feat, rtol=0, atol=1e-5 * float(np.abs(feat).max()))


def test_missing_pack_is_one_line(tmp_path, monkeypatch, pack_root):
    monkeypatch.delenv(FACE_MODELS_ENV, raising=False)
    with pytest.raises(CheckpointError) as e:
        find_pack(tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and "does not exist" in msg and "det_10g.onnx" in msg and "w600k_r50.onnx" in msg
    assert "--face-models" in msg and FACE_MODELS_ENV in msg
    with pytest.raises(CheckpointError, match=f"no insightface model pack given.*{FACE_MODELS_ENV}"):
        find_pack(None)
    with pytest.raises(CheckpointError, match="does not exist"):
        PackFaceAnalyzer(tmp_path / "nowhere")

    only_rec = tmp_path / "only_rec" / "models" / "buffalo_l"
    only_rec.mkdir(parents=True)
    (only_rec / "w600k_r50.onnx").write_bytes(b"x")
    (only_rec / "genderage.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError) as e:
        find_pack(tmp_path / "only_rec")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"no SCRFD detector (det_*.onnx) in {only_rec}")
    assert "copy buffalo_l's det_10g.onnx there" in msg

    only_det = tmp_path / "only_det"
    only_det.mkdir()
    for name in ("det_10g.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"):
        (only_det / name).write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"no ArcFace recogniser .*w600k_r50\.onnx") as e:
        find_pack(only_det)
    assert "\n" not in str(e.value)

    # the layouts: the pack folder itself, root/models/<name>/, root/<name>/, $DHUMANDIFF_FACE_MODELS, antelopev2
    found = find_pack(pack_root)
    assert found.folder == pack_root / "models" / "buffalo_l"
    assert (found.detector.name, found.recogniser.name) == ("det_10g.onnx", "w600k_r50.onnx")
    assert find_pack(pack_root / "models") == found and find_pack(found.folder) == found
    monkeypatch.setenv(FACE_MODELS_ENV, str(pack_root))
    assert find_pack() == found
    ante = tmp_path / "ante" / "antelopev2"
    ante.mkdir(parents=True)
    for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
        (ante / name).write_bytes(b"x")
    got = find_pack(tmp_path / "ante", name="antelopev2")
    assert (got.detector.name, got.recogniser.name) == ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
    assert find_pack(tmp_path / "ante") == got  # a known pack name is found without being named


def test_40_megapixel_photo_without_a_full_resolution_float_copy(app, ours):
    # an 800x500 photo (the astronaut on grey), and the same photo blown up 10x to 8000x5000 (40 MP)
    small = np.full((500, 800, 3), 90, np.uint8)
    small[:, 100:612] = _astronaut()[:500]
    big = np.repeat(np.repeat(small, 10, axis=0), 10, axis=1)
    assert big.shape == (5000, 8000, 3)
    ref_small = ours.detect_raw(small)

    tracemalloc.start()
    try:
        faces = ours.detect_raw(big)
        embs = [ours.embed(big, f) for f in faces]
        picked = ours.analyze_single(big, face_index=0, name="big.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n40 MP photo ({big.nbytes / 2**20:.0f} MiB): peak traced allocation {peak / 2**20:.1f} MiB")
    # a float32 copy would be 4x the photo; nothing even a quarter of the photo's size is allocated
    assert peak < big.nbytes / 4

    assert len(faces) == len(ref_small) == 4
    box = max(float(np.abs(f.bbox / 10 - r.bbox).max()) for f, r in zip(faces, ref_small))
    kps = max(float(np.abs(f.kps / 10 - r.kps).max()) for f, r in zip(faces, ref_small))
    assert box < 1.0 and kps < 1.0, (box, kps)
    assert picked.area == max(f.area for f in faces)

    theirs = app.get(np.ascontiguousarray(big[:, :, ::-1]))
    assert len(theirs) == len(faces)
    dbox = max(float(np.abs(t.bbox - f.bbox).max()) for t, f in zip(theirs, faces))
    cos = min(float(t.normed_embedding @ e) for t, e in zip(theirs, embs))
    print(f"40 MP vs 800x500 (scaled): max box diff {box:.3f} px, landmarks {kps:.3f} px (small-photo pixels); "
          f"vs insightface on the 40 MP photo: max box diff {dbox:.2e} px, min cosine {cos:.7f}")
    assert dbox <= 1.0 and cos >= 0.9999


def test_pipeline_loads_no_torch_opencv_skimage_or_insightface(pack_root):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from dhumandiff.contract.faces.insightface_pack import PackFaceAnalyzer\n"
        f"ana = PackFaceAnalyzer({str(pack_root)!r})\n"
        f"rgb = np.asarray(Image.open({str(T1)!r}).convert('RGB'))\n"
        "face = ana.analyze_single(rgb, face_index=0)\n"
        "assert face.embedding.shape == (512,)\n"
        "bad = [m for m in ('torch', 'cv2', 'skimage', 'insightface') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
