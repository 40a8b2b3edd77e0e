#!/usr/bin/env bash
# A new user's first portrait, both ways: `pip install -e ".[EXTRA]"` into a fresh venv, then the README's
# generate command from a fresh shell (twice: first and second run), for EXTRA = onnx (the embedded default's
# shipped bundle, no torch) and torch (the PyTorch reference, what the README installed before).
#   benchmarks/first_run.sh [OUT_DIR]       (default /tmp/first-run; about 5 minutes, most of it torch's install)
# Prints one markdown row per extra: install seconds, venv size, first and second generate seconds. pip installs
# from whatever index this machine's pip is configured with (here: local wheel mirrors, so no network time).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-/tmp/first-run}
rm -rf "$OUT" && mkdir -p "$OUT"
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /CPU: /'
echo "flags: $(grep -m1 -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')" \
     "cores: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| install | pip install s | venv size | first generate s | second generate s | torch imported |"
echo "|---|---:|---:|---:|---:|---|"
for extra in onnx torch; do
    venv="$OUT/venv-$extra"
    python -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    t0=$(date +%s.%N)
    "$venv/bin/pip" install -q --no-cache-dir -e "$ROOT[$extra]" >"$OUT/pip-$extra.log" 2>&1
    t1=$(date +%s.%N)
    size=$(du -sm "$venv" | cut -f1)
    times=()
    for run in 1 2; do
        rm -f "$OUT/portrait-$extra.png"
        s=$(date +%s.%N)
        env -i PATH="$venv/bin:/usr/bin:/bin" HOME="$OUT/home-$extra" bash -c "cd '$ROOT' && dhumandiff generate \
            --face-a examples/face_a.png --face-b examples/face_b.png --prompt 'a man and a woman on the beach' \
            --out '$OUT/portrait-$extra.png'" >"$OUT/generate-$extra-$run.log" 2>&1
        e=$(date +%s.%N)
        times+=("$(echo "$e - $s" | bc)")
    done
    torch=$("$venv/bin/python" -c "import importlib.util as u; print('installed' if u.find_spec('torch') else 'absent')")
    printf "| .[%s] | %.0f | %s MB | %.1f | %.1f | %s |\n" "$extra" "$(echo "$t1 - $t0" | bc)" "$size" \
        "${times[0]}" "${times[1]}" "$torch"
done
