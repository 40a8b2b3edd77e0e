#!/usr/bin/env bash
# Quantised variants of the embedded default `tiny`, end to end through the CLI:
#   1. `dhumandiff calibrate` on a PairHuman-format folder (UNet inputs at every sampler step + layer sensitivity);
#   2. `dhumandiff export RUNTIME tiny --quantize MODE --calibration` for every mode of every runtime, beside the
#      fp32 bundle of each runtime (the size reference);
#   3. `dhumandiff parity` on each bundle against its own recorded budget (Core ML off macOS: --weights-only, the
#      bundle's decompressed weights run as torch);
#   4. benchmarks/quantize_table.py: one markdown table (size vs fp32, end-to-end PSNR, identity similarity vs the
#      fp32 image's, gate) into benchmarks/results/quantized_tiny.md.
# Usage: benchmarks/quantize_fidelity.sh DATA_DIR [WORK_DIR]   (~15 min on 2 cores; then bench the bundles with
#        benchmarks/bench_tiny.sh --bundle WORK_DIR/onnx-int8-static ...)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: benchmarks/quantize_fidelity.sh DATA_DIR [WORK_DIR]}
WORK=${2:-$HOME/.cache/dhumandiff/quantized}
DH="python -m dhumandiff.cli.main"
mkdir -p "$WORK"
[ -d "$WORK/calib" ] || $DH calibrate tiny --data "$DATA" --out "$WORK/calib" --count 4 --split train || exit 1
for rt in onnx openvino coreml; do
    [ -d "$WORK/$rt-fp32" ] || $DH export $rt tiny --out "$WORK/$rt-fp32" --overwrite || exit 1
done
MODES="onnx:int8-dynamic onnx:int8-static openvino:int8-weights openvino:int4-weights openvino:int8-hybrid
openvino:int8 coreml:linear-int8 coreml:palettize-8 coreml:palettize-6 coreml:palettize-4 coreml:mixed-bit"
for rm in $MODES; do
    rt=${rm%%:*}; mode=${rm#*:}; b="$WORK/$rt-$mode"
    $DH export $rt tiny --out "$b" --quantize "$mode" --calibration "$WORK/calib" --overwrite \
        > "$b.export.log" 2>&1 || { echo "export $rt $mode failed: $(tail -1 "$b.export.log")"; continue; }
    extra=""; [ "$rt" = coreml ] && extra="--weights-only"
    $DH parity "$b" $extra --report "$b.parity.json" > "$b.parity.log" 2>&1
    echo "$rt $mode: parity exit $? ($(tail -1 "$b.parity.log"))"
done
python benchmarks/quantize_table.py "$WORK" > benchmarks/results/quantized_tiny.md
cat benchmarks/results/quantized_tiny.md
