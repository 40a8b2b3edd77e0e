"""serve: the kiosk service — an upload page and a small HTTP API over one exported bundle.

Torch-free like :mod:`dhumandiff.runtimes`, which it drives; needs the ``[serve]`` extra (FastAPI, uvicorn,
python-multipart). ``dhumandiff serve BUNDLE`` runs it; :func:`create_app` builds the ASGI app for any other
ASGI server. Public names are loaded lazily so ``import dhumandiff.serve`` does not import FastAPI.
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "create_app": "dhumandiff.serve.app",
    "KioskSettings": "dhumandiff.serve.app",
    "GenerationQueue": "dhumandiff.serve.queue",
    "Busy": "dhumandiff.serve.queue",
})
