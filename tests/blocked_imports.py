"""Run the CLI in a fresh interpreter where some packages look uninstalled (as with a partial install).

``find_spec`` says absent (what libraries and dhumandiff probe) and an import raises ModuleNotFoundError, so a
command that needs a blocked package cannot quietly use it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if gone(m))
if loaded:
    print("blocked modules were loaded:", loaded, file=sys.stderr)
    code = 99
sys.exit(code)
'''


def run_cli_without(blocked: set[str], *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``dhumandiff ARGV`` with the ``blocked`` top-level packages unimportable (exit 99 if one got loaded)."""
    return subprocess.run([sys.executable, "-c", BLOCK.format(BLOCKED=sorted(blocked)), *argv],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
