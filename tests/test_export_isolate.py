"""Large graphs in child processes and streamed ONNX weights (``export/isolate.py``, ``onnx_export._stream_weights``):
what made the full-size SDXL exports fit 24 GB (BENCHMARKS.md, "Full-scale SDXL conversion and export").

On the tiny model, forced (``$DHUMANDIFF_EXPORT_ISOLATE=always``, a threshold of 0 bytes): a graph written by a
spawned child that reloads the model is the same file the parent writes itself, its check runs in a child too,
a child's exception comes back as itself and a killed child as one clear error; the streamed fp16 conversion of a
graph whose weights sit in external files gives the same graph as converting it in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from dhumandiff.errors import DHumanDiffError, ParityError
from dhumandiff.export import isolate, onnx_export
from dhumandiff.export.bundle import ExportOptions, _in_child, export_component, graph_job
from dhumandiff.export.specs import get_spec
from dhumandiff.model.generate import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture
def calls(monkeypatch):
    """Count the child processes started (no graph cache: a cache hit would start none)."""
    monkeypatch.delenv("DHUMANDIFF_EXPORT_CACHE", raising=False)
    seen: list[str] = []
    real = isolate.call

    def spy(fn, *args, **kwargs):
        seen.append(fn.__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(isolate, "call", spy)
    return seen


def _raise_parity(message: str) -> None:
    raise ParityError(message)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_child_result_exception_and_death():
    assert isolate.call(sorted, [3, 1, 2]) == [1, 2, 3]
    with pytest.raises(ParityError, match="too far"):
        isolate.call(_raise_parity, "too far")
    with pytest.raises(DHumanDiffError, match="died before it finished"):
        isolate.call(_die, what="dying on purpose")


def test_mode_and_threshold(monkeypatch):
    monkeypatch.delenv(isolate.ENV, raising=False)
    assert not isolate.wanted(isolate.ISOLATE_BYTES) and isolate.wanted(isolate.ISOLATE_BYTES + 1)
    assert not isolate.wanted(isolate.ISOLATE_BYTES + 1, can=False)
    monkeypatch.setenv(isolate.ENV, "always")
    assert isolate.wanted(0) and not isolate.wanted(0, can=False)
    monkeypatch.setenv(isolate.ENV, "never")
    assert not isolate.wanted(10 ** 12)
    monkeypatch.setenv(isolate.ENV, "sometimes")
    with pytest.raises(DHumanDiffError, match="always"):
        isolate.mode()
    shared = torch.nn.Linear(4, 4)
    assert isolate.weight_bytes(torch.nn.Sequential(shared, shared)) == 4 * (16 + 4)


@pytest.mark.parametrize("runtime", ["openvino", "onnx"])
def test_child_writes_the_graph_the_parent_would(tiny, tmp_path, monkeypatch, calls, runtime):
    spec = get_spec("unet", tiny)
    precision = "fp16" if runtime == "onnx" else "fp32"
    monkeypatch.setenv(isolate.ENV, "never")
    here = export_component(spec, tiny, _mkdir(tmp_path / "here"), ExportOptions(runtime, precision, source="tiny"))
    assert calls == []
    monkeypatch.setenv(isolate.ENV, "always")
    child = export_component(spec, tiny, _mkdir(tmp_path / "child"),
                             ExportOptions(runtime, precision, source="tiny"))
    assert calls == ["export_graph", "run_graph"]
    weights = {"openvino": "unet.bin", "onnx": "unet.onnx"}[runtime]  # an IR's op names count per process
    assert child.sha256[weights] == here.sha256[weights]  # the same weights, from a process that reloaded the model
    assert child.validation["max_abs"] == here.validation["max_abs"]
    # no source to reload from, or no check to prove the child's graph against: this process does the work
    job = graph_job(spec, tiny, tmp_path, ExportOptions(runtime, precision))
    assert _in_child(spec, job, ExportOptions(runtime, precision, source="tiny"))
    assert not _in_child(spec, job, ExportOptions(runtime, precision))
    assert not _in_child(spec, job, ExportOptions(runtime, precision, validate=False, source="tiny"))
    custom = dataclasses.replace(spec, build=lambda model: spec.build(model))
    assert not _in_child(custom, job, ExportOptions(runtime, precision, source="tiny"))


def test_child_of_a_different_model_fails_the_parents_check(tiny, tmp_path, monkeypatch, calls):
    """The child rebuilds from ``source``; a parent model that differs from it (here: weights changed in memory)
    is caught by the parent's torch reference, never written into a bundle."""
    model = load_model("tiny")
    with torch.no_grad():
        model.vae.decoder.conv_out.weight.mul_(3.0)
    monkeypatch.setenv(isolate.ENV, "always")
    with pytest.raises(ParityError, match="vae_decoder"):
        export_component(get_spec("vae_decoder", model), model, _mkdir(tmp_path / "b"),
                         ExportOptions("openvino", "fp32", source="tiny"))


def test_openvino_quantiser_and_check_in_children(tiny, tmp_path, calls):
    """The OpenVINO quantiser works from the IR and layer names alone: in a child it writes the same weights and
    records the same census; the quantised graph's check gives the same outputs there."""
    from dhumandiff.export import quantize_openvino
    from dhumandiff.export.quantize_modes import QuantJob, QuantizeOptions, _quantize_in_child, _run_in_child
    from dhumandiff.export.quantize_table import get_mode

    spec = get_spec("unet", tiny)
    src = _mkdir(tmp_path / "fp32")
    comp = export_component(spec, tiny, src, ExportOptions("openvino", "fp32", validate=False))
    files = [comp.file, *comp.extra_files]
    job = graph_job(spec, tiny, src, ExportOptions("openvino", "fp32"))
    jobs, outs = [], []
    for where in ("here", "child"):
        root = _mkdir(tmp_path / where)
        for f in files:
            shutil.copy2(src / f, root / f)
        q = QuantJob("unet", root, list(files), get_mode("openvino", "int8-weights"), QuantizeOptions("int8-weights"),
                     job.module, None, [])
        quantize, run = ((quantize_openvino.quantize, quantize_openvino.run) if where == "here" else
                         (functools.partial(_quantize_in_child, "openvino"), functools.partial(_run_in_child, "openvino")))
        written = quantize(q)
        outs.append(run(q, written, job.example, spec.outputs))
        jobs.append((q, written))
    assert calls == ["_child_quantize", "_child_run"]
    (a, fa), (b, fb) = jobs
    assert fa == fb and (a.root / "unet.bin").read_bytes() == (b.root / "unet.bin").read_bytes()
    assert a.info == b.info and "u8" in a.info["low_bit_types"]
    np.testing.assert_array_equal(outs[0]["noise_pred"], outs[1]["noise_pred"])


def test_streamed_fp16_conversion_equals_the_in_memory_one(tiny, tmp_path):
    """A > 2 GB graph comes out of torch with its weights in files beside it; converting it without loading them
    gives the graph the in-memory conversion gives (forced here on the tiny UNet, every tensor external)."""
    import onnx
    from onnx import numpy_helper

    job = graph_job(get_spec("unet", tiny), tiny, tmp_path, ExportOptions("onnx", "fp16"))
    raw = tmp_path / "raw" / "model.onnx"
    raw.parent.mkdir()
    torch.onnx.export(job.module, job.args, str(raw), input_names=list(job.input_names),
                      output_names=list(job.output_names), opset_version=onnx_export.OPSET, dynamo=False)
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(onnx.load(str(raw)), str(ext / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)  # one file per tensor, as torch writes them
    reference = onnx_export._to_fp16(str(raw), job)

    for threshold, expected in ((0, ["unet.onnx", "unet.onnx.data"]), (onnx_export.EXTERNAL_DATA_THRESHOLD,
                                                                       ["unet.onnx"])):
        out = _mkdir(tmp_path / f"out{threshold}")
        job.out_dir = out
        files = onnx_export._stream_weights(onnx.load(str(ext / "model.onnx"), load_external_data=False), ext, job,
                                            threshold=threshold)
        assert files == expected and sorted(p.name for p in out.iterdir()) == expected
        onnx.checker.check_model(str(out / files[0]), full_check=True)
        got = onnx.load(str(out / files[0]))
        assert [n.op_type for n in got.graph.node] == [n.op_type for n in reference.graph.node]
        want = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
        have = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
        assert want.keys() == have.keys()
        for name, value in want.items():
            assert have[name].dtype == value.dtype and np.array_equal(have[name], value), name
        assert any(v.dtype == np.float16 for v in have.values())
        outputs = onnx_export.run(out, files, {n: t.numpy() for n, t in job.example.items()}, job.output_names)
        assert np.isfinite(outputs["noise_pred"]).all()


def _mkdir(path):
    path.mkdir(parents=True)
    return path
