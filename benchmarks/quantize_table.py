"""Markdown table of the quantised bundles under WORK (written by benchmarks/quantize_fidelity.sh).

One row per bundle: size against the same runtime's fp32 bundle, end-to-end image PSNR against the fp32 torch
reference (first seed), each person's identity similarity (world-b evaluator, mean over the parity's four seeds)
against the fp32 images', the worst component cosine on real (calibration) inputs, and whether `dhumandiff parity`
held the bundle to its recorded budget.
Usage: python benchmarks/quantize_table.py WORK > benchmarks/results/quantized_tiny.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def row(bundle: Path, fp32_bytes: dict[str, int]) -> str:
    manifest = json.loads((bundle / "bundle.json").read_text())
    q = manifest.get("quantization") or {}
    rt = manifest["runtime"]
    size = folder_bytes(bundle)
    ratio = f"{size / fp32_bytes[rt]:.2f}x" if rt in fp32_bytes else "-"
    report = bundle.with_name(bundle.name + ".parity.json")
    if not report.exists():
        return f"| {rt} | {q.get('mode', '?')} | {size / 1e6:.1f} | {ratio} | parity not run | | | | |"
    p = json.loads(report.read_text())
    e2e = p.get("end_to_end") or {}
    sims = e2e.get("identity_similarity") or []
    refs = e2e.get("identity_similarity_reference") or []
    worst = min((c.get("cosine", 1.0) for c in (p.get("components") or {}).values()), default=float("nan"))
    budget = q.get("budget", {})
    gate = "pass" if p.get("passed") else "FAIL: " + "; ".join(p.get("failures", []))[:160]
    delta = e2e.get("identity_delta")
    return (f"| {rt} | {q.get('mode', '?')} | {size / 1e6:.1f} | {ratio} | {e2e.get('psnr_db', float('nan')):.1f} "
            f"(>= {budget.get('psnr_db', '-')}) | {' / '.join(f'{v:.3f}' for v in sims)} "
            f"(fp32 {' / '.join(f'{v:.3f}' for v in refs)}) | "
            f"{'-' if delta is None else f'{delta:.3f}'} (<= {budget.get('identity_delta', '-')}) | "
            f"{worst:.4f} | {gate} |")


def main(work: Path) -> str:
    fp32 = {json.loads((b / "bundle.json").read_text())["runtime"]: folder_bytes(b)
            for b in sorted(work.glob("*-fp32")) if (b / "bundle.json").exists()}
    lines = ["| runtime | mode | size MB | vs fp32 | image PSNR dB (budget) | identity a / b (mean of 4 images) "
             "| identity delta (budget) "
             "| worst component cosine | parity gate |", "|---|---|---|---|---|---|---|---|---|"]
    for b in sorted(work.iterdir()):
        if b.is_dir() and (b / "bundle.json").exists() and json.loads((b / "bundle.json").read_text()).get("quantization"):
            lines.append(row(b, fp32))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1])))
