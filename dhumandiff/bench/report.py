"""The benchmark's outputs: one JSON (everything measured), one markdown (the tables for BENCHMARKS.md) and one
PNG (latency and speed-up bars), written atomically into ``--out`` as ``bench_{scale}.{json,md,png}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path, write_text_atomic

TINY_COMPONENTS = ("identity_encoder", "image_encoder", "face_projection", "text_encoder", "unet", "vae_decoder")
#: The issue's goals (sd15 scale unless stated).
GOALS = {
    "step_speedup": 1.3,  # best step vs OV + NNCF int8 PTQ
    "step_min_psnr_db": 35.0,
    "e2e_s": 10.0,  # 512x512, 4-step student
    "peak_memory_mb": 2048.0,
    "int8_size_ratio": 0.3,
    "int4_size_ratio": 0.17,
    "cold_over_warm": 1.5,
}


def output_paths(out: Path, scale: str) -> dict[str, Path]:
    return {ext: out / f"bench_{scale}.{ext}" for ext in ("json", "md", "png")}


# ------------------------------------------------------------------------------------------------ helpers


def _f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _mb(nbytes: Any) -> str:
    return "-" if not nbytes else f"{nbytes / 1e6:,.1f}"


def _lat(t: dict[str, Any] | None, digits: int = 1) -> str:
    """``median (min-max)`` in ms."""
    if not t:
        return "-"
    return f"{t['median_ms']:,.{digits}f} ({t['min_ms']:,.{digits}f}-{t['max_ms']:,.{digits}f})"


def _load(row: dict[str, Any]) -> str:
    """The 1-minute load average right after the variant ran (it counts the variant's own threads: above
    cores + 0.5, other jobs shared the CPU)."""
    la = row.get("load_average")
    return f"{la[0]:.1f}" if la else "-"


def _psnr(value: Any) -> str:
    if value is None:
        return "-"
    return "identical" if value >= 199.0 else f"{value:.1f}"


def _peak_pct(gflops: float | None, peaks: dict[str, float], precision: str) -> str:
    """Achieved rate as a share of the matmul peak of the variant's compute precision and of the int8 peak."""
    if not gflops or not peaks:
        return "-"
    own = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16"}.get(precision, "int8" if "int" in precision else "bf16")
    parts = []
    if own in peaks:
        parts.append(f"{100 * gflops / peaks[own]:.0f} % of {own}")
    if own != "int8" and "int8" in peaks:
        parts.append(f"{100 * gflops / peaks['int8']:.0f} % of int8")
    return ", ".join(parts) or "-"


def _busy_note(report: dict[str, Any]) -> str:
    """Load averages recorded at the start, after every variant and at the end. A benchmark that uses every
    core holds the 1-minute load near the core count by itself, so only above cores + 0.5 did other jobs share
    the CPU."""
    loads = [v for v in (report.get("load_average_start"), report.get("load_average_end")) if v]
    loads += [r["load_average"] for r in report.get("variants", []) if r.get("load_average")]
    ones = sorted(v[0] for v in loads)
    if not ones:
        return "Load average not recorded."
    median = ones[len(ones) // 2]
    cores = int(((report.get("machine") or {}).get("cpu") or {}).get("cores") or os.cpu_count() or 2)
    if ones[-1] > cores + 0.5:
        return (f"**Busy machine**: 1-minute load average {ones[0]:.1f}-{ones[-1]:.1f} (median {median:.1f}) over the "
                f"run, on {cores} cores: other jobs shared the CPU, so latencies are upper bounds and min-max spreads "
                f"are wide.")
    return (f"Quiet machine: 1-minute load average {ones[0]:.1f}-{ones[-1]:.1f} (median {median:.1f}) over the run "
            f"on {cores} cores (the benchmark's own threads; nothing else ran).")


def _peaks_table(report: dict[str, Any]) -> list[str]:
    peaks = report.get("peaks")
    if not peaks or not peaks.get("methods"):
        return []
    run = {(m["precision"], m["method"]): m for m in (report.get("peaks_this_run") or {}).get("methods", [])}
    n = peaks.get("n")
    lines = [f"Matmul peaks of this machine ({n}x{n}x{n}, 2 n^3 operations; GOP/s for int8): the best reading on "
             f"this machine so far (the ceiling the 'vs peaks' column divides by; a busy machine measures less) "
             f"and this run's.", "",
             "| precision | method | best | measured | this run (best / median of repeats) |", "|---|---|---|---|---|"]
    for m in peaks["methods"]:
        best = peaks["peak_method"].get(m["precision"]) == m["method"]
        rate = (f"**{m['gflops']:,.0f}**" if best else _f(m.get("gflops"), 0)) if "gflops" in m else m.get("error", "-")
        r = run.get((m["precision"], m["method"]), {})
        now = f"{_f(r.get('gflops'), 0)} / {_f(r.get('gflops_median'), 0)}" if "gflops" in r else r.get("error", "-")
        lines.append(f"| {m['precision']} | {m['method']} | {rate} | {m.get('measured_at', '-')} | {now} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------- markdown


def tiny_markdown(report: dict[str, Any]) -> str:
    peaks = (report.get("peaks") or {}).get("peak_gflops", {})
    rows = report["variants"]
    flops = next(iter(report.get("models", {}).values()), {}).get("flops", {})
    s = report["settings"]
    lines = [f"Command: `{report['command']}`", "",
             f"{report['machine']['cpu']['model']}, {report['machine']['cpu']['cores']} cores "
             f"({', '.join(report['machine']['cpu']['flags'])}), {report['machine']['memory_gb']} GiB. "
             + _busy_note(report), "",
             f"Per variant, one fresh process: load (bundle check + every graph compiled) -> first image (cold), "
             f"then {s['warmup']} warm-up + {s['e2e_repeats']} timed images and {s['repeats']} timed calls per "
             f"component on fixed inputs. Images: {report.get('steps', '?')} steps, "
             f"{'CFG (UNet batch 2)' if flops else ''}, seed {s['seed']}. PSNR against the torch fp32 row "
             f"(same sampler loop, same noise). UNet FLOPs per call: {_f(flops.get('unet', 0) / 1e9, 3)} GFLOP.", "",
             "| variant | size MB | load s | cold first image s | image ms, median (min-max) | cold / warm | "
             "peak RSS MB (load / run) | UNet step ms | UNet GFLOP/s | vs peaks | image PSNR dB | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {_mb(r.get('size_bytes'))} | failed: {r['error'][:120]} |"
                         + " |" * 9)
            continue
        unet = (r.get("components") or {}).get("unet", {})
        mem = r.get("memory", {})
        lines.append(
            f"| {r['label']} | {_mb(r.get('size_bytes'))} | {_f(r.get('load_s'), 2)} | "
            f"{_f(r.get('cold_first_image_s'), 2)} | {_lat(r.get('end_to_end'))} | {_f(r.get('cold_over_warm'), 2)} | "
            f"{_f(mem.get('peak_load_mb'), 0)} / {_f(mem.get('peak_run_mb'), 0)} | {_f(unet.get('median_ms'), 2)} | "
            f"{_f(unet.get('gflops_per_s'), 1)} | {_peak_pct(unet.get('gflops_per_s'), peaks, r['precision'])} | "
            f"{_psnr(r.get('image_psnr_db'))} | {_load(r)} |")
    present = [c for c in TINY_COMPONENTS if any(c in (r.get("components") or {}) for r in rows)]
    lines += ["", "Per component, ms per call, median (min-max), and PSNR dB vs torch fp32 on the same inputs:", "",
              "| variant | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for r in rows:
        comps = r.get("components") or {}
        cells = [f"{_lat(comps.get(c), 2)}, {_psnr(comps.get(c, {}).get('psnr_db'))}" if c in comps else "-"
                 for c in present]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Cold start, where it goes (seconds): manifest check (sha256 of every file) or model load, graph "
              "loading/compilation, the first image, against a warm image:", "",
              "| variant | manifest / model | graphs (slowest) | first image | warm image |", "|---|---|---|---|---|"]
    for r in rows:
        ph = dict(r.get("load_phases_s") or {})
        if not ph:
            continue
        head = ph.pop("manifest", None) if "manifest" in ph else ph.pop("model", None)
        slow = max(ph, key=ph.get) if ph else None
        warm = (r.get("end_to_end") or {}).get("median_ms")
        lines.append(f"| {r['label']} | {_f(head, 2)} | {_f(sum(ph.values()), 2)}"
                     f"{f' ({slow} {ph[slow]:.2f})' if slow else ''} | {_f(r.get('first_image_s'), 2)} | "
                     f"{_f(warm / 1000 if warm else None, 2)} |")
    lines += [""] + _peaks_table(report) + _goals_lines(report)
    return "\n".join(lines) + "\n"


def sd15_markdown(report: dict[str, Any]) -> str:
    peaks = (report.get("peaks") or {}).get("peak_gflops", {})
    body = report
    meta = body.get("meta", {})
    flops = meta.get("flops", {})
    s = report["settings"]
    rows = body["variants"]
    torch_fp32 = next((r for r in rows if r.get("key") == "torch-fp32" and r.get("step")), None)
    lines = [f"Command: `{report['command']}`", "",
             f"{report['machine']['cpu']['model']}, {report['machine']['cpu']['cores']} cores "
             f"({', '.join(report['machine']['cpu']['flags'])}), {report['machine']['memory_gb']} GiB. "
             + _busy_note(report), "",
             f"{meta.get('backbone', 'sd15')}-size DHumanDiff UNet, random weights (seed {meta.get('seed')}), "
             f"{meta.get('image_size', 512)}x{meta.get('image_size', 512)} -> {meta.get('latent_size', 64)}x"
             f"{meta.get('latent_size', 64)} latents, 77 text + 32 identity tokens, CFG batch 2: "
             f"{_f(flops.get('unet', 0) / 1e9, 1)} GFLOP per step (batch 1: {_f(flops.get('unet_batch1', 0) / 1e9, 1)}; "
             f"torch FlopCounterMode: matmuls, convolutions, attention). Each variant in a "
             f"fresh process: load, first step (cold), {s['warmup']} warm-up, {s['repeats']} timed steps. PSNR of "
             f"the step's output against torch fp32 on the same inputs.", ""]
    if body.get("calibration"):
        lines += [f"NNCF calibration: {body['calibration']}.", ""]
    lines += ["| variant | batch | size MB | load s (restart / first) | step ms, median (min-max) | "
              "speed-up vs torch fp32 | GFLOP/s | vs peaks | peak RSS MB (load / run) | PSNR dB | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
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
            lines.append(f"| {r['label']} | {_mb(r.get('size_bytes'))} | {_loads(r)} | "
                         f"{_lat(r.get('step'), 0)} | {_f(r.get('gflops_per_s'), 0)} | "
                         f"{_f(mem.get('peak_load_mb'), 0)} / {_f(mem.get('peak_run_mb'), 0)} | "
                         f"{_psnr(r.get('psnr_db'))} |")
    est = body.get("estimate") or {}
    if est.get("complete"):
        lines += ["", f"End-to-end estimate, 512x512 with a CFG-free {est['steps']}-step student (composed from the "
                  f"measured components, fastest variant at >= 35 dB each; ArcFace not included):", "",
                  "| component | variant | calls | ms per call | ms per image | PSNR dB |", "|---|---|---|---|---|---|"]
        for c, e in est["per_component"].items():
            lines.append(f"| {c} | {e['variant']} | {e['calls']} | {_f(e['ms_per_call'], 0)} | "
                         f"{_f(e['ms_per_image'], 0)} | {_psnr(e['psnr_db'])} |")
        lines.append(f"| **total** | | | | **{_f(est['warm_s'] * 1000, 0)}** (cold {_f(est['cold_s'], 1)} s, "
                     f"{_f(est['cold_over_warm'], 2)}x) | |")
        if est.get("cold_first_s") is not None:
            lines += ["", f"Cold = a restart (load bundle -> first image, OpenVINO importing the graphs it compiled "
                          f"and cached on the first start). The first start ever on a machine compiles them: "
                          f"{_f(est['cold_first_s'], 1)} s ({_f(est['cold_first_over_warm'], 2)}x warm)."]
        full = body.get("estimate_full_decoder") or {}
        if full.get("complete") and full.get("warm_s") != est.get("warm_s"):
            dec = full["per_component"]["vae_decoder"]
            lines += ["", f"With the full VAE decoder instead ({dec['variant']}, {_f(dec['ms_per_call'], 0)} ms): "
                          f"{_f(full['warm_s'], 1)} s per image warm, cold {_f(full['cold_s'], 1)} s. The distilled "
                          f"tiny decoder here has random weights (its speed is what is measured); its fidelity to the "
                          f"full decoder is measured where it is trained, on the tiny default (BENCHMARKS.md)."]
    elif est:
        lines += ["", f"End-to-end estimate incomplete: no usable measurement for {', '.join(est.get('missing', []))}."]
    lines += _pipeline_lines(body.get("pipeline"))
    prof = [r for r in rows if r.get("profile")]
    for r in prof:
        lines += ["", f"Where the time goes, {r['label']} (per-op profile of one step, top ops):", "",
                  "| op | kernel | ms | share |", "|---|---|---|---|"]
        lines += [f"| {p['op']} | {p['kernel']} | {_f(p['ms'], 1)} | {100 * p['share']:.1f} % |" for p in r["profile"]]
    lines += [""] + _peaks_table(report) + _goals_lines(report)
    return "\n".join(lines) + "\n"


_PIPELINE_MODES = {"held": "every graph held once loaded (the default)",
                   "low-memory": "one phase's graphs at a time, `--low-memory`"}


def _pipeline_lines(pipe: dict[str, Any] | None) -> list[str]:
    """The measured one-process image (``sd15_pipeline``): cold, warm, peak memory per mode."""
    if not pipe:
        return []
    first = pipe.get("first_start") or {}
    lines = ["", f"Measured, one process (`bench/sd15_pipeline.py`): the same graphs run through the OpenVINO "
                 f"adapter in the generator's phase order, {pipe['steps']} UNet steps; cold = runner construction -> "
                 f"first image, as a restart (compile cache filled by a first start, which took "
                 f"{_f(first.get('cold_s'), 1)} s); warm = median of the next images; peak = the process's peak "
                 f"RSS over all of them.", "",
             "| mode | cold s | warm s, median (min-max) | cold / warm | peak RSS MB |", "|---|---|---|---|---|"]
    for mode, what in _PIPELINE_MODES.items():
        r = pipe.get(mode) or {}
        if "error" in r or not r:
            lines.append(f"| {mode} ({what}) | failed: {str(r.get('error', 'not run'))[:120]} | | | |")
            continue
        w = r["warm"]
        lines.append(f"| {mode} ({what}) | {_f(r['cold_s'], 2)} | {_f(w['median_ms'] / 1000, 2)} "
                     f"({_f(w['min_ms'] / 1000, 2)}-{_f(w['max_ms'] / 1000, 2)}) | {_f(r['cold_over_warm'], 2)} | "
                     f"{_f(r['memory']['peak_mb'], 0)} |")
    return lines


def _loads(r: dict[str, Any]) -> str:
    """Load seconds of a restart, and of the first start ever where they differ (OpenVINO's compile cache)."""
    first = r.get("first_load_s")
    return _f(r.get("load_s"), 1) + (f" / {_f(first, 1)}" if first is not None else "")


def _sd15_row(r: dict[str, Any], torch_fp32: dict[str, Any] | None, peaks: dict[str, float]) -> str:
    if "error" in r:
        return f"| {r['label']} | {r.get('batch')} | {_mb(r.get('size_bytes'))} | failed: {r['error'][:150]} |" + " |" * 7
    mem = r.get("memory", {})
    speed = None
    if torch_fp32 and r.get("batch") == torch_fp32.get("batch"):
        speed = torch_fp32["step"]["median_ms"] / r["step"]["median_ms"]
    prec = {"ov-bf16": "bf16", "ov-int8-weights": "bf16", "ov-int4-weights": "bf16"}.get(
        r.get("key", "").replace("-b1", ""), r["precision"])
    return (f"| {r['label']} | {r.get('batch')} | {_mb(r.get('size_bytes'))} | {_loads(r)} | "
            f"{_lat(r.get('step'), 0)} | {_f(speed, 2, 'x')} | {_f(r.get('gflops_per_s'), 0)} | "
            f"{_peak_pct(r.get('gflops_per_s'), peaks, prec)} | {_f(mem.get('peak_load_mb'), 0)} / "
            f"{_f(mem.get('peak_run_mb'), 0)} | {_psnr(r.get('psnr_db'))} | {_load(r)} |")


# -------------------------------------------------------------------------------------------------- goals


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what this run measured: ``{goal, target, measured, met, note}`` each."""
    goals: list[dict[str, Any]] = []
    rows = [r for r in report.get("variants", []) if "error" not in r]
    if report["scale"] == "sd15":
        unet = [r for r in rows if r.get("component") == "unet" and r.get("step") and r.get("batch") == 2]
        nncf = next((r for r in unet if r.get("key") == "ov-nncf-int8"), None)
        ok = [r for r in unet if (r.get("psnr_db") or 0) >= GOALS["step_min_psnr_db"]]
        if ok:
            best = min(ok, key=lambda r: r["step"]["median_ms"])
            base_ms = nncf["step"]["median_ms"] if nncf else None
            target_ms = (base_ms or 1430.0) / GOALS["step_speedup"]
            goals.append({"goal": "sd15 UNet step >= 1.3x faster than OpenVINO + NNCF int8 PTQ at >= 35 dB",
                          "target": f"<= {target_ms:,.0f} ms ({'this run' if base_ms else 'issue'}'s "
                                    f"{base_ms or 1430:,.0f} ms / 1.3)",
                          "measured": f"{best['label']}: {best['step']['median_ms']:,.0f} ms at "
                                      f"{_psnr(best.get('psnr_db'))} dB",
                          "met": best["step"]["median_ms"] <= target_ms})
        est = report.get("estimate") or {}
        if est.get("complete"):
            goals.append({"goal": "end to end 512x512 with the 4-step student <= 10 s",
                          "target": "<= 10 s", "measured": f"{est['warm_s']:.1f} s (composed estimate)",
                          "met": est["warm_s"] <= GOALS["e2e_s"]})
            first = (f"; first start ever, compiling: {est['cold_first_over_warm']:.2f}x"
                     if est.get("cold_first_over_warm") is not None else "")
            pipe = report.get("pipeline") or {}
            for mode, what in (("held", "measured, one process, graphs held"),
                               ("low-memory", "measured, one process, --low-memory")):
                r = pipe.get(mode) or {}
                if "warm" in r:
                    goals.append({"goal": f"end to end 512x512, 4-step student <= 10 s ({mode})", "target": "<= 10 s",
                                  "measured": f"{r['warm']['median_ms'] / 1000:.1f} s ({what})",
                                  "met": r["warm"]["median_ms"] / 1000 <= GOALS["e2e_s"]})
                    goals.append({"goal": f"peak memory <= 2 GB for that image ({mode})", "target": "<= 2,048 MB",
                                  "measured": f"{r['memory']['peak_mb']:,.0f} MB ({what})",
                                  "met": r["memory"]["peak_mb"] <= GOALS["peak_memory_mb"]})
                    goals.append({"goal": f"cold start <= 1.5x warm ({mode})", "target": "<= 1.5x",
                                  "measured": f"{r['cold_over_warm']:.2f}x ({r['cold_s']:.1f} s / "
                                              f"{r['warm']['median_ms'] / 1000:.1f} s; {what})",
                                  "met": r["cold_over_warm"] <= GOALS["cold_over_warm"]})
            goals.append({"goal": "cold start (load -> first image) <= 1.5x warm", "target": "<= 1.5x",
                          "measured": f"{est['cold_over_warm']:.2f}x (composed estimate, restart with the compile "
                                      f"cache{first})",
                          "met": est["cold_over_warm"] <= GOALS["cold_over_warm"]})
            goals.append({"goal": "peak memory <= 2 GB (whole pipeline)", "target": "<= 2,048 MB",
                          "measured": f"{est['memory_mb']:,.0f} MB (sum of the chosen graphs' run peaks)",
                          "met": est["memory_mb"] <= GOALS["peak_memory_mb"]})
            if est.get("memory_low_mb"):
                goals.append({"goal": "peak memory <= 2 GB (--low-memory: one phase's graphs at a time)",
                              "target": "<= 2,048 MB",
                              "measured": f"{est['memory_low_mb']:,.0f} MB (largest phase's run peak + baseline)",
                              "met": est["memory_low_mb"] <= GOALS["peak_memory_mb"]})
        if unet:
            best_mem = min(unet, key=lambda r: r["memory"]["peak_mb"])
            goals.append({"goal": "peak memory <= 2 GB (UNet step alone)", "target": "<= 2,048 MB",
                          "measured": f"lowest: {best_mem['label']} "
                                      f"{best_mem['memory']['peak_run_mb']:,.0f} MB run / "
                                      f"{best_mem['memory']['peak_mb']:,.0f} MB incl. load",
                          "met": best_mem["memory"]["peak_mb"] <= GOALS["peak_memory_mb"]})
        fp32 = next((r.get("size_bytes") for r in report.get("variants", []) if r.get("key") == "ov-fp32"), None)
        for key, ratio, what in (("ov-nncf-int8", GOALS["int8_size_ratio"], "int8 (NNCF PTQ)"),
                                 ("ov-int8-weights", GOALS["int8_size_ratio"], "int8 weights"),
                                 ("ov-int4-weights", GOALS["int4_size_ratio"], "4-bit weights")):
            size = next((r.get("size_bytes") for r in report.get("variants", []) if r.get("key") == key), None)
            if fp32 and size:
                goals.append({"goal": f"UNet size {what} <= {ratio}x fp32", "target": f"<= {ratio}x",
                              "measured": f"{size / fp32:.3f}x ({size / 1e6:,.0f} MB vs {fp32 / 1e6:,.0f} MB)",
                              "met": size / fp32 <= ratio})
    else:
        for r in rows:
            if r.get("cold_over_warm"):
                goals.append({"goal": f"cold start <= 1.5x warm: {r['label']}", "target": "<= 1.5x",
                              "measured": f"{r['cold_over_warm']:.2f}x", "met": r["cold_over_warm"] <= 1.5})
        by_runtime: dict[str, dict[str, int]] = {}
        for r in rows:
            if r.get("bundle") and r.get("size_bytes"):
                by_runtime.setdefault(r["runtime"], {}).setdefault(r["precision"], r["size_bytes"])
        for runtime, sizes in by_runtime.items():
            if "fp32" not in sizes:
                continue
            for precision, size in sizes.items():
                limit = GOALS["int4_size_ratio"] if "4" in precision else (
                    GOALS["int8_size_ratio"] if "8" in precision else None)
                if limit is not None:
                    goals.append({"goal": f"{runtime} {precision} bundle <= {limit}x fp32", "target": f"<= {limit}x",
                                  "measured": f"{size / sizes['fp32']:.3f}x", "met": size / sizes["fp32"] <= limit})
    return goals


def _goals_lines(report: dict[str, Any]) -> list[str]:
    goals = report.get("goals") or []
    if not goals:
        return []
    lines = ["Goals:", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in goals:
        lines.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------------- plot


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Bar chart: UNet step latency (median with min-max whiskers) and speed-up over torch fp32 (UNet step
    and, at the tiny scale, the whole image). None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report["variants"] if "error" not in r]
    if report["scale"] == "sd15":
        rows = [r for r in rows if r.get("component") == "unet" and r.get("step")]
        steps = [r["step"] for r in rows]
        labels = [r["label"] for r in rows]
        base = next((r["step"]["median_ms"] for r in rows if r.get("key") == "torch-fp32"), None)
        speed = {"UNet step": [(base / t["median_ms"]) if base and r.get("batch") == 2 else 0.0
                               for r, t in zip(rows, steps)]}
        meta = report.get("meta", {})
        title = f"{meta.get('backbone', 'sd15')}-size UNet, one step at {meta.get('image_size', 512)}px, CFG batch 2"
    else:
        rows = [r for r in rows if (r.get("components") or {}).get("unet")]
        steps = [r["components"]["unet"] for r in rows]
        labels = [r["label"] for r in rows]
        ref = next((r for r in rows if r["runtime"] == "torch" and r["precision"] == "fp32"), None)
        speed = {"UNet step": [ref["components"]["unet"]["median_ms"] / t["median_ms"] if ref else 0.0
                               for t in steps]}
        if ref and ref.get("end_to_end"):
            speed["image"] = [ref["end_to_end"]["median_ms"] / r["end_to_end"]["median_ms"]
                              if r.get("end_to_end") else 0.0 for r in rows]
        title = f"tiny model ({report.get('steps', '?')}-step image at 64x64)"
    if not rows:
        return None
    import numpy as np

    y = np.arange(len(rows))
    med = np.array([t["median_ms"] for t in steps])
    err = np.array([[t["median_ms"] - t["min_ms"] for t in steps], [t["max_ms"] - t["median_ms"] for t in steps]])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.42 * len(rows) + 1.6), sharey=True)
    ax1.barh(y, med, xerr=err, color="#4c72b0", capsize=2)
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.invert_yaxis()
    log = med.max() / max(med.min(), 1e-9) > 30  # latencies spanning orders of magnitude: log axis
    if log:
        ax1.set_xscale("log")
    ax1.set_xlabel(f"UNet step, ms (median, min-max){', log scale' if log else ''}")
    if report["scale"] == "sd15":
        ax1.axvline(1430.0 / 1.3, color="#c44e52", ls="--", lw=1)
        ax1.text(1430.0 / 1.3, len(rows) - 0.4, " goal 1,100 ms", color="#c44e52", fontsize=7, va="bottom")
    h = 0.8 / len(speed)
    for i, (name, vals) in enumerate(speed.items()):
        ax2.barh(y - 0.4 + h * (i + 0.5), vals, height=h, label=name)
    ax2.axvline(1.0, color="grey", lw=0.8)
    ax2.set_xlabel("speed-up vs torch fp32 (x)")
    ax2.legend(fontsize=7, loc="upper right", framealpha=0.9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ write


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """JSON + markdown + PNG; returns the paths written."""
    paths = output_paths(out, report["scale"])
    out.mkdir(parents=True, exist_ok=True)
    report["goals"] = evaluate_goals(report)
    write_text_atomic(paths["json"], json.dumps(_finite(report), indent=1) + "\n")
    md = sd15_markdown(report) if report["scale"] == "sd15" else tiny_markdown(report)
    write_text_atomic(paths["md"], md)
    written = {"json": paths["json"], "md": paths["md"]}
    if plot(report, paths["png"]) is not None:
        written["png"] = paths["png"]
    return written


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
