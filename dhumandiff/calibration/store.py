"""A calibration set on disk: ``calibration.safetensors`` (the recorded graph inputs) + ``calibration.json``.

The folder ``CALIB/`` written by ``dhumandiff calibrate`` holds::

    calibration.json          format, model, seed/steps/sampler/guidance, data hash, per-component layout, hashes
    calibration.safetensors   one array per (component, input): "unet/sample", "text_encoder/input_ids", ...
    sensitivity.json          (optional) per-layer sensitivity of the UNet (``sensitivity.py``)

Arrays use the bundle contract's input names and graph shapes, so an exporter feeds them to a graph as they are.
Compact: a UNet input that is the same at every step of a record (text context, ID tokens, region mask, IP
scale) is stored once per record (``[R, *shape]``); only the inputs that change per step (``sample``,
``timestep``) are stored per step (``[R, T, *shape]``). Other components' inputs are stacked per call
(``[N, *shape]``).

Reproducible: ``tensors_sha256`` hashes every array (name, dtype, shape, bytes, in name order), so the same
model, data and seed give the same hash on any machine with the same torch build; ``file_sha256`` catches a
tampered or truncated file. This module is torch-free (safetensors' NumPy API): exporters only read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import DHumanDiffError
from ..utils.atomic import atomic_dir, sha256_file

FORMAT = "dhumandiff-calibration"
FORMAT_VERSION = 1
META_FILE = "calibration.json"
TENSORS_FILE = "calibration.safetensors"
SENSITIVITY_FILE = "sensitivity.json"
#: The component whose inputs are recorded per sampler step (all others: per call).
STEPPED = "unet"


class CalibrationError(DHumanDiffError):
    """A calibration folder is missing, altered, or does not fit the model being exported."""

    exit_code = 1


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over every array in name order: name, dtype, shape and the C-order bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _key(component: str, name: str) -> str:
    return f"{component}/{name}"


@dataclass
class CalibrationSet:
    """A loaded calibration folder. ``tensors`` maps ``component/input`` to arrays; ``meta`` is the JSON."""

    root: Path
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "CalibrationSet":
        """Read ``path`` (a folder from ``dhumandiff calibrate``); ``verify`` checks both hashes."""
        from safetensors.numpy import load_file

        root = Path(path)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise CalibrationError(f"{root} is not a calibration folder (no {META_FILE}); make one with "
                                   f"`dhumandiff calibrate MODEL --data DIR --out {root}`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{meta_path} is not valid JSON ({exc.msg}); re-run `dhumandiff calibrate`") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} file; re-run "
                                   f"`dhumandiff calibrate` with this dhumandiff version")
        tensor_path = root / meta.get("file", TENSORS_FILE)
        if not tensor_path.is_file():
            raise CalibrationError(f"{tensor_path} is missing; re-run `dhumandiff calibrate`")
        if verify and sha256_file(tensor_path) != meta.get("file_sha256"):
            raise CalibrationError(f"{tensor_path} does not match the sha256 in {META_FILE} (altered or truncated); "
                                   f"re-run `dhumandiff calibrate`")
        tensors = load_file(str(tensor_path))
        if verify and tensors_digest(tensors) != meta.get("tensors_sha256"):
            raise CalibrationError(f"the arrays in {tensor_path} do not match tensors_sha256; re-run "
                                   f"`dhumandiff calibrate`")
        return cls(root, meta, tensors)

    # --------------------------------------------------------------------------------------- contents

    @property
    def components(self) -> list[str]:
        return list(self.meta["components"])

    @property
    def sensitivity_path(self) -> Path:
        return self.root / SENSITIVITY_FILE

    def sensitivity(self) -> dict[str, Any] | None:
        """The per-layer sensitivity analysis written beside the calibration set, if any."""
        path = self.sensitivity_path
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def inputs(self, component: str) -> dict[str, dict[str, Any]]:
        """``{input: {"shape": graph shape, "dtype": ..., "per_step": bool}}`` of one component."""
        if component not in self.meta["components"]:
            raise CalibrationError(f"the calibration set in {self.root} has no inputs for {component} (it holds "
                                   f"{', '.join(self.components)}); re-run `dhumandiff calibrate` with the model "
                                   f"you export")
        return self.meta["components"][component]["inputs"]

    def count(self, component: str) -> int:
        """How many graph calls of ``component`` were recorded."""
        return int(self.meta["components"][component]["samples"])

    def samples(self, component: str, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The recorded inputs of ``component``, one graph call at a time, in recording order.

        ``limit`` keeps that many calls spread evenly over the set (every record, early and late steps).
        """
        spec = self.inputs(component)
        n = self.count(component)
        picks = range(n) if limit is None or limit >= n else np.unique(np.linspace(0, n - 1, limit).round()).astype(int)
        if component == STEPPED:
            steps = int(self.meta["steps"])
            for i in picks:
                r, t = divmod(int(i), steps)
                yield {name: self.tensors[_key(component, name)][(r, t) if s["per_step"] else r]
                       for name, s in spec.items()}
        else:
            for i in picks:
                yield {name: self.tensors[_key(component, name)][int(i)] for name in spec}

    def check_shapes(self, component: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse a calibration set recorded for other graph shapes (another model, batch or resolution)."""
        spec = self.inputs(component)
        for name, shape in shapes.items():
            got = spec.get(name, {}).get("shape")
            if got is None or list(got) != [int(d) for d in shape]:
                raise CalibrationError(f"the calibration set in {self.root} recorded {component}.{name} with shape "
                                       f"{got}, the graph takes {list(shape)}; re-run `dhumandiff calibrate` with "
                                       f"the model you export")

    def summary(self) -> dict[str, Any]:
        """What a bundle records about the calibration it was quantised with."""
        keys = ("model", "seed", "steps", "sampler", "guidance_scale", "tensors_sha256")
        return {**{k: self.meta.get(k) for k in keys}, "data_sha256": self.meta.get("data", {}).get("sha256")}


# --------------------------------------------------------------------------------------------------- writing


def write_calibration(out_dir: str | Path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any], *,
                      overwrite: bool = False, sensitivity: Mapping[str, Any] | None = None) -> Path:
    """Write the folder atomically: arrays, then the JSON with both hashes (and the sensitivity JSON)."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_dir(out_dir, overwrite=overwrite, markers=(META_FILE,)) as tmp:
        save_file(arrays, str(tmp / TENSORS_FILE))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(meta), "file": TENSORS_FILE,
                "file_sha256": sha256_file(tmp / TENSORS_FILE), "tensors_sha256": tensors_digest(arrays)}
        (tmp / META_FILE).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        if sensitivity is not None:
            (tmp / SENSITIVITY_FILE).write_text(json.dumps(sensitivity, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)

