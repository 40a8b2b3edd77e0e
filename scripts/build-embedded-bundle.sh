#!/usr/bin/env bash
# Rebuild the embedded default's torch-free bundle (dhumandiff/assets/bundles/tiny) from the shipped weights
# (dhumandiff/assets/models/tiny). Run it whenever `tiny` changes: tests/test_embedded_bundle.py fails while the
# bundle's image differs from the reference's by a single pixel.
set -euo pipefail
cd "$(dirname "$0")/.."
dhumandiff export onnx tiny --out dhumandiff/assets/bundles/tiny --overwrite
dhumandiff verify dhumandiff/assets/bundles/tiny
