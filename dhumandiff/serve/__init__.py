"""serve: the kiosk service — an upload page and a small HTTP API over one exported bundle.

Torch-free like :mod:`dhumandiff.runtimes`, which it drives; needs the ``[serve]`` extra (FastAPI, uvicorn,
python-multipart). ``dhumandiff serve BUNDLE`` runs it; :func:`create_app` builds the ASGI app for any other
ASGI server. Public names are loaded lazily so ``import dhumandiff.serve`` does not import FastAPI.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "dhumandiff.serve.app",
    "KioskSettings": "dhumandiff.serve.app",
    "GenerationQueue": "dhumandiff.serve.queue",
    "Busy": "dhumandiff.serve.queue",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dhumandiff.serve' has no attribute {name!r}")
