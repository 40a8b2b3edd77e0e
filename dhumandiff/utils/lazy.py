"""Lazy re-exports for a package's ``__init__`` (PEP 562): public names resolved on first use.

A stage's ``__init__`` names its public API without importing the modules behind it, so ``import
dhumandiff.export`` does not pull in torch, onnx or openvino, and ``import dhumandiff.serve`` not FastAPI::

    from ..utils.lazy import lazy_exports

    __getattr__, __all__ = lazy_exports(__name__, {"export_bundle": "dhumandiff.export.bundle", ...})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``: each name in ``exports`` (name -> module that defines it) is
    imported from its module when first read; any other name raises :class:`AttributeError` as usual."""
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(table)
