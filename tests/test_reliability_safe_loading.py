"""Safe loading: nothing in ``dhumandiff/`` can execute code hidden in a file it reads.

Weights are safetensors everywhere (model folders refuse pickled ``.bin`` weights: tests/badinput, case
``pickle-instead-of-safetensors``); the official ``.pt`` release is read with ``torch.load(weights_only=True)``
and a malicious pickle is refused without running its payload (tests/test_model_official.py,
``test_malicious_pickle_is_refused_without_running_its_payload``). This file adds the static guard: a scan of
the package's syntax tree (not a text grep, so ``model.eval()`` is not mistaken for ``eval(``) for every call
that can unpickle or evaluate, which fails the moment anyone adds one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dhumandiff"

#: ``torch.jit.load`` reads TorchScript archives (no free unpickling of Python objects); allowed where a bundle's
#: sha256-verified graphs are loaded and where the exporter proves its own output.
JIT_LOAD_ALLOWED = {"runtimes/adapters/torchscript.py", "export/torchscript_export.py"}
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"),
              ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"), ("marshal", "load"), ("marshal", "loads"),
              ("shelve", "open"), ("joblib", "load"), ("jsonpickle", "decode"), ("yaml", "unsafe_load")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, rel: str = "<snippet>") -> list[str]:
    """Every call in ``source`` that can execute code from a file or a string, as ``rel:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = tuple(name.split("."))
        why = None
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            why = f"{name}() evaluates a string as code"
        elif len(parts) >= 2 and parts[-2:] in UNPICKLERS:
            why = f"{name}() unpickles"
        elif name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            why = "torch.load without weights_only=True unpickles freely"
        elif name in ("np.load", "numpy.load") and _is_const(_kw(node, "allow_pickle"), True):
            why = "np.load(allow_pickle=True) unpickles"
        elif name == "yaml.load" and "Safe" not in _dotted(_kw(node, "Loader") or ast.Name("")):
            why = "yaml.load without a SafeLoader"
        elif name == "torch.jit.load" and rel not in JIT_LOAD_ALLOWED:
            why = "torch.jit.load outside the TorchScript adapter / exporter"
        elif _is_const(_kw(node, "trust_remote_code"), True):
            why = "trust_remote_code=True runs code shipped with a model"
        elif name.endswith("from_pretrained") and _is_const(_kw(node, "use_safetensors"), False):
            why = "from_pretrained(use_safetensors=False) reads pickled weights"
        if why:
            found.append(f"{rel}:{node.lineno}: {why}")
    return found


def test_no_unpickling_or_eval_on_any_load_path() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50, "the scan must see the package"
    problems = []
    for path in files:
        rel = path.relative_to(PACKAGE).as_posix()
        problems += unsafe_calls(path.read_text(encoding="utf-8"), rel)
    assert problems == [], "\n".join(problems)


def test_torch_load_in_the_package_is_weights_only() -> None:
    """The two legitimate ``torch.load`` calls (official release, optimizer state) are there and weights-only."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load":
                hits.append((path.relative_to(PACKAGE).as_posix(), _is_const(_kw(node, "weights_only"), True)))
    assert {"model/official.py", "training/checkpoint.py"} <= {p for p, _ in hits}
    assert all(ok for _, ok in hits), hits


@pytest.mark.parametrize("snippet,needle", [
    ("import pickle\npickle.load(open('x', 'rb'))", "unpickles"),
    ("import pickle as p\nobj = pickle.loads(b'')", "unpickles"),
    ("torch.load('x.pt')", "weights_only"),
    ("torch.load('x.pt', weights_only=False)", "weights_only"),
    ("eval('1 + 1')", "evaluates"),
    ("exec(code)", "evaluates"),
    ("np.load('a.npy', allow_pickle=True)", "allow_pickle"),
    ("yaml.load(text)", "SafeLoader"),
    ("AutoModel.from_pretrained(p, trust_remote_code=True)", "trust_remote_code"),
    ("UNet.from_pretrained(p, use_safetensors=False)", "pickled weights"),
    ("torch.jit.load('graph.pt')", "torch.jit.load"),
])
def test_the_scan_catches_each_unsafe_call(snippet: str, needle: str) -> None:
    found = unsafe_calls(snippet)
    assert len(found) == 1 and needle in found[0], found


def test_the_scan_leaves_safe_calls_alone() -> None:
    safe = ("model.eval()\ntorch.load(p, map_location='cpu', weights_only=True)\nnp.load('a.npz')\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\nsafetensors.torch.load_file(p)\nUNet.from_pretrained(p)\n"
            "json.loads(s)\n")
    assert unsafe_calls(safe) == []
