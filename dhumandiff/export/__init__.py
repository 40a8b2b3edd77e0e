"""export stage: a trained model -> a bundle (graphs + tokenizer + ``bundle.json``) for one edge runtime.

Modules, one job each: ``specs`` (what to export, as data), ``wrappers`` (flat-tensor modules), ``validate``
(how a graph is judged), ``onnx_export`` / ``openvino_export`` / ``torchscript_export`` (one runtime each;
``coreml_export`` is the Core ML owner's), ``manifest`` (``bundle.json``), ``bundle`` (the atomic export loop).

Import rule: this stage may import ``model``, ``data``, ``utils`` and ``errors``, never ``runtimes`` (a later
stage); the bundle format is the only contract between the two. Submodules are imported on use, so
``import dhumandiff.export`` does not pull in onnx or openvino.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "export_bundle": "dhumandiff.export.bundle",
    "export_component": "dhumandiff.export.bundle",
    "RUNTIMES": "dhumandiff.export.bundle",
    "ComponentSpec": "dhumandiff.export.specs",
    "components_for": "dhumandiff.export.specs",
    "get_spec": "dhumandiff.export.specs",
    "Tolerance": "dhumandiff.export.validate",
})
