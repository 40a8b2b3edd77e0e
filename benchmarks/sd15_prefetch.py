"""Does prefetching the UNet while the encoders run shorten a cold start? One sd15 image in one process, with and
without ``runner.prefetch``, at a chosen inference thread count (``bench/sd15_pipeline.py``'s worker).

Reads the graphs the last ``benchmarks/bench_sd15.sh`` run chose for its end-to-end estimate (from
``benchmarks/results/bench_sd15.json``) from the sd15 bench cache. A first process fills a fresh compile cache; the
measured ones are restarts.

    python benchmarks/sd15_prefetch.py --threads 1     # one core left to the loader
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="inference threads per graph")
    ap.add_argument("--repeats", type=int, default=2, help="warm images after the cold one")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dhumandiff" / "bench" / "sd15")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "bench_sd15.json")
    args = ap.parse_args(argv)
    from dhumandiff.bench.jobs import run_worker
    from dhumandiff.bench.sd15 import choose_rows
    from dhumandiff.bench.sd15_pipeline import pipeline_job

    report = json.loads(args.report.read_text(encoding="utf-8"))
    job = pipeline_job(choose_rows(report["variants"]), args.cache, 4)
    work = args.cache.parent / "work" / "sd15-prefetch"
    job.update(threads=args.threads, repeats=args.repeats, cache_dir=str(work / "compile-cache"))
    shutil.rmtree(job["cache_dir"], ignore_errors=True)
    first = run_worker({**job, "mode": "prefetch", "prime_only": True}, work, "first", timeout=1800)
    print(f"threads {args.threads}; first start (compiling) {first.get('cold_s', float('nan')):.2f} s")
    print("| mode | cold s | warm s | cold / warm | peak RSS MB |\n|---|---|---|---|---|")
    for mode in ("sequential", "prefetch"):
        r = run_worker({**job, "mode": mode}, work, mode, timeout=1800)
        if "error" in r:
            print(f"| {mode} | failed: {r['error']} | | | |")
            continue
        print(f"| {mode} | {r['cold_s']:.2f} | {r['warm']['median_ms'] / 1000:.2f} | {r['cold_over_warm']:.2f} | "
              f"{r['memory']['peak_mb']:,.0f} |")
    shutil.rmtree(job["cache_dir"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
