"""``export --face-models DIR``: an insightface pack's detector and recogniser inside a bundle.

A model converted from the official release has no face recogniser of its own: the official code runs
insightface's ``buffalo_l`` pack. For a bundle to run offline on a kiosk, an iPhone or an Intel box, the pack goes
into it: the ArcFace recogniser becomes the ``identity_encoder`` component (its input and output renamed to the
contract's ``face`` / ``embedding``; converted to OpenVINO IR for OpenVINO bundles), the SCRFD detector is copied
as ``face_detector.onnx`` (run with onnxruntime by :class:`~dhumandiff.contract.faces.crop.FaceCropper`), and
``bundle.json``'s ``identity`` section says ``detector: scrfd`` with the recogniser's input normalisation as
insightface decides it. Every file is hashed in the manifest. Core ML bundles are not covered: the iOS sample
would detect with Apple's Vision framework (``VNDetectFaceLandmarksRequest``) and needs the recogniser converted
with coremltools, which is not built yet.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..contract.bundle import component_digests
from ..contract.faces.insightface_pack import ArcFaceRecogniser, arcface_input_normalisation, find_pack
from ..errors import DHumanDiffError
from .artifacts import ExportedComponent

DETECTOR_FILE = "face_detector.onnx"
#: Smallest face side a real-photo bundle accepts (insightface's recogniser is trained on 112 px crops).
MIN_FACE_PX = 32


def _renamed_recogniser(src: Path, dest: Path) -> None:
    """The recogniser ONNX with its one input named ``face`` and its one output ``embedding`` (nothing else
    changes: the weights are the pack's bytes)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise DHumanDiffError(f"{src.name} is not an ArcFace recogniser (it has {len(inputs)} inputs and "
                              f"{len(graph.output)} outputs, expected 1 and 1): copy buffalo_l's w600k_r50.onnx")
    renames = {inputs[0].name: "face", graph.output[0].name: "embedding"}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    inputs[0].name, graph.output[0].name = "face", "embedding"
    onnx.save(model, str(dest))


def pack_identity(face_models: str | Path, out_dir: Path, runtime: str, face_size: int, backend: Any
                  ) -> tuple[ExportedComponent, dict[str, Any], dict[str, str]]:
    """Write the pack's recogniser (as ``identity_encoder``) and detector into ``out_dir``; returns the component,
    the ``identity`` manifest entries the runtime needs to run them as the reference does, and the pack's file
    names (recorded under ``export``). ``backend``: the runtime's exporter module (its ``run`` checks the copy)."""
    if runtime not in ("onnx", "openvino"):
        raise DHumanDiffError(f"--face-models bundles are built for onnx and openvino, not {runtime}: a Core ML app "
                              "detects faces with Apple's Vision framework and needs the recogniser converted, which "
                              "this version does not do")
    pack = find_pack(face_models)
    recogniser = ArcFaceRecogniser(pack.recogniser)
    if recogniser.input_size != face_size:
        raise DHumanDiffError(f"{pack.recogniser.name} takes {recogniser.input_size} px faces, the model "
                              f"{face_size} px: use an ArcFace recogniser with 112 px input (buffalo_l's w600k_r50)")
    mean, std = arcface_input_normalisation(pack.recogniser)
    onnx_path = out_dir / "identity_encoder.onnx"
    _renamed_recogniser(pack.recogniser, onnx_path)
    files = [onnx_path.name]
    if runtime == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(out_dir / "identity_encoder.xml"), compress_to_fp16=False)
        onnx_path.unlink()
        files = ["identity_encoder.xml", "identity_encoder.bin"]
    shutil.copyfile(pack.detector, out_dir / DETECTOR_FILE)
    validation = _validate(out_dir, files, backend, recogniser, mean, std, face_size)
    dim = recogniser.embedding_dim
    component = ExportedComponent(
        name="identity_encoder", file=files[0], extra_files=files[1:],
        inputs={"face": {"shape": [1, 3, face_size, face_size], "dtype": "float32"}},
        outputs={"embedding": {"shape": [1, dim], "dtype": "float32"}}, precision="fp32", validation=validation,
        sha256=component_digests(out_dir, files))
    identity = {"detector": "scrfd", "detector_file": DETECTOR_FILE,
                "detector_sha256": component_digests(out_dir, [DETECTOR_FILE])[DETECTOR_FILE],
                "arcface_mean": float(mean), "arcface_std": float(std), "min_face_px": MIN_FACE_PX}
    return component, identity, {"detector": pack.detector.name, "recogniser": pack.recogniser.name}


def _validate(out_dir: Path, files: list[str], backend: Any, recogniser: ArcFaceRecogniser, mean: float,
              std: float, size: int) -> dict[str, Any]:
    """The bundled recogniser against the pack's own on a seeded crop: the raw features must agree (the ONNX is
    the pack's bytes renamed; OpenVINO IR is a conversion)."""
    crop = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    want = recogniser.raw_feature(crop)
    face = ((crop.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
    got = backend.run(out_dir, files, {"face": np.ascontiguousarray(face)}, ("embedding",))["embedding"]
    got = np.asarray(got, np.float32).reshape(want.shape)
    err = float(np.abs(got - want).max())
    cosine = float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)))
    if cosine < 0.9999:
        raise DHumanDiffError(f"the bundled recogniser disagrees with the pack's (cosine {cosine:.6f}); nothing was "
                              "written")
    return {"max_abs": err, "cosine": cosine, "reference": "the pack's recogniser (onnxruntime)"}
