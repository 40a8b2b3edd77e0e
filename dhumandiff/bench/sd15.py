"""The sd15 scale: DHumanDiff's sd15-size UNet (random weights, 512x512 -> 64x64 latents, 77 text + 32 identity
tokens), one denoising step per variant, plus the other sd15-size components for an end-to-end estimate.

Preparation (once, into ``CACHE/sd15``, each heavy step in its own process so the parent stays small):

1. build the sd15 model from a fixed seed; count each component's FLOPs; write fixed inputs and the torch fp32
   reference outputs; export the UNet to ONNX (weights in one external file) and OpenVINO IR, and the text
   encoder, CLIP image encoder, face projection and VAE decoder to OpenVINO IR;
2. onnxruntime dynamic int8 (``quantize_dynamic`` on MatMul/Gemm only: quantising the convolutions too makes
   this UNet 2x slower, DESIGN.md 5);
3. OpenVINO + NNCF int8 post-training quantisation (``nncf.quantize``, transformer preset) on calibration inputs;
4. NNCF weight-only compression to int8 and to int4 (``nncf.compress_weights``).

The torch rows rebuild the model from the same seed (checked by a weight fingerprint) instead of loading a
multi-GB copy. Every variant runs the same inputs; its output is compared with torch fp32 by PSNR.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..utils.atomic import atomic_dir
from .jobs import run_worker
from .sd15_pipeline import measure_pipeline

Progress = Callable[[str], None]

BACKBONE = "sd15"
SEED = 0
#: A small word vocabulary (the tokenizer does not change the UNet; a real CLIP vocabulary is not shipped).
WORDS = ["a", "photo", "of", "man", "woman", "and"]
#: Non-UNet components measured for the end-to-end estimate (the sd15 backbone ships no identity encoder:
#: ArcFace comes from insightface, outside the bundle).
OTHER_COMPONENTS = ("text_encoder", "image_encoder", "face_projection", "vae_decoder")
#: The distilled tiny VAE decoder's graph folder and reference name (its own torch output: random weights at this
#: scale, so its fidelity to the full decoder is measured where it is trained, at the tiny scale).
TINY_VAE_DIR = "openvino-tinyvae"
TINY_VAE_REF = "vae_decoder_tiny"
#: The issue's reference: OpenVINO + NNCF int8 PTQ ran one step in ~1,430 ms on this machine.
REFERENCE_STEP_MS = 1430.0


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


def fingerprint(module: Any) -> float:
    """A cheap checksum of a module's weights (sum of |w| over a few tensors), to prove a rebuild is the same."""
    import torch

    with torch.no_grad():
        params = list(module.parameters())
        picks = params[:: max(1, len(params) // 16)]
        return float(sum(p.detach().double().abs().sum().item() for p in picks))


# ---------------------------------------------------------------------------------------------- preparation


def _build(backbone: str = BACKBONE, seed: int = SEED) -> Any:
    from ..model.dhumandiff_model import DHumanDiff

    return DHumanDiff.from_backbone(backbone, words=WORDS, seed=seed).eval()


def _named(spec: Any, value: Any) -> dict[str, np.ndarray]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return {name: v.detach().float().numpy() for name, v in zip(spec.outputs, values)}


def _export_graph(spec: Any, model: Any, module: Any, example: dict[str, Any], out: Path, runtime: str) -> list[str]:
    """Write one fp32 graph with the project's exporter (no re-validation: PSNR is measured per variant)."""
    from ..export.artifacts import GraphJob
    from ..export.bundle import exporter

    out.mkdir(parents=True, exist_ok=True)
    job = GraphJob(spec.name, module, spec.input_names(model), spec.outputs, example, {}, out, "fp32",
                   spec.fp16_op_block_list)
    return exporter(runtime).export(job)


def prepare_exports(cache: str, backbone: str = BACKBONE) -> dict[str, Any]:
    """Step 1 (a worker ``call``): build, count, write inputs + torch references, export every graph.

    One torch forward per graph serves both the FLOP count and the fp32 reference output.
    """
    import gc

    from ..export.specs import get_spec
    from .flops import counted_forward

    import shutil

    root = Path(cache)
    root.mkdir(parents=True, exist_ok=True)
    # meta.json is written last and marks a complete export; start from empty folders (ONNX appends to an
    # existing external-data file instead of replacing it)
    (root / "meta.json").unlink(missing_ok=True)
    for folder in ("onnx", "openvino", "openvino-b1"):
        shutil.rmtree(root / folder, ignore_errors=True)
    t0 = time.perf_counter()
    model = _build(backbone)
    meta: dict[str, Any] = {"backbone": backbone, "seed": SEED, "words": WORDS,
                            "image_size": model.config.image_size, "latent_size": model.config.latent_size,
                            "build_s": round(time.perf_counter() - t0, 1), "flops": {}, "export_s": {},
                            "fingerprint": {}, "files": {}}
    meta["params"] = {"unet": sum(p.numel() for p in model.unet.parameters()),
                      "total": sum(p.numel() for p in model.parameters())}
    inputs: dict[str, np.ndarray] = {}
    refs: dict[str, np.ndarray] = {}
    for name in OTHER_COMPONENTS:
        spec = get_spec(name)
        module = spec.build(model).eval()
        ex = spec.example(model, 1, SEED)
        inputs.update({f"{name}/{k}": v.numpy() for k, v in ex.items()})
        meta["flops"][name], value = counted_forward(module, ex)
        refs.update({f"{name}/{k}": v for k, v in _named(spec, value).items()})
        meta["fingerprint"][name] = fingerprint(module)
        t = time.perf_counter()
        meta["files"][f"openvino/{name}"] = _export_graph(spec, model, module, ex, root / "openvino", "openvino")
        meta["export_s"][f"openvino/{name}"] = round(time.perf_counter() - t, 1)
        del module, value
        gc.collect()
    # only the UNet is needed from here on (its example inputs read the resampler's config): free the rest
    for attr in ("text_encoder", "image_encoder", "vae", "face_proj", "subject_mlp"):
        setattr(model, attr, None)
    gc.collect()
    unet = get_spec("unet")
    module = unet.build(model).eval()
    meta["fingerprint"]["unet"] = fingerprint(module)
    example = unet.example(model, 2, SEED)
    inputs.update({f"unet/{k}": v.numpy() for k, v in example.items()})
    meta["flops"]["unet"], value = counted_forward(module, example)
    refs.update({f"unet/{k}": v for k, v in _named(unet, value).items()})
    ex1 = {k: (v if k == "ip_scale" else v[-1:]) for k, v in example.items()}  # the conditional row
    meta["flops"]["unet_batch1"], value = counted_forward(module, ex1)
    refs.update({f"unet_batch1/{k}": v for k, v in _named(unet, value).items()})
    np.savez(root / "inputs.npz", **inputs)
    np.savez(root / "reference.npz", **refs)
    # static shapes (what every runtime plans memory for): batch 2 for CFG, batch 1 for a CFG-free student
    for folder, runtime, ex in (("onnx", "onnx", example), ("openvino", "openvino", example),
                                ("openvino-b1", "openvino", ex1)):
        t = time.perf_counter()
        meta["files"][f"{folder}/unet"] = _export_graph(unet, model, module, ex, root / folder, runtime)
        meta["export_s"][f"{folder}/unet"] = round(time.perf_counter() - t, 1)
        gc.collect()
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def quantize_ort_dynamic(cache: str) -> dict[str, Any]:
    """Step 2: onnxruntime dynamic int8 on MatMul/Gemm (u8 activations quantised per call, s8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = Path(cache)
    t = time.perf_counter()
    with atomic_dir(root / "onnx-int8-dynamic", overwrite=True) as out:
        quantize_dynamic(root / "onnx" / "unet.onnx", out / "unet.onnx", op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, use_external_data_format=True)
    return {"seconds": round(time.perf_counter() - t, 1)}


def calibration_samples(cache: str, count: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """Calibration inputs for the UNet: the fixed example's conditioning with fresh latents at timesteps spread
    over the schedule (a random-weight model has no real conditioning to draw from)."""
    with np.load(Path(cache) / "inputs.npz") as data:
        base = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("unet/")}
    rng = np.random.default_rng(1)
    samples = []
    for i, t in enumerate(np.linspace(999, 1, count)):
        s = dict(base)
        s["sample"] = rng.standard_normal(base["sample"].shape).astype(np.float32)
        s["timestep"] = np.full_like(base["timestep"], float(int(t)))
        s["encoder_hidden_states"] = (base["encoder_hidden_states"]
                                      + 0.1 * rng.standard_normal(base["encoder_hidden_states"].shape)).astype(np.float32)
        samples.append(s)
    note = (f"{count} calibration inputs: random latents at timesteps spread over 1..999 with the example "
            f"conditioning (random-weight model: there is no real conditioning at this scale)")
    return samples, note


def quantize_nncf_ptq(cache: str, samples: int = 8, batch: int = 2) -> dict[str, Any]:
    """Step 3: OpenVINO + NNCF int8 post-training quantisation of the UNet IR (of the batch-2 or batch-1 one)."""
    import nncf
    import openvino as ov

    root = Path(cache)
    data, note = calibration_samples(cache, samples)
    if batch == 1:
        data = [{k: (v if k == "ip_scale" else v[-1:]) for k, v in d.items()} for d in data]
    core = ov.Core()
    suffix = "-b1" if batch == 1 else ""
    model = core.read_model(root / f"openvino{suffix}" / "unet.xml")
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset(data, lambda s: {n: s[n] for n in names})
    t = time.perf_counter()
    quantized = nncf.quantize(model, dataset, subset_size=len(data), model_type=nncf.ModelType.TRANSFORMER)
    with atomic_dir(root / f"openvino-nncf-int8{suffix}", overwrite=True) as out:
        ov.save_model(quantized, out / "unet.xml", compress_to_fp16=False)
    return {"seconds": round(time.perf_counter() - t, 1), "calibration": note}


def quantize_nncf_image_encoder(cache: str, samples: int = 8) -> dict[str, Any]:
    """Step 3b: NNCF int8 PTQ of the CLIP image encoder (transformer model type), the second-largest phase of an
    image: calibration = the cached face crop plus noise (a random-weight encoder has no real faces to prefer)."""
    import nncf
    import openvino as ov

    root = Path(cache)
    with np.load(root / "inputs.npz") as data:
        pixels = data["image_encoder/pixel_values"]
    rng = np.random.default_rng(2)
    calib = [{"pixel_values": (pixels + 0.25 * rng.standard_normal(pixels.shape)).astype(np.float32)}
             for _ in range(samples)]
    model = ov.Core().read_model(root / "openvino" / "image_encoder.xml")
    t = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib),
                              model_type=nncf.ModelType.TRANSFORMER)
    with atomic_dir(root / "openvino-nncf-int8-image_encoder", overwrite=True) as out:
        ov.save_model(quantized, out / "image_encoder.xml", compress_to_fp16=False)
    return {"seconds": round(time.perf_counter() - t, 1),
            "calibration": f"{samples} noisy copies of the cached face crop"}


def compress_weights(cache: str, mode: str, component: str = "unet") -> dict[str, Any]:
    """Step 4: NNCF weight-only compression (int8 asym for everything, or int4 sym, group 64, on MatMuls with
    int8 as the backup for the rest — NNCF's defaults for ``INT4_SYM``). ``component``: the UNet, or another
    graph (the CLIP image encoder: the largest phase of a low-memory image after the UNet)."""
    import nncf
    import openvino as ov

    root = Path(cache)
    model = ov.Core().read_model(root / "openvino" / f"{component}.xml")
    t = time.perf_counter()
    info: dict[str, Any] = {}
    if mode == "int8":
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        try:
            compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=64,
                                               ratio=1.0)
            info["group_size"] = 64
        except nncf.InvalidGroupSizeError:  # channels not divisible by 64 (the test-sized twin): per channel
            model = ov.Core().read_model(root / "openvino" / "unet.xml")
            compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=-1,
                                               ratio=1.0)
            info["group_size"] = "per channel"
    folder = f"openvino-{mode}-weights" + ("" if component == "unet" else f"-{component}")
    with atomic_dir(root / folder, overwrite=True) as out:
        ov.save_model(compressed, out / f"{component}.xml", compress_to_fp16=False)
    return {"seconds": round(time.perf_counter() - t, 1), **info}


def export_tiny_vae(cache: str, backbone: str = BACKBONE) -> dict[str, Any]:
    """Step 5: a TAESD-shaped tiny decoder for the sd15 VAE (random weights, seeded), its torch reference on the
    cached decoder input, FLOPs, and its OpenVINO graph (the project's exporter, same interface as the full one)."""
    import torch

    from ..export.specs import get_spec
    from ..export.wrappers import VaeDecoderWrapper
    from ..model.configs import get_backbone_config
    from ..model.tiny_decoder import build_tiny_autoencoder
    from .flops import counted_forward

    root = Path(cache)
    t = time.perf_counter()
    vae_cfg = get_backbone_config(backbone).vae
    torch.manual_seed(SEED)
    module = VaeDecoderWrapper(decoder=build_tiny_autoencoder(vae_cfg),
                               input_scale=float(vae_cfg["scaling_factor"])).eval()
    spec = get_spec("vae_decoder")
    with np.load(root / "inputs.npz") as inputs:
        example = {"latent_sample": torch.from_numpy(inputs["vae_decoder/latent_sample"])}
    flops, value = counted_forward(module, example)
    np.savez(root / f"reference-{TINY_VAE_REF}.npz",
             **{f"{TINY_VAE_REF}/{k}": v for k, v in _named(spec, value).items()})
    with atomic_dir(root / TINY_VAE_DIR, overwrite=True) as out:
        _export_graph(spec, None, module, example, out, "openvino")
    return {"seconds": round(time.perf_counter() - t, 1), "flops": flops,
            "params": sum(p.numel() for p in module.parameters())}


#: Bumped when the cached files change meaning (the cache is then rebuilt).
CACHE_VERSION = 2
#: Preparation steps: name -> (function, files it writes, kwargs from settings).
STEPS: dict[str, tuple[str, str]] = {
    "export": ("prepare_exports", "openvino-b1/unet.xml"),  # its last file; meta.json is written after it
    "ort_dynamic": ("quantize_ort_dynamic", "onnx-int8-dynamic/unet.onnx"),
    "nncf_ptq": ("quantize_nncf_ptq", "openvino-nncf-int8/unet.xml"),
    "nncf_ptq_b1": ("quantize_nncf_ptq", "openvino-nncf-int8-b1/unet.xml"),
    "weights_int8": ("compress_weights", "openvino-int8-weights/unet.xml"),
    "weights_int4": ("compress_weights", "openvino-int4-weights/unet.xml"),
    "weights_int8_image_encoder": ("compress_weights", "openvino-int8-weights-image_encoder/image_encoder.xml"),
    "tiny_vae": ("export_tiny_vae", f"{TINY_VAE_DIR}/vae_decoder.xml"),
    "nncf_ptq_image_encoder": ("quantize_nncf_image_encoder", "openvino-nncf-int8-image_encoder/image_encoder.xml"),
}


def prepare(cache: Path, needed: set[str], settings: Any, progress: Progress) -> dict[str, Any]:
    """Run the preparation steps whose outputs are not in the cache yet; returns what each step reported."""
    work = Path(settings.work)
    done: dict[str, Any] = {"cache_version": CACHE_VERSION}
    meta_path = cache / "sd15.steps.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("cache_version") == CACHE_VERSION:
            done = old
    rebuilt = False  # a fresh export makes every derived (quantised) graph stale
    for step in STEPS:
        if step != "export" and step not in needed:
            continue
        func, marker = STEPS[step]
        if not rebuilt and (cache / marker).exists() and (cache / "meta.json").exists() and step in done \
                and "error" not in done[step]:
            continue
        rebuilt = rebuilt or step == "export"
        kwargs: dict[str, Any] = {"cache": str(cache)}
        if step in ("export", "tiny_vae"):
            kwargs["backbone"] = settings.sd15_backbone
        if step.startswith("nncf_ptq"):
            kwargs["samples"] = settings.calibration_samples
        if step in ("nncf_ptq", "nncf_ptq_b1"):
            kwargs["batch"] = 1 if step.endswith("_b1") else 2
        if step.startswith("weights_"):
            kwargs["mode"] = step.split("_")[1]
            if step.count("_") > 1:
                kwargs["component"] = step.split("_", 2)[2]
        progress(f"sd15 preparation: {step} (once, cached in {cache})")
        t = time.perf_counter()
        res = run_worker({"kind": "call", "target": f"dhumandiff.bench.sd15:{func}", "kwargs": kwargs,
                          "threads": settings.threads}, work, f"prep-{step}", timeout=settings.timeout)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        done[step] = res
        meta_path.write_text(json.dumps(done, indent=1) + "\n", encoding="utf-8")
        if "error" in res:
            progress(f"  {step} failed: {res['error']}")
            if step == "export":
                from ..errors import DHumanDiffError

                raise DHumanDiffError(f"sd15 preparation failed: {res['error']}")
    return done


# --------------------------------------------------------------------------------------------------- run


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
    if not keys:
        return list(ALL_VARIANTS)
    by_key = {v.key: v for v in ALL_VARIANTS}
    unknown = [k for k in keys if k not in by_key and k not in ("unet", "student", "components")]
    if unknown:
        from ..errors import DHumanDiffError

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
    from ..export.validate import psnr_db

    cache = Path(settings.cache) / settings.sd15_backbone
    work = Path(settings.work)
    variants = select(settings.sd15_variants)
    steps = prepare(cache, {v.needs for v in variants if v.needs}, settings, progress)
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
            first = run_worker({**job, "prime_only": True, "profile": False}, work, f"{v.key}-first",
                               timeout=settings.timeout)
            if "load_s" in first:
                row["first_load_s"] = first["load_s"]
        res = run_worker(job, work, v.key, timeout=settings.timeout)
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
