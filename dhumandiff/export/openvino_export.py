"""OpenVINO IR: ``openvino.convert_model`` straight from the traced wrapper, ports named by the contract.

A model converted from torch gets tensor names from the trace (``input.1``, ``39``, ...), not the wrapper's
argument names, so every input and output port is renamed here to the bundle contract's name; the runtime
adapter finds ports by those names. Shapes are given explicitly (static unless ``--dynamic``: ``-1`` on the
spec's dynamic axes).

Precision: an fp32 IR keeps fp32 weights (``compress_to_fp16=False``); an fp16 IR stores fp16 weights that
OpenVINO decompresses on load (``compress_to_fp16=True``); compute precision is the runtime's choice
(``INFERENCE_PRECISION_HINT``). Validation here always compiles with ``f32``: this CPU would otherwise run bf16
(docs/design.md 5) and the comparison would measure bf16, not the export.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .artifacts import GraphJob


def _ov_type(dtype: torch.dtype):
    import openvino as ov

    return {torch.float32: ov.Type.f32, torch.int64: ov.Type.i64, torch.int32: ov.Type.i32}[dtype]


def export(job: GraphJob) -> list[str]:
    """Write ``{name}.xml`` + ``{name}.bin`` into ``job.out_dir``; returns both file names."""
    import openvino as ov

    if job.precision not in ("fp32", "fp16"):
        raise ValueError(f"the OpenVINO exporter writes fp32 or fp16 IR, not {job.precision!r}")
    shapes = []
    for name in job.input_names:
        t = job.example[name]
        dyn = job.dynamic_axes.get(name, {})
        shapes.append((ov.PartialShape([-1 if i in dyn else int(d) for i, d in enumerate(t.shape)]),
                       _ov_type(t.dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(job.module, example_input=job.args, input=shapes)
    if len(model.inputs) != len(job.input_names) or len(model.outputs) != len(job.output_names):
        raise RuntimeError(f"{job.name}: OpenVINO produced {len(model.inputs)} inputs / {len(model.outputs)} "
                           f"outputs, the contract has {len(job.input_names)} / {len(job.output_names)}")
    for port, name in zip(model.inputs, job.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, job.output_names):
        port.get_tensor().set_names({name})
    xml = job.out_dir / f"{job.name}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=job.precision == "fp16")
    return [xml.name, xml.with_suffix(".bin").name]


def compile_ir(path: Path, hint: str = "f32"):
    """Compile an IR on CPU with an explicit inference precision and torch's thread budget."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())}
    return ov.Core().compile_model(str(path), "CPU", config)


def run(root: Path, files: list[str], inputs: Mapping[str, np.ndarray],
        output_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run an exported IR on CPU in f32 (export-time validation)."""
    compiled = compile_ir(root / files[0])
    results = infer(compiled, {port: inputs[_port_name(port, inputs)] for port in compiled.inputs})
    return {name: np.array(results[compiled.output(name)]) for name in output_names}


def infer(compiled, feed):
    """One inference on an explicit request. ``compiled(feed)`` keeps its request on the compiled model, a cycle
    through pybind objects that Python's gc cannot break: every IR validated that way stayed compiled (its weights
    repacked in memory) until the process ended; the SDXL export ran out of 24 GB on it."""
    return compiled.create_infer_request().infer(feed)


def _port_name(port, names: Mapping[str, np.ndarray]) -> str:
    """The contract name among a port's names (OpenVINO may add aliases such as ``timesteps``)."""
    match = [n for n in port.get_names() if n in names]
    if not match:
        raise KeyError(f"IR input {sorted(port.get_names())} is not one of {sorted(names)}")
    return match[0]
