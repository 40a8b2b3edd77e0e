"""A missing optional dependency ends in one line naming the extra to install, never a traceback."""

from __future__ import annotations

import subprocess
import sys

# The packages look uninstalled, as with only the [torch] extra: find_spec says absent (what libraries probe) and
# an import raises ModuleNotFoundError.
BLOCK = r'''
import builtins, importlib.util, sys
real_import, real_find = builtins.__import__, importlib.util.find_spec
def gone(name):
    return name.split(".")[0] in {BLOCKED}
def blocked(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and gone(name):
        raise ModuleNotFoundError(f"No module named {{name.split('.')[0]!r}}", name=name.split(".")[0])
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = blocked
importlib.util.find_spec = lambda name, package=None: None if gone(name) else real_find(name, package)
from dhumandiff.cli.main import main
sys.exit(main(sys.argv[1:]))
'''


def _run(blocked: set[str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(BLOCKED=sorted(blocked)), *argv],
                          capture_output=True, text=True, timeout=300)


def test_export_onnx_without_the_onnx_extra(tmp_path):
    r = _run({"onnxruntime", "onnx"}, "export", "onnx", "tiny", "--out", str(tmp_path / "b"))
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert 'pip install "dhumandiff[onnx]"' in lines[0]
    assert not (tmp_path / "b").exists()


def test_missing_extra_names_each_optional_module():
    from dhumandiff.cli.main import missing_extra

    assert missing_extra("openvino.runtime") == "openvino"
    assert missing_extra("coremltools") == "coreml"
    assert missing_extra("fastapi") == "serve"
    assert missing_extra("numpy") is None
