"""Property-based tests of the bundle manifest parser: whatever a bundle.json holds, reading it either gives a
Manifest or one BundleError line (never a KeyError / TypeError / ValueError traceback), and a valid manifest
survives its own round trip. The PairHuman annotation parser has its own properties in test_data_schema.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from bundle_edits import dynamic_axes
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


# ------------------------------------------------------------------------------- sizes, nesting, graph bytes


#: Plausible values of each size field, and what may replace one or two of them (just over a bound, or absurd).
_SIZES = {"h": st.integers(1, 300), "w": st.integers(1, 300), "channels": st.integers(1, 64),
          "max_len": st.integers(3, 4096), "face": st.integers(1, 2048), "clip": st.integers(1, 2048),
          "n_id": st.integers(1, 1024)}
_HUGE = st.integers(1, 2**40) | st.sampled_from([65, 1025, 2049, 4097, 8193, 10**6, 10**9, 2**31, 2**63])


@settings(max_examples=200, deadline=None, database=None)
@given(sizes=st.fixed_dictionaries(_SIZES), down=st.sampled_from([1, 2, 4, 8, 16]),
       huge=st.dictionaries(st.sampled_from(sorted(_SIZES)), _HUGE, max_size=2))
def test_a_manifest_that_parses_asks_for_bounded_sizes(sizes: dict[str, int], down: int, huge: dict[str, int]) -> None:
    """Whatever sizes bundle.json holds, a manifest that parses asks the runtime for bounded arrays (the latent
    grid, the token row, the face crops, the identity tokens), and one that does not is one BundleError line."""
    z = {**sizes, **huge}
    obj = _valid(2, False)
    dynamic_axes(obj)
    obj.update(image_size=[z["h"] * down, z["w"] * down])
    obj["latent"].update(channels=z["channels"], downscale=down)
    obj["tokenizer"]["max_length"] = z["max_len"]
    obj["identity"].update(face_size=z["face"], clip_size=z["clip"], num_id_tokens=z["n_id"])
    m = _parse_or_refuse(obj)
    event("parsed" if m is not None else "refused")
    if m is None:
        return
    lh, lw = m.latent_size
    assert m.latent.channels * lh * lw <= 2**24 and max(m.image_size) <= 8192
    assert m.tokenizer.max_length <= 4096 and max(m.identity.face_size, m.identity.clip_size) <= 2048
    assert m.identity.num_id_tokens <= 1024


@settings(max_examples=40, deadline=None, database=None)
@given(depth=st.integers(1, 5000), kind=st.sampled_from(["list", "dict"]))
def test_deep_nesting_is_refused_before_anything_recurses_on_it(depth: int, kind: str) -> None:
    """A nested value anywhere in bundle.json (kept as an unknown field) either parses and survives the writer's
    JSON round trip, or is one BundleError line: never a RecursionError in a later ``to_json``."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    obj = {**_valid(2, False), "notes": value}
    m = _parse_or_refuse(obj)
    if m is not None:
        assert manifest_from_dict(json.loads(m.to_json())) == m


def _external_onnx() -> bytes:
    """A small real ONNX model whose two initializers live in external files (onnx's own writer)."""
    import tempfile

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.full((4,), v, np.float32), n) for n, v in (("a", 1.0), ("b", 2.0))]
    nodes = [helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Mul", ["s", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as t:
        onnx.save(model, f"{t}/m.onnx", save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
        return Path(f"{t}/m.onnx").read_bytes()


_ONNX = _external_onnx()


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, len(_ONNX) - 1), st.integers(0, 255)), max_size=6),
       truncate=st.integers(0, len(_ONNX)), junk=st.binary(max_size=64))
def test_external_data_reader_never_raises_on_damaged_graphs(tmp_path: Path, cuts: list, truncate: int,
                                                             junk: bytes) -> None:
    """Whatever bytes a graph file holds, the bundle reader's ONNX walk answers a list of locations or None (not a
    model), and never an exception or a hang."""
    from dhumandiff.contract.bundle import onnx_external_data

    data = bytearray(_ONNX)
    for at, byte in cuts:
        data[at] = byte
    path = tmp_path / "g.onnx"
    for blob in (bytes(data), bytes(data[:truncate]) + junk, junk):
        path.write_bytes(blob)
        found = onnx_external_data(path)
        assert found is None or all(isinstance(x, str) for x in found)
    path.write_bytes(_ONNX)
    assert onnx_external_data(path) == ["a", "b"]
