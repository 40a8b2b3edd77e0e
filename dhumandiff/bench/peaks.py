"""This machine's matmul peaks in fp32, bf16 and int8: the ceilings a UNet step's achieved GFLOP/s is held to.

Each precision is measured with every library that has a kernel for it, because which one reaches the hardware's
fast path differs per CPU (on AVX-512 AMD parts OpenVINO's fp32 GEMM beats PyTorch's; int8 needs VNNI or AMX
kernels, which ``torch._int_mm`` (oneDNN), onnxruntime's ``MatMulInteger`` with u8 x s8 (MLAS) and OpenVINO's
int8 FullyConnected use; onnxruntime's s8 x s8 path has no VNNI kernel and is ~15x slower). The peak of a
precision is the best method's rate; every method's rate is reported beside it.

An n x n x n matmul counts 2 n^3 operations (multiply + add), the same convention as the FLOP counter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULT_N = 2048


def _best_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def _torch_float(dtype_name: str, n: int) -> Callable[[], Any]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    return lambda: torch.matmul(a, b)


def _torch_int8(n: int) -> Callable[[], Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=gen)
    b = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=gen)
    torch._int_mm(a, b)  # raises here when this torch build has no CPU int8 GEMM
    return lambda: torch._int_mm(a, b)


def _ort_matmul_integer(n: int, signed_activations: bool = False) -> Callable[[], Any]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a_type = TensorProto.INT8 if signed_activations else TensorProto.UINT8
    a = (rng.integers(-127, 127, (n, n)).astype(np.int8) if signed_activations
         else rng.integers(0, 255, (n, n)).astype(np.uint8))
    b = rng.integers(-127, 127, (n, n)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8_matmul",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"A": a})


def _openvino(n: int, mode: str) -> Callable[[], Any]:
    """OpenVINO CPU FullyConnected: f32 / bf16 compute, or int8 (u8 activations from a FakeQuantize x i8 weights,
    the pattern NNCF writes and the CPU plugin lowers to an int8 GEMM)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], np.float32, name="x")
    if mode == "int8":
        w_i8 = rng.integers(-127, 127, (n, n)).astype(np.int8)
        weight = ops.multiply(ops.convert(ops.constant(w_i8), "f32"),
                              ops.constant(np.full((n, 1), 0.01, np.float32)))
        xq = ops.fake_quantize(x, np.float32(0.0), np.float32(4.0), np.float32(0.0), np.float32(4.0), 256)
        y = ops.matmul(xq, weight, False, True)
        hint = "f32"
    else:
        y = ops.matmul(x, ops.constant(rng.standard_normal((n, n)).astype(np.float32)), False, False)
        hint = mode
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    if mode == "int8":
        kinds = {op.get_rt_info()["layerType"].astype(str): op.get_rt_info()["runtimePrecision"].astype(str)
                 for op in compiled.get_runtime_model().get_ordered_ops()}
        if kinds.get("FullyConnected") not in ("u8", "i8"):
            raise RuntimeError(f"OpenVINO did not lower the matmul to int8 here (ran {kinds.get('FullyConnected')})")
    request = compiled.create_infer_request()
    data = rng.uniform(0.0, 4.0, (n, n)).astype(np.float32)
    return lambda: request.infer({0: data})


#: (precision, method name, factory(n)) — every way of running a big matmul that this project's stack offers.
METHODS: tuple[tuple[str, str, Callable[[int], Callable[[], Any]]], ...] = (
    ("fp32", "torch.matmul", lambda n: _torch_float("fp32", n)),
    ("fp32", "openvino FullyConnected f32", lambda n: _openvino(n, "f32")),
    ("bf16", "torch.matmul bf16", lambda n: _torch_float("bf16", n)),
    ("bf16", "openvino FullyConnected bf16", lambda n: _openvino(n, "bf16")),
    ("int8", "torch._int_mm s8s8", _torch_int8),
    ("int8", "onnxruntime MatMulInteger u8s8", _ort_matmul_integer),
    ("int8", "onnxruntime MatMulInteger s8s8", lambda n: _ort_matmul_integer(n, signed_activations=True)),
    ("int8", "openvino FullyConnected u8 x i8", lambda n: _openvino(n, "int8")),
)


def matmul_peaks(n: int = DEFAULT_N, warmup: int = 2, repeats: int = 12,
                 precisions: tuple[str, ...] = ("fp32", "bf16", "int8")) -> dict[str, Any]:
    """``{"n", "methods": [{precision, method, gflops (best), gflops_median, error}], "peak_gflops": {precision:
    best}, "peak_method": {precision: method}}``. A method whose library is missing is reported with its error."""
    flop = 2.0 * n ** 3
    methods: list[dict[str, Any]] = []
    for precision, name, factory in METHODS:
        if precision not in precisions:
            continue
        entry: dict[str, Any] = {"precision": precision, "method": name}
        try:
            fn = factory(n)
            best, median = _best_seconds(fn, warmup, repeats)
            entry.update(gflops=round(flop / best / 1e9, 1), gflops_median=round(flop / median / 1e9, 1))
        except Exception as exc:  # a missing library or kernel is a finding, not a crash
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        methods.append(entry)
    peaks: dict[str, float] = {}
    which: dict[str, str] = {}
    for m in methods:
        if "gflops" in m and m["gflops"] > peaks.get(m["precision"], 0.0):
            peaks[m["precision"]], which[m["precision"]] = m["gflops"], m["method"]
    return {"n": n, "methods": methods, "peak_gflops": peaks, "peak_method": which}


def merge_best(path: Path, measured: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """Keep, per method, the best rate ever measured on this machine (same CPU model, flags and versions) in
    ``path``, and return it in :func:`matmul_peaks`'s shape (plus ``measured_at`` per method).

    A peak is a maximum: a run on a machine shared with other jobs measures less than the hardware does, so the
    best reading across runs is the fairer ceiling to hold a UNet's achieved rate against.
    """
    key = {"cpu": machine.get("cpu"), "versions": machine.get("versions")}
    best: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("machine") == key and old.get("n") == measured.get("n"):
                best = old.get("methods", {})
        except (OSError, ValueError):
            best = {}
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for m in measured.get("methods", []):
        name = f"{m['precision']}|{m['method']}"
        if "gflops" in m and m["gflops"] > best.get(name, {}).get("gflops", 0.0):
            best[name] = {**m, "measured_at": stamp}
        elif name not in best:
            best[name] = m
    from ..utils.atomic import write_text_atomic

    write_text_atomic(path, json.dumps({"machine": key, "n": measured.get("n"), "methods": best}, indent=1) + "\n")
    methods = [best[k] for k in sorted(best, key=lambda k: [p for p, _, _ in METHODS].index(k.split("|")[0]))]
    peaks: dict[str, float] = {}
    which: dict[str, str] = {}
    for m in methods:
        if "gflops" in m and m["gflops"] > peaks.get(m["precision"], 0.0):
            peaks[m["precision"]], which[m["precision"]] = m["gflops"], m["method"]
    return {"n": measured.get("n"), "methods": methods, "peak_gflops": peaks, "peak_method": which}
