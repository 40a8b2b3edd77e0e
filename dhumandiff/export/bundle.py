"""``export_bundle``: every component of a model -> one self-describing bundle folder for one runtime.

The loop is generic, as in optimum's exporters: for each :class:`~.specs.ComponentSpec` it builds the
wrapper, fabricates seeded example inputs, runs torch fp32 once for the reference, hands a :class:`GraphJob` to
the runtime's exporter, runs the written file back and compares. A graph that misses its tolerance stops the
export with :class:`ParityError` (Apple's ml-stable-diffusion rule: every conversion proves itself; optimum
only warns). Then the tokenizer(s) and ``bundle.json`` (sha256 of every file) are written, last.

Everything happens inside :func:`~dhumandiff.utils.atomic.atomic_dir`: an interrupted or failed export leaves
only a hidden ``.NAME.partial-*`` sibling (removed on a clean failure), never a folder that looks complete, and a
failed ``--overwrite`` leaves the previous bundle untouched.

Core ML goes through ``export/coreml_export.py`` (``export_coreml_components``: tracing, conversion and the
UNet chunking are its own), which writes its ``.mlpackage`` folders into the same atomic folder; this module adds
the tokenizer and the manifest around them.
"""

from __future__ import annotations

import functools
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..errors import DHumanDiffError, ParityError
from ..model.dhumandiff_model import DHumanDiff
from ..utils.atomic import atomic_dir, sha256_file
from . import isolate, manifest as manifest_io
from ..contract.bundle import MANIFEST_NAME, REQUIRED_COMPONENTS, component_digests
from ..contract.registry import RUNTIMES
from .artifacts import ExportedComponent, GraphJob, tensor_entry
from .graph_cache import export_cached
from .reference import torch_outputs  # re-exported: checks.parity reads it from here
from .specs import PRECISIONS, SPECS, ComponentSpec, components_for, unet_batch
from .validate import compare_outputs, worst

if TYPE_CHECKING:
    from .quantize_modes import QuantizeOptions

#: Exporter module per runtime: each provides ``export(job) -> files`` and ``run(root, files, inputs, outputs)``.
EXPORTERS = {"onnx": "dhumandiff.export.onnx_export", "openvino": "dhumandiff.export.openvino_export",
             "torchscript": "dhumandiff.export.torchscript_export"}

#: ``progress(done, total, info)``: the CLI's progress bar, or any logger.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExportOptions:
    runtime: str
    precision: str = "fp32"
    dynamic: bool = False
    validate: bool = True
    seed: int = 0
    #: The embedded name or folder the model was loaded from: lets a large graph be exported in a child process
    #: that reloads it (``isolate.py``); None keeps every graph in this process.
    source: str | None = None


def exporter(runtime: str):
    """The exporter module of a runtime (imported on use: openvino and onnxruntime are slow to import)."""
    if runtime not in EXPORTERS:
        raise DHumanDiffError(f"no graph exporter for runtime {runtime!r}; choose one of {', '.join(EXPORTERS)}")
    return importlib.import_module(EXPORTERS[runtime])


def _validate(spec: ComponentSpec, run: Callable[..., Any], out_dir: Path, files: list[str],
              example: Mapping[str, Any], reference: Mapping[str, Any], precision: str,
              options: ExportOptions) -> dict[str, Any]:
    """Run the written graph on the spec's example inputs against torch fp32; ParityError outside tolerance."""
    got = run(out_dir, files, {n: example[n].numpy() for n in example}, spec.outputs)
    per_output = compare_outputs(reference, got)
    tol = spec.tolerance(precision)
    summary = worst(per_output)
    failures = summary.failures(tol)
    if failures:
        raise ParityError(f"{spec.name} exported to {options.runtime} {precision} misses its tolerance "
                          f"({'; '.join(failures)}); the export was not written")
    return {**summary.to_dict(), "tolerance": tol.to_dict()}


def graph_job(spec: ComponentSpec, model: DHumanDiff, out_dir: Path, options: ExportOptions) -> GraphJob:
    """What the runtime's exporter writes for ``spec``: the wrapper, its seeded example inputs, axes, precision
    (built the same way here and in a child process that reloads the model, ``isolate.py``)."""
    module = spec.build(model).eval()
    names = spec.input_names(model)
    example = spec.example(model, unet_batch(model), options.seed)
    return GraphJob(spec.name, module, names, spec.outputs, example, spec.axes(model, options.dynamic), out_dir,
                    spec.graph_precision(options.precision), spec.fp16_op_block_list)


def _in_child(spec: ComponentSpec, job: GraphJob, options: ExportOptions) -> bool:
    """Export and check this graph in a child process (large graphs of a model that can be reloaded, validated)."""
    registry = spec.name in SPECS and SPECS[spec.name].build is spec.build
    return isolate.wanted(isolate.weight_bytes(job.module),
                          can=options.source is not None and options.validate and registry)


@torch.no_grad()
def export_component(spec: ComponentSpec, model: DHumanDiff, out_dir: Path, options: ExportOptions,
                     ) -> ExportedComponent:
    """Export one component into ``out_dir`` and (unless disabled) prove it against torch fp32.

    A large graph (``isolate.py``) is written and run in child processes, and checked here against this
    process's torch reference."""
    job = graph_job(spec, model, out_dir, options)
    names, example, axes, precision = job.input_names, job.example, job.dynamic_axes, job.precision
    reference = torch_outputs(spec, job.module, example)
    backend = exporter(options.runtime)
    export, run = backend.export, backend.run
    if _in_child(spec, job, options):
        tm = getattr(model, "token_merging", None)
        recipe = isolate.GraphRecipe(str(options.source), tm.to_dict() if tm is not None else None, spec.name,
                                     options.runtime, options.precision, options.dynamic, options.seed, str(out_dir))
        export = functools.partial(_export_in_child, recipe)
        run = functools.partial(_run_in_child, options.runtime)
    t0 = time.perf_counter()
    # a cached graph is only used when this export validates it (an unchecked cache entry is never trusted)
    files, cached = export_cached(options.runtime, job, export) if options.validate else (export(job), False)
    seconds = time.perf_counter() - t0
    validation = None
    if options.validate:
        try:
            validation = _validate(spec, run, out_dir, files, example, reference, precision, options)
        except Exception:
            if not cached:
                raise
            # a cached graph that fails its check is never used: convert afresh (and replace the entry)
            files, _ = export_cached(options.runtime, job, export, refresh=True)
            validation = _validate(spec, run, out_dir, files, example, reference, precision, options)
        validation["export_seconds"] = round(seconds, 2)
        validation["from_cache"] = cached
    return ExportedComponent(
        name=spec.name, file=files[0], extra_files=files[1:],
        inputs={n: tensor_entry(example[n], axes.get(n)) for n in names},
        outputs={n: tensor_entry(reference[n], axes.get(n)) for n in spec.outputs},
        precision=precision, validation=validation, sha256=component_digests(out_dir, files))


def _export_in_child(recipe: "isolate.GraphRecipe", job: GraphJob) -> list[str]:
    return isolate.call(isolate.export_graph, recipe, what=f"exporting {job.name}")


def _run_in_child(runtime: str, root: Path, files: list[str], inputs: Mapping[str, Any],
                  outputs: tuple[str, ...]) -> dict[str, Any]:
    return isolate.call(isolate.run_graph, runtime, str(root), files, dict(inputs), tuple(outputs),
                        what=f"running {files[0]}")


def _coreml_components(model: DHumanDiff, specs: Sequence[ComponentSpec], out_dir: Path, options: ExportOptions,
                       progress: Progress | None) -> list[ExportedComponent]:
    from .coreml_export import export_coreml_components  # imported on use, like the other exporters

    comps = export_coreml_components(model, list(specs), out_dir, precision=options.precision,
                                     dynamic=options.dynamic, progress=progress)
    for comp in comps:
        if not comp.sha256:
            comp.sha256 = component_digests(out_dir, [comp.file, *comp.extra_files])
    return comps


def _write_tokenizers(model: DHumanDiff, root: Path) -> dict[str, dict]:
    """``tokenizer/tokenizer.json`` (+ ``tokenizer_2/`` when the second tokenizer differs, as in real SDXL)."""
    out = {}
    pairs = [("tokenizer", model.tokenizer, manifest_io.TOKENIZER_FILE)]
    tok2 = model.tokenizer_2
    if tok2 is not None and tok2.backend_tokenizer.to_str() != model.tokenizer.backend_tokenizer.to_str():
        pairs.append(("tokenizer_2", tok2, manifest_io.TOKENIZER_2_FILE))
    for key, tok, rel in pairs:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.backend_tokenizer.save(str(path))
        out[key] = manifest_io.tokenizer_entry(tok, rel, sha256_file(path))
    return out


def export_bundle(model: DHumanDiff, out_dir: str | Path, runtime: str, precision: str = "fp32",
                  dynamic: bool = False, overwrite: bool = False, progress: Progress | None = None, *,
                  source_model: str | None = None, model_name: str | None = None,
                  specs: Sequence[ComponentSpec] | None = None, validate: bool = True, seed: int = 0,
                  quantization: "QuantizeOptions | None" = None, face_models: str | Path | None = None) -> Path:
    """Export ``model`` as a bundle for ``runtime`` at ``out_dir``; returns ``out_dir``.

    ``source_model`` (an embedded model name or folder) is recorded so ``dhumandiff parity`` can rebuild the
    reference; ``specs`` overrides :func:`components_for` (custom tolerances, tests); ``validate=False`` skips
    the per-graph check (for runtimes that cannot execute here). ``quantization``
    (:class:`~.quantize_modes.QuantizeOptions`) makes a quantised variant of the ``precision`` export, with its
    fidelity budget in ``bundle.json`` (``quantize_modes.py``). ``face_models``: an insightface pack folder whose
    detector and recogniser the bundle ships (a converted official model has no recogniser of its own;
    ``face_pack.py``). Raises ``FileExistsError`` when ``out_dir``
    exists and ``overwrite`` is false, :class:`ParityError` when a graph misses its tolerance.
    """
    if runtime not in RUNTIMES:
        raise DHumanDiffError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise DHumanDiffError(f"precision {precision!r} is not exported here; choose one of {', '.join(PRECISIONS)} "
                              f"(int8, int4 and palettised bundles: --quantize MODE, with a set from `dhumandiff calibrate`)")
    if quantization is not None:
        from .quantize_modes import check_options

        check_options(runtime, precision, quantization)
    if dynamic and getattr(model, "token_merging", None) is not None:
        raise DHumanDiffError("token merging is exported with static shapes: leave out --dynamic")
    out_dir = Path(out_dir)
    options = ExportOptions(runtime, precision, dynamic, validate, seed, source_model)
    specs = list(specs) if specs is not None else components_for(model)
    missing = [name for name in REQUIRED_COMPONENTS if name not in {s.name for s in specs}]
    if face_models is not None and model.identity_encoder is not None:
        raise DHumanDiffError(f"{model.config.name} model ships its own identity encoder; --face-models is for models "
                              "without one (converted official checkpoints): leave it out")
    if face_models is not None:
        missing = [name for name in missing if name != "identity_encoder"]
    if "identity_encoder" in missing and model.identity_encoder is None:
        raise DHumanDiffError(f"{model.config.name} model has no identity encoder, and a bundle must ship one "
                              f"(the runtimes embed the face photos with it): pass --face-models DIR (an "
                              f"insightface buffalo_l folder) or export a model with an identity_encoder/ folder")
    if missing:
        raise DHumanDiffError(f"a bundle needs the component(s) {', '.join(missing)}; add their specs")
    model.eval()
    with atomic_dir(out_dir, overwrite=overwrite, markers=(MANIFEST_NAME,)) as tmp:
        total = len(specs) + 1
        if runtime == "coreml":
            components = _coreml_components(model, specs, tmp, options, progress)
        else:
            components = []
            for i, spec in enumerate(specs):
                if progress:
                    progress(i, total, spec.name)
                components.append(export_component(spec, model, tmp, options))
        quantized: dict = {}
        section = None
        if quantization is not None:
            from .quantize_modes import apply_quantization

            components, quantized, section = apply_quantization(model, tmp, runtime, components, quantization,
                                                                seed, progress)
        identity: dict = {}
        info_pack = None
        if face_models is not None:
            from .face_pack import pack_identity

            if progress:
                progress(len(specs), total, "face pack")
            pack_component, identity, info_pack = pack_identity(face_models, tmp, runtime, model.config.face_size,
                                                                exporter(runtime))
            components.insert(0, pack_component)
        if progress:
            progress(len(specs), total, "tokenizer + bundle.json")
        by_name = {s.name: s for s in specs}
        tolerances = {c.name: quantized.get(c.name) or by_name[c.name].tolerance(c.precision) for c in components
                      if c.name in by_name}
        info = {"exporter": runtime, "dynamic": dynamic, "seed": seed}
        if getattr(model, "token_merging", None) is not None:
            info["token_merging"] = model.token_merging.to_dict()
        if info_pack is not None:
            info["face_pack"] = info_pack
        if runtime == "onnx":
            info["opset"] = exporter("onnx").OPSET
        manifest = manifest_io.build_manifest(
            model, runtime, precision, components, _write_tokenizers(model, tmp), tolerances,
            model_name=model_name or Path(source_model or model.config.name).name,
            source_model=source_model, export_info=info, quantization=section, identity=identity)
        manifest_io.write(tmp, manifest)
        if progress:
            progress(total, total, "done")
    return out_dir
