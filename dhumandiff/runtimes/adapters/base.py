"""What every backend adapter is: a thing that runs a named graph on named NumPy arrays.

The sampler loop (``generator.py``) owns all the maths; an adapter only loads graphs and runs them, so adding a
backend is one small class. :class:`BaseRunner` holds what every adapter shares: casting inputs to the dtypes the
manifest declares, loading each component lazily (a CLI call that fails on the prompt never loads the UNet), and
the NaN/Inf gate after every run.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from dhumandiff.errors import BundleError
from dhumandiff.utils.numerics import check_finite as _check_finite

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


@runtime_checkable
class GraphRunner(Protocol):
    """Runs one bundle's components. ``providers`` says what actually executes them (for logs and doctor)."""

    @property
    def providers(self) -> list[str]: ...

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_finite(component: str, outputs: Mapping[str, np.ndarray], where: str = "",
                 precision: str | None = None) -> None:
    """Raise :class:`NumericalError` naming the component when any float output holds NaN or Inf.

    The gate and its hints are shared with the PyTorch reference (:mod:`dhumandiff.utils.numerics`);
    ``precision`` is the component's graph precision when the bundle records it.
    """
    _check_finite(component, outputs, where, precision=precision)


def shape_fits(declared: tuple[int | str | None, ...] | list[Any], got: tuple[Any, ...] | list[Any]) -> bool:
    """Whether shape ``got`` fits ``declared``: same rank, and equal wherever both give a number (a ``str`` or
    ``None`` dimension is dynamic)."""
    return len(declared) == len(got) and all(
        not isinstance(d, int) or not isinstance(g, int) or d == g for d, g in zip(declared, got)
    )


def check_graph_io(component: str, spec: Any, graph_shapes: Mapping[str, Any], kind: str) -> None:
    """Refuse a loaded graph whose declared ``kind`` ("input"/"output") shapes contradict bundle.json's, before
    anything runs (named: a backend's shape error or a NumPy broadcast error later says neither which nor why).
    ``graph_shapes``: name -> the graph's shape (int, or str/None where dynamic)."""
    declared = spec.inputs if kind == "input" else spec.outputs
    for name, shape in graph_shapes.items():
        if name in declared and not shape_fits(declared[name].shape, tuple(shape)):
            raise _shape_error(component, kind, name, list(shape), list(declared[name].shape))


def _shape_error(component: str, kind: str, name: str, graph: list[Any], declared: list[Any]) -> BundleError:
    graph_s = "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in graph) + "]"
    return BundleError(f"{component} graph {kind} '{name}' has shape {graph_s}, bundle.json declares {declared}: "
                       "the graph and bundle.json do not belong together; re-export the bundle")


def load_failure(what: str, path: Path, component: str, exc: BaseException) -> BundleError:
    """The one-line error of a graph its backend refuses to load: the backend's first non-empty message line
    (they raise multi-line C++ traces), which file and component, and what to do."""
    first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return BundleError(f"{what} {path.name} ({component}): {first}; re-export the bundle")


class BaseRunner:
    """Shared adapter plumbing. Subclasses implement ``_load(component)`` and ``_run(handle, inputs)``."""

    runtime = "base"

    def __init__(self, components: Mapping[str, Any], root: str | Path, device: str = "cpu") -> None:
        self.components = dict(components)
        self.root = Path(root)
        self.device = device
        self._handles: dict[str, Any] = {}
        #: component -> precision its graph was exported in (bundle.json ``export.graph_precision``), for hints
        self.graph_precision: dict[str, str] = {}

    @property
    def providers(self) -> list[str]:
        return [self.device]

    def _load(self, component: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, component: str, handle: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def path_of(self, component: str) -> Path:
        return self.root / self.components[component].file

    def handle(self, component: str) -> Any:
        """The loaded graph, loaded on first use."""
        if component not in self.components:
            raise BundleError(f"this bundle has no component {component!r}; re-export the bundle")
        if component not in self._handles:
            self._handles[component] = self._load(component)
        return self._handles[component]

    def release(self, component: str) -> None:
        """Drop a loaded graph (it loads again on its next use): the low-memory generator holds one at a time."""
        if self._handles.pop(component, None) is not None:
            gc.collect()

    @property
    def loaded(self) -> list[str]:
        """The components whose graphs are in memory now."""
        return sorted(self._handles)

    def prepare(self, component: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names and shapes against the manifest and cast to its dtypes (an fp16 graph takes fp16)."""
        spec = self.components[component]
        missing = [n for n in spec.inputs if n not in inputs]
        if missing:
            raise ValueError(f"{component}: missing input(s) {missing}")
        out: dict[str, np.ndarray] = {}
        for name, tspec in spec.inputs.items():
            arr = np.asarray(inputs[name])
            shape = tuple(tspec.shape)
            if not shape_fits(shape, arr.shape):
                raise ValueError(f"{component}.{name}: got shape {list(arr.shape)}, the bundle expects {list(shape)}")
            out[name] = np.ascontiguousarray(arr, dtype=_NP_DTYPES[tspec.dtype])
        return out

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        handle = self.handle(component)
        outputs = self._run(component, handle, self.prepare(component, inputs))
        spec = self.components[component]
        missing = [n for n in spec.outputs if n not in outputs]
        if missing:
            raise BundleError(
                f"{component} graph did not return output(s) {missing} named in bundle.json; re-export the bundle"
            )
        result = {n: np.asarray(outputs[n]) for n in spec.outputs}
        for name, arr in result.items():  # a wrong shape here would be a NumPy broadcast error steps later
            if not shape_fits(spec.outputs[name].shape, arr.shape):
                raise _shape_error(component, "output", name, list(arr.shape), list(spec.outputs[name].shape))
        result = {n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in result.items()}
        check_finite(component, result, f" ({self.runtime} on {self.device})", self.graph_precision.get(component))
        return result
