#!/usr/bin/env bash
# The CPU-dependent tests on an emulated AVX2-only CPU, from any x86-64 Linux machine (root, qemu-user >= 7.2):
#   sudo apt-get install qemu-user && sudo scripts/check-avx2-emulated.sh [extra pytest args]
#
# qemu-user -cpu Haswell (TCG: AVX2 + FMA, no AVX-512 / VNNI / bf16): onnxruntime, OpenVINO and torch choose their
# kernels from CPUID, so they run their AVX2 paths (onnxruntime's u8 x s8 products saturate as on a real AVX2-only
# CPU). dhumandiff reads /proc/cpuinfo, which qemu-user does not emulate: a private mount namespace binds a copy of
# the host's without the AVX-512 / VNNI / bf16 / AMX flags. numpy runs its SSE kernels (QEMU 7.2 crashes in numpy's
# AVX2 sort: an emulator bug). Child processes a test spawns would run natively: the selected tests spawn none.
# About 9 minutes (TCG is ~5x slower than the host). Timings under emulation mean nothing; only pass / fail does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(python -c 'import sys, os; print(os.path.realpath(sys.executable))')
CPUINFO=$(mktemp)
trap 'rm -f "$CPUINFO"' EXIT
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|avx_vnni|amx[a-z0-9_]*)//g; s/^(model name[^:]*: )(.*)/\1\2 (emulated AVX2-only)/' \
    /proc/cpuinfo > "$CPUINFO"
unshare -m sh -c "mount --bind '$CPUINFO' /proc/cpuinfo && \
  NPY_DISABLE_CPU_FEATURES='AVX2 FMA3 AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR' \
  qemu-x86_64 -cpu Haswell '$PY' -X faulthandler -m pytest -n 0 -p no:cacheprovider -W ignore \
  tests/test_runtime_adapters.py::test_openvino_caches_compiled_graphs \
  tests/test_runtime_adapters.py::test_openvino_bf16_bundle_runs_f32_on_a_cpu_without_bf16 \
  tests/test_quantize.py -k 'onnx or openvino_caches or bf16' $*" 2>&1 \
  | grep -v '^qemu-x86_64: warning: TCG doesn'
