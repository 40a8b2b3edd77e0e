"""Cold start against warm, with and without the kiosk's warm-up (``BundleGenerator.warm_up``).

Each measurement runs in a fresh process (so nothing of an earlier load is held):
* ``cold``: load the bundle, time the first image (graphs load and run for the first time inside it), then the
  median of the next ``--repeats`` images (warm);
* ``warmed``: load the bundle, run ``warm_up()`` (every graph once on stand-in inputs, what ``dhumandiff serve``
  does before it answers), then time the first image.
The OpenVINO compile cache is filled by an untimed first start, as on a kiosk's second boot.

    python benchmarks/cold_start.py [--bundle DIR ...] [--runtime onnx|openvino] [--steps N] [--repeats 3]

Default bundle: the embedded tiny (``dhumandiff/assets/bundles/tiny``). Prints a markdown table with the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dhumandiff.utils.cpu import cpu_features

ROOT = Path(__file__).resolve().parent.parent
FACES = (ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png")
PROMPT = "a man and a woman on the beach"


def _child(bundle: str, runtime: str | None, steps: int | None, mode: str, repeats: int) -> dict:
    """One fresh process: load, optionally warm up, then images; seconds as JSON on stdout."""
    from dhumandiff.runtimes import load_bundle

    t0 = time.perf_counter()
    gen = load_bundle(bundle, runtime=runtime)
    out = {"load_s": time.perf_counter() - t0}
    if mode == "warmed":
        t1 = time.perf_counter()
        out["warm_up_s"] = sum(gen.warm_up().values())
        out["warm_up_wall_s"] = time.perf_counter() - t1
    images = []
    for _ in range(1 + (repeats if mode == "cold" else 0)):
        t1 = time.perf_counter()
        gen(*FACES, PROMPT, steps=steps, seed=0)
        images.append(time.perf_counter() - t1)
    out["first_image_s"] = images[0]
    if len(images) > 1:
        out["warm_image_s"] = sorted(images[1:])[len(images[1:]) // 2]
    return out


def _measure(bundle: str, runtime: str | None, steps: int | None, mode: str, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--bundle", bundle, "--repeats", str(repeats)]
    cmd += ["--runtime", runtime] if runtime else []
    cmd += ["--steps", str(steps)] if steps else []
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[])
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=("cold", "warmed"), default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.bundle[0], args.runtime, args.steps, args.child, args.repeats)))
        return
    from dhumandiff.runtimes.embedded import embedded_bundle

    bundles = args.bundle or [str(embedded_bundle())]
    print(f"CPU: {cpu_features().line()}")
    print("| bundle | runtime | load s | cold first image s | warm image s | cold / warm | warm-up s | "
          "first image after warm-up s | after warm-up / warm |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for bundle in bundles:
        _measure(bundle, args.runtime, args.steps, "cold", 0)  # fills a compile cache, if the runtime has one
        cold = _measure(bundle, args.runtime, args.steps, "cold", args.repeats)
        warmed = _measure(bundle, args.runtime, args.steps, "warmed", 0)
        w = cold["warm_image_s"]
        print(f"| {Path(bundle).name} | {args.runtime or 'bundle default'} | {cold['load_s']:.2f} | "
              f"{cold['first_image_s']:.2f} | {w:.2f} | {cold['first_image_s'] / w:.2f}x | "
              f"{warmed['warm_up_wall_s']:.2f} | {warmed['first_image_s']:.2f} | {warmed['first_image_s'] / w:.2f}x |")


if __name__ == "__main__":
    main()
