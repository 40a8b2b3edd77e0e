"""The package's layering, read from the source: lower stages never import higher ones, and the runtimes and the
kiosk import nothing of the pipeline but the torch-free contract layer.

Every ``import`` and ``from ... import`` of a ``dhumandiff`` module, at module level or inside a function (a lazy
import is still a dependency), is checked against the stage order the folder tree reads in::

    errors, utils  ->  contract  ->  data  ->  model  ->  training  ->  distill  ->  calibration  ->  export

``runtimes`` may import only ``contract``, ``utils`` and ``errors``; the kiosk (``serve``) those and ``runtimes``;
``checks`` and ``bench`` sit on top of the stages; nothing but the CLI imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dhumandiff"
#: The pipeline's stages in data-flow order: each may import the ones before it.
CHAIN = ("errors", "utils", "contract", "data", "model", "training", "distill", "calibration", "export")
#: Stages outside the chain and exactly what each may import (besides itself).
ALLOWED = {
    "runtimes": {"errors", "utils", "contract"},
    "serve": {"errors", "utils", "contract", "runtimes"},
    "checks": set(CHAIN) | {"runtimes"},
    "bench": set(CHAIN) | {"runtimes", "checks"},
    "cli": set(CHAIN) | {"runtimes", "serve", "checks", "bench"},
}


def allowed(stage: str) -> set[str]:
    if stage in ALLOWED:
        return ALLOWED[stage] | {stage}
    return set(CHAIN[: CHAIN.index(stage) + 1])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str | None:
    """``dhumandiff.model.faces.world`` -> ``model``; the package itself and ``__version__`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dhumandiff" else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every dhumandiff module ``path`` imports, absolute or relative, with its line number."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dhumandiff")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dhumandiff"):
                # ``from dhumandiff import errors`` / ``from . import manifest``: the names may be modules
                found += [(node.lineno, f"{target}.{a.name}" if target.count(".") == 0 else target)
                          for a in node.names]
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = stage_of(module_name(path))
        if stage is None or stage in ("__main__",):
            continue
        ok = allowed(stage) if (stage in ALLOWED or stage in CHAIN) else None
        if ok is None:
            bad.append(f"{path.relative_to(PACKAGE)}: stage {stage!r} has no place in the layering; add it")
            continue
        for line, target in imported_modules(path):
            other = stage_of(target)
            if other is not None and other not in ok and not other.startswith("__"):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({stage}) imports {target} ({other})")
    return bad


def test_no_stage_imports_a_later_one() -> None:
    assert violations() == []


@pytest.mark.parametrize("source,expected", [
    ("from ..model.sampler import x", "dhumandiff.model.sampler"),
    ("from . import schedulers", "dhumandiff.runtimes"),
    ("import dhumandiff.export.bundle", "dhumandiff.export.bundle"),
    ("from dhumandiff import errors", "dhumandiff.errors"),
])
def test_the_checker_resolves_imports(tmp_path: Path, source: str, expected: str, monkeypatch) -> None:
    """The checker itself: relative and absolute imports resolve to the module they name (it can fail)."""
    fake = PACKAGE / "runtimes" / "_layering_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert imported_modules(fake)[0][1] == expected


def test_a_runtime_importing_the_model_is_caught(monkeypatch) -> None:
    """A runtime module that imported the model stage would be reported (the test above can fail)."""
    real = imported_modules

    def with_bad_import(path: Path):
        found = real(path)
        return found + [(1, "dhumandiff.model.sampler")] if path.name == "generator.py" else found

    monkeypatch.setitem(globals(), "imported_modules", with_bad_import)
    assert any("runtimes/generator.py:1 (runtimes) imports dhumandiff.model.sampler" in v for v in violations())
