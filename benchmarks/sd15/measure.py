"""The sd15-scale variants and their measurement: one component graph per row (the UNet at CFG batch 2, the
few-step student's batch-1 step, the other components), each in a fresh worker process on the cached inputs,
with its size, FLOP rate and PSNR against torch fp32; then a 512x512 image composed from the fastest rows
(:func:`end_to_end_estimate`) and, when they are all OpenVINO graphs, measured in one process (``pipeline``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import run_job
from .pipeline import measure_pipeline
from .prepare import OTHER_COMPONENTS, SEED, TINY_VAE_DIR, TINY_VAE_REF, WORDS, export_folders, prepare

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GraphVariant:
    """One row of the sd15 table: a component graph, the engine that runs it and its settings."""

    key: str
    label: str
    engine: str  # torch | onnx | openvino
    precision: str
    file: str | None = None  # relative to the cache folder
    hint: str | None = None
    torch_precision: str = "fp32"
    component: str = "unet"
    batch: int | None = None  # reshape (OpenVINO) / cut the inputs to this batch
    profile: bool = False
    needs: str | None = None  # the preparation step that writes ``file``
    reference: str | None = None  # a graph with its own torch reference (``reference-<name>.npz``, flops key)
    notes: tuple[str, ...] = field(default_factory=tuple)


UNET_VARIANTS: tuple[GraphVariant, ...] = (
    GraphVariant("torch-fp32", "torch fp32", "torch", "fp32"),
    GraphVariant("torch-bf16", "torch bf16 (autocast)", "torch", "bf16", torch_precision="bf16"),
    GraphVariant("ort-fp32", "onnxruntime fp32", "onnx", "fp32", "onnx/unet.onnx", needs="export"),
    GraphVariant("ort-int8-dynamic", "onnxruntime int8 dynamic (MatMul)", "onnx", "int8",
                 "onnx-int8-dynamic/unet.onnx", needs="ort_dynamic", profile=True),
    GraphVariant("ov-fp32", "openvino fp32 (f32 hint)", "openvino", "fp32", "openvino/unet.xml", hint="f32",
                 needs="export"),
    GraphVariant("ov-bf16", "openvino default (bf16)", "openvino", "bf16", "openvino/unet.xml", needs="export",
                 profile=True),
    GraphVariant("ov-nncf-int8", "openvino + NNCF int8 PTQ", "openvino", "int8", "openvino-nncf-int8/unet.xml",
                 needs="nncf_ptq", profile=True),
    GraphVariant("ov-int8-weights", "openvino int8 weights (bf16 compute)", "openvino", "int8-weights",
                 "openvino-int8-weights/unet.xml", needs="weights_int8"),
    GraphVariant("ov-int4-weights", "openvino int4 weights (bf16 compute)", "openvino", "int4-weights",
                 "openvino-int4-weights/unet.xml", needs="weights_int4"),
)

#: CFG-free (batch 1) UNet rows: the few-step student's step, for the end-to-end estimate.
STUDENT_VARIANTS: tuple[GraphVariant, ...] = (
    GraphVariant("ov-bf16-b1", "openvino default (bf16), batch 1", "openvino", "bf16", "openvino-b1/unet.xml",
                 batch=1, needs="export"),
    GraphVariant("ov-nncf-int8-b1", "openvino + NNCF int8 PTQ, batch 1", "openvino", "int8",
                 "openvino-nncf-int8-b1/unet.xml", batch=1, needs="nncf_ptq_b1"),
)

OTHER_VARIANTS: tuple[GraphVariant, ...] = tuple(
    GraphVariant(f"{name}-ov-{p}", f"{name}: openvino {'f32 hint' if p == 'fp32' else 'default (bf16)'}",
                 "openvino", p, f"openvino/{name}.xml", hint="f32" if p == "fp32" else None, component=name,
                 needs="export")
    for name in OTHER_COMPONENTS for p in ("fp32", "bf16"))

OTHER_VARIANTS += (
    GraphVariant("image_encoder-ov-int8-weights", "image_encoder: openvino int8 weights (bf16 compute)", "openvino",
                 "int8-weights", "openvino-int8-weights-image_encoder/image_encoder.xml", component="image_encoder",
                 needs="weights_int8_image_encoder"),
    GraphVariant("image_encoder-ov-nncf-int8", "image_encoder: openvino + NNCF int8 PTQ", "openvino", "int8",
                 "openvino-nncf-int8-image_encoder/image_encoder.xml", component="image_encoder",
                 needs="nncf_ptq_image_encoder"),
) + tuple(
    GraphVariant(f"vae_decoder-tiny-ov-{p}",
                 "vae_decoder, distilled tiny (TAESD shape): openvino "
                 + ("f32 hint" if p == "fp32" else "default (bf16)"),
                 "openvino", p, f"{TINY_VAE_DIR}/vae_decoder.xml", hint="f32" if p == "fp32" else None,
                 component="vae_decoder", needs="tiny_vae", reference=TINY_VAE_REF)
    for p in ("fp32", "bf16"))

ALL_VARIANTS = UNET_VARIANTS + STUDENT_VARIANTS + OTHER_VARIANTS


def file_bytes(cache: Path, rel: str | None) -> int | None:
    """Bytes of a graph on disk: the ONNX file + its external data, or the IR's .xml + .bin."""
    if rel is None:
        return None
    p = cache / rel
    if not p.exists():
        return None
    parts = [p]
    if p.suffix == ".xml":
        parts.append(p.with_suffix(".bin"))
    parts += [q for q in p.parent.glob(p.name + ".data")] + [q for q in p.parent.glob("*.onnx.data")
                                                             if q.name != p.name + ".data"]
    return sum(q.stat().st_size for q in set(parts) if q.exists())


def select(keys: tuple[str, ...] | None) -> list[GraphVariant]:
    """The variants named by ``keys`` (variant keys or the groups unet, student, components); all when empty."""
    if not keys:
        return list(ALL_VARIANTS)
    by_key = {v.key: v for v in ALL_VARIANTS}
    unknown = [k for k in keys if k not in by_key and k not in ("unet", "student", "components")]
    if unknown:
        from dhumandiff.errors import DHumanDiffError

        raise DHumanDiffError(f"unknown sd15 variant(s) {', '.join(unknown)}; choose from {', '.join(by_key)} "
                              f"(or the groups unet, student, components)")
    groups = {"unet": UNET_VARIANTS, "student": STUDENT_VARIANTS, "components": OTHER_VARIANTS}
    out: list[GraphVariant] = []
    for k in keys:
        for v in groups.get(k, (by_key.get(k),)):
            if v is not None and v not in out:
                out.append(v)
    return out


def bench_sd15(settings: Any, progress: Progress) -> dict[str, Any]:
    """Prepare the cache, run every selected variant, and attach sizes, FLOP rates and PSNRs."""
    from dhumandiff.export.validate import psnr_db

    cache = Path(settings.cache) / settings.backbone
    work = Path(settings.work)
    variants = select(settings.variants)
    folders = export_folders([v.file for v in variants if v.file],
                             any(v.component != "unet" and v.needs == "export" for v in variants)) \
        if settings.variants else None
    steps = prepare(cache, {v.needs for v in variants if v.needs}, settings, progress, folders)
    meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    # OpenVINO graphs run as the runtime adapter runs them, with a compile cache; it starts empty, and a first
    # process per graph (timed: the first start ever) fills it before the measured one (a restart)
    ov_cache = work / "openvino-compile-cache"
    shutil.rmtree(ov_cache, ignore_errors=True)
    tiny_vae = (steps.get("tiny_vae") or {}).get("value") or {}
    if "flops" in tiny_vae:
        meta["flops"][TINY_VAE_REF] = tiny_vae["flops"]
    rows = []
    for i, v in enumerate(variants):
        progress(f"[{i + 1}/{len(variants)}] {v.label}")
        row: dict[str, Any] = {"key": v.key, "label": v.label, "engine": v.engine, "precision": v.precision,
                               "component": v.component, "batch": v.batch or (2 if v.component == "unet" else 1),
                               "notes": list(v.notes), "file": v.file, "hint": v.hint}
        if v.needs and "error" in steps.get(v.needs, {}):
            row["error"] = f"preparation step {v.needs} failed: {steps[v.needs]['error']}"
            rows.append(row)
            continue
        job: dict[str, Any] = {"kind": "graph", "engine": v.engine, "component": v.component,
                               "inputs": str(cache / "inputs.npz"), "warmup": settings.warmup,
                               "repeats": settings.repeats, "threads": settings.threads,
                               "outputs": str(work / f"{v.key}.npz"), "profile": v.profile and settings.profile,
                               "batch": v.batch}
        if v.engine == "torch":
            job.update(build={"backbone": meta["backbone"], "seed": SEED, "words": WORDS}, precision=v.torch_precision,
                       fingerprint=meta["fingerprint"].get(v.component))
        else:
            job.update(file=str(cache / v.file), hint=v.hint)  # type: ignore[operator]
        if v.engine == "openvino":  # one cache per variant: OpenVINO's cache key ignores the precision hint
            job["cache_dir"] = str(ov_cache / v.key)
            first = run_job({**job, "prime_only": True, "profile": False}, work, f"{v.key}-first",
                            timeout=settings.timeout)
            if "load_s" in first:
                row["first_load_s"] = first["load_s"]
        res = run_job(job, work, v.key, timeout=settings.timeout)
        if "error" in res:
            progress(f"  failed: {res['error']}")
        row.update(res)
        row["size_bytes"] = file_bytes(cache, v.file) if v.file else _torch_bytes(meta, v.component)
        ref_key = v.reference or ("unet_batch1" if v.component == "unet" and v.batch == 1 else v.component)
        flops = meta["flops"][ref_key]
        row["gflop"] = flops / 1e9
        if row.get("step"):
            row["gflops_per_s"] = flops / (row["step"]["median_ms"] / 1000.0) / 1e9
            out = work / f"{v.key}.npz"
            ref_file = cache / ("reference.npz" if v.reference is None else f"reference-{v.reference}.npz")
            if out.is_file():
                with np.load(ref_file) as ref, np.load(out) as got:
                    keys = [k for k in got.files]
                    vals = []
                    for k in keys:
                        rk = f"{ref_key}/{k.split('/', 1)[1]}"
                        if rk in ref.files and ref[rk].shape == got[k].shape:
                            vals.append(psnr_db(ref[rk], got[k]))
                    if vals:
                        row["psnr_db"] = min(vals)
        if v.reference:
            row["reference"] = v.reference
        rows.append(row)
    shutil.rmtree(ov_cache, ignore_errors=True)  # ~25 GB of compiled blobs, of no use once measured
    calib = (steps.get("nncf_ptq") or {}).get("value", {}).get("calibration")
    full_decoder = [r for r in rows if r.get("reference") != TINY_VAE_REF]
    estimate = end_to_end_estimate(rows, meta)
    pipeline = None
    chosen = choose_rows(rows)
    if estimate and estimate.get("complete") and all(r["engine"] == "openvino" for r in chosen.values()):
        pipeline = measure_pipeline(chosen, cache, work, estimate["steps"], settings.repeats, settings.threads,
                                    settings.timeout, progress)
    return {"variants": rows, "meta": meta, "preparation": steps, "calibration": calib,
            "estimate": estimate, "estimate_full_decoder": end_to_end_estimate(full_decoder, meta),
            "pipeline": pipeline}


def _torch_bytes(meta: dict[str, Any], component: str) -> int | None:
    params = meta.get("params", {})
    return int(params["unet"]) * 4 if component == "unet" and "unet" in params else None


# ------------------------------------------------------------------------------------------ end to end


def choose_rows(rows: list[dict[str, Any]], min_psnr_db: float = 35.0) -> dict[str, dict[str, Any]]:
    """Per pipeline component, its fastest measured row at >= ``min_psnr_db`` (the UNet at batch 1: CFG-free)."""
    chosen: dict[str, dict[str, Any]] = {}
    for comp in ("image_encoder", "face_projection", "text_encoder", "unet", "vae_decoder"):
        cands = [r for r in rows if r.get("component") == comp and r.get("step") and "error" not in r
                 and (r.get("psnr_db") or 0.0) >= min_psnr_db and (comp != "unet" or r.get("batch") == 1)]
        if cands:
            chosen[comp] = min(cands, key=lambda r: r["step"]["median_ms"])
    return chosen


def end_to_end_estimate(rows: list[dict[str, Any]], meta: dict[str, Any], steps: int = 4,
                        min_psnr_db: float = 35.0) -> dict[str, Any] | None:
    """A 512x512 image from the CFG-free few-step student, composed from measured components.

    Per image: 2 x (CLIP image encoder + face projection) + 1 x text encoder + ``steps`` x UNet (batch 1) +
    1 x VAE decoder, each with its fastest measured variant at >= ``min_psnr_db`` against torch fp32. Not a
    measured pipeline (the sd15 backbone has no exported identity encoder; ArcFace runs outside the bundle and
    is not counted). Cold start = the chosen graphs' load + first call (a restart: OpenVINO imports its cached
    compiled graphs; ``cold_first_s``: the first start ever, compiling them); warm = their warm medians.
    """
    calls = {"image_encoder": 2, "face_projection": 2, "text_encoder": 1, "unet": steps, "vae_decoder": 1}
    chosen = choose_rows(rows, min_psnr_db)
    if set(chosen) != set(calls):
        return {"complete": False, "missing": sorted(set(calls) - set(chosen))}
    warm = sum(calls[c] * chosen[c]["step"]["median_ms"] for c in calls) / 1000.0
    cold = sum(chosen[c]["load_s"] + chosen[c]["first_call_s"]
               + (calls[c] - 1) * chosen[c]["step"]["median_ms"] / 1000.0 for c in calls)
    # the very first start on a machine compiles every graph (OpenVINO's cache is empty until then)
    cold_first = cold + sum(chosen[c].get("first_load_s", chosen[c]["load_s"]) - chosen[c]["load_s"] for c in calls)
    base = max(chosen[c]["memory"]["baseline_mb"] for c in calls)  # process + runtime library, once
    mem = base + sum(chosen[c]["memory"]["peak_run_mb"] - chosen[c]["memory"]["baseline_mb"] for c in calls)
    # with --low-memory the generator holds one phase's graphs at a time: the peak is the largest phase's
    phases = (("image_encoder", "face_projection"), ("text_encoder",), ("unet",), ("vae_decoder",))
    mem_low = base + max(sum(chosen[c]["memory"]["peak_run_mb"] - chosen[c]["memory"]["baseline_mb"] for c in ph)
                         for ph in phases)
    size = sum(r.get("size_bytes") or 0 for r in chosen.values())
    return {"complete": True, "steps": steps, "warm_s": warm, "cold_s": cold, "cold_over_warm": cold / warm,
            "cold_first_s": cold_first, "cold_first_over_warm": cold_first / warm,
            "memory_mb": mem, "memory_low_mb": mem_low, "size_bytes": size,
            "per_component": {c: {"variant": chosen[c]["label"], "calls": calls[c],
                                  "ms_per_call": chosen[c]["step"]["median_ms"],
                                  "ms_per_image": calls[c] * chosen[c]["step"]["median_ms"],
                                  "psnr_db": chosen[c].get("psnr_db")} for c in calls}}
