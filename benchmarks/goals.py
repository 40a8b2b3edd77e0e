"""The goals the benchmarks are judged against, and the table of them a report ends with.

The goals are the project's targets for an sd15-class model on a 2-core CPU (:data:`GOALS`); the reference for
the UNet step is what OpenVINO + NNCF int8 PTQ measured on the machine these studies were first run on
(:data:`REFERENCE_STEP_MS`), used only when a run did not measure that variant itself.

``benchmarks/bench_sd15.py`` adds them to its report. For a report of ``dhumandiff bench`` (which judges
nothing)::

    python benchmarks/goals.py benchmarks/results/bench_tiny.json    # adds "goals" to the JSON, the table to the .md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# as a script (``python benchmarks/goals.py``) the repository root is not on the path
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dhumandiff.bench.report import fmt_psnr  # noqa: E402
from dhumandiff.utils.atomic import write_text_atomic  # noqa: E402
from dhumandiff.utils.numerics import json_safe  # noqa: E402

#: The targets (sd15 scale unless stated).
GOALS = {
    "step_speedup": 1.3,  # best step vs OV + NNCF int8 PTQ
    "step_min_psnr_db": 35.0,
    "e2e_s": 10.0,  # 512x512, 4-step student
    "peak_memory_mb": 2048.0,
    "int8_size_ratio": 0.3,
    "int4_size_ratio": 0.17,
    "cold_over_warm": 1.5,
}
#: OpenVINO + NNCF int8 PTQ's sd15 UNet step (CFG batch 2) on the machine the goals were set on, in ms.
REFERENCE_STEP_MS = 1430.0


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals (:data:`GOALS`) against what a run measured: ``{goal, target, measured, met}`` each. An sd15
    report is judged on its UNet step, composed and measured image, memory and sizes; a tiny report on each
    row's cold start and each runtime's quantised bundle sizes against its fp32 bundle."""
    goals: list[dict[str, Any]] = []
    rows = [r for r in report.get("variants", []) if "error" not in r]
    if report["scale"] == "sd15":
        unet = [r for r in rows if r.get("component") == "unet" and r.get("step") and r.get("batch") == 2]
        nncf = next((r for r in unet if r.get("key") == "ov-nncf-int8"), None)
        ok = [r for r in unet if (r.get("psnr_db") or 0) >= GOALS["step_min_psnr_db"]]
        if ok:
            best = min(ok, key=lambda r: r["step"]["median_ms"])
            base_ms = nncf["step"]["median_ms"] if nncf else None
            target_ms = (base_ms or REFERENCE_STEP_MS) / GOALS["step_speedup"]
            goals.append({"goal": "sd15 UNet step >= 1.3x faster than OpenVINO + NNCF int8 PTQ at >= 35 dB",
                          "target": f"<= {target_ms:,.0f} ms ({'this run' if base_ms else 'the reference'}'s "
                                    f"{base_ms or REFERENCE_STEP_MS:,.0f} ms / 1.3)",
                          "measured": f"{best['label']}: {best['step']['median_ms']:,.0f} ms at "
                                      f"{fmt_psnr(best.get('psnr_db'))} dB",
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


def goals_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines of the report's ``goals`` (none when there are none)."""
    goals = report.get("goals") or []
    if not goals:
        return []
    lines = ["Goals:", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in goals:
        lines.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """Judge an existing report: write its ``goals`` into the JSON and append their table to the markdown beside it
    (replacing a table added before)."""
    ap = argparse.ArgumentParser(description="Add the goals table to a benchmark report (bench_SCALE.json + .md).")
    ap.add_argument("report", type=Path, help="bench_SCALE.json written by `dhumandiff bench` or bench_sd15.py")
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text(encoding="utf-8"))
    report["goals"] = evaluate_goals(report)
    write_text_atomic(args.report, json.dumps(json_safe(report), indent=1) + "\n")
    md_path = args.report.with_suffix(".md")
    md = md_path.read_text(encoding="utf-8")
    md = md[:md.index("Goals:\n")] if "Goals:\n" in md else md
    write_text_atomic(md_path, md + "\n".join(goals_lines(report)) + ("\n" if report["goals"] else ""))
    met = sum(g["met"] for g in report["goals"])
    print(f"{args.report}: {met} of {len(report['goals'])} goals met; table appended to {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
