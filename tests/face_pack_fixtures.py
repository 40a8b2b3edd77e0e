"""An insightface-format model pack built offline: an SCRFD-shaped detector whose outputs are constructed to
detect known boxes (nudged by the pixels under them) and an ArcFace-shaped recogniser (a seeded random conv net),
with the ``onnx`` helper API. Shared by the pack tests and the converted-model end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DET = 640
STRIDES = (8, 16, 32)


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




def make_pack(root: Path, name: str = "buffalo_l") -> Path:
    """``root/models/<name>/`` with ``det_10g.onnx`` and ``w600k_r50.onnx``; returns ``root``."""
    folder = root / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    build_detector(folder / "det_10g.onnx")
    build_recogniser(folder / "w600k_r50.onnx")
    return root
