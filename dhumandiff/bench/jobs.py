"""The parent's side of the worker protocol: write a job, run it in a fresh Python process, read its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import dhumandiff

from .measure import load_average

#: The folder holding the ``dhumandiff`` package, so a worker finds it even when it is not pip-installed.
_PACKAGE_PARENT = str(Path(dhumandiff.__file__).resolve().parent.parent)


def worker_env(threads: int | None = None, pythonpath: Sequence[str] = ()) -> dict[str, str]:
    """The worker's environment: this one, with the package (and ``pythonpath``: folders holding the modules a
    ``call`` job names) importable, and the thread budget applied."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, *pythonpath, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_worker(job: dict[str, Any], work: Path, name: str, timeout: float | None = None,
               pythonpath: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``job`` in ``python -m dhumandiff.bench.worker``; returns its result dict (``error`` set on failure).

    ``name`` names the job's files in ``work`` (``NAME.job.json``, ``NAME.result.json``, ``NAME.log``);
    ``pythonpath``: more import roots for the worker (where the target of a ``call`` job lives).
    """
    work.mkdir(parents=True, exist_ok=True)
    job = dict(job)
    job.setdefault("result", str(work / f"{name}.result.json"))
    result_path = Path(job["result"])
    result_path.unlink(missing_ok=True)
    job_path = work / f"{name}.job.json"
    job_path.write_text(json.dumps(job, indent=1) + "\n", encoding="utf-8")
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "dhumandiff.bench.worker", str(job_path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=worker_env(job.get("threads"), pythonpath),
                                  timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (log: {log_path})"}
    if result_path.is_file():
        result = json.loads(result_path.read_text(encoding="utf-8"))
        result["load_average"] = load_average()  # how busy the machine was while this variant ran
        return result
    why = "killed (out of memory?)" if code in (-9, 137) else f"exited with code {code}"
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log_path.is_file() else []
    return {"error": f"worker {why}{': ' + tail[0][:200] if tail else ''} (log: {log_path})"}
