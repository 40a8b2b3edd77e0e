"""insightface model packs (buffalo_l, antelopev2) run without insightface, OpenCV, scikit-image or torch.

A pack is a folder of ONNX files as insightface unpacks them (``~/.insightface/models/buffalo_l/``): an SCRFD
detector (``det_10g.onnx``; antelopev2 names it ``scrfd_10g_bnkps.onnx``) and an ArcFace recogniser
(``w600k_r50.onnx``, ``glintr100.onnx``). This module reproduces what insightface's ``FaceAnalysis`` does with
them, step for step, in NumPy around onnxruntime:

* detection as ``insightface/model_zoo/scrfd.py``: letterbox into ``det_size`` (top-left, aspect kept, scale
  ``det_scale``), ``(x - 127.5) / 128`` on RGB pixels (insightface reads BGR and swaps), outputs grouped by their
  count (6/9: strides 8/16/32 with 2 anchors, 10/15: strides 8..128 with 1; 9 and 15 carry keypoints), anchor
  centres, ``distance2bbox`` / ``distance2kps``, score threshold 0.5, insightface's NMS (0.4, ``+1`` areas) and
  its ordering (score, stable);
* the letterbox resize is OpenCV's ``INTER_LINEAR`` (half-pixel centres, no antialias) in its fixed-point form,
  bit-exact with ``cv2.resize`` on uint8 images;
* alignment as ``insightface.utils.face_align.norm_crop``: Umeyama similarity (scikit-image's
  ``SimilarityTransform.estimate``) from the 5 landmarks to the ArcFace template, then OpenCV's own
  ``warpAffine`` bilinear arithmetic with a constant 0 border;
* the embedding as ``arcface_onnx.py``: mean/std 127.5/127.5, or 0/1 when the graph starts with mxnet's
  Sub + Mul nodes (read with the ``onnx`` package), RGB input, output L2-normalised (``normed_embedding``).

Only the letterboxed copy of a photo is ever converted to float: a 40 MP photo costs a 640x640 float tensor, not a
full-resolution one. Images are HxWx3 RGB uint8 arrays, as everywhere in :mod:`dhumandiff.contract.faces`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import CheckpointError, RuntimeUnavailableError
from .base import Face, FaceAnalyzer, as_rgb_uint8, l2_normalize, square_crop

__all__ = [
    "ARCFACE_TEMPLATE", "FACE_MODELS_ENV", "PackFaceAnalyzer", "PackFiles", "ScrfdDetector", "ArcFaceRecogniser",
    "arcface_input_normalisation", "estimate_norm", "find_pack", "letterbox", "norm_crop", "resize_linear",
    "umeyama", "warp_affine_linear",
]

#: Where the pack is found when no folder is passed (the CLI's ``--face-models`` reads the same variable).
FACE_MODELS_ENV = "DHUMANDIFF_FACE_MODELS"

#: insightface's 112x112 ArcFace landmark template (left eye, right eye, nose, left / right mouth corner).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

_DETECTOR_PATTERNS = ("det_*.onnx", "scrfd_*.onnx")
_NOT_RECOGNITION = ("det_", "scrfd_", "1k3d68", "2d106det", "genderage")
_PREFERRED_RECOGNITION = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")
_KNOWN_PACKS = ("buffalo_l", "antelopev2", "buffalo_m", "buffalo_s", "buffalo_sc")
_COPY_HINT = ("copy a buffalo_l folder (det_10g.onnx, w600k_r50.onnx) from a connected machine (nothing is "
              f"downloaded) and pass --face-models DIR or set {FACE_MODELS_ENV}")


# ---------------------------------------------------------------------------------------------------- the pack
@dataclass(frozen=True)
class PackFiles:
    """The two files of a pack that face analysis needs."""

    folder: Path
    detector: Path
    recogniser: Path


def _detectors(folder: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in _DETECTOR_PATTERNS:
        found += [p for p in sorted(folder.glob(pattern)) if p.is_file()]
    return found


def _recognisers(folder: Path) -> list[Path]:
    recs = [folder / n for n in _PREFERRED_RECOGNITION if (folder / n).is_file()]
    recs += [p for p in sorted(folder.glob("*.onnx"))
             if p.is_file() and p not in recs and not p.name.startswith(_NOT_RECOGNITION)]
    return recs


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def find_pack(root: str | os.PathLike | None = None, name: str = "buffalo_l") -> PackFiles:
    """The detector and recogniser of the pack in ``root`` (default ``$DHUMANDIFF_FACE_MODELS``). No model loaded.

    ``root`` may be the pack folder itself, or hold it as ``root/models/<name>/`` (insightface's own layout) or
    ``root/<name>/``; when ``name`` is not there, a known pack (antelopev2, buffalo_m/s/sc) or the only folder
    with a detector is taken. Raises :class:`CheckpointError` with one line saying what to copy where.
    """
    if root is None or str(root) == "":
        root = os.environ.get(FACE_MODELS_ENV) or None
    if root is None:
        raise CheckpointError(f"no insightface model pack given: {_COPY_HINT}")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise CheckpointError(f"insightface model pack folder {root} does not exist: {_COPY_HINT}")
    candidates = [root, root / "models" / name, root / name]
    for pack in _KNOWN_PACKS:
        candidates += [root / "models" / pack, root / pack]
    candidates += _subfolders(root / "models") + _subfolders(root)
    seen: set[Path] = set()
    with_onnx: Path | None = None
    for folder in candidates:
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        if with_onnx is None and any(folder.glob("*.onnx")):
            with_onnx = folder
        detectors = _detectors(folder)
        if not detectors:
            continue
        recognisers = _recognisers(folder)
        if not recognisers:
            raise CheckpointError(f"no ArcFace recogniser in {folder} (only {detectors[0].name}): copy buffalo_l's "
                                  f"w600k_r50.onnx (or antelopev2's glintr100.onnx) there from a connected machine "
                                  f"(nothing is downloaded)")
        return PackFiles(folder=folder, detector=detectors[0], recogniser=recognisers[0])
    where = with_onnx or root
    raise CheckpointError(f"no SCRFD detector (det_*.onnx) in {where}: copy buffalo_l's det_10g.onnx there, or "
                          f"{_COPY_HINT}")


def _session(path: Path, threads: int | None, providers: Sequence[str] | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailableError("insightface model packs need onnxruntime: pip install 'dhumandiff[onnx]'") \
            from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=so,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        raise CheckpointError(f"{path} is not a readable ONNX model ({exc.__class__.__name__}): copy the pack's "
                              f"file again from a connected machine") from None


def _fixed(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and int(dim) > 0 else None


# ---------------------------------------------------------------------------------- OpenCV's interpolations
def _linear_taps(dst: int, src: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV ``resize`` INTER_LINEAR taps along one axis: indices and 11-bit fixed-point weights.

    ``f = (d + 0.5) * src / dst - 0.5`` in float; columns clamp at the edges (weight 1 on the edge pixel),
    rows keep their fraction and clip the row index, as OpenCV does.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        low = s < 0
        f[low], s[low] = 0.0, 0
        high = s >= src - 1
        f[high], s[high] = 0.0, src - 1
    w1 = np.rint(f * np.float32(2048)).astype(np.int32)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int32)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) for HxWxC uint8, bit-exact with OpenCV's SIMD path.

    Reads only the pixels the output needs: the work is proportional to the output, whatever the input's size.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("resize_linear takes an HxWxC uint8 image")
    src_h, src_w = image.shape[:2]
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    if (width, height) == (src_w, src_h):
        return image.copy()
    y0, y1, b0, b1 = _linear_taps(height, src_h, clamp=False)
    x0, x1, a0, a1 = _linear_taps(width, src_w, clamp=True)
    a0, a1 = a0[None, :, None], a1[None, :, None]

    def horizontal(rows: np.ndarray) -> np.ndarray:
        left = image[rows[:, None], x0[None, :]].astype(np.int32)
        right = image[rows[:, None], x1[None, :]].astype(np.int32)
        return left * a0 + right * a1

    s0, s1 = horizontal(y0), horizontal(y1)
    # OpenCV's VResizeLinearVec_32s8u: (mul_hi(S0 >> 4, b0) + mul_hi(S1 >> 4, b1) + 2) >> 2
    v = (((s0 >> 4) * b0[:, None, None]) >> 16) + (((s1 >> 4) * b1[:, None, None]) >> 16)
    return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)


def _fma32(a, b, c) -> np.ndarray:
    """float32 fused multiply-add (the product of two float32 is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """OpenCV's inversion of a 2x3 affine matrix (``warpAffine`` without WARP_INVERSE_MAP), in double."""
    m00, m01, m02, m10, m11, m12 = (float(v) for v in np.asarray(m, np.float64).reshape(6))
    d = m00 * m11 - m01 * m10
    d = 1.0 / d if d != 0 else 0.0
    i00, i11 = m11 * d, m00 * d
    i01, i10 = -m01 * d, -m10 * d
    return np.array([i00, i01, -i00 * m02 - i01 * m12, i10, i11, -i10 * m02 - i11 * m12], np.float64)


def warp_affine_linear(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, size, borderValue=0)`` (bilinear, constant 0 border) for HxWxC uint8.

    OpenCV's own float32 kernel (``warpAffineLinearInvoker``): bit-exact with ``cv2.warpAffine`` when OpenCV runs
    without IPP; OpenCV's default IPP build rounds about 3 values in 100,000 the other way (off by one).
    Only the output's source pixels are read.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    out_w, out_h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    src_h, src_w = image.shape[:2]
    m = _invert_affine(matrix).astype(np.float32)
    ys = np.arange(out_h, dtype=np.float32)[:, None]
    xs = np.arange(out_w, dtype=np.float32)[None, :]
    row_x = (ys * m[1] + m[2]).astype(np.float32)
    row_y = (ys * m[4] + m[5]).astype(np.float32)
    sx = _fma32(m[0], xs, row_x)
    sy = _fma32(m[3], xs, row_y)
    ix, iy = np.floor(sx), np.floor(sy)
    alpha = (sx - ix).astype(np.float32)[..., None]
    beta = (sy - iy).astype(np.float32)[..., None]
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)

    def tap(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        inside = (y >= 0) & (y < src_h) & (x >= 0) & (x < src_w)
        vals = image[np.clip(y, 0, src_h - 1), np.clip(x, 0, src_w - 1)].astype(np.float32)
        return np.where(inside[..., None], vals, np.float32(0))

    p00, p01, p10, p11 = tap(iy, ix), tap(iy, ix + 1), tap(iy + 1, ix), tap(iy + 1, ix + 1)
    top = _fma32(alpha, p01 - p00, p00)
    bottom = _fma32(alpha, p11 - p10, p10)
    value = _fma32(beta, bottom - top, top)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- alignment
def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """scikit-image's ``_umeyama`` (what ``SimilarityTransform.estimate`` runs): the 3x3 least-squares
    similarity mapping ``src`` onto ``dst``. Inputs keep their dtype, as there, so float32 landmarks give the
    same matrix to the last bit."""
    src, dst = np.asarray(src), np.asarray(dst)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    tol = s.max() * np.max(a.shape) * np.finfo(float).eps
    rank = np.count_nonzero(s > tol)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d) if estimate_scale else 1.0
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def estimate_norm(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """insightface's ``face_align.estimate_norm``: the 2x3 matrix taking the 5 landmarks onto the template."""
    lmk = np.asarray(landmarks)
    if lmk.shape != (5, 2):
        raise ValueError(f"ArcFace alignment needs 5 landmarks [5, 2], got {lmk.shape}")
    if image_size % 112 == 0:
        ratio, diff_x = float(image_size) / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = float(image_size) / 128.0
        diff_x = 8.0 * ratio
    else:
        raise ValueError(f"ArcFace crops are 112 or 128 multiples, not {image_size}")
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += diff_x
    t = umeyama(lmk, dst, True)
    if np.any(np.isnan(t)):
        raise ValueError("the 5 landmarks are degenerate (all in one point)")
    return t[0:2, :]


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """insightface's ``face_align.norm_crop``: the aligned ``image_size`` square crop (same channel order)."""
    return warp_affine_linear(image, estimate_norm(landmarks, image_size), image_size)


# ---------------------------------------------------------------------------------------------------- SCRFD
def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """SCRFD's input: ``image`` resized into ``input_size`` (w, h) keeping its aspect, placed top-left on zeros.

    Returns the uint8 canvas, ``det_scale`` (network pixels per image pixel) and the resized (w, h).
    """
    in_w, in_h = int(input_size[0]), int(input_size[1])
    h, w = image.shape[:2]
    im_ratio = float(h) / w
    model_ratio = float(in_h) / in_w
    if im_ratio > model_ratio:
        new_h = in_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = in_w
        new_h = int(new_w * im_ratio)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    det_scale = float(new_h) / h
    canvas = np.zeros((in_h, in_w, image.shape[2]), dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_linear(image, new_w, new_h)
    return canvas, det_scale, (new_w, new_h)


def _nms(dets: np.ndarray, thresh: float) -> list[int]:
    """insightface's SCRFD NMS (``+1`` pixel areas, score order, stable)."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class ScrfdDetector:
    """An insightface SCRFD detector ONNX run with onnxruntime; :meth:`detect` returns what insightface's does.

    ``det_size``: the network input (w, h), or a list of sizes whose candidates are merged before NMS (as
    insightface 2.x); a graph with a fixed input size uses that size, whatever ``det_size`` says (as insightface).
    """

    def __init__(self, path: str | os.PathLike, det_size: Any = (640, 640), det_thresh: float = 0.5,
                 nms_thresh: float = 0.4, threads: int | None = None, providers: Sequence[str] | None = None,
                 session: Any = None) -> None:
        self.path = Path(path)
        self.session = session if session is not None else _session(self.path, threads, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        outputs = self.session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3
        count = len(outputs)
        if count in (6, 9):
            self.fmc, self.strides, self.num_anchors = 3, (8, 16, 32), 2
        elif count in (10, 15):
            self.fmc, self.strides, self.num_anchors = 5, (8, 16, 32, 64, 128), 1
        else:
            raise CheckpointError(f"{self.path} is not an SCRFD detector ({count} outputs, expected 6, 9, 10 or "
                                  f"15): copy buffalo_l's det_10g.onnx there")
        self.use_kps = count in (9, 15)
        static = None
        if len(shape) == 4 and _fixed(shape[2]) and _fixed(shape[3]):
            static = (int(shape[3]), int(shape[2]))
        self.static_input_size = static
        self.input_sizes = [static] if static is not None else _det_sizes(det_size)
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:
            centres = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
            centres = (centres * stride).reshape((-1, 2))
            if self.num_anchors > 1:
                centres = np.stack([centres] * self.num_anchors, axis=1).reshape((-1, 2))
            if len(self._centres) < 100:
                self._centres[key] = centres
            return centres
        return self._centres[key]

    def _forward(self, canvas: np.ndarray, threshold: float):
        # (x - 127.5) / 128 on RGB, NCHW: only the letterboxed copy ever becomes float
        blob = (canvas.astype(np.float32) - np.float32(127.5)) * np.float32(1.0 / 128.0)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outs = self.session.run(self.output_names, {self.input_name: blob})
        in_h, in_w = blob.shape[2], blob.shape[3]
        fmc = self.fmc
        scores_list, bboxes_list, kpss_list = [], [], []
        for idx, stride in enumerate(self.strides):
            pick = (lambda o: o[0]) if self.batched else (lambda o: o)
            scores = pick(outs[idx])
            bbox_preds = pick(outs[idx + fmc]) * stride
            centres = self._anchor_centres(in_h // stride, in_w // stride, stride)
            pos = np.where(scores >= threshold)[0]
            bboxes = np.stack([centres[:, 0] - bbox_preds[:, 0], centres[:, 1] - bbox_preds[:, 1],
                               centres[:, 0] + bbox_preds[:, 2], centres[:, 1] + bbox_preds[:, 3]], axis=-1)
            scores_list.append(scores[pos])
            bboxes_list.append(bboxes[pos])
            if self.use_kps:
                kps_preds = pick(outs[idx + fmc * 2]) * stride
                pts = []
                for i in range(0, kps_preds.shape[1], 2):
                    pts.append(centres[:, i % 2] + kps_preds[:, i])
                    pts.append(centres[:, i % 2 + 1] + kps_preds[:, i + 1])
                kpss = np.stack(pts, axis=-1)
                kpss_list.append(kpss.reshape((kpss.shape[0], -1, 2))[pos])
        return scores_list, bboxes_list, kpss_list

    def _candidates(self, image: np.ndarray, input_size: tuple[int, int], threshold: float):
        canvas, det_scale, _ = letterbox(image, input_size)
        scores_list, bboxes_list, kpss_list = self._forward(canvas, threshold)
        if sum(s.size for s in scores_list) == 0:
            return np.empty((0, 5), np.float32), (np.empty((0, 5, 2), np.float32) if self.use_kps else None)
        scores = np.vstack(scores_list)
        order = np.argsort(-scores.ravel(), kind="stable")
        bboxes = np.vstack(bboxes_list) / det_scale
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
        kpss = (np.vstack(kpss_list) / det_scale)[order, :, :] if self.use_kps else None
        return pre_det, kpss

    def detect(self, image: np.ndarray, det_thresh: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(det [K, 5] = x0, y0, x1, y1, score; kpss [K, 5, 2] or None)`` in insightface's order (after NMS,
        by score), in the pixels of ``image`` (HxWx3 uint8, RGB)."""
        threshold = self.det_thresh if det_thresh is None else float(det_thresh)
        dets, kps_all = [], []
        for size in self.input_sizes:
            pre_det, kpss = self._candidates(image, size, threshold)
            if pre_det.shape[0] == 0:
                continue
            dets.append(pre_det)
            if kpss is not None:
                kps_all.append(kpss)
        if not dets:
            return np.empty((0, 5), np.float32), (np.empty((0, 5, 2), np.float32) if self.use_kps else None)
        pre_det = np.vstack(dets).astype(np.float32, copy=False)
        order = np.argsort(-pre_det[:, 4], kind="stable")
        pre_det = pre_det[order, :]
        kpss = np.vstack(kps_all)[order] if self.use_kps and len(kps_all) == len(dets) else None
        keep = _nms(pre_det, self.nms_thresh)
        return pre_det[keep, :], (kpss[keep] if kpss is not None else None)


def _det_sizes(det_size: Any) -> list[tuple[int, int]]:
    """A (w, h) pair or a list of pairs -> list of distinct pairs (insightface's ``_normalize_input_sizes``)."""
    if det_size is None:
        return [(640, 640)]
    if isinstance(det_size, np.ndarray):
        det_size = det_size.tolist()
    items = det_size if (isinstance(det_size, (list, tuple)) and det_size
                         and isinstance(det_size[0], (list, tuple, np.ndarray))) else [det_size]
    sizes: list[tuple[int, int]] = []
    for item in items:
        w, h = (int(v) for v in item)
        if w == 0 and h == 0:  # insightface's "auto": its two default sizes, merged
            sizes += [size for size in ((128, 128), (640, 640)) if size not in sizes]
            continue
        if w <= 0 or h <= 0:
            raise ValueError(f"det_size must be positive, got {w}x{h}")
        if (w, h) not in sizes:
            sizes.append((w, h))
    return sizes


# -------------------------------------------------------------------------------------------------- ArcFace
def arcface_input_normalisation(path: str | os.PathLike) -> tuple[float, float]:
    """``(mean, std)`` as insightface's ``ArcFaceONNX`` decides it: 0/1 when the graph's first 8 nodes include a
    ``Sub``/``_minus`` and a ``Mul``/``_mul`` node (an mxnet model normalising inside), else 127.5/127.5."""
    try:
        import onnx
    except ImportError:
        raise RuntimeUnavailableError("reading an ArcFace recogniser needs the onnx package: "
                                      "pip install 'dhumandiff[onnx]'") from None
    try:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except TypeError:
            model = onnx.load(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model ({exc.__class__.__name__}): copy the pack's "
                              f"file again from a connected machine") from None
    find_sub = find_mul = False
    for node in model.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
    return (0.0, 1.0) if (find_sub and find_mul) else (127.5, 127.5)


class ArcFaceRecogniser:
    """An insightface ArcFace recogniser ONNX: :meth:`embed_crop` is ``ArcFaceONNX.get_feat`` on an aligned crop."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: Sequence[str] | None = None, session: Any = None) -> None:
        self.path = Path(path)
        self.input_mean, self.input_std = arcface_input_normalisation(self.path)
        self.session = session if session is not None else _session(self.path, threads, providers)
        inp = self.session.get_inputs()[0]
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise CheckpointError(f"{self.path} is not an ArcFace recogniser ({len(outputs)} outputs, expected 1): "
                                  f"copy buffalo_l's w600k_r50.onnx there")
        shape = list(inp.shape)
        side = _fixed(shape[2]) if len(shape) == 4 else None
        if len(shape) != 4 or (side is not None and side != _fixed(shape[3])):
            raise CheckpointError(f"{self.path} is not an ArcFace recogniser (input {shape}, expected a square "
                                  f"NCHW image): copy buffalo_l's w600k_r50.onnx there")
        self.input_name = inp.name
        self.output_name = outputs[0].name
        self.input_size = side or 112
        self._dim = _fixed(list(outputs[0].shape)[-1])

    @property
    def embedding_dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.raw_feature(np.zeros((self.input_size, self.input_size, 3), np.uint8)).size)
        return self._dim

    def raw_feature(self, crop_rgb: np.ndarray) -> np.ndarray:
        """The recogniser's output for one RGB crop (resized to the input size if needed), not normalised."""
        crop = as_rgb_uint8(crop_rgb, "the face crop")
        if crop.shape[:2] != (self.input_size, self.input_size):
            crop = resize_linear(crop, self.input_size, self.input_size)
        blob = (crop.astype(np.float32) - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        out = self.session.run([self.output_name], {self.input_name: blob})[0]
        return np.asarray(out, np.float32).reshape(-1)

    def embed_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        """``normed_embedding`` of an aligned RGB crop: float32, L2-normalised."""
        return l2_normalize(self.raw_feature(crop_rgb))


def scrfd_faces(detector: ScrfdDetector, image: np.ndarray) -> list[Face]:
    """``detector``'s faces in ``image`` (RGB uint8) as :class:`Face` objects, in insightface's order (by score),
    their five landmarks marked as ArcFace's."""
    det, kpss = detector.detect(image)
    return [Face(bbox=det[i, :4], score=float(det[i, 4]), kps=None if kpss is None else kpss[i],
                 kps_format=None if kpss is None else "arcface") for i in range(det.shape[0])]


def aligned_face(image: np.ndarray, face: Face, size: int = 112) -> np.ndarray:
    """A recogniser's input crop (RGB): ``norm_crop`` on ArcFace landmarks, else a square crop of the box."""
    if face.kps is not None and face.kps.shape == (5, 2) and face.kps_format in (None, "arcface"):
        return norm_crop(image, face.kps, size)
    return square_crop(image, face.bbox, size, context=1.0)


# -------------------------------------------------------------------------------------------------- analyzer
class PackFaceAnalyzer(FaceAnalyzer):
    """Face analysis with an insightface pack, torch-, OpenCV- and insightface-free.

    ``root``: the pack folder, or a folder holding ``models/<name>/`` or ``<name>/`` (default
    ``$DHUMANDIFF_FACE_MODELS``). ``det_size``: SCRFD input (w, h) for packs with a dynamic detector input, as
    ``FaceAnalysis.prepare(det_size=...)``. ``threads``: onnxruntime intra-op threads (None: its default).
    """

    name = "insightface pack"
    min_face_px = 32
    pick_largest = True  # real photos: a face in the background must not stop the portrait

    def __init__(self, root: str | os.PathLike | None = None, name: str = "buffalo_l",
                 det_size: Any = (640, 640), det_thresh: float = 0.5, nms_thresh: float = 0.4,
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        self.pack = find_pack(root, name)
        self.detector = ScrfdDetector(self.pack.detector, det_size=det_size, det_thresh=det_thresh,
                                      nms_thresh=nms_thresh, threads=threads, providers=providers)
        self.recogniser = ArcFaceRecogniser(self.pack.recogniser, threads=threads, providers=providers)

    @property
    def embedding_dim(self) -> int:
        return self.recogniser.embedding_dim

    def detect_raw(self, image: np.ndarray) -> list[Face]:
        """All faces in insightface's order (by detector score, as ``FaceAnalysis.get`` returns them)."""
        return scrfd_faces(self.detector, as_rgb_uint8(image))

    def detect(self, image: np.ndarray) -> list[Face]:
        return self._sorted(self.detect_raw(image))

    def aligned_crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The recogniser's input crop (RGB): ``norm_crop`` on ArcFace landmarks, else a square crop of the box."""
        return aligned_face(image, face, self.recogniser.input_size)

    def embed_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        return self.recogniser.embed_crop(crop_rgb)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        image = as_rgb_uint8(image)
        return self.recogniser.embed_crop(self.aligned_crop(image, face))
