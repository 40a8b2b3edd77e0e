"""Split a too-large Core ML mlprogram into two mlpackages that run in sequence (ml-stable-diffusion's chunking).

iOS refuses (or pages painfully) models whose weights pass about 1 GB, so Apple's ml-stable-diffusion cuts large
UNets in two (``chunk_mlprogram.py``; coremltools later grew the same as ``ct.models.utils.bisect_model``). The
procedure, done here on coremltools' MIL program API:

1. load the saved mlpackage back as a MIL program (weights included);
2. choose a cut in its op list that balances the weight bytes on each side (each weight counts where it is
   first used); among cuts within ``balance`` of the best balance, take the one with the fewest tensors
   crossing it (a UNet's skip connections make that number vary a lot);
3. chunk 1 = the ops up to the cut, its outputs = every non-constant tensor made before the cut and used after
   it (fp16 tensors cross as fp32, as Apple does, and are cast back inside chunk 2);
4. chunk 2 = the ops after the cut, its inputs = those tensors + the original inputs it still reads; its outputs
   are the original model's outputs.

Neither chunk can be run on Linux (``MLModel.predict`` is macOS-only), so :func:`check_chunks` proves the split
by specification: non-constant ops add up (plus the boundary casts), chunk-2 inputs come from chunk-1 outputs or
the model's inputs, outputs are the model's, and every weight of the original lands, bit for bit, in a chunk.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Apple's limit: UNets above this many weight bytes are shipped as two chunks.
DEFAULT_CHUNK_THRESHOLD = 1_000_000_000
#: A cut may trade this much weight balance (fraction of all weight bytes) for fewer crossing tensors.
DEFAULT_BALANCE = 0.05
WEIGHT_FILE = Path("Data") / "com.apple.CoreML" / "weights" / "weight.bin"


# -------------------------------------------------------------------------------------------- MIL helpers


def weight_file_bytes(path: str | Path) -> int:
    """Size of an mlpackage's weight blob (0 when it has none)."""
    f = Path(path) / WEIGHT_FILE
    return f.stat().st_size if f.is_file() else 0


def load_program(path: str | Path):
    """``(program, spec)`` of a saved mlpackage: its MIL program with the weights loaded (works on Linux)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    prog = milproto.load(spec, spec.specificationVersion, model.weights_dir)
    if set(prog.functions) != {"main"}:
        raise ValueError(f"{Path(path).name}: only single-function ('main') programs can be chunked")
    func = prog.functions["main"]
    func.operations = list(func.operations)
    return prog, spec


def _is_const_op(op) -> bool:
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def _const_bytes(op) -> int:
    if op.op_type == "const":
        val = op.outputs[0].val
        return int(val.nbytes) if isinstance(val, np.ndarray) else 0
    # constexpr_* (compressed weights): count their stored inputs
    return sum(int(v.val.nbytes) for v in op.inputs.values() if isinstance(getattr(v, "val", None), np.ndarray))


def program_weight_bytes(prog) -> int:
    return sum(_const_bytes(op) for op in prog.functions["main"].operations if _is_const_op(op))


def const_values(prog) -> dict[str, np.ndarray]:
    """Every array constant of a program by op name (scalars and small shape constants included)."""
    out = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
            out[op.name] = op.outputs[0].val
    return out


def op_type_counts(prog, include_const: bool = False) -> Counter:
    return Counter(op.op_type for op in prog.functions["main"].operations if include_const or not _is_const_op(op))


# --------------------------------------------------------------------------------------------- the cut


@dataclass
class CutPlan:
    """Where a program is cut: after op ``index`` (inclusive in chunk 1)."""

    index: int
    op_name: str
    first_bytes: int
    second_bytes: int
    total_bytes: int
    boundary: list[str]


def _boundary_vars(block, ops: list, index: int) -> list:
    """Non-constant tensors made by ops ``0..index`` and read by ops after ``index`` (or returned)."""
    position = {id(op): i for i, op in enumerate(ops)}
    outputs = {id(v) for v in block.outputs}
    out = []
    for op in ops[:index + 1]:
        if _is_const_op(op):
            continue
        for var in op.outputs:
            if var.val is not None:
                continue
            used_after = any(position[id(c)] > index for c in var.child_ops) or id(var) in outputs
            if used_after:
                out.append(var)
    return out


def plan_cut(prog, balance: float = DEFAULT_BALANCE) -> CutPlan:
    """The cut that balances weight bytes (see the module docstring)."""
    block = prog.functions["main"]
    ops = list(block.operations)
    n = len(ops)
    position = {id(op): i for i, op in enumerate(ops)}
    # Weight bytes attributed to the first op that reads each constant.
    at = np.zeros(n, dtype=np.int64)
    for i, op in enumerate(ops):
        if _is_const_op(op):
            users = [position[id(c)] for v in op.outputs for c in v.child_ops]
            at[min(users) if users else i] += _const_bytes(op)
    cum = np.cumsum(at)
    total = int(cum[-1]) if n else 0
    # Crossing tensors at each cut c (after op c): made at d <= c, last read at L > c.
    diff = np.zeros(n + 1, dtype=np.int64)
    outputs = {id(v) for v in block.outputs}
    for i, op in enumerate(ops):
        if _is_const_op(op):
            continue
        for var in op.outputs:
            if var.val is not None:
                continue
            last = max((position[id(c)] for c in var.child_ops), default=i)
            if id(var) in outputs:
                last = n
            if last > i:
                diff[i] += 1
                diff[last] -= 1
    crossing = np.cumsum(diff)[:n]
    candidates = [i for i in range(n - 1) if not _is_const_op(ops[i]) and 0 < cum[i] < total]
    if not candidates:
        raise ValueError("no op to cut at: the program has no weights on both sides of any op")
    imbalance = {i: abs(2 * int(cum[i]) - total) for i in candidates}
    best = min(imbalance.values())
    near = [i for i in candidates if imbalance[i] <= best + balance * total]
    index = min(near, key=lambda i: (int(crossing[i]), imbalance[i]))
    boundary = _boundary_vars(block, ops, index)
    return CutPlan(index, ops[index].name, int(cum[index]), total - int(cum[index]), total,
                   [v.name for v in boundary])


# ------------------------------------------------------------------------------------------ build chunks


def boundary_name(var) -> str:
    """The name a crossing tensor has between the chunks (fp16 tensors cross as fp32 copies)."""
    from coremltools.converters.mil.mil import types

    return f"{var.name}_fp32" if var.dtype == types.fp16 else var.name


def _drop_unused_inputs(block) -> None:
    # coremltools' own bisect_model edits these two fields the same way (there is no public setter).
    used = {k: v for k, v in block._input_dict.items() if v.child_ops}
    block._input_dict = type(block._input_dict)(used)
    block.function_inputs = tuple(used.values())


def _first_chunk(prog, index: int):
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    block = prog.functions["main"]
    ops = list(block.operations)
    boundary = _boundary_vars(block, ops, index)
    with block:
        outs = [mb.cast(x=v, dtype="fp32", name=boundary_name(v), before_op=ops[index + 1])
                if v.dtype == types.fp16 else v for v in boundary]
    block.outputs.clear()
    block.set_outputs(outs)
    PASS_REGISTRY["common::dead_code_elimination"](prog)
    _drop_unused_inputs(block)
    return prog


def _second_chunk(prog, index: int):
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import Placeholder, types
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    block = prog.functions["main"]
    ops = list(block.operations)
    boundary = _boundary_vars(block, ops, index)
    anchor = ops[index]
    with block:
        for var in boundary:
            fp16 = var.dtype == types.fp16
            ph = Placeholder(sym_shape=var.shape, dtype=types.fp32 if fp16 else var.dtype, name=boundary_name(var))
            block._input_dict[ph.outputs[0].name] = ph.outputs[0]
            block.function_inputs = tuple(block._input_dict.values())
            new = mb.cast(x=ph.outputs[0], dtype="fp16", before_op=ops[index + 1]) if fp16 else ph.outputs[0]
            block.replace_uses_of_var_after_op(anchor_op=anchor, old_var=var, new_var=new, force_replace=True)
    PASS_REGISTRY["common::dead_code_elimination"](prog)
    _drop_unused_inputs(block)
    return prog


def _save_program(prog, spec, path: Path) -> None:
    import coremltools as ct
    from coremltools.converters.mil.converter import mil_convert

    model = mil_convert(prog, convert_from="milinternal", convert_to="mlprogram",
                       compute_units=ct.ComputeUnit.ALL, specification_version=spec.specificationVersion,
                       pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)
    model.save(str(path))


@dataclass
class ChunkResult:
    """Two mlpackages replacing one, with the plan and the spec check that proved them."""

    paths: list[Path]
    plan: CutPlan
    report: dict[str, Any] = field(default_factory=dict)

    def manifest_chunks(self, root: Path) -> list[dict[str, Any]]:
        """The ``chunks`` list of a bundle component (paths relative to ``root``)."""
        return [{"file": p.relative_to(root).as_posix(), **{k: self.report["chunks"][i][k]
                 for k in ("inputs", "outputs", "ops", "weight_bytes")}} for i, p in enumerate(self.paths)]


def chunk_mlpackage(path: str | Path, out_dir: str | Path, name: str, balance: float = DEFAULT_BALANCE,
                    check: bool = True) -> ChunkResult:
    """Write ``{name}_chunk1.mlpackage`` and ``{name}_chunk2.mlpackage`` into ``out_dir`` from ``path``.

    Each chunk is written to a hidden sibling first and renamed into place. With ``check`` the chunks are read
    back and proved by :func:`check_chunks` (raises ``ValueError`` when they do not add up to the original).
    """
    path, out_dir = Path(path), Path(out_dir)
    prog, spec = load_program(path)
    plan = plan_cut(prog, balance)
    programs = [_first_chunk(prog, plan.index), _second_chunk(load_program(path)[0], plan.index)]
    del prog
    paths = []
    for i, chunk in enumerate(programs, start=1):
        final = out_dir / f"{name}_chunk{i}.mlpackage"
        tmp = out_dir / f".{final.stem}.partial-{os.getpid()}.mlpackage"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _save_program(chunk, spec, tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        paths.append(final)
    result = ChunkResult(paths, plan)
    result.report = check_chunks(path, paths) if check else {}
    result.report["plan"] = asdict(plan)
    return result


# -------------------------------------------------------------------------------------------- the proof


def _io(spec) -> tuple[dict[str, tuple], dict[str, tuple]]:
    def desc(features):
        return {f.name: (f.type.multiArrayType.dataType, tuple(f.type.multiArrayType.shape)) for f in features}

    return desc(spec.description.input), desc(spec.description.output)


def check_chunks(original: str | Path, chunks: list[str | Path]) -> dict[str, Any]:
    """Prove by specification that ``chunks`` (run in order) compute what ``original`` computes.

    Checks, each raising ``ValueError`` with what is wrong: every chunk input is an original input or an output
    of an earlier chunk (with the same type and shape); the last chunk returns the original's outputs (same
    types and shapes); every chunk output is read later or is a model output; the non-constant ops of the chunks
    add up to the original's, plus the fp32/fp16 casts at each crossing; every original weight appears in a
    chunk with identical values, and the chunks hold no weight the original lacks. Returns the numbers.
    """
    oprog, ospec = load_program(original)
    o_in, o_out = _io(ospec)
    available = dict(o_in)
    report: dict[str, Any] = {"chunks": []}
    progs = []
    needed_later: set[str] = set()
    for i, c in enumerate(chunks):
        prog, spec = load_program(c)
        progs.append(prog)
        c_in, c_out = _io(spec)
        for n, t in c_in.items():
            if n not in available:
                raise ValueError(f"chunk {i + 1} input {n!r} is neither a model input nor an earlier chunk's output")
            if available[n] != t:
                raise ValueError(f"chunk {i + 1} input {n!r} has type/shape {t}, the producer gives {available[n]}")
            needed_later.add(n)
        available.update(c_out)
        report["chunks"].append({"file": Path(c).name, "inputs": list(c_in), "outputs": list(c_out),
                                 "ops": sum(op_type_counts(prog).values()),
                                 "weight_bytes": program_weight_bytes(prog),
                                 "weight_file_bytes": weight_file_bytes(c)})
    last_out = _io(load_program(chunks[-1])[1])[1]
    if last_out != o_out:
        raise ValueError(f"the last chunk returns {sorted(last_out)}, the model returns {sorted(o_out)}")
    for i, rec in enumerate(report["chunks"][:-1]):
        dangling = [n for n in rec["outputs"] if n not in needed_later]
        if dangling:
            raise ValueError(f"chunk {i + 1} outputs {dangling} that no later chunk reads")

    # Ops: chunks = original + one cast per fp16 crossing on each side.
    total = Counter()
    for prog in progs:
        total.update(op_type_counts(prog))
    original_ops = op_type_counts(oprog)
    crossings = sum(len(r["outputs"]) for r in report["chunks"][:-1])
    extra = total - original_ops
    missing = original_ops - total
    if missing or set(extra) - {"cast"} or extra.get("cast", 0) > 2 * crossings:
        raise ValueError(f"chunk ops do not add up: missing {dict(missing)}, extra {dict(extra)}")

    # Weights: every original constant, bit for bit, in some chunk; nothing new.
    ovals = const_values(oprog)
    seen: dict[str, np.ndarray] = {}
    for prog in progs:
        seen.update(const_values(prog))
    big = {k: v for k, v in ovals.items() if v.size > 1}
    lost = [k for k in big if k not in seen]
    if lost:
        raise ValueError(f"{len(lost)} weight(s) of the original are in no chunk, e.g. {lost[:3]}")
    changed = [k for k, v in big.items() if seen[k].dtype != v.dtype or not np.array_equal(seen[k], v)]
    if changed:
        raise ValueError(f"{len(changed)} weight(s) changed while chunking, e.g. {changed[:3]}")
    new = [k for k, v in seen.items() if k not in ovals and v.size > 1]
    if new:
        raise ValueError(f"chunks hold weight(s) the original lacks: {new[:3]}")

    orig_bytes = program_weight_bytes(oprog)
    sizes = [r["weight_bytes"] for r in report["chunks"]]
    if max(sizes) >= orig_bytes:
        raise ValueError(f"the split put all weights in one chunk ({sizes} of {orig_bytes} bytes)")
    report.update({
        "original_ops": sum(original_ops.values()), "chunk_ops": sum(total.values()),
        "boundary_casts": int(extra.get("cast", 0)), "crossing_tensors": crossings,
        "original_weight_bytes": orig_bytes, "chunk_weight_bytes": sizes,
        "shared_weight_bytes": int(sum(sizes) - orig_bytes), "weights_checked": len(big),
    })
    return report
