"""The sd15-scale study's report: its markdown tables and plot, written in ``dhumandiff.bench``'s report frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dhumandiff.bench.report import (fmt_latency, fmt_load, fmt_mb, fmt_number, fmt_peak_share, fmt_psnr,
                                     peaks_table, plot_bars, report_header)

from ..goals import GOALS, REFERENCE_STEP_MS, goals_lines


def sd15_markdown(report: dict[str, Any]) -> str:
    """The study's tables: UNet variants, other components, the end-to-end estimate, the one-process image, the
    per-op profiles, the matmul peaks and the goals."""
    peaks = (report.get("peaks") or {}).get("peak_gflops", {})
    body = report
    meta = body.get("meta", {})
    flops = meta.get("flops", {})
    s = report["settings"]
    rows = body["variants"]
    torch_fp32 = next((r for r in rows if r.get("key") == "torch-fp32" and r.get("step")), None)
    lines = report_header(report) + [
        f"{meta.get('backbone', 'sd15')}-size DHumanDiff UNet, random weights (seed {meta.get('seed')}), "
        f"{meta.get('image_size', 512)}x{meta.get('image_size', 512)} -> {meta.get('latent_size', 64)}x"
        f"{meta.get('latent_size', 64)} latents, 77 text + 32 identity tokens, CFG batch 2: "
        f"{fmt_number(flops.get('unet', 0) / 1e9, 1)} GFLOP per step "
        f"(batch 1: {fmt_number(flops.get('unet_batch1', 0) / 1e9, 1)}; "
        f"torch FlopCounterMode: matmuls, convolutions, attention). Each variant in a "
        f"fresh process: load, first step (cold), {s['warmup']} warm-up, {s['repeats']} timed steps. PSNR of "
        f"the step's output against torch fp32 on the same inputs.", ""]
    if body.get("calibration"):
        lines += [f"NNCF calibration: {body['calibration']}.", ""]
    lines += ["| variant | batch | size MB | load s (restart / first) | step ms, median (min-max) | "
              "speed-up vs torch fp32 | GFLOP/s | vs peaks | peak RSS MB (load / run) | PSNR dB | load avg |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("component") != "unet":
            continue
        lines.append(_sd15_row(r, torch_fp32, peaks))
    others = [r for r in rows if r.get("component") != "unet"]
    if others:
        lines += ["", "Other sd15-size components (one call each; the image encoder is CLIP ViT-H/14):", "",
                  "| component / variant | size MB | load s (restart / first) | ms, median (min-max) | GFLOP/s | "
                  "peak RSS MB (load / run) | PSNR dB |", "|---|---|---|---|---|---|---|"]
        for r in others:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error'][:120]} | | | | | |")
                continue
            mem = r.get("memory", {})
            lines.append(f"| {r['label']} | {fmt_mb(r.get('size_bytes'))} | {_loads(r)} | "
                         f"{fmt_latency(r.get('step'), 0)} | {fmt_number(r.get('gflops_per_s'), 0)} | "
                         f"{fmt_number(mem.get('peak_load_mb'), 0)} / {fmt_number(mem.get('peak_run_mb'), 0)} | "
                         f"{fmt_psnr(r.get('psnr_db'))} |")
    est = body.get("estimate") or {}
    if est.get("complete"):
        lines += ["", f"End-to-end estimate, 512x512 with a CFG-free {est['steps']}-step student (composed from the "
                  f"measured components, fastest variant at >= 35 dB each; ArcFace not included):", "",
                  "| component | variant | calls | ms per call | ms per image | PSNR dB |", "|---|---|---|---|---|---|"]
        for c, e in est["per_component"].items():
            lines.append(f"| {c} | {e['variant']} | {e['calls']} | {fmt_number(e['ms_per_call'], 0)} | "
                         f"{fmt_number(e['ms_per_image'], 0)} | {fmt_psnr(e['psnr_db'])} |")
        lines.append(f"| **total** | | | | **{fmt_number(est['warm_s'] * 1000, 0)}** "
                     f"(cold {fmt_number(est['cold_s'], 1)} s, {fmt_number(est['cold_over_warm'], 2)}x) | |")
        if est.get("cold_first_s") is not None:
            lines += ["", f"Cold = a restart (load bundle -> first image, OpenVINO importing the graphs it compiled "
                          f"and cached on the first start). The first start ever on a machine compiles them: "
                          f"{fmt_number(est['cold_first_s'], 1)} s "
                          f"({fmt_number(est['cold_first_over_warm'], 2)}x warm)."]
        full = body.get("estimate_full_decoder") or {}
        if full.get("complete") and full.get("warm_s") != est.get("warm_s"):
            dec = full["per_component"]["vae_decoder"]
            lines += ["", f"With the full VAE decoder instead ({dec['variant']}, "
                          f"{fmt_number(dec['ms_per_call'], 0)} ms): {fmt_number(full['warm_s'], 1)} s per image warm, "
                          f"cold {fmt_number(full['cold_s'], 1)} s. The distilled tiny decoder here has random "
                          f"weights (its speed is what is measured); its fidelity to the full decoder is measured "
                          f"where it is trained, on the tiny default (BENCHMARKS.md)."]
    elif est:
        lines += ["", f"End-to-end estimate incomplete: no usable measurement for {', '.join(est.get('missing', []))}."]
    lines += pipeline_lines(body.get("pipeline"))
    prof = [r for r in rows if r.get("profile")]
    for r in prof:
        lines += ["", f"Where the time goes, {r['label']} (per-op profile of one step, top ops):", "",
                  "| op | kernel | ms | share |", "|---|---|---|---|"]
        lines += [f"| {p['op']} | {p['kernel']} | {fmt_number(p['ms'], 1)} | {100 * p['share']:.1f} % |"
                  for p in r["profile"]]
    lines += [""] + peaks_table(report) + goals_lines(report)
    return "\n".join(lines) + "\n"


_PIPELINE_MODES = {"held": "every graph held once loaded (the default)",
                   "low-memory": "one phase's graphs at a time, `--low-memory`"}


def pipeline_lines(pipe: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the measured one-process image (``pipeline``): cold, warm, peak memory per mode."""
    if not pipe:
        return []
    first = pipe.get("first_start") or {}
    lines = ["", f"Measured, one process (`benchmarks/sd15/pipeline.py`): the same graphs run through the OpenVINO "
                 f"adapter in the generator's phase order, {pipe['steps']} UNet steps; cold = runner construction -> "
                 f"first image, as a restart (compile cache filled by a first start, which took "
                 f"{fmt_number(first.get('cold_s'), 1)} s); warm = median of the next images; peak = the process's "
                 f"peak RSS over all of them.", "",
             "| mode | cold s | warm s, median (min-max) | cold / warm | peak RSS MB |", "|---|---|---|---|---|"]
    for mode, what in _PIPELINE_MODES.items():
        r = pipe.get(mode) or {}
        if "error" in r or not r:
            lines.append(f"| {mode} ({what}) | failed: {str(r.get('error', 'not run'))[:120]} | | | |")
            continue
        w = r["warm"]
        lines.append(f"| {mode} ({what}) | {fmt_number(r['cold_s'], 2)} | {fmt_number(w['median_ms'] / 1000, 2)} "
                     f"({fmt_number(w['min_ms'] / 1000, 2)}-{fmt_number(w['max_ms'] / 1000, 2)}) | "
                     f"{fmt_number(r['cold_over_warm'], 2)} | "
                     f"{fmt_number(r['memory']['peak_mb'], 0)} |")
    return lines


def _loads(r: dict[str, Any]) -> str:
    """Load seconds of a restart, and of the first start ever where they differ (OpenVINO's compile cache)."""
    first = r.get("first_load_s")
    return fmt_number(r.get("load_s"), 1) + (f" / {fmt_number(first, 1)}" if first is not None else "")


def _sd15_row(r: dict[str, Any], torch_fp32: dict[str, Any] | None, peaks: dict[str, float]) -> str:
    if "error" in r:
        return (f"| {r['label']} | {r.get('batch')} | {fmt_mb(r.get('size_bytes'))} | failed: {r['error'][:150]} |"
                + " |" * 7)
    mem = r.get("memory", {})
    speed = None
    if torch_fp32 and r.get("batch") == torch_fp32.get("batch"):
        speed = torch_fp32["step"]["median_ms"] / r["step"]["median_ms"]
    prec = {"ov-bf16": "bf16", "ov-int8-weights": "bf16", "ov-int4-weights": "bf16"}.get(
        r.get("key", "").replace("-b1", ""), r["precision"])
    return (f"| {r['label']} | {r.get('batch')} | {fmt_mb(r.get('size_bytes'))} | {_loads(r)} | "
            f"{fmt_latency(r.get('step'), 0)} | {fmt_number(speed, 2, 'x')} | {fmt_number(r.get('gflops_per_s'), 0)} | "
            f"{fmt_peak_share(r.get('gflops_per_s'), peaks, prec)} | {fmt_number(mem.get('peak_load_mb'), 0)} / "
            f"{fmt_number(mem.get('peak_run_mb'), 0)} | {fmt_psnr(r.get('psnr_db'))} | {fmt_load(r)} |")


def plot_sd15(report: dict[str, Any], path: Path) -> Path | None:
    """UNet step latency per variant (CFG batch 2 and the student's batch 1), speed-up over torch fp32 at batch 2,
    and the step goal as a dashed line."""
    rows = [r for r in report["variants"] if "error" not in r and r.get("component") == "unet" and r.get("step")]
    steps = [r["step"] for r in rows]
    base = next((r["step"]["median_ms"] for r in rows if r.get("key") == "torch-fp32"), None)
    speed = {"UNet step": [(base / t["median_ms"]) if base and r.get("batch") == 2 else 0.0
                           for r, t in zip(rows, steps)]}
    meta = report.get("meta", {})
    title = f"{meta.get('backbone', 'sd15')}-size UNet, one step at {meta.get('image_size', 512)}px, CFG batch 2"
    goal_ms = REFERENCE_STEP_MS / GOALS["step_speedup"]
    return plot_bars(path, [r["label"] for r in rows], steps, speed, title,
                     marker=(goal_ms, f"goal {goal_ms:,.0f} ms"))
