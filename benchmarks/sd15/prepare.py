"""Preparation of the sd15-scale study, once, into ``CACHE/sd15`` (each heavy step in its own worker process, so
the parent stays small):

1. build the sd15 model from a fixed seed; count each component's FLOPs; write fixed inputs and the torch fp32
   reference outputs; export the UNet to ONNX (weights in one external file) and OpenVINO IR, and the text
   encoder, CLIP image encoder, face projection and VAE decoder to OpenVINO IR;
2. onnxruntime dynamic int8 (``quantize_dynamic`` on MatMul/Gemm only: quantising the convolutions too makes
   this UNet 2x slower, docs/design.md 5);
3. OpenVINO + NNCF int8 post-training quantisation (``nncf.quantize``, transformer preset) on calibration inputs;
4. NNCF weight-only compression to int8 and to int4 (``nncf.compress_weights``);
5. a TAESD-shaped tiny VAE decoder (random weights) and its OpenVINO graph.

The torch rows rebuild the model from the same seed (checked by a weight fingerprint) instead of loading a
multi-GB copy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dhumandiff.utils.atomic import atomic_dir

from . import run_job

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


def build_model(backbone: str = BACKBONE, seed: int = SEED) -> Any:
    """The study's model: ``backbone`` with random weights from ``seed`` and the small word vocabulary."""
    from dhumandiff.model.dhumandiff_model import DHumanDiff

    return DHumanDiff.from_backbone(backbone, words=WORDS, seed=seed).eval()


def _named(spec: Any, value: Any) -> dict[str, np.ndarray]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return {name: v.detach().float().numpy() for name, v in zip(spec.outputs, values)}


def _export_graph(spec: Any, module: Any, example: dict[str, Any], out: Path, runtime: str) -> list[str]:
    """Write one fp32 graph with the project's exporter (no re-validation: PSNR is measured per variant).
    ``example`` holds the graph's inputs in the spec's order (what ``spec.example`` returns)."""
    from dhumandiff.export.artifacts import GraphJob
    from dhumandiff.export.bundle import exporter

    out.mkdir(parents=True, exist_ok=True)
    job = GraphJob(spec.name, module, tuple(example), spec.outputs, example, {}, out, "fp32",
                   spec.fp16_op_block_list)
    return exporter(runtime).export(job)


#: The UNet export folders (static shapes: batch 2 for CFG, batch 1 for a CFG-free student).
UNET_FOLDERS = ("onnx", "openvino", "openvino-b1")


def export_folders(files: list[str], components: bool) -> list[str]:
    """The export folders (and ``components``: the other sd15 graphs) that graphs at ``files`` derive from."""
    wanted = {("openvino-b1" if "-b1" in f else f.split("/")[0].split("-")[0]) for f in files}
    return [f for f in UNET_FOLDERS if f in wanted] + (["components"] if components else [])


def prepare_exports(cache: str, backbone: str = BACKBONE, folders: list[str] | None = None) -> dict[str, Any]:
    """Step 1 (a worker ``call``): build, count, write inputs + torch references, export the graphs of
    ``folders`` (``UNET_FOLDERS`` and "components"; None: all).

    One torch forward per graph serves both the FLOP count and the fp32 reference output.
    """
    folders = list(folders) if folders is not None else [*UNET_FOLDERS, "components"]
    import gc
    import shutil

    from dhumandiff.bench.flops import counted_forward
    from dhumandiff.bench.torch_runner import weights_fingerprint
    from dhumandiff.export.specs import get_spec

    root = Path(cache)
    root.mkdir(parents=True, exist_ok=True)
    # meta.json is written last and marks a complete export; start from empty folders (ONNX appends to an
    # existing external-data file instead of replacing it)
    (root / "meta.json").unlink(missing_ok=True)
    for folder in ("onnx", "openvino", "openvino-b1"):
        shutil.rmtree(root / folder, ignore_errors=True)
    t0 = time.perf_counter()
    model = build_model(backbone)
    meta: dict[str, Any] = {"backbone": backbone, "seed": SEED, "words": WORDS,
                            "image_size": model.config.image_size, "latent_size": model.config.latent_size,
                            "build_s": round(time.perf_counter() - t0, 1), "flops": {}, "export_s": {},
                            "fingerprint": {}, "files": {}, "exported": folders}
    meta["params"] = {"unet": sum(p.numel() for p in model.unet.parameters()),
                      "total": sum(p.numel() for p in model.parameters())}
    inputs: dict[str, np.ndarray] = {}
    refs: dict[str, np.ndarray] = {}
    for name in (OTHER_COMPONENTS if "components" in folders else ()):
        spec = get_spec(name)
        module = spec.build(model).eval()
        ex = spec.example(model, 1, SEED)
        inputs.update({f"{name}/{k}": v.numpy() for k, v in ex.items()})
        meta["flops"][name], value = counted_forward(module, ex)
        refs.update({f"{name}/{k}": v for k, v in _named(spec, value).items()})
        meta["fingerprint"][name] = weights_fingerprint(module)
        t = time.perf_counter()
        meta["files"][f"openvino/{name}"] = _export_graph(spec, module, ex, root / "openvino", "openvino")
        meta["export_s"][f"openvino/{name}"] = round(time.perf_counter() - t, 1)
        del module, value
        gc.collect()
    # only the UNet is needed from here on (its example inputs read the resampler's config): free the rest
    for attr in ("text_encoder", "image_encoder", "vae", "face_proj", "subject_mlp"):
        setattr(model, attr, None)
    gc.collect()
    unet = get_spec("unet")
    module = unet.build(model).eval()
    meta["fingerprint"]["unet"] = weights_fingerprint(module)
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
        if folder not in folders:
            continue
        t = time.perf_counter()
        meta["files"][f"{folder}/unet"] = _export_graph(unet, module, ex, root / folder, runtime)
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

    from dhumandiff.bench.flops import counted_forward
    from dhumandiff.export.specs import get_spec
    from dhumandiff.export.wrappers import VaeDecoderWrapper
    from dhumandiff.model.configs import get_backbone_config
    from dhumandiff.model.tiny_decoder import build_tiny_autoencoder

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
        _export_graph(spec, module, example, out, "openvino")
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


def _exported(cache: Path) -> set[str]:
    """The folders a complete export in ``cache`` holds (a cache from before the choice holds them all)."""
    try:
        meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(meta.get("exported", [*UNET_FOLDERS, "components"]))


def prepare(cache: Path, needed: set[str], settings: Any, progress: Progress,
            folders: list[str] | None = None) -> dict[str, Any]:
    """Run the preparation steps whose outputs are not in the cache yet; returns what each step reported.
    ``folders``: the exports the selected variants need (None: all)."""
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
        if step == "export":
            wanted = set(folders if folders is not None else [*UNET_FOLDERS, "components"])
            if wanted <= _exported(cache) and step in done and "error" not in done[step]:
                continue
        elif not rebuilt and (cache / marker).exists() and (cache / "meta.json").exists() and step in done \
                and "error" not in done[step]:
            continue
        rebuilt = rebuilt or step == "export"
        kwargs: dict[str, Any] = {"cache": str(cache)}
        if step in ("export", "tiny_vae"):
            kwargs["backbone"] = settings.backbone
        if step == "export" and folders is not None:
            kwargs["folders"] = sorted(set(folders) | _exported(cache))
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
        res = run_job({"kind": "call", "target": f"{__name__}:{func}", "kwargs": kwargs,
                       "threads": settings.threads}, work, f"prep-{step}", timeout=settings.timeout)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        done[step] = res
        meta_path.write_text(json.dumps(done, indent=1) + "\n", encoding="utf-8")
        if "error" in res:
            progress(f"  {step} failed: {res['error']}")
            if step == "export":
                from dhumandiff.errors import DHumanDiffError

                raise DHumanDiffError(f"sd15 preparation failed: {res['error']}")
    return done
