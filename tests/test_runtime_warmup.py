"""Warm-up (``BundleGenerator.warm_up``): every graph runs once on stand-in inputs, and nothing it does changes
an image. What it saves is measured by ``benchmarks/cold_start.py`` (BENCHMARKS.md "Cold start")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhumandiff.contract.bundle import TensorSpec
from dhumandiff.runtimes import load_bundle
from dhumandiff.runtimes.embedded import embedded_bundle
from dhumandiff.runtimes.warmup import stand_in

ROOT = Path(__file__).resolve().parent.parent
FACES = (ROOT / "examples" / "face_a.png", ROOT / "examples" / "face_b.png")


def _image(gen) -> np.ndarray:
    return np.asarray(gen(*FACES, "a man and a woman on the beach", steps=4, seed=5).image)


def test_warm_up_runs_every_graph_and_changes_no_image():
    cold = load_bundle(embedded_bundle())
    warmed = load_bundle(embedded_bundle())
    seconds = warmed.warm_up()
    assert set(seconds) == set(warmed.manifest.components)
    assert all(s > 0 for s in seconds.values())
    assert np.array_equal(_image(warmed), _image(cold))


def test_low_memory_generators_have_nothing_to_warm():
    assert load_bundle(embedded_bundle(), low_memory=True).warm_up() == {}


def test_stand_in_inputs_are_finite_and_shaped_or_skipped():
    rng = np.random.default_rng(0)
    floats = stand_in(TensorSpec((2, 4, 16, 16), "float32"), rng)
    assert floats.shape == (2, 4, 16, 16) and floats.dtype == np.float32 and np.isfinite(floats).all()
    assert floats.any()  # an all-zero face would normalise to NaN in a recogniser
    ids = stand_in(TensorSpec(("batch", 77), "int64"), rng)
    assert ids.shape == (1, 77) and ids.dtype == np.int64 and not ids.any()
    assert stand_in(TensorSpec(("batch", 4, "height", "width"), "float32"), rng) is None
