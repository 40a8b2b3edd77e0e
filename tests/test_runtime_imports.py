"""The runtime must stay torch-free: a runtime-only install (onnx / openvino extras) has no torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import dhumandiff.runtimes

FORBIDDEN = ("torch", "diffusers", "transformers", "onnxruntime", "openvino", "coremltools")
REPO = Path(__file__).resolve().parents[1]
#: Pipeline stages a runtime must never load: it reads bundles through the torch-free contract layer only.
OTHER_STAGES = ("data", "model", "training", "distill", "calibration", "export", "cli", "checks", "bench", "serve")


def _runtime_modules() -> list[str]:
    root = Path(dhumandiff.runtimes.__file__).parent
    return ["dhumandiff.runtimes"] + [
        m.name for m in pkgutil.walk_packages([str(root)], prefix="dhumandiff.runtimes.")
    ]


def test_every_runtime_module_imports_without_torch_or_backends() -> None:
    modules = _runtime_modules()
    assert "dhumandiff.runtimes.adapters.torchscript" in modules and "dhumandiff.runtimes.generator" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import dhumandiff.runtimes as r; r.load_bundle; r.available_runtimes\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        f"stages = [m for m in sys.modules if m.startswith('dhumandiff.') and m.split('.')[1] in {OTHER_STAGES!r}]\n"
        "assert not bad and not stages, (bad, stages)\n"
        "print('ok', len(sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


def test_doctor_without_probing_torch_does_not_import_it() -> None:
    code = (
        "import sys\n"
        "from dhumandiff.runtimes import describe\n"
        "d = describe(probe_torch=False)\n"
        "names = [r['name'] for r in d['runtimes']]\n"
        "assert names == ['onnx', 'openvino', 'coreml', 'torchscript'], names\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
