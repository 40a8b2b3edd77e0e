"""Token merging (ToMe, ``dhumandiff/model/token_merging.py``): speed against identity, side by side in one run.

    python benchmarks/token_merging.py DATA_DIR [--ratios 0,0.3,0.5,0.7] [--limit 96] [--sd15-repeats 2]

1. identity: the embedded ``tiny`` with each ratio (merging in the full-size latent's self-attention), evaluated by
   ``dhumandiff eval``'s code on DATA_DIR's held-out records (world-b evaluator, single mode, 30 steps);
2. tiny UNet step: the exported ONNX bundle of each ratio on onnxruntime (batch 2 = CFG, 16x16 latent, 256 tokens);
3. sd15-scale UNet step (random weights, 512x512 -> 64x64 latent, 4,096 tokens in the merged layers): torch fp32,
   CFG batch 2, median of ``--sd15-repeats`` after one warm-up call.
Prints markdown tables with the CPU; each ratio's speed is given against ratio 0 of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dhumandiff.checks.evaluate import EvalSetting, evaluate
from dhumandiff.export.bundle import export_bundle
from dhumandiff.export.specs import get_spec
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.faces import get_face_analyzer
from dhumandiff.model.generate import load_model
from dhumandiff.model.registry import ASSETS
from dhumandiff.runtimes import load_bundle
from dhumandiff.utils.cpu import cpu_features

ROOT = Path(__file__).resolve().parent.parent
FACES = (ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png")


def _model(name_or_backbone: str, ratio: float) -> DHumanDiff:
    model = load_model(name_or_backbone) if name_or_backbone == "tiny" else DHumanDiff.from_backbone(name_or_backbone)
    if ratio:
        model.set_token_merging(ratio)
    return model.eval()


def identity(data: str, ratios: list[float], limit: int, out: Path) -> dict[float, dict]:
    judge = get_face_analyzer("world", encoder=ASSETS.parent / "evaluators" / "world-b")
    settings = [EvalSetting(f"tome {r}", _model("tiny", r), "single", 30) for r in ratios]
    report = evaluate(settings, data, judge, out, limit=limit)
    return {r: row for r, row in zip(ratios, report.rows)}


def tiny_steps(ratios: list[float], work: Path) -> dict[float, float]:
    """Median UNet step (ms) of each ratio's ONNX bundle, 30-step images after one warm-up image."""
    out = {}
    for r in ratios:
        bundle = export_bundle(_model("tiny", r), work / f"tiny-{r}", "onnx", source_model="tiny", overwrite=True)
        gen = load_bundle(bundle)
        gen(*FACES, "a man and a woman on the beach", seed=0)
        steps = [gen(*FACES, "a man and a woman on the beach", seed=s).timings["unet_per_step"] for s in range(3)]
        out[r] = 1000 * statistics.median(steps)
    return out


@torch.no_grad()
def sd15_steps(ratios: list[float], repeats: int) -> dict[float, float]:
    """Median torch fp32 UNet call (ms) at CFG batch 2 on the sd15-size UNet, random weights."""
    model = _model("sd15", 0)
    spec = get_spec("unet", model)
    unet = spec.build(model).eval()
    inputs = spec.example(model, batch=2)
    out = {}
    for r in ratios:
        model.set_token_merging(r or None)
        unet(*inputs.values())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            unet(*inputs.values())
            times.append(time.perf_counter() - t0)
        out[r] = 1000 * statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--ratios", default="0,0.3,0.5,0.7")
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--sd15-repeats", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: identity,tiny,sd15")
    args = ap.parse_args()
    ratios = [float(x) for x in args.ratios.split(",")]
    skip = set(args.skip.split(","))
    print(f"CPU: {cpu_features().line()}")
    with tempfile.TemporaryDirectory() as tmp:
        ident = {} if "identity" in skip else identity(args.data, ratios, args.limit, Path(tmp) / "eval")
        tiny = {} if "tiny" in skip else tiny_steps(ratios, Path(tmp))
    sd15 = {} if "sd15" in skip else sd15_steps(ratios, args.sd15_repeats)
    print("| ratio | identity similarity (world-b) | vs ratio 0 | tiny UNet step ms (onnx, 256 tokens) | speed-up | "
          "sd15 UNet step ms (torch fp32, 4,096 tokens) | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in ratios:
        row = ident.get(r, {})
        sim = row.get("identity_similarity", np.nan)
        base = ident.get(ratios[0], {}).get("identity_similarity", np.nan)
        t, s = tiny.get(r, np.nan), sd15.get(r, np.nan)
        print(f"| {r} | {sim:.3f} | {sim / base:.1%} | {t:.1f} | {tiny.get(ratios[0], np.nan) / t:.2f}x | "
              f"{s:.0f} | {sd15.get(ratios[0], np.nan) / s:.2f}x |")


if __name__ == "__main__":
    main()
