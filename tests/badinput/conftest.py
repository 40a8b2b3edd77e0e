"""The bad-input corpus, generated (never committed): photos, prompts, layouts, bundles, model folders and
PairHuman annotations that users actually hand the tool, plus the real things they are run against.

Files are written once per session into a temporary folder from the two committed example faces, so every case
is reproducible and the repository holds no binary test junk. Fixtures:

* ``corpus``: name -> path of every generated photo (and a few non-photos).
* ``tiny_bundle``: the embedded ``tiny`` model exported for onnxruntime (real graphs, the world face detector).
* ``tiny_model``: the embedded ``tiny`` PyTorch reference, loaded once.
* ``small_bundle`` / ``bundle_copy``: a kilobyte-sized complete onnx bundle (random modules), and a fresh copy.
* ``world``: a two-record PairHuman-format folder made by ``dhumandiff data synth``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from badinput_corpus import build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("badinput"))


# ------------------------------------------------------------------------------------------ real models


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    from dhumandiff.model.generate import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Path:
    """``dhumandiff export onnx tiny``, done once (a few seconds): real graphs and the world face detector."""
    from dhumandiff.export.bundle import export_bundle

    return export_bundle(tiny_model, tmp_path_factory.mktemp("bundles") / "tiny-onnx", "onnx", source_model="tiny")


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete onnx bundle of random tiny modules (runtime_fixtures; kilobytes, no face detector): what the
    bundle-tampering cases edit, since they fail before any model quality matters."""
    from runtime_fixtures import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "small-onnx", "onnx").path


@pytest.fixture
def bundle_copy(small_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dhumandiff.data.synth import synthesize

    return Path(synthesize(tmp_path_factory.mktemp("world") / "world", count=2, seed=0))
