"""The kiosk as an ASGI app for any ASGI server (gunicorn -k uvicorn.workers.UvicornWorker, hypercorn, ...):

    DHUMANDIFF_BUNDLE=bundles/tiny-lcm-onnx uvicorn app:app --host 127.0.0.1 --port 8000

Keep one worker process: each worker loads its own copy of the model and runs its own line, so two workers
means two generations at once and twice the memory. Limits come from the environment (defaults in brackets):
DHUMANDIFF_QUEUE [4], DHUMANDIFF_MAX_UPLOAD_MB [10], DHUMANDIFF_MAX_PIXELS [16000000], DHUMANDIFF_KEEP_DIR [unset].
"""

import os
from pathlib import Path

from dhumandiff.serve import KioskSettings, create_app

env = os.environ.get
app = create_app(
    env("DHUMANDIFF_BUNDLE", "bundles/tiny-lcm-onnx"),
    KioskSettings(
        queue=int(env("DHUMANDIFF_QUEUE", "4")),
        max_upload_mb=float(env("DHUMANDIFF_MAX_UPLOAD_MB", "10")),
        max_pixels=int(env("DHUMANDIFF_MAX_PIXELS", "16000000")),
        keep_dir=Path(env("DHUMANDIFF_KEEP_DIR")) if env("DHUMANDIFF_KEEP_DIR") else None,
    ),
)
