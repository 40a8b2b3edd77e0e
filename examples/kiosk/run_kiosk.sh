#!/usr/bin/env bash
# Start the kiosk on this machine: export the embedded 4-step student once (needs the [export] extra), then
# serve it on http://127.0.0.1:8000 (needs only [onnx,serve]). Extra arguments go to `dhumandiff serve`.
set -euo pipefail
BUNDLE="${DHUMANDIFF_BUNDLE:-bundles/tiny-lcm-onnx}"
if [ ! -f "$BUNDLE/bundle.json" ]; then
    dhumandiff export onnx tiny-lcm --out "$BUNDLE"
fi
exec dhumandiff serve "$BUNDLE" "$@"
