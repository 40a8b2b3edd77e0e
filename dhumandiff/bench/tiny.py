"""The tiny scale: a model (the embedded ``tiny`` by default) and its bundles, per component and end to end.

Variants (each in its own worker process):

* torch rows — the model's PyTorch modules in fp32 (the reference every PSNR is measured against) and bf16
  autocast, through the same NumPy sampler loop as the bundles (:mod:`.torch_runner`);
* one bundle per ``runtime x precision`` asked for, exported into the cache folder (reused when already there);
  OpenVINO fp32 bundles are also run at bf16 inference precision on CPUs with bf16 instructions (OpenVINO's own
  default there);
* every ``--bundle DIR`` given: any bundle, e.g. the quantised ones ``dhumandiff export --quantize`` writes.

Every variant runs the same fixed per-component inputs (the export specs' seeded examples) and generates the
same image (two tiny-world faces, one prompt, one seed), so latencies, FLOP rates and PSNRs line up row by row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .jobs import run_worker
from ..utils.cpu import cpu_features

Progress = Callable[[str], None]


@dataclass
class Variant:
    """One row of the table: what to run and how to label it."""

    label: str
    job: dict[str, Any]
    runtime: str
    precision: str
    model: str | None
    bundle: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- sizes


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bundle_sizes(root: Path) -> tuple[int, dict[str, int]]:
    """``(whole bundle folder, {component: bytes of its files})`` as they lie on disk."""
    raw = json.loads((root / "bundle.json").read_text(encoding="utf-8"))
    per = {}
    for name, comp in raw.get("components", {}).items():
        files = [comp["file"], *comp.get("extra_files", [])]
        per[name] = sum(tree_bytes(root / f) for f in files if (root / f).exists())
    return tree_bytes(root), per


def model_sizes(model_dir: Path) -> tuple[int, dict[str, int]]:
    """A model folder's bytes on disk, with the per-folder split mapped to the bundle components they feed."""
    folders = {"unet": ["unet", "ip_adapter"], "vae_decoder": ["vae"], "text_encoder": ["text_encoder"],
               "image_encoder": ["image_encoder"], "face_projection": ["resampler", "face_proj"],
               "identity_encoder": ["identity_encoder"]}
    per = {name: sum(tree_bytes(model_dir / d) for d in dirs if (model_dir / d).exists())
           for name, dirs in folders.items()}
    return tree_bytes(model_dir), {k: v for k, v in per.items() if v}


# ------------------------------------------------------------------------------------------------- inputs


def _source_model(bundle: Path) -> str | None:
    raw = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    return raw.get("source_model")


def write_component_inputs(model: Any, path: Path, seed: int = 0) -> dict[str, int]:
    """The export specs' seeded example inputs of every component, as ``component/input`` arrays in an
    ``.npz``; returns each component's FLOPs per call (counted on the same inputs)."""
    from ..export.specs import components_for, unet_batch
    from .flops import count_flops

    arrays, flops = {}, {}
    batch = unet_batch(model)
    for spec in components_for(model):
        example = spec.example(model, batch, seed)
        arrays.update({f"{spec.name}/{k}": v.numpy() for k, v in example.items()})
        flops[spec.name] = count_flops(spec.build(model).eval(), example)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return flops


def write_faces(work: Path, seed: int = 0) -> dict[str, Any]:
    """Two tiny-world face photos as PNG files and the prompt/person words that go with them."""
    from PIL import Image

    from ..checks.parity import DEFAULT_PROMPT, world_faces

    face_a, face_b, words = world_faces(seed)
    paths = []
    for name, img in (("face_a", face_a), ("face_b", face_b)):
        p = work / f"{name}.png"
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(p)
        paths.append(str(p))
    return {"face_a": paths[0], "face_b": paths[1], "prompt": DEFAULT_PROMPT, "person_words": list(words)}


# ----------------------------------------------------------------------------------------------- variants


def model_digest(model_name: str) -> str:
    """sha256 over a model folder's files (names and contents): a cached bundle is reused only for the very
    weights it was exported from (a retrained embedded model must not be measured through a stale bundle)."""
    import hashlib

    from ..model.registry import resolve_model
    from ..utils.atomic import sha256_file

    root = resolve_model(model_name)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(root).as_posix()}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


def ensure_bundle(model: Any, model_name: str, runtime: str, precision: str, cache: Path,
                  progress: Progress) -> Path:
    """The cached bundle of ``model`` for ``runtime``/``precision``, exported on first use (or when the model's
    files changed since)."""
    from ..export.bundle import export_bundle
    from ..contract.bundle import load_manifest

    out = cache / f"{Path(model_name).name}-{runtime}-{precision}"
    stamp = out.with_name(out.name + ".source-sha256")
    digest = model_digest(model_name)
    if (out / "bundle.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        try:
            load_manifest(out)
            return out
        except Exception:  # a partial or altered cache entry: export again
            pass
    progress(f"exporting {model_name} for {runtime} {precision} -> {out}")
    export_bundle(model, out, runtime, precision, overwrite=True, source_model=model_name)
    stamp.write_text(digest + "\n")
    return out


def _bundle_label(bundle: Path) -> tuple[str, str, str]:
    raw = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    runtime, precision = raw.get("runtime", "?"), raw.get("precision", "?")
    quant = raw.get("quantization") or (raw.get("export") or {}).get("quantization")
    mode = quant.get("mode") if isinstance(quant, dict) else quant
    label = f"{runtime} {precision}" + (f" ({mode})" if mode and mode != precision else "")
    return label, runtime, precision


def plan_variants(settings: Any, progress: Progress) -> tuple[list[Variant], dict[str, Any]]:
    """Every variant of the run, and per source model its reference inputs, FLOPs and template bundle."""
    from ..model.generate import load_model
    from ..model.registry import resolve_model

    cache = Path(settings.cache) / "tiny"
    bundles: list[tuple[Path, bool]] = []  # (bundle, exported by us)
    models: dict[str, Any] = {}

    def model_of(name: str) -> Any:
        if name not in models:
            models[name] = load_model(name)
        return models[name]

    base = settings.model or "tiny"
    for runtime in settings.runtimes:
        for precision in settings.precisions:
            try:
                bundles.append((ensure_bundle(model_of(base), base, runtime, precision, cache, progress), True))
            except Exception as exc:
                progress(f"skipping {runtime} {precision}: {exc}")
    for b in settings.bundles:
        bundles.append((Path(b), False))

    variants: list[Variant] = []
    refs: dict[str, Any] = {}
    template: dict[str, Path] = {}
    for bundle, _ in bundles:
        src = _source_model(bundle) or settings.model
        if src is not None:
            template.setdefault(src, bundle)
    sources = sorted(set(template) | ({base} if settings.torch_precisions else set()))
    for src in sources:
        try:
            if src not in template:
                template[src] = ensure_bundle(model_of(src), src, "onnx", "fp32", cache, progress)
            inputs = Path(settings.work) / f"inputs-{Path(src).name}.npz"
            flops = write_component_inputs(model_of(src), inputs, settings.seed)
            size, per = model_sizes(resolve_model(src))
        except Exception as exc:  # a bundle from a model that is not here: no torch rows, no PSNR, no FLOPs
            progress(f"no reference for bundles of {src}: {exc}")
            continue
        refs[src] = {"inputs": str(inputs), "flops": flops, "template": str(template[src]),
                     "model_size_bytes": size, "model_component_bytes": per, "model_sha256": model_digest(src)}
    sources = [s for s in sources if s in refs]

    common = {"kind": "pipeline", "warmup": settings.warmup, "repeats": settings.repeats,
              "e2e_repeats": settings.e2e_repeats, "threads": settings.threads}
    for src in sources:
        for precision in settings.torch_precisions:
            label = "torch fp32" if precision == "fp32" else f"torch {precision} (autocast)"
            job = {**common, "engine": "torch", "model": src, "precision": precision,
                   "bundle": refs[src]["template"], "component_inputs": refs[src]["inputs"]}
            variants.append(Variant(label + _model_tag(src, base), job, "torch", precision, src))
    bf16_cpu = cpu_features().bf16
    seen: dict[str, int] = {}
    for bundle, ours in bundles:
        label, runtime, precision = _bundle_label(bundle)
        src = _source_model(bundle) or settings.model
        job = {**common, "engine": "bundle", "bundle": str(bundle),
               "component_inputs": refs[src]["inputs"] if src in refs else None}
        label += _model_tag(src, base)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label += f" [{bundle.name}]"
        variants.append(Variant(label, job, runtime, precision, src, str(bundle)))
        if ours and runtime in ("onnx", "openvino") and precision == "fp32":
            variants.append(Variant(f"{label}, low-memory", {**job, "low_memory": True}, runtime, precision, src,
                                    str(bundle), ["--low-memory: one graph loaded at a time, each phase loads its "
                                                  "graphs again (image time includes those loads)"]))
        if runtime == "openvino" and precision != "fp16" and bf16_cpu and settings.ov_bf16:
            # the adapter pins f32 on CPU for parity; OpenVINO's own default on bf16-capable CPUs is bf16
            variants.append(Variant(f"{label} -> bf16 inference", {**job, "ov_hint": "bf16"}, runtime,
                                    "bf16" if precision == "fp32" else precision, src, str(bundle),
                                    ["IR run at INFERENCE_PRECISION_HINT=bf16 (OpenVINO's CPU default here)"]))
    return variants, refs


def _model_tag(src: str | None, base: str) -> str:
    return "" if src in (None, base) else f" <{Path(src).name}>"


# ----------------------------------------------------------------------------------------------------- run


def bench_tiny(settings: Any, progress: Progress) -> dict[str, Any]:
    """Run every variant; return the report's ``variants`` (with sizes, FLOP rates and PSNRs filled in)."""
    from ..export.validate import psnr_db

    work = Path(settings.work)
    work.mkdir(parents=True, exist_ok=True)
    e2e = write_faces(work, settings.seed)
    e2e.update(steps=settings.steps, seed=settings.seed)
    variants, refs = plan_variants(settings, progress)
    rows = []
    for i, v in enumerate(variants):
        progress(f"[{i + 1}/{len(variants)}] {v.label}")
        job = {**v.job, "e2e": e2e, "outputs": str(work / f"v{i}.npz")}
        res = run_worker(job, work, f"v{i}", timeout=settings.timeout)
        row = {"label": v.label, "runtime": v.runtime, "precision": v.precision, "model": v.model,
               "bundle": v.bundle, "notes": list(v.notes), **res}
        if v.bundle:
            total, per = bundle_sizes(Path(v.bundle))
        elif v.model in refs:
            total, per = refs[v.model]["model_size_bytes"], refs[v.model]["model_component_bytes"]
            row["notes"].append("size: the model folder as stored (safetensors)")
        else:
            total, per = 0, {}
        row["size_bytes"], row["component_bytes"] = total, per
        row["outputs"] = job["outputs"]
        if "error" in res:
            progress(f"  failed: {res['error']}")
        rows.append(row)

    # FLOP rates and PSNR against the torch fp32 row of the same model
    for row in rows:
        ref = refs.get(row["model"] or "", {})
        flops = ref.get("flops", {})
        for name, comp in (row.get("components") or {}).items():
            if name in flops and comp.get("median_ms"):
                comp["gflop"] = flops[name] / 1e9
                comp["gflops_per_s"] = flops[name] / (comp["median_ms"] / 1000.0) / 1e9
    for row in rows:
        ref_row = next((r for r in rows if r["runtime"] == "torch" and r["precision"] == "fp32"
                        and r["model"] == row["model"] and "error" not in r), None)
        if ref_row is None or "error" in row or not Path(row["outputs"]).is_file():
            continue
        with np.load(ref_row["outputs"]) as a, np.load(row["outputs"]) as b:
            if "image" in a.files and "image" in b.files and a["image"].shape == b["image"].shape:
                row["image_psnr_db"] = psnr_db(a["image"].astype(np.float64), b["image"].astype(np.float64), 255.0)
            for name, comp in (row.get("components") or {}).items():
                keys = [k for k in a.files if k.startswith(name + "/") and k in b.files]
                if keys:
                    comp["psnr_db"] = min(psnr_db(a[k], b[k]) for k in keys)
    return {"variants": rows, "models": {k: {kk: vv for kk, vv in v.items() if kk != "inputs"}
                                         for k, v in refs.items()}, "e2e_inputs": e2e}
