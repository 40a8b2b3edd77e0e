"""The sd15-scale benchmark: DHumanDiff's sd15-size UNet (random weights, 512x512, CFG batch 2) in torch fp32 /
bf16, onnxruntime fp32 / dynamic int8, OpenVINO f32 / bf16 / NNCF int8 PTQ / int8 and int4 weights, batch-1
student steps, the other sd15-size components, a composed 512x512 image and the same image measured in one
process; judged against the goals (``benchmarks/goals.py``).

    python benchmarks/bench_sd15.py --out benchmarks/results --overwrite     # benchmarks/bench_sd15.sh runs this

Heavy: the first run exports ~18 GB into ``~/.cache/dhumandiff/bench/sd15`` (peak ~13 GB RAM, tens of minutes on
2 cores); later runs reuse it. ``--backbone sd15-test`` runs the same code path on a few-MB twin in minutes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# as a script the repository root is not on the path: make ``benchmarks`` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sd15.run import Sd15Settings, run_sd15  # noqa: E402
from dhumandiff.errors import DHumanDiffError  # noqa: E402


def _csv(value: str | None) -> tuple[str, ...] | None:
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    return items or None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-results"),
                    help="folder for bench_sd15.json / .md / .png (default: bench-results)")
    ap.add_argument("--variants", help="variant keys or groups (unet, student, components), comma-separated; "
                                       "default all")
    ap.add_argument("--cache", type=Path, help="exports reused between runs (default ~/.cache/dhumandiff/bench; "
                                               "sd15 needs ~18 GB)")
    ap.add_argument("--backbone", default="sd15", help="sd15 (default), or sd15-test: the same code path in minutes")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured calls before timing (default: 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls: median, min, max are reported (default: 5)")
    ap.add_argument("--threads", type=int, help="threads per runtime (default: all cores)")
    ap.add_argument("--calibration-samples", type=int, default=8, help="NNCF PTQ inputs (default: 8)")
    ap.add_argument("--no-peaks", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-op profiles")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one variant may take (default: 3600)")
    ap.add_argument("--overwrite", action="store_true", help="replace bench_sd15.* in --out")
    args = ap.parse_args(argv)
    try:
        settings = Sd15Settings(
            out=args.out, cache=args.cache, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
            peaks=not args.no_peaks, timeout=args.timeout, overwrite=args.overwrite,
            command="python benchmarks/bench_sd15.py " + " ".join(shlex.quote(a) for a in argv),
            variants=_csv(args.variants), calibration_samples=args.calibration_samples,
            profile=not args.no_profile, backbone=args.backbone)
        paths = run_sd15(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (DHumanDiffError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
