#!/usr/bin/env bash
# sd15 scale: the sd15-size DHumanDiff UNet (random weights, 512x512, CFG batch 2) in torch fp32 / bf16, onnxruntime
# fp32 / dynamic int8, OpenVINO f32 / bf16 / NNCF int8 PTQ / int8 and int4 weights, batch-1 student steps and the
# other sd15-size components for a composed end-to-end estimate (benchmarks/bench_sd15.py; --help for its options).
# Heavy: the first run exports ~18 GB into ~/.cache/dhumandiff/bench/sd15 (peak ~13 GB RAM, tens of minutes on
# 2 cores); later runs reuse it.  Writes benchmarks/results/bench_sd15.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 5 python benchmarks/bench_sd15.py --out benchmarks/results \
    --warmup 1 --repeats 5 --timeout 7200 --overwrite "$@"
