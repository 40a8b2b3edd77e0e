#!/usr/bin/env bash
# Tiny scale: the embedded `tiny` model, torch fp32/bf16 and its ONNX / OpenVINO / TorchScript bundles in fp32 and
# fp16 (exported into the cache on first use), per component and end to end, plus any extra bundle given as
# arguments (e.g. quantised exports):  benchmarks/bench_tiny.sh [--bundle DIR ...]
# Writes benchmarks/results/bench_tiny.{json,md,png}, then judges it against the goals (benchmarks/goals.py).
# A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
nice -n 5 python -m dhumandiff.cli.main bench --scale tiny --out benchmarks/results \
    --warmup 1 --repeats 5 --overwrite "$@"
python benchmarks/goals.py benchmarks/results/bench_tiny.json
