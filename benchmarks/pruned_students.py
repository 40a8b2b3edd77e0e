"""Pruned (BK-SDM-style) students against the full UNet they were cut from, side by side in one run.

    python benchmarks/pruned_students.py DATA_DIR --student runs/tiny-prune [--teacher tiny-lcm] [--limit 96]
        [--sd15-levels small,tiny] [--skip identity,tiny,sd15]

1. identity (tiny): the full 4-step student and the pruned one, evaluated by ``dhumandiff eval``'s code on DATA_DIR's
   held-out records (world-b evaluator, 4 LCM steps, the same seeds);
2. tiny UNet step: both as ONNX and OpenVINO bundles (the runtimes' own per-step timing, median of 5 images after
   one warm-up image) and as torch modules (median of 50 calls);
3. sd15 scale (random weights): the sd15-size UNet and its ``sd15-prune-LEVEL`` cuts exported to OpenVINO and
   quantised with NNCF int8 PTQ by the sd15 harness (``benchmarks/sd15``), CFG batch 2 and the student's batch 1;
   PSNR of each int8 graph against its own torch fp32 output.
Prints markdown tables with the CPU's features; every speed is given against the full UNet of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dhumandiff.bench.measure import time_calls  # noqa: E402
from dhumandiff.checks.evaluate import EvalSetting, evaluate  # noqa: E402
from dhumandiff.export.bundle import export_bundle  # noqa: E402
from dhumandiff.export.specs import get_spec  # noqa: E402
from dhumandiff.model.faces import get_face_analyzer  # noqa: E402
from dhumandiff.model.generate import load_model  # noqa: E402
from dhumandiff.model.registry import ASSETS  # noqa: E402
from dhumandiff.runtimes import load_bundle  # noqa: E402
from dhumandiff.utils.cpu import cpu_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FACES = (ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png")
PROMPT = "a man and a woman on the beach"


def identity(data: str, models: dict[str, object], limit: int, out: Path) -> dict[str, dict]:
    judge = get_face_analyzer("world", encoder=ASSETS.parent / "evaluators" / "world-b")
    settings = [EvalSetting(name, model, "single", 4, sampler="lcm") for name, model in models.items()]
    report = evaluate(settings, data, judge, out, limit=limit)
    return {name: row for name, row in zip(models, report.rows)}


def bundle_steps(name: str, model, runtime: str, work: Path, images: int = 5) -> float:
    """Median UNet step (ms) of ``model``'s bundle on ``runtime``, by the generator's own timings."""
    bundle = export_bundle(model, work / f"{name}-{runtime}", runtime, source_model=name, overwrite=True)
    gen = load_bundle(bundle)
    gen(*FACES, PROMPT, seed=0)
    steps = [gen(*FACES, PROMPT, seed=s).timings["unet_per_step"] for s in range(images)]
    return 1000 * statistics.median(steps)


@torch.no_grad()
def torch_step(model, calls: int = 50) -> float:
    """Median torch fp32 UNet call (ms) at the student's batch 1."""
    spec = get_spec("unet", model)
    unet = spec.build(model).eval()
    inputs = spec.example(model, batch=1)
    return time_calls(lambda: unet(*inputs.values()), warmup=5, repeats=calls)[0].median_ms


def sd15(levels: list[str], cache: Path | None, work: Path, repeats: int) -> dict[str, dict[str, dict]]:
    """Per backbone (``sd15`` and each ``sd15-prune-LEVEL``): its NNCF int8 rows from the sd15 harness."""
    from benchmarks.sd15.run import Sd15Settings, run_sd15

    out: dict[str, dict[str, dict]] = {}
    for backbone in ["sd15"] + [f"sd15-prune-{lv}" for lv in levels]:
        settings = Sd15Settings(out=work / backbone, cache=cache, repeats=repeats, peaks=False, profile=False,
                                overwrite=True, variants=("ov-nncf-int8", "ov-nncf-int8-b1"), backbone=backbone,
                                command="python benchmarks/pruned_students.py (sd15 part)")
        paths = run_sd15(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        report = json.loads(Path(paths["json"]).read_text())
        out[backbone] = {r["key"]: r for r in report["variants"]}
        out[backbone]["_params"] = report["meta"].get("params", {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--student", required=True, help="the pruned student (model folder)")
    ap.add_argument("--teacher", default="tiny-lcm", help="the full student it was cut from (default tiny-lcm)")
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--sd15-levels", default="small,tiny")
    ap.add_argument("--sd15-repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, help="sd15 exports (default: the sd15 harness's cache)")
    ap.add_argument("--eval-out", type=Path, help="keep the eval report and contact sheets here")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: identity,tiny,sd15")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    print(f"CPU: {cpu_features().line()}")
    print(f"command: python benchmarks/pruned_students.py {' '.join(sys.argv[1:])}")
    models = {"full": load_model(args.teacher).eval(), "pruned": load_model(args.student).eval()}
    params = {k: sum(p.numel() for p in m.unet.parameters()) for k, m in models.items()}
    with tempfile.TemporaryDirectory() as tmp:
        ident = {} if "identity" in skip else identity(args.data, models, args.limit,
                                                         args.eval_out or Path(tmp) / "eval")
        steps: dict[str, dict[str, float]] = {}
        if "tiny" not in skip:
            for k, m in models.items():
                steps[k] = {rt: bundle_steps(k, m, rt, Path(tmp)) for rt in ("onnx", "openvino")}
                steps[k]["torch"] = torch_step(m)
        big = {} if "sd15" in skip else sd15([x for x in args.sd15_levels.split(",") if x], args.cache,
                                              Path(tmp) / "sd15", args.sd15_repeats)
    if ident or steps:  # the tiny table only when part of it was measured
        tiny_table(models, params, ident, steps)
    if big:
        sd15_table(big)


def tiny_table(models: dict, params: dict[str, int], ident: dict, steps: dict[str, dict[str, float]]) -> None:
    """Identity, quality and step time of the tiny teacher and its pruned student (markdown to stdout)."""
    print("\n| tiny | UNet params | identity similarity (world-b, 4 steps) | vs full | swap rate | attributes | "
          "setting | clothes | FID-style | step ms onnx | openvino | torch | speed-up onnx / openvino / torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for k in models:
        row, s = ident.get(k, {}), steps.get(k, {})
        sim, base = row.get("identity_similarity", float("nan")), ident.get("full", {}).get("identity_similarity",
                                                                                            float("nan"))
        ups = " / ".join(f"{steps['full'][rt] / s[rt]:.2f}x" for rt in ("onnx", "openvino", "torch")) if s else "-"
        quality = " | ".join(f"{row.get(c, float('nan')):.3f}" for c in ("swap_rate", "attribute_accuracy",
                                                                         "setting_accuracy", "clothes_accuracy",
                                                                         "fid_style"))
        print(f"| {k} | {params[k] / 1e6:.2f} M | {sim:.3f} | {sim / base:.1%} | {quality} "
              f"| {s.get('onnx', float('nan')):.2f} | {s.get('openvino', float('nan')):.2f} | "
              f"{s.get('torch', float('nan')):.2f} | {ups} |")


def sd15_table(big: dict) -> None:
    """NNCF int8 step times and PSNR of the sd15-size UNet and its pruned cuts, ratios against the full UNet."""
    full = big["sd15"]
    print("\n| sd15 (random weights) | UNet params | NNCF int8 step ms, CFG batch 2 | speed-up | PSNR dB vs own "
          "torch fp32 | batch 1 (student step) ms | speed-up | PSNR dB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in big.items():
        b2, b1 = rows.get("ov-nncf-int8", {}), rows.get("ov-nncf-int8-b1", {})
        m2, m1 = (b2.get("step") or {}).get("median_ms"), (b1.get("step") or {}).get("median_ms")
        f2 = (full.get("ov-nncf-int8", {}).get("step") or {}).get("median_ms")
        f1 = (full.get("ov-nncf-int8-b1", {}).get("step") or {}).get("median_ms")
        p = rows["_params"].get("unet", 0) / 1e9
        print(f"| {name} | {p:.2f} B | {m2 or float('nan'):,.0f} | {(f2 or 0) / (m2 or 1):.2f}x | "
              f"{b2.get('psnr_db', float('nan')):.1f} | {m1 or float('nan'):,.0f} | {(f1 or 0) / (m1 or 1):.2f}x | "
              f"{b1.get('psnr_db', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
