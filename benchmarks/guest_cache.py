"""A couple's second portrait against their first, with the kiosk's per-guest conditioning cache.

What the kiosk does per request, in one process: the first portrait decodes both uploads, finds both faces, runs the
face encoders (identity encoder, image encoder, face projection), the text encoder, the UNet steps and the decoder;
"Another scene" (``guest=ID``) reuses the held decoded photos and the cached conditioning
(``runtimes/conditioning_cache.py``), so it pays only for the text encoder (the prompt's row; the negative prompt's
row is cached too), the UNet steps and the decoder. Every graph is warmed up first (as ``dhumandiff serve`` does);
each repeat clears the cache so every first portrait is a miss. The second portrait is checked to be bit-identical
to the same portrait made without a cache.

    python benchmarks/guest_cache.py [--bundle DIR ...] [--steps N] [--repeats 5] [--threads N]

Default bundle: the embedded tiny (``dhumandiff/assets/bundles/tiny``). Prints markdown tables with the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from dhumandiff.utils.cpu import cpu_features

ROOT = Path(__file__).resolve().parent.parent
FACES = (ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png")
FIRST, SECOND = "a man and a woman on the beach", "a man and a woman at their wedding"
PHASES = ("read_photos", "find_faces", "encode_faces", "encode_text", "denoise", "decode")


def measure(bundle: str, steps: int | None, repeats: int, threads: int | None) -> dict:
    from dhumandiff.contract.images import load_rgb
    from dhumandiff.runtimes import load_bundle
    from dhumandiff.runtimes.conditioning_cache import ConditioningCache

    cache = ConditioningCache()
    gen = load_bundle(bundle, num_threads=threads, conditioning_cache=cache)
    gen.warm_up()
    uploads = [p.read_bytes() for p in FACES]
    firsts, seconds = [], []
    for r in range(repeats):
        cache.clear()
        t0 = time.perf_counter()
        a, b = (load_rgb(u) for u in uploads)  # the kiosk decodes the uploads for a first portrait only
        read = time.perf_counter() - t0
        one = gen(a, b, FIRST, steps=steps, seed=r)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        two = gen(a, b, SECOND, steps=steps, seed=r)
        second_s = time.perf_counter() - t0
        assert (one.settings["conditioning_cache"], two.settings["conditioning_cache"]) == ("miss", "hit")
        firsts.append({**one.timings, "total": first_s, "read_photos": read})
        seconds.append({**two.timings, "total": second_s, "read_photos": 0.0})
    plain = load_bundle(bundle, num_threads=threads)(a, b, SECOND, steps=steps, seed=repeats - 1)
    identical = bool(np.array_equal(np.asarray(plain.image), np.asarray(two.image)))

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(row.get(key, 0.0) for row in rows)

    return {"bundle": Path(bundle).name, "steps": two.settings["steps"], "cfg": gen.manifest.unet_batch == 2,
            "identical": identical, "first": {k: med(firsts, k) for k in (*PHASES, "total")},
            "second": {k: med(seconds, k) for k in (*PHASES, "total")},
            "best": (min(r["total"] for r in firsts), min(r["total"] for r in seconds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from dhumandiff.runtimes.embedded import embedded_bundle

    bundles = args.bundle or [str(embedded_bundle())]
    rows = [measure(b, args.steps, args.repeats, args.threads) for b in bundles]
    print(f"CPU: {cpu_features().line()}; median of {args.repeats}")
    print("| bundle | steps | first portrait ms | second portrait ms | second / first | best of each, ms | "
          "same image as without cache |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        f, s = row["first"]["total"], row["second"]["total"]
        bf, bs = row["best"]
        print(f"| {row['bundle']} | {row['steps']}{' (CFG)' if row['cfg'] else ''} | {f * 1e3:.1f} | {s * 1e3:.1f} | "
              f"{s / f:.2f} | {bf * 1e3:.1f} / {bs * 1e3:.1f} ({bs / bf:.2f}) | "
              f"{'yes' if row['identical'] else 'NO'} |")
    for row in rows:
        print(f"\n{row['bundle']} per phase (ms, median): first / second")
        print("| phase | first | second |")
        print("|---|---:|---:|")
        for k in (*PHASES, "total"):
            print(f"| {k} | {row['first'][k] * 1e3:.1f} | {row['second'][k] * 1e3:.1f} |")
        skipped = sum(row["first"][k] - row["second"][k] for k in ("read_photos", "find_faces", "encode_faces",
                                                                    "encode_text"))
        print(f"work the second portrait skips (photos, faces, negative-prompt row): {skipped * 1e3:.1f} ms = "
              f"{skipped / row['first']['total']:.0%} of the first portrait (the rest of the difference in totals is "
              "the machine's noise)")


if __name__ == "__main__":
    main()
