"""Property-based tests of the bundle manifest parser: whatever a bundle.json holds, reading it either gives a
Manifest or one BundleError line (never a KeyError / TypeError / ValueError traceback), and a valid manifest
survives its own round trip. The PairHuman annotation parser has its own properties in test_data_schema.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_fixtures import LCM_CONFIG, component_io, manifest_dict

from dhumandiff.errors import BundleError
from dhumandiff.contract import schedulers
from dhumandiff.contract.bundle import Manifest, manifest_from_dict

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_scalar = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True)
           | _text)
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
                     max_leaves=8)


def _valid(batch: int = 2, sdxl: bool = False) -> dict[str, Any]:
    """A valid bundle.json dict (digests are made up: the parser does not read files)."""
    comps = {}
    for name, (ins, outs) in component_io(batch, sdxl).items():
        comps[name] = {"file": f"{name}.onnx", "extra_files": [], "sha256": {f"{name}.onnx": "0" * 64},
                       "inputs": ins, "outputs": outs}
    return {**copy.deepcopy(_TEMPLATE[(batch, sdxl)]), "components": comps}


def _template(batch: int, sdxl: bool, tmp: Path) -> dict[str, Any]:
    for name in component_io(batch, sdxl):
        (tmp / f"{name}.onnx").write_bytes(b"x")
    files = {n: (f"{n}.onnx", []) for n in component_io(batch, sdxl)}
    d = manifest_dict(tmp, "onnx", files, batch=batch, sdxl=sdxl, scheduler=None if batch == 2 else LCM_CONFIG)
    d.pop("components")
    d["identity"].update({"detector": "world", "min_face_px": 12})
    d["export"] = {"graph_precision": {"vae_decoder": "fp32"}}
    return d


def _templates() -> dict[tuple[int, bool], dict[str, Any]]:
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as t:
        for batch, sdxl in ((2, False), (1, False), (2, True)):
            out[(batch, sdxl)] = _template(batch, sdxl, Path(t))
    return out


_TEMPLATE = _templates()


def _parse_or_refuse(obj: Any) -> Manifest | None:
    try:
        m = manifest_from_dict(obj)
    except BundleError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return None
    assert isinstance(m, Manifest)
    for name in schedulers.SAMPLERS:  # what generation will build from it: a BundleError or a settings refusal
        try:
            schedulers.from_config(m.scheduler, name).set_timesteps(2)
        except (BundleError, ValueError) as e:
            assert "\n" not in str(e)
    return m


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(sorted(_TEMPLATE)))
def test_valid_manifests_round_trip(key: tuple[int, bool]) -> None:
    m = manifest_from_dict(_valid(*key))
    again = manifest_from_dict(json.loads(m.to_json()))
    assert again == m and again.to_dict() == m.to_dict()


@settings(max_examples=150, deadline=None, database=None)
@given(_json)
def test_random_json_is_a_manifest_or_a_bundle_error(obj: Any) -> None:
    _parse_or_refuse(obj)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON tree (internal nodes included)."""
    out = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


_SECTIONS = sorted(_valid(2, True))


@pytest.mark.parametrize("section", _SECTIONS)
@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_parse_or_raise_bundle_error(section: str, data: Any) -> None:
    """Junk (or a deletion) anywhere inside an otherwise valid bundle.json, where a parser most likely trips.

    Parametrised by top-level section so the small ones (identity, latent, defaults) get as many examples as the
    large components table."""
    obj = _valid(*data.draw(st.sampled_from(sorted(_TEMPLATE))))
    if section not in obj:
        obj[section] = data.draw(_json)
        _parse_or_refuse(obj)
        return
    path = data.draw(st.sampled_from([(section,)] + _paths(obj[section], (section,))))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_json)
    _parse_or_refuse(obj)
