"""The embedded default as a ready bundle: a first portrait without torch.

The package ships the ``tiny`` model twice: as PyTorch weights (``assets/models/tiny``, the reference, training and
export source) and as the fp32 ONNX bundle exported from them (``assets/bundles/tiny``), which reproduces the
reference image (at most one grey level apart where a float rounds differently; ``tests/test_embedded_bundle.py``).
A new user's ``dhumandiff generate`` runs the bundle, so the README's first command installs only a runtime (onnxruntime, ~60 MB) instead of torch + diffusers
(~2.3 GB) and skips their ~10 s import. The bundle is rebuilt from the weights with
``scripts/build-embedded-bundle.sh`` whenever ``tiny`` changes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLES = Path(__file__).resolve().parent.parent / "assets" / "bundles"
DEFAULT_BUNDLE = "tiny"


def embedded_bundle(name: str = DEFAULT_BUNDLE) -> Path | None:
    """The shipped bundle folder of ``name``, or None when this install has none (e.g. a trimmed package)."""
    path = BUNDLES / name
    return path if (path / "bundle.json").is_file() else None


def embedded_runtime(requested: str | None = None) -> str | None:
    """``"onnx"`` when onnxruntime is installed and no other runtime was ``requested``, else None."""
    if requested in (None, "onnx") and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return None
