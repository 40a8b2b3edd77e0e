"""A content-addressed cache of exported graphs: the same module exported the same way is converted once.

Quantisation recipes are tried by exporting one model again and again (each quantised variant is a float export
first), and ``torch.onnx.export`` / ``openvino.convert_model`` dominate that time. With a cache folder set
(``$DHUMANDIFF_EXPORT_CACHE``; off unless set), a graph is looked up by the digest of everything that shapes it:
runtime, precision, dynamic axes, I/O names, example shapes and dtypes, the module's structure and every weight
and buffer, the exporting libraries' versions and the source of the model and export code. A hit copies the
stored files instead of converting; the export's validation against torch runs exactly as for a fresh graph,
so a damaged or wrong entry cannot reach a bundle (it fails its tolerance; delete the folder to rebuild).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from ..utils.atomic import atomic_dir
from .artifacts import GraphJob

ENV = "DHUMANDIFF_EXPORT_CACHE"
_PACKAGE = Path(__file__).resolve().parents[1]


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off (the default)."""
    value = os.environ.get(ENV, "").strip()
    if not value or value.lower() in ("0", "off", "none", "false"):
        return None
    return Path(value)


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[str, ...]:
    out = []
    for name in ("dhumandiff", "torch", "onnx", "onnxscript", "openvino"):
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=-")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """The code that decides what a graph computes: the model and export stages' source files (read once per
    process)."""
    h = hashlib.sha256()
    for folder in ("model", "export", "contract", "utils"):
        for path in sorted((_PACKAGE / folder).rglob("*.py")):
            h.update(path.relative_to(_PACKAGE).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def graph_key(runtime: str, job: GraphJob) -> str:
    """The digest of everything that shapes ``job``'s exported files on ``runtime``."""
    h = hashlib.sha256()
    meta = {"runtime": runtime, "name": job.name, "precision": job.precision, "inputs": list(job.input_names),
            "outputs": list(job.output_names), "fp16_block": list(job.fp16_op_block_list),
            "axes": {k: {str(a): s for a, s in v.items()} for k, v in job.dynamic_axes.items()},
            "example": {k: [list(t.shape), str(t.dtype)] for k, t in job.example.items()},
            "module": repr(job.module), "versions": list(_versions()), "source": _source_digest()}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in list(job.module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_cached(runtime: str, job: GraphJob, export: Callable[[GraphJob], list[str]],
                  refresh: bool = False) -> tuple[list[str], bool]:
    """``export(job)``, or the files a previous identical export stored in the cache (copied into
    ``job.out_dir``): returns ``(bundle-relative files, whether they came from the cache)``. ``refresh`` ignores
    and replaces the entry (the caller found a cached graph that fails its validation)."""
    root = cache_dir()
    if root is None:
        return export(job), False
    entry = root / graph_key(runtime, job)
    record = entry / "files.json"
    if record.is_file() and not refresh:
        try:
            files = json.loads(record.read_text(encoding="utf-8"))
            for rel in files:
                (job.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(entry / rel, job.out_dir / rel)
            return list(files), True
        except (OSError, ValueError, TypeError):  # an unreadable entry is a miss; the export below replaces it
            pass
    files = export(job)
    try:
        with atomic_dir(entry, overwrite=True, markers=("files.json",)) as tmp:
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(job.out_dir / rel, tmp / rel)
            (tmp / "files.json").write_text(json.dumps(files), encoding="utf-8")
    except OSError:  # a full or read-only cache never fails an export
        pass
    return files, False
