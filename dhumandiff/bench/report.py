"""The benchmark's outputs: one JSON (everything measured), one markdown (the tables for BENCHMARKS.md) and one
PNG (latency and speed-up bars), written atomically into ``--out`` as ``bench_{scale}.{json,md,png}``.

The cell formatters, the report header, the peaks table, :func:`plot_bars` and :func:`write_report` serve any
report made in :func:`~.run.measured_report`'s frame; :func:`tiny_markdown` and :func:`plot_tiny` are the tiny
scale's tables and plot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..utils.atomic import atomic_path, write_text_atomic
from ..utils.numerics import json_safe

TINY_COMPONENTS = ("identity_encoder", "image_encoder", "face_projection", "text_encoder", "unet", "vae_decoder")


def output_paths(out: Path, scale: str) -> dict[str, Path]:
    """``{"json": ..., "md": ..., "png": ...}``: where a scale's report goes in ``out``."""
    return {ext: out / f"bench_{scale}.{ext}" for ext in ("json", "md", "png")}


# ------------------------------------------------------------------------------------------------ helpers


def fmt_number(value: Any, digits: int = 1, unit: str = "") -> str:
    """``1,234.5`` (thousands separated, ``digits`` decimals, then ``unit``); ``-`` for None or a non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def fmt_mb(nbytes: Any) -> str:
    """Bytes as MB (10^6) with one decimal; ``-`` when unknown."""
    return "-" if not nbytes else f"{nbytes / 1e6:,.1f}"


def fmt_latency(t: dict[str, Any] | None, digits: int = 1) -> str:
    """``median (min-max)`` in ms."""
    if not t:
        return "-"
    return f"{t['median_ms']:,.{digits}f} ({t['min_ms']:,.{digits}f}-{t['max_ms']:,.{digits}f})"


def fmt_load(row: dict[str, Any]) -> str:
    """The 1-minute load average right after the variant ran (it counts the variant's own threads: above
    cores + 0.5, other jobs shared the CPU)."""
    la = row.get("load_average")
    return f"{la[0]:.1f}" if la else "-"


def fmt_psnr(value: Any) -> str:
    """PSNR in dB with one decimal; ``identical`` at the cap (bit-equal outputs), ``-`` when not measured."""
    if value is None:
        return "-"
    return "identical" if value >= 199.0 else f"{value:.1f}"


def fmt_peak_share(gflops: float | None, peaks: dict[str, float], precision: str) -> str:
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


def busy_note(report: dict[str, Any]) -> str:
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


def peaks_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the matmul peaks the 'vs peaks' column divides by, best so far and this run's."""
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
        rate = ((f"**{m['gflops']:,.0f}**" if best else fmt_number(m.get("gflops"), 0)) if "gflops" in m
                else m.get("error", "-"))
        r = run.get((m["precision"], m["method"]), {})
        now = (f"{fmt_number(r.get('gflops'), 0)} / {fmt_number(r.get('gflops_median'), 0)}" if "gflops" in r
               else r.get("error", "-"))
        lines.append(f"| {m['precision']} | {m['method']} | {rate} | {m.get('measured_at', '-')} | {now} |")
    return lines + [""]


def report_header(report: dict[str, Any]) -> list[str]:
    """The first markdown lines of every report: the command, the machine, and how busy it was."""
    cpu = report["machine"]["cpu"]
    return [f"Command: `{report['command']}`", "",
            f"{cpu['model']}, {cpu['cores']} cores ({', '.join(cpu['flags'])}), "
            f"{report['machine']['memory_gb']} GiB. " + busy_note(report), ""]


# ---------------------------------------------------------------------------------------------- markdown


def tiny_markdown(report: dict[str, Any]) -> str:
    """The tiny scale's tables: per variant end to end, per component, and where a cold start goes."""
    peaks = (report.get("peaks") or {}).get("peak_gflops", {})
    rows = report["variants"]
    flops = next(iter(report.get("models", {}).values()), {}).get("flops", {})
    s = report["settings"]
    lines = report_header(report) + [
        f"Per variant, one fresh process: load (bundle check + every graph compiled) -> first image (cold), "
        f"then {s['warmup']} warm-up + {s['e2e_repeats']} timed images and {s['repeats']} timed calls per "
        f"component on fixed inputs. Images: {report.get('steps', '?')} steps, "
        f"{'CFG (UNet batch 2)' if flops else ''}, seed {s['seed']}. PSNR against the torch fp32 row "
        f"(same sampler loop, same noise). UNet FLOPs per call: {fmt_number(flops.get('unet', 0) / 1e9, 3)} GFLOP.",
        "",
        "| variant | size MB | load s | cold first image s | image ms, median (min-max) | cold / warm | "
        "peak RSS MB (load / run) | UNet step ms | UNet GFLOP/s | vs peaks | image PSNR dB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {fmt_mb(r.get('size_bytes'))} | failed: {r['error'][:120]} |"
                         + " |" * 9)
            continue
        unet = (r.get("components") or {}).get("unet", {})
        mem = r.get("memory", {})
        lines.append(
            f"| {r['label']} | {fmt_mb(r.get('size_bytes'))} | {fmt_number(r.get('load_s'), 2)} | "
            f"{fmt_number(r.get('cold_first_image_s'), 2)} | {fmt_latency(r.get('end_to_end'))} | "
            f"{fmt_number(r.get('cold_over_warm'), 2)} | "
            f"{fmt_number(mem.get('peak_load_mb'), 0)} / {fmt_number(mem.get('peak_run_mb'), 0)} | "
            f"{fmt_number(unet.get('median_ms'), 2)} | {fmt_number(unet.get('gflops_per_s'), 1)} | "
            f"{fmt_peak_share(unet.get('gflops_per_s'), peaks, r['precision'])} | "
            f"{fmt_psnr(r.get('image_psnr_db'))} | {fmt_load(r)} |")
    present = [c for c in TINY_COMPONENTS if any(c in (r.get("components") or {}) for r in rows)]
    lines += ["", "Per component, ms per call, median (min-max), and PSNR dB vs torch fp32 on the same inputs:", "",
              "| variant | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for r in rows:
        comps = r.get("components") or {}
        cells = [f"{fmt_latency(comps.get(c), 2)}, {fmt_psnr(comps.get(c, {}).get('psnr_db'))}" if c in comps
                 else "-" for c in present]
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
        lines.append(f"| {r['label']} | {fmt_number(head, 2)} | {fmt_number(sum(ph.values()), 2)}"
                     f"{f' ({slow} {ph[slow]:.2f})' if slow else ''} | {fmt_number(r.get('first_image_s'), 2)} | "
                     f"{fmt_number(warm / 1000 if warm else None, 2)} |")
    lines += [""] + peaks_table(report)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plot


def plot_bars(path: Path, labels: list[str], steps: list[dict[str, Any]], speed: dict[str, list[float]],
              title: str, marker: tuple[float, str] | None = None) -> Path | None:
    """Bar chart, one row per label: UNet step latency (``steps``: median with min-max whiskers) and the speed-ups
    in ``speed`` (name -> one value per row; 0: not comparable). ``marker``: a dashed line at ``(ms, text)`` on
    the latency axis. None when matplotlib is not installed or there is no row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not labels:
        return None
    import numpy as np

    y = np.arange(len(labels))
    med = np.array([t["median_ms"] for t in steps])
    err = np.array([[t["median_ms"] - t["min_ms"] for t in steps], [t["max_ms"] - t["median_ms"] for t in steps]])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.42 * len(labels) + 1.6), sharey=True)
    ax1.barh(y, med, xerr=err, color="#4c72b0", capsize=2)
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.invert_yaxis()
    log = med.max() / max(med.min(), 1e-9) > 30  # latencies spanning orders of magnitude: log axis
    if log:
        ax1.set_xscale("log")
    ax1.set_xlabel(f"UNet step, ms (median, min-max){', log scale' if log else ''}")
    if marker is not None:
        ax1.axvline(marker[0], color="#c44e52", ls="--", lw=1)
        ax1.text(marker[0], len(labels) - 0.4, f" {marker[1]}", color="#c44e52", fontsize=7, va="bottom")
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


def plot_tiny(report: dict[str, Any], path: Path) -> Path | None:
    """The tiny scale's plot: UNet step latency per variant, speed-up over torch fp32 per UNet step and per image."""
    rows = [r for r in report["variants"] if "error" not in r and (r.get("components") or {}).get("unet")]
    steps = [r["components"]["unet"] for r in rows]
    ref = next((r for r in rows if r["runtime"] == "torch" and r["precision"] == "fp32"), None)
    speed = {"UNet step": [ref["components"]["unet"]["median_ms"] / t["median_ms"] if ref else 0.0 for t in steps]}
    if ref and ref.get("end_to_end"):
        speed["image"] = [ref["end_to_end"]["median_ms"] / r["end_to_end"]["median_ms"]
                          if r.get("end_to_end") else 0.0 for r in rows]
    title = f"tiny model ({report.get('steps', '?')}-step image at 64x64)"
    return plot_bars(path, [r["label"] for r in rows], steps, speed, title)


# ------------------------------------------------------------------------------------------------ write


def write_report(report: dict[str, Any], out: Path,
                 markdown: Callable[[dict[str, Any]], str] = tiny_markdown,
                 plot: Callable[[dict[str, Any], Path], Path | None] = plot_tiny) -> dict[str, Path]:
    """JSON + ``markdown(report)`` + ``plot(report, path)``; returns the paths written (no ``png`` without a plot)."""
    paths = output_paths(out, report["scale"])
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths["json"], json.dumps(json_safe(report), indent=1) + "\n")
    write_text_atomic(paths["md"], markdown(report))
    written = {"json": paths["json"], "md": paths["md"]}
    if plot(report, paths["png"]) is not None:
        written["png"] = paths["png"]
    return written
