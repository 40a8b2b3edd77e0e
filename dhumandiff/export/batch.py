"""Conversion at scale: a folder of checkpoints -> one output per checkpoint, resumable, failures contained.

``dhumandiff export <runtime> --batch MODELS --out BUNDLES`` and ``dhumandiff convert official --batch RELEASES``
run their usual single-model job once per subfolder. What this module adds around that job:

- **resume by hash**: each finished output records where it came from, ``{"sha256": <source files>,
  "options": {...}}`` (a bundle in its ``bundle.json`` under ``batch_source``, a model folder in a
  ``batch_source.json`` beside its weights). A re-run skips an output whose record matches the source's current
  hash and the run's options, and redoes one whose source or options changed. An output folder with no record
  is not ours to replace without ``--overwrite``.
- **one failure never stops the batch**: every exception of a job becomes that item's one-line error; the
  caller turns a non-empty failure list into a non-zero exit (:class:`BatchError`) after the summary.
- the record is written after the job's own atomic write, so an interrupted run leaves either a complete,
  recorded output or something the next run redoes.

UI-free (callbacks for progress), torch-free; the CLI draws the bars and the table (``cli/batch_view.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..contract.bundle import MANIFEST_NAME as MANIFEST
from ..errors import DHumanDiffError
from ..utils.atomic import sha256_file, write_text_atomic

RECORD_KEY = "batch_source"
SIDECAR = "batch_source.json"
STATUSES = ("converted", "skipped", "failed")

#: ``job(item, progress) -> output folder``; ``progress(done, total, info)`` as ``export_bundle`` calls it.
Progress = Callable[[int, int, str], None]
Job = Callable[["BatchItem", Progress], Path]


class BatchError(DHumanDiffError):
    """Some items of a batch failed. Exit code: the failures' own code when they all agree, else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class BatchItem:
    """One source (a model folder, an official release folder) and the output it becomes."""

    name: str
    source: Path
    out: Path
    #: Further inputs whose content decides the output (a student's ``base`` model folder).
    extra_sources: tuple[Path, ...] = ()


@dataclass
class BatchResult:
    name: str
    status: str
    seconds: float
    out: Path
    size_bytes: int | None = None
    error: str | None = None
    exit_code: int = 0


@dataclass
class BatchReport:
    results: list[BatchResult] = field(default_factory=list)

    @property
    def failed(self) -> list[BatchResult]:
        return [r for r in self.results if r.status == "failed"]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def raise_for_failures(self) -> None:
        """:class:`BatchError` naming the failed items (after the caller has shown the summary)."""
        bad = self.failed
        if not bad:
            return
        codes = {r.exit_code for r in bad}
        names = ", ".join(r.name for r in bad)
        raise BatchError(f"{len(bad)} of {len(self.results)} failed ({names}); fix them and re-run the same command "
                         f"(finished outputs are skipped)", codes.pop() if len(codes) == 1 else 1)


# ------------------------------------------------------------------------------------------- discovery


def find_sources(folder: str | os.PathLike, marker: Callable[[Path], bool], what: str) -> list[Path]:
    """Subfolders of ``folder`` (sorted by name) for which ``marker`` holds; a clear error when there are none.

    Hidden folders (``.name``, e.g. an interrupted export's ``.x.partial-*``) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DHumanDiffError(f"--batch {root} is not a folder; pass a folder holding one {what} per subfolder")
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and marker(p))
    if not found:
        raise DHumanDiffError(f"--batch {root} holds no {what} (one per subfolder); nothing to do")
    return found


def is_model_folder(path: Path) -> bool:
    return (path / "dhumandiff.json").is_file()


def has_any(*names: str) -> Callable[[Path], bool]:
    """A marker: the folder holds at least one of ``names`` (a partial release still runs, and fails clearly)."""
    return lambda path: any((path / n).exists() for n in names)


def model_base(path: Path) -> tuple[Path, ...]:
    """The ``base`` folder a student model borrows components from (part of what its outputs depend on)."""
    try:
        base = json.loads((path / "dhumandiff.json").read_text(encoding="utf-8")).get("base")
    except (OSError, ValueError, AttributeError):
        return ()
    return ((path.parent / base).resolve(),) if isinstance(base, str) and (path.parent / base).is_dir() else ()


# --------------------------------------------------------------------------------------------- records


def source_digest(paths: Iterable[Path]) -> str:
    """sha256 over every file of ``paths`` (folders walked, sorted), names and contents: the identity of a source.

    Streamed file by file, so multi-GB checkpoints hash in bounded memory. A folder's own name does not count
    (a renamed copy of a model is the same model); a hidden file or folder (``.name``) is skipped.
    """
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        if root.is_file():
            files = [(root.name, root)]
        else:
            files = []
            for dirpath, dirnames, names in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for n in sorted(names):
                    if not n.startswith(".") and n != SIDECAR:
                        p = Path(dirpath) / n
                        files.append((p.relative_to(root).as_posix(), p))
        h.update(f"[{len(files)}]".encode())
        for rel, p in sorted(files):
            h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def read_record(out: Path, kind: str) -> dict[str, Any] | None:
    """The record of a finished output, or None (no output, no record, unreadable)."""
    try:
        if kind == "bundle":
            record = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get(RECORD_KEY)
        else:
            record = json.loads((out / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def write_record(out: Path, kind: str, record: Mapping[str, Any]) -> None:
    """Add the record to the finished output (atomically: the file is whole before and after)."""
    if kind == "bundle":
        path = out / MANIFEST
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest[RECORD_KEY] = dict(record)
        write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    else:
        write_text_atomic(out / SIDECAR, json.dumps(dict(record), indent=2) + "\n")


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(exc, (DHumanDiffError, FileExistsError)) else f"{type(exc).__name__}: {msg}"


# ------------------------------------------------------------------------------------------------- run


def run_batch(items: Sequence[BatchItem], job: Job, *, kind: str, options: Mapping[str, Any],
              overwrite: bool = False, on_item: Callable[[int, int, BatchItem], None] | None = None,
              progress: Progress | None = None) -> BatchReport:
    """Run ``job`` for every item not already done; never stops on an item's failure.

    ``kind``: ``"bundle"`` (the record goes into ``bundle.json``) or ``"folder"`` (a ``batch_source.json``
    sidecar). ``options``: everything besides the source that changes the output (runtime, precision, ...);
    JSON-serialisable. ``on_item(index, total, item)`` is called before each item, ``progress`` is handed to the
    job. KeyboardInterrupt is not caught: Ctrl-C stops the batch; finished items stay recorded.
    """
    if kind not in ("bundle", "folder"):
        raise ValueError(f"kind must be 'bundle' or 'folder', not {kind!r}")
    opts = json.loads(json.dumps(dict(options), default=str))
    report = BatchReport()
    noop: Progress = lambda done, total, info="": None  # noqa: E731
    for i, item in enumerate(items):
        if on_item is not None:
            on_item(i, len(items), item)
        t0 = time.perf_counter()
        try:
            record = {"sha256": source_digest([item.source, *item.extra_sources]), "options": opts}
            existing = read_record(item.out, kind)
            if existing is not None and existing.get("sha256") == record["sha256"] \
                    and existing.get("options") == opts:
                report.results.append(BatchResult(item.name, "skipped", time.perf_counter() - t0, item.out,
                                                  folder_size(item.out)))
                continue
            if item.out.exists() and existing is None and not overwrite:
                raise FileExistsError(f"{item.out} exists and was not written by a batch run; pass --overwrite "
                                      f"to replace it")
            out = Path(job(item, progress or noop))
            record["source"] = str(item.source)
            write_record(out, kind, record)
            report.results.append(BatchResult(item.name, "converted", time.perf_counter() - t0, out,
                                              folder_size(out)))
        except Exception as exc:  # one item's failure (any kind) must not stop the others
            report.results.append(BatchResult(item.name, "failed", time.perf_counter() - t0, item.out,
                                              error=_one_line(exc),
                                              exit_code=getattr(exc, "exit_code", 2 if isinstance(
                                                  exc, FileExistsError) else 1)))
    return report
