"""One measured variant in its own process: ``python -m dhumandiff.bench.worker JOB.json``.

A fresh process per variant makes its peak resident memory its own (no other runtime's arena, no torch unless
the variant is a torch row) and its load time a real cold start (nothing compiled or cached in-process). The
job is a JSON file written by the parent; the result is a JSON file at ``job["result"]`` (written atomically);
arrays a variant produced (component outputs, the generated image) go to ``job["outputs"]`` (``.npz``) for the
parent to compare against the torch fp32 row.

Job kinds:

* ``pipeline`` — a bundle through its runtime adapter, or a model's torch modules (:class:`TorchRunner`),
  driven by the NumPy sampler loop: load + cold first image, warm end-to-end images, then each component on
  fixed inputs.
* ``graph`` — one component graph on its own (e.g. a large UNet's step): a torch module rebuilt from a backbone
  and seed, an ONNX file (onnxruntime) or an OpenVINO IR, optionally reshaped to another batch, optionally
  profiled per op.
* ``peaks`` — the machine's matmul peaks (``peaks.matmul_peaks``).
* ``call`` — any ``module:function(**kwargs)`` returning JSON-able data (heavy preparation such as exports,
  or a measurement of the caller's own, kept out of the parent's memory; ``run_worker(..., pythonpath=...)``
  makes a module outside the package importable).

Failures are written into the result (``error``) instead of raising: one broken variant must not stop a run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dhumandiff.runtimes.adapters.mapped_weights import ReleasedWhileLoading
from dhumandiff.runtimes.adapters.openvino import mapped_sources

from .measure import peak_rss_mb, reset_peak_rss, rss_mb, time_calls

_T_START = time.perf_counter()


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    from ..utils.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} into a bench result")


def _save_arrays(path: str | None, arrays: dict[str, np.ndarray]) -> None:
    if not path or not arrays:
        return
    from ..utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_inputs(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{component: {input: array}}`` from an ``.npz`` whose keys are ``component/input``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            comp, name = key.split("/", 1)
            out.setdefault(comp, {})[name] = data[key]
    return out


def _threads(n: int | None) -> None:
    """Apply a thread budget before any runtime starts its pool (torch reads it at import)."""
    if n:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(n)


def _memory(baseline: float, peak_load: float) -> dict[str, float]:
    peak_run = peak_rss_mb()
    return {"baseline_mb": round(baseline, 1), "peak_load_mb": round(peak_load, 1),
            "peak_run_mb": round(peak_run, 1), "peak_mb": round(max(peak_load, peak_run), 1),
            "end_mb": round(rss_mb(), 1)}


# ---------------------------------------------------------------------------------------------- pipeline


def calls_per_image(manifest: Any, steps: int) -> dict[str, int]:
    """How often the sampler loop runs each component for one image (two faces; CFG runs the text twice)."""
    calls = {"identity_encoder": 2, "image_encoder": 2, "face_projection": 2, "unet": int(steps), "vae_decoder": 1}
    calls["text_encoder"] = 2 if manifest.unet_batch == 2 else 1
    if "text_encoder_2" in manifest.components:
        calls["text_encoder_2"] = calls["text_encoder"]
    return calls


def _pipeline_loader(job: dict[str, Any]) -> Callable[[], tuple[Any, dict[str, float]]]:
    """A function that loads the variant and returns ``(generator, seconds per load phase)``."""
    from ..runtimes.generator import BundleGenerator, load_bundle
    from ..contract.bundle import load_manifest
    from ..runtimes.tokenizer import PromptTokenizer

    def load_bundle_variant() -> tuple[Any, dict[str, float]]:
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        gen = load_bundle(job["bundle"], device=job.get("device", "cpu"), num_threads=job.get("threads"),
                          verify=job.get("verify", True), low_memory=bool(job.get("low_memory")))
        hint = job.get("ov_hint")
        if hint:
            if gen.manifest.runtime != "openvino":
                raise ValueError("ov_hint applies to OpenVINO bundles only")
            gen.runner.hint = hint  # a benchmark knob: run an fp32 IR at another inference precision
        phases["manifest"] = time.perf_counter() - t0
        if gen.low_memory:  # graphs load when their phase starts (inside every image), not up front
            return gen, phases
        for name in gen.manifest.components:
            t = time.perf_counter()
            gen.runner.handle(name)
            phases[name] = time.perf_counter() - t
        return gen, phases

    def load_torch_variant() -> tuple[Any, dict[str, float]]:
        from ..model.generate import load_model
        from .torch_runner import TorchRunner

        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        model = load_model(job["model"])
        phases["model"] = time.perf_counter() - t0
        m = load_manifest(job["bundle"], verify=False)  # the I/O contract of this model's graphs; no files used
        root = Path(m.root)  # type: ignore[arg-type]
        tok = PromptTokenizer.from_spec(root / m.tokenizer.file, m.tokenizer)
        tok2 = PromptTokenizer.from_spec(root / m.tokenizer_2.file, m.tokenizer_2) if m.tokenizer_2 else None
        runner = TorchRunner(model, job.get("precision", "fp32"))
        for name in m.components:
            t = time.perf_counter()
            runner.handle(name)
            phases[name] = time.perf_counter() - t
        return BundleGenerator(m, runner, tok, tok2), phases

    return load_torch_variant if job["engine"] == "torch" else load_bundle_variant


def run_pipeline(job: dict[str, Any]) -> dict[str, Any]:
    """Load -> cold first image -> warm images -> each component on the job's fixed inputs."""
    _threads(job.get("threads"))
    t_imp = time.perf_counter()
    if job["engine"] == "torch":
        import torch

        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
    loader = _pipeline_loader(job)
    import_s = time.perf_counter() - t_imp
    baseline = rss_mb()
    e2e = job.get("e2e")
    warmup, repeats = int(job.get("warmup", 1)), int(job.get("repeats", 3))
    result: dict[str, Any] = {"import_s": import_s}
    arrays: dict[str, np.ndarray] = {}

    t0 = time.perf_counter()
    gen, phases = loader()
    load_s = time.perf_counter() - t0
    m = gen.manifest
    result.update(load_s=load_s, load_phases_s=phases, providers=list(gen.runner.providers),
                  runtime=job.get("label_runtime") or ("torch" if job["engine"] == "torch" else m.runtime))

    def image() -> Any:
        return gen(e2e["face_a"], e2e["face_b"], e2e["prompt"], steps=e2e.get("steps"), seed=e2e.get("seed", 0),
                   person_words=e2e.get("person_words"), layout=e2e.get("layout"))

    if e2e:
        first = image()
        result["first_image_s"] = time.perf_counter() - t0 - load_s
        result["cold_first_image_s"] = time.perf_counter() - t0
        peak_load = peak_rss_mb()
        reset_peak_rss()
        timing, res = time_calls(image, max(warmup - 1, 0), int(job.get("e2e_repeats", repeats)))
        result["end_to_end"] = timing.to_dict()
        result["end_to_end_phases_s"] = {k: round(v, 5) for k, v in res.timings.items()}
        result["cold_over_warm"] = result["cold_first_image_s"] / (timing.median_ms / 1000.0)
        result["steps"] = res.settings["steps"]
        result["calls_per_image"] = calls_per_image(m, res.settings["steps"])
        arrays["image"] = np.asarray(res.image.convert("RGB"), dtype=np.uint8)
        del first
    else:
        peak_load = peak_rss_mb()
        reset_peak_rss()

    components: dict[str, Any] = {}
    inputs = load_inputs(job["component_inputs"]) if job.get("component_inputs") else {}
    for name in m.components:
        if name not in inputs:
            continue
        feed = inputs[name]
        timing, out = time_calls(lambda: gen.runner.run(name, feed), warmup, repeats)
        if gen.low_memory:
            gen.runner.release(name)  # keep the one-graph-at-a-time peak through the component timings too
        components[name] = timing.to_dict()
        arrays.update({f"{name}/{k}": np.asarray(v, np.float32) for k, v in out.items()})
    result["components"] = components
    result["memory"] = _memory(baseline, peak_load)
    result["torch_loaded"] = "torch" in sys.modules  # a bundle row must run without torch (honest memory)
    _save_arrays(job.get("outputs"), arrays)
    return result


# ------------------------------------------------------------------------------------------------- graph


def _ov_profile(request: Any, top: int) -> list[dict[str, Any]]:
    """OpenVINO per-layer perf counters, summed by (layer type, kernel): where a step's time goes."""
    sums: dict[tuple[str, str], float] = {}
    for info in request.get_profiling_info():
        key = (info.node_type, info.exec_type)
        sums[key] = sums.get(key, 0.0) + info.real_time.total_seconds()
    return _top_ops(sums, top)


def _ort_profile(path: str, top: int) -> list[dict[str, Any]]:
    """onnxruntime's profiler trace, summed by op type and execution provider."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f)
    sums: dict[tuple[str, str], float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            args = ev.get("args", {})
            key = (args.get("op_name", "?"), args.get("provider", ""))
            sums[key] = sums.get(key, 0.0) + ev.get("dur", 0) / 1e6
    return _top_ops(sums, top)


def _top_ops(sums: dict[tuple[str, str], float], top: int) -> list[dict[str, Any]]:
    total = sum(sums.values()) or 1.0
    rows = sorted(sums.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": k[0], "kernel": k[1], "ms": round(v * 1000.0, 3), "share": round(v / total, 4)}
            for (k, v) in rows]


def _graph_loader(job: dict[str, Any], profile: bool = False) -> Callable[[], tuple[Callable[[], dict], Any]]:
    """``load() -> (run, handle)``: run() executes the graph once on the job's inputs and returns its outputs."""
    engine = job["engine"]
    inputs = load_inputs(job["inputs"])[job["component"]]
    threads = job.get("threads")

    if engine == "torch":
        def load_torch() -> tuple[Callable[[], dict], Any]:
            import torch

            from ..model.dhumandiff_model import DHumanDiff
            from .torch_runner import TorchRunner

            build = job["build"]
            model = DHumanDiff.from_backbone(build["backbone"], words=build.get("words"), seed=build.get("seed", 0))
            runner = TorchRunner(model, job.get("precision", "fp32"), (job["component"],))
            check = job.get("fingerprint")
            if check is not None:
                from .torch_runner import weights_fingerprint

                got = weights_fingerprint(runner.handle(job["component"])[0])
                if abs(got - check) > 1e-6 * max(1.0, abs(check)):
                    raise RuntimeError(f"rebuilt {build['backbone']} weights differ from the exported ones "
                                       f"(fingerprint {got} vs {check}); clear the bench cache")
            del model, runner.model
            import gc

            gc.collect()
            del torch
            return (lambda: runner.run(job["component"], inputs)), runner

        return load_torch

    if engine == "onnx":
        def load_onnx() -> tuple[Callable[[], dict], Any]:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = int(threads)
            if profile:
                opts.enable_profiling = True
                opts.profile_file_prefix = str(Path(job["result"]).with_suffix("")) + "-ort-profile"
            sess = ort.InferenceSession(job["file"], sess_options=opts, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            outs = [o.name for o in sess.get_outputs()]
            feed = {n: inputs[n] for n in names}
            return (lambda: dict(zip(outs, sess.run(outs, feed)))), sess

        return load_onnx

    if engine == "openvino":
        def load_openvino() -> tuple[Callable[[], dict], Any]:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(job["file"])
            batch = job.get("batch")
            sample = next((p for p in model.inputs if p.get_any_name() not in _UNBATCHED), None)
            if batch and sample is not None and sample.get_partial_shape()[0] != batch:
                # only dynamic-shape IRs reshape: a static trace bakes its batch into Reshape constants
                model.reshape({p.get_any_name(): _rebatch(p.get_partial_shape(), p.get_any_name(), batch)
                               for p in model.inputs})
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
            if job.get("hint"):
                config["INFERENCE_PRECISION_HINT"] = job["hint"]
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            if profile:
                config["PERF_COUNT"] = True
            elif job.get("cache_dir"):  # what the runtime adapter does: compiled blobs cached between starts
                config["CACHE_DIR"] = job["cache_dir"]
            # as the runtime adapter does: mapped weights OpenVINO has repacked leave the resident set
            with ReleasedWhileLoading(mapped_sources(Path(job["file"]), config)):
                compiled = core.compile_model(model, "CPU", config)
                del model
            request = compiled.create_infer_request()
            feed = {}
            for port in compiled.inputs:
                name = next(n for n in port.get_names() if n in inputs)
                feed[port] = _batched(inputs[name], name, batch)
            outs = {next(iter(p.get_names())): p for p in compiled.outputs}

            def run() -> dict:
                res = request.infer(feed)
                return {n: np.array(res[p], copy=True) for n, p in outs.items()}

            precision = compiled.get_property("INFERENCE_PRECISION_HINT")
            job["_ran_precision"] = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
            return run, request

        return load_openvino

    raise ValueError(f"unknown graph engine {engine!r}")


#: Inputs whose first axis is not the batch (shared scalars).
_UNBATCHED = ("ip_scale",)


def _rebatch(shape: Any, name: str, batch: int) -> Any:
    if name in _UNBATCHED or not shape.rank.is_static or shape.rank.get_length() == 0:
        return shape
    dims = list(shape)
    dims[0] = batch
    return type(shape)(dims)


def _batched(array: np.ndarray, name: str, batch: int | None) -> np.ndarray:
    """The job's input cut (or tiled) to ``batch`` rows; the last rows are kept (the conditional CFG row)."""
    if not batch or name in _UNBATCHED or array.ndim == 0 or array.shape[0] == batch:
        return array
    if array.shape[0] > batch:
        return np.ascontiguousarray(array[-batch:])
    return np.ascontiguousarray(np.concatenate([array] * (batch // array.shape[0] + 1))[:batch])


def run_graph(job: dict[str, Any]) -> dict[str, Any]:
    """Load -> first call (cold) -> warm calls -> outputs; then an optional profiled pass in a fresh compile."""
    _threads(job.get("threads"))
    import importlib

    # the runtime library itself is part of the baseline: a composed pipeline loads it once, not per graph
    importlib.import_module({"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}[job["engine"]])
    baseline = rss_mb()
    warmup, repeats = int(job.get("warmup", 1)), int(job.get("repeats", 3))
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    run, handle = _graph_loader(job)()
    result["load_s"] = time.perf_counter() - t0
    if job.get("prime_only"):  # a first start: compile (and fill the compile cache), nothing else
        return result
    t1 = time.perf_counter()
    out = run()
    result["first_call_s"] = time.perf_counter() - t1
    result["cold_first_call_s"] = time.perf_counter() - t0
    peak_load = peak_rss_mb()
    reset_peak_rss()
    timing, out = time_calls(run, max(warmup - 1, 0), repeats)
    result["step"] = timing.to_dict()
    result["memory"] = _memory(baseline, peak_load)
    if "_ran_precision" in job:
        result["inference_precision"] = job["_ran_precision"]
    _save_arrays(job.get("outputs"), {f"{job['component']}/{k}": np.asarray(v, np.float32) for k, v in out.items()})
    del run, handle, out
    if job.get("profile") and job["engine"] in ("openvino", "onnx"):
        result["profile"] = _profile_graph(job)
    return result


def _profile_graph(job: dict[str, Any], top: int = 12) -> list[dict[str, Any]]:
    import gc

    gc.collect()
    run, handle = _graph_loader(job, profile=True)()
    run()
    run()
    if job["engine"] == "openvino":
        return _ov_profile(handle, top)
    path = handle.end_profiling()
    try:
        return _ort_profile(path, top)
    finally:
        Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- dispatch


def run_call(job: dict[str, Any]) -> dict[str, Any]:
    import importlib

    _threads(job.get("threads"))
    module, func = job["target"].split(":")
    value = getattr(importlib.import_module(module), func)(**job.get("kwargs", {}))
    return {"value": value, "memory": {"peak_mb": round(peak_rss_mb(), 1)}}


def run_peaks(job: dict[str, Any]) -> dict[str, Any]:
    from .peaks import matmul_peaks

    _threads(job.get("threads"))
    return matmul_peaks(**job.get("kwargs", {}))


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": run_pipeline, "graph": run_graph, "peaks": run_peaks, "call": run_call}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m dhumandiff.bench.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = KINDS[job["kind"]](job)
    except Exception as exc:
        from ..errors import DHumanDiffError

        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        result = {"error": f"{type(exc).__name__}: {msg}"[:500]}
        if not isinstance(exc, DHumanDiffError):
            result["traceback"] = traceback.format_exc()[-4000:]
    result["worker_s"] = time.perf_counter() - _T_START
    _write_json(job["result"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
