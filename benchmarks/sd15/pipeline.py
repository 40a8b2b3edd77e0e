"""A measured sd15-scale image: the end-to-end estimate's graphs run in one process through the OpenVINO adapter.

The composed estimate (:func:`.measure.end_to_end_estimate`) sums graphs measured in separate processes, so it
cannot show what happens when they share one: the peak memory of a whole image (every graph held, or
``--low-memory``'s one phase at a time) and the cold start of a first image. This replays the generator's phase
order -- per person the CLIP image encoder and the face projection, then the text encoder, ``steps`` CFG-free UNet
calls and the VAE decoder -- on the study's fixed inputs, through
:class:`~dhumandiff.runtimes.adapters.openvino.OpenVINORunner` (its compile cache, its mapped-weight release). The
sd15 backbone has no exported identity encoder; ArcFace runs outside the bundle.

Each mode is its own worker process (a ``call`` job); a first process fills an empty compile cache (the first
start ever), then every measured mode is a restart. The worker side (:func:`run_image`) imports no torch.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import run_job

#: Generator phases (graphs released together in low-memory mode) and the calls per image of a 4-step student.
PHASES: tuple[tuple[str, ...], ...] = (("image_encoder", "face_projection"), ("text_encoder",), ("unet",),
                                       ("vae_decoder",))
PERSONS = 2
#: mode -> hold one phase's graphs at a time (``--low-memory``) rather than every graph once loaded
MODES: dict[str, bool] = {"held": False, "low-memory": True}
#: Graph inputs whose first axis is not the batch.
UNBATCHED = ("ip_scale",)


def _precision(row: dict[str, Any]) -> str:
    """The adapter precision whose CPU hint is what the bench row ran at (int8 graphs: f32 or bf16 compute)."""
    ran = str(row.get("inference_precision") or row.get("hint") or "bf16").lower()
    return "bf16" if "bf16" in ran else "fp32"


def pipeline_job(chosen: dict[str, dict[str, Any]], cache: Path, steps: int) -> dict[str, Any]:
    """What :func:`run_image` is given for the estimate's chosen rows (``file``: graph path relative to the sd15
    cache)."""
    with np.load(cache / "reference.npz") as ref:
        # output name -> rank (the adapter checks each graph's outputs against it; sizes stay dynamic)
        outputs = {c: {k.split("/", 1)[1]: ref[k].ndim for k in sorted(ref.files) if k.split("/", 1)[0] == c}
                   for c in chosen}
    comps = {}
    for comp, row in chosen.items():
        comps[comp] = {"file": str(cache / row["file"]), "precision": _precision(row), "label": row["label"],
                       "batch": row.get("batch") or 1, "outputs": outputs.get(comp) or {"sample": 4}}
    return {"components": comps, "inputs": str(cache / "inputs.npz"), "steps": steps}


def _feeds(inputs_path: str, comps: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    feeds: dict[str, dict[str, np.ndarray]] = {c: {} for c in comps}
    with np.load(inputs_path) as z:
        for key in z.files:
            comp, name = key.split("/", 1)
            if comp not in comps:
                continue
            a = z[key]
            batch = comps[comp]["batch"]
            if name not in UNBATCHED and a.ndim and a.shape[0] > batch:
                a = a[-batch:]  # the conditional row: a CFG-free student's batch
            feeds[comp][name] = np.ascontiguousarray(a)
    return feeds


def run_image(job: dict[str, Any]) -> dict[str, Any]:
    """Worker side: build the runners, first image (cold), then warm images; times and peak RSS."""
    from dhumandiff.bench.measure import Timing, peak_rss_mb, rss_mb
    from dhumandiff.contract.bundle import ComponentSpec, TensorSpec
    from dhumandiff.runtimes.adapters.openvino import OpenVINORunner

    os.environ["DHUMANDIFF_OPENVINO_CACHE"] = job["cache_dir"]
    low_memory = MODES[job["mode"]]
    comps: dict[str, dict[str, Any]] = job["components"]
    feeds = _feeds(job["inputs"], comps)
    import openvino  # noqa: F401  (the runtime library is the baseline, as in the graph rows)

    baseline = rss_mb()
    t0 = time.perf_counter()
    runners: dict[str, Any] = {}
    for comp, c in comps.items():
        path = Path(c["file"])
        spec = ComponentSpec(comp, path.name, (), {},
                             {n: TensorSpec(tuple(a.shape), "int64" if a.dtype == np.int64 else "float32")
                              for n, a in feeds[comp].items()},
                             {n: TensorSpec(tuple(f"d{i}" for i in range(rank)), "float32")
                              for n, rank in c["outputs"].items()})
        runners[comp] = OpenVINORunner({comp: spec}, path.parent, precision=c["precision"],
                                       num_threads=job.get("threads"))
    calls = {c: (PERSONS if c in PHASES[0] else int(job["steps"]) if c == "unet" else 1) for c in comps}

    def image() -> None:
        for phase in PHASES:
            for _ in range(max(calls[c] for c in phase)):
                for comp in phase:
                    runners[comp].run(comp, feeds[comp])
            if low_memory:
                for comp in phase:
                    runners[comp].release(comp)

    image()
    result: dict[str, Any] = {"mode": job["mode"], "cold_s": time.perf_counter() - t0,
                              "calls": calls, "precision": {c: v["precision"] for c, v in comps.items()}}
    if job.get("prime_only"):
        return result
    result["peak_cold_mb"] = round(peak_rss_mb(), 1)  # rounded like memory.peak_mb, which it must not exceed
    seconds = []
    for _ in range(max(int(job.get("repeats", 3)), 1)):
        t = time.perf_counter()
        image()
        seconds.append(time.perf_counter() - t)
    result["warm"] = Timing.of(seconds).to_dict()
    result["cold_over_warm"] = result["cold_s"] / statistics.median(seconds)
    result["memory"] = {"baseline_mb": round(baseline, 1), "peak_mb": round(peak_rss_mb(), 1),
                        "end_mb": round(rss_mb(), 1)}
    return result


def _run_image(job: dict[str, Any], work: Path, name: str, timeout: float | None) -> dict[str, Any]:
    """:func:`run_image` in a fresh worker process; its result, with the worker's time and the load average."""
    res = run_job({"kind": "call", "target": f"{__name__}:run_image", "kwargs": {"job": job},
                   "threads": job.get("threads")}, work, name, timeout=timeout)
    if "value" not in res:  # the worker failed: ``error`` says why
        return res
    return {**res["value"], **{k: res[k] for k in ("worker_s", "load_average") if k in res}}


def measure_pipeline(chosen: dict[str, dict[str, Any]], cache: Path, work: Path, steps: int, repeats: int,
                     threads: int | None, timeout: float | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """Prime the compile cache (first start ever), then run every mode as a restart; results by mode."""
    import shutil

    job = pipeline_job(chosen, cache, steps)
    job.update(threads=threads, repeats=min(repeats, 3), cache_dir=str(work / "pipeline-compile-cache"))
    shutil.rmtree(job["cache_dir"], ignore_errors=True)
    progress("one sd15 image in one process: first start (compiling)")
    out: dict[str, Any] = {"components": {c: v["label"] for c, v in chosen.items()}, "steps": steps}
    first = _run_image({**job, "mode": "held", "prime_only": True}, work, "pipeline-first", timeout)
    out["first_start"] = first
    for mode in MODES:
        progress(f"one sd15 image in one process: {mode}")
        out[mode] = _run_image({**job, "mode": mode}, work, f"pipeline-{mode}", timeout)
    shutil.rmtree(job["cache_dir"], ignore_errors=True)
    return out
