"""The export cache: a second identical export copies the stored graphs instead of converting, the bundle is the
same, and a damaged cached graph is never used (it fails the export's validation, is converted afresh and
replaced)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dhumandiff.export.bundle import export_bundle
from dhumandiff.export.graph_cache import ENV

from training_fixtures import random_tiny


def _graphs(bundle: Path) -> dict[str, str]:
    return {name: c["sha256"][c["file"]] for name, c in json.loads((bundle / "bundle.json").read_text())
            ["components"].items()}


def _from_cache(bundle: Path) -> dict[str, bool]:
    raw = json.loads((bundle / "bundle.json").read_text())
    return {name: v["from_cache"] for name, v in raw["export"]["validation"].items()}


def test_second_export_reuses_the_graphs_and_a_damaged_entry_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "cache"))
    model = random_tiny(seed=3)
    first = export_bundle(model, tmp_path / "a", "onnx", "fp32", source_model="random")
    assert not any(_from_cache(first).values())
    entries = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(entries) == len(_graphs(first)), "one entry per component"
    second = export_bundle(model, tmp_path / "b", "onnx", "fp32", source_model="random")
    assert all(_from_cache(second).values()) and _graphs(second) == _graphs(first)

    unet = next(e for e in entries if "unet.onnx" in json.loads((e / "files.json").read_text()))
    (unet / "unet.onnx").write_bytes(b"not a graph")  # a damaged entry
    third = export_bundle(model, tmp_path / "c", "onnx", "fp32", source_model="random")
    assert _graphs(third) == _graphs(first), "the damaged graph must not reach the bundle"
    assert (unet / "unet.onnx").read_bytes() != b"not a graph", "the entry is replaced"

    other = random_tiny(seed=4)  # other weights: other keys, converted afresh
    fourth = export_bundle(other, tmp_path / "d", "onnx", "fp32", source_model="random")
    assert not any(_from_cache(fourth).values())


def test_cache_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    bundle = export_bundle(random_tiny(seed=3), tmp_path / "a", "onnx", "fp32", source_model="random")
    assert not any(_from_cache(bundle).values())
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("files.json"))
