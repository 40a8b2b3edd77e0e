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
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

from dhumandiff.contract.faces.insightface_pack import (  # noqa: E402
    FACE_MODELS_ENV, PackFaceAnalyzer, arcface_input_normalisation, estimate_norm, find_pack, resize_linear,
    warp_affine_linear,
)
from dhumandiff.errors import CheckpointError, MultipleFacesError  # noqa: E402

#: insightface's own norm_crop calls scikit-image's deprecated ``SimilarityTransform.estimate``
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

DET = 640
STRIDES = (8, 16, 32)
T1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


def _kps_for(box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return [(x0 + 0.3 * w, y0 + 0.38 * h), (x0 + 0.7 * w, y0 + 0.38 * h), (x0 + 0.5 * w, y0 + 0.55 * h),
            (x0 + 0.35 * w, y0 + 0.75 * h), (x0 + 0.65 * w, y0 + 0.75 * h)]


#: Planted detections in network pixels: (stride, anchor, box, kps, logit). The astronaut's face (box and
#: landmarks read off the 512-px photo, times 1.25), two near-duplicates NMS must drop, two faces that overlap
#: less than NMS's 0.4, a small stride-8 face and one below the score threshold.
PLANTED = [
    (32, 0, (215, 62, 335, 231), [(254, 125), (306, 125), (280, 156), (259, 185), (302, 185)], 4.0),
    (32, 1, (219, 65, 339, 234), [(258, 128), (310, 128), (284, 159), (263, 188), (306, 188)], 2.5),
    (16, 0, (210, 60, 330, 228), _kps_for((210, 60, 330, 228)), 3.0),
    (16, 1, (430, 40, 490, 110), _kps_for((430, 40, 490, 110)), 3.5),
    (16, 0, (470, 60, 530, 130), _kps_for((470, 60, 530, 130)), 1.5),
    (8, 0, (60, 300, 100, 345), _kps_for((60, 300, 100, 345)), 2.0),
    (16, 0, (500, 300, 560, 370), _kps_for((500, 300, 560, 370)), -1.5),
]


def build_detector(path: Path) -> None:
    """An SCRFD-shaped graph: input ``input.1`` [1,3,640,640]; outputs scores/bbox/kps for strides 8/16/32."""
    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    consts = {}
    for s in STRIDES:
        n = (DET // s) ** 2 * 2
        consts[s] = {"logit": np.full((n, 1), -10.0, np.float32), "bbox": np.ones((n, 4), np.float32),
                     "kps": rng.uniform(-1, 1, (n, 10)).astype(np.float32)}
    for s, anchor, box, kps, logit in PLANTED:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        col, row = int(round(cx / s)), int(round(cy / s))
        ax, ay = col * s, row * s
        idx = (row * (DET // s) + col) * 2 + anchor
        consts[s]["logit"][idx] = logit
        consts[s]["bbox"][idx] = [(ax - box[0]) / s, (ay - box[1]) / s, (box[2] - ax) / s, (box[3] - ay) / s]
        consts[s]["kps"][idx] = np.ravel([[(kx - ax) / s, (ky - ay) / s] for kx, ky in kps])

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    # the pixels' pull on every output: a channel-weighted cell mean, so the channel order counts too
    const("w_rgb", np.array([0.6, 0.3, 0.1], np.float32).reshape(1, 3, 1, 1))
    const("k_score", [1.0])
    const("k_bbox", [[0.5, -0.4, 0.3, 0.6]])
    const("k_kps", [[0.3, -0.2] * 5])
    for s in STRIDES:
        hw = (DET // s) ** 2
        inits.append(numpy_helper.from_array(np.array([hw, 1], np.int64), f"shape_hw_{s}"))
        inits.append(numpy_helper.from_array(np.array([hw * 2, 1], np.int64), f"shape_n_{s}"))
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool_{s}"], kernel_shape=[s, s], strides=[s, s],
                             name=f"AveragePool_{s}"),
            helper.make_node("Conv", [f"pool_{s}", "w_rgb"], [f"mean_{s}"], kernel_shape=[1, 1], name=f"Conv_{s}"),
            helper.make_node("Reshape", [f"mean_{s}", f"shape_hw_{s}"], [f"cell_{s}"], name=f"Reshape_a_{s}"),
            helper.make_node("Concat", [f"cell_{s}", f"cell_{s}"], [f"pair_{s}"], axis=1, name=f"Concat_{s}"),
            helper.make_node("Reshape", [f"pair_{s}", f"shape_n_{s}"], [f"g_{s}"], name=f"Reshape_b_{s}"),
            helper.make_node("Mul", [f"g_{s}", "k_score"], [f"gs_{s}"], name=f"Mul_s_{s}"),
            helper.make_node("Add", [f"gs_{s}", const(f"logit_{s}", consts[s]["logit"])], [f"z_{s}"],
                             name=f"Add_s_{s}"),
            helper.make_node("Sigmoid", [f"z_{s}"], [f"score_{s}"], name=f"Sigmoid_{s}"),
            helper.make_node("Mul", [f"g_{s}", "k_bbox"], [f"gb_{s}"], name=f"Mul_b_{s}"),
            helper.make_node("Add", [f"gb_{s}", const(f"dist_{s}", consts[s]["bbox"])], [f"bbox_{s}"],
                             name=f"Add_b_{s}"),
            helper.make_node("Mul", [f"g_{s}", "k_kps"], [f"gk_{s}"], name=f"Mul_k_{s}"),
            helper.make_node("Add", [f"gk_{s}", const(f"kdist_{s}", consts[s]["kps"])], [f"kps_{s}"],
                             name=f"Add_k_{s}"),
        ]
        n = hw * 2
        outputs["score"].append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, [n, 1]))
        outputs["bbox"].append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, [n, 4]))
        outputs["kps"].append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, [n, 10]))
    graph = helper.make_graph(nodes, "scrfd_planted",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET, DET])],
                              outputs["score"] + outputs["bbox"] + outputs["kps"], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_recogniser(path: Path, mxnet_style: bool = False, seed: int = 1) -> None:
    """An ArcFace-shaped graph: ``input.1`` [1,3,112,112] -> three strided convs -> Gemm -> [1,512].

    ``mxnet_style``: the graph starts with mxnet's ``_minusscalar0`` / ``_mulscalar0`` nodes normalising raw
    pixels itself, so insightface feeds it mean 0 / std 1.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "input.1"
    if mxnet_style:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "sub_c"),
                  numpy_helper.from_array(np.array(0.0078125, np.float32), "mul_c")]
        nodes += [helper.make_node("Sub", [x, "sub_c"], ["x_sub"], name="_minusscalar0"),
                  helper.make_node("Mul", ["x_sub", "mul_c"], ["x_mul"], name="_mulscalar0")]
        x = "x_mul"
    chans = [3, 8, 16, 32]
    for i in range(3):
        w = rng.normal(0, np.sqrt(2.0 / (chans[i] * 9)), (chans[i + 1], chans[i], 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, chans[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1], name=f"Conv_{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"Relu_{i}")]
        x = f"r{i}"
    fc = rng.normal(0, np.sqrt(1.0 / (32 * 14 * 14)), (32 * 14 * 14, 512)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(512, np.float32), "fc_b")]
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1, name="Flatten_0"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["683"], name="Gemm_0")]
    graph = helper.make_graph(nodes, "arcface_random",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    folder = root / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    build_detector(folder / "det_10g.onnx")
    build_recogniser(folder / "w600k_r50.onnx")
    return root


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
    with pytest.raises(MultipleFacesError, match="4 faces found .*--face-index"):
        ours.analyze_single(rgb, name="astronaut.png")
    face = ours.analyze_single(rgb, face_index=0, name="astronaut.png")
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
