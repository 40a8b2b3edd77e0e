"""Core ML package sizes of the sd15-size DHumanDiff UNet: fp16, palettised 8/6/4-bit and linear int8.

The size goals (int8 <= 0.3x, 4-bit <= 0.17x the fp32 graph; ``benchmarks/goals.py``) are missed at 4 bits on
OpenVINO because NNCF's int4 compresses MatMuls only; Core ML's palettiser compresses the convolutions too. This converts the
same sd15-size UNet the sd15 bench measures (random weights, seed 0, split-einsum attention as Apple ships SD)
with the project's exporter (``trace_component`` -> ``convert_traced``) and compresses it with the exporter's
own hook (``compress_mlpackage``: coremltools.optimize.coreml), then reads the sizes off disk.

Size only: Core ML does not run on Linux, and random weights say nothing about a palette's fidelity (that is
measured on the trained tiny default, BENCHMARKS.md "Quantised bundles"). Needs ~12 GB RAM; ~3 min to convert and 1-4 min per mode here.

    python benchmarks/coreml_sd15_sizes.py            # -> benchmarks/results/coreml_sd15_sizes.{json,md}
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))
MODES = ("palettize-8", "palettize-6", "palettize-4", "linear-int8")


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def convert_fp16(out: Path) -> dict[str, Any]:
    """The sd15-size UNet as the Core ML exporter writes it (fp16 mlprogram), and its fp32 weight bytes."""
    from benchmarks.sd15.prepare import build_model
    from dhumandiff.export.coreml_export import DEFAULT_ATTENTION, convert_traced, save_mlpackage, trace_component
    from dhumandiff.export.specs import get_spec

    t0 = time.perf_counter()
    model = build_model()
    for attr in ("text_encoder", "image_encoder", "vae", "face_proj", "subject_mlp"):
        setattr(model, attr, None)  # only the UNet (and the resampler config its inputs read) is converted
    gc.collect()
    unet_params = sum(p.numel() for p in model.unet.parameters())
    spec = get_spec("unet")
    traced = trace_component(spec, model, DEFAULT_ATTENTION)
    check = traced.trace_check.max_abs
    module_bytes = sum(t.numel() * 4 for t in traced.module.state_dict().values() if t.is_floating_point())
    mlmodel = convert_traced(traced, "fp16")
    del traced, model
    gc.collect()
    save_mlpackage(mlmodel, out)
    return {"unet_params": unet_params, "fp32_bytes": module_bytes, "trace_max_abs": check,
            "attention": DEFAULT_ATTENTION, "convert_s": round(time.perf_counter() - t0, 1)}


def compress(src: Path, mode: str, out: Path) -> dict[str, Any]:
    from dhumandiff.export.coreml_export import compress_mlpackage
    from dhumandiff.export.quantize_coreml import WEIGHT_THRESHOLD, op_types

    t0 = time.perf_counter()
    if mode.startswith("palettize-"):
        compress_mlpackage(src, "palettize", int(mode.split("-")[1]), out=out, weight_threshold=WEIGHT_THRESHOLD)
    else:
        compress_mlpackage(src, "linear_int8", out=out, weight_threshold=WEIGHT_THRESHOLD)
    ops = op_types(out)
    return {"seconds": round(time.perf_counter() - t0, 1),
            "constexpr_ops": {k: v for k, v in ops.items() if k.startswith("constexpr_")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dhumandiff" / "bench" / "sd15",
                    help="sd15 bench cache (the packages go to CACHE/coreml; the ONNX fp32 size is read there)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    from dhumandiff.export.coreml_chunk import weight_file_bytes
    from dhumandiff.utils.atomic import write_text_atomic

    folder = args.cache / "coreml"
    folder.mkdir(parents=True, exist_ok=True)
    fp16 = folder / "unet-fp16.mlpackage"
    meta_path = folder / "unet-fp16.json"
    if fp16.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        print("converting the sd15-size UNet to Core ML (fp16)...", flush=True)
        meta = convert_fp16(fp16)
        write_text_atomic(meta_path, json.dumps(meta, indent=1))
    onnx_fp32 = sum(f.stat().st_size for f in (args.cache / "onnx").glob("unet.onnx*")) or None
    fp32 = meta["fp32_bytes"]
    rows = [{"variant": "fp32 weights (torch / ONNX graph)", "bytes": onnx_fp32 or fp32},
            {"variant": "Core ML fp16", "bytes": weight_file_bytes(fp16), "seconds": meta["convert_s"]}]
    for mode in [m for m in args.modes.split(",") if m]:
        out = folder / f"unet-{mode}.mlpackage"
        print(f"compressing: {mode}", flush=True)
        info = compress(fp16, mode, out)
        rows.append({"variant": f"Core ML {mode}", "bytes": weight_file_bytes(out), **info})
        shutil.rmtree(out)  # the size is what is kept; the packages are 0.4-1.7 GB each
    ref = rows[0]["bytes"]
    for r in rows:
        r["mb"] = _mb(r["bytes"])
        r["vs_fp32"] = round(r["bytes"] / ref, 4)
    result = {"command": "python benchmarks/coreml_sd15_sizes.py " + " ".join(argv or sys.argv[1:]),
              "created": time.strftime("%Y-%m-%d %H:%M"), "meta": meta, "onnx_fp32_bytes": onnx_fp32,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "coreml_sd15_sizes.json", json.dumps(result, indent=1) + "\n")
    lines = ["# Core ML sizes of the sd15-size UNet (random weights)", "",
             f"`{result['command'].strip()}` ({result['created']}; {meta['unet_params'] / 1e6:.0f} M parameters, "
             f"{meta['attention']} attention, trace vs model max abs {meta['trace_max_abs']:.1e}). Sizes are the "
             "packages' weight files; the reference is the fp32 ONNX UNet the sd15 bench measures.", "",
             "| variant | size MiB | vs fp32 | compress s | decompression ops |", "|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in r.get("constexpr_ops", {}).items()) or "-"
        lines.append(f"| {r['variant']} | {r['mb']:,.1f} | {r['vs_fp32']:.3f}x | {r.get('seconds', '-')} | {ops} |")
    write_text_atomic(args.out / "coreml_sd15_sizes.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
