"""Shared test setup: every test runs with HOME pointing at its own tmp folder (no caches leak between tests).

One exception, on purpose: exported graphs are cached for the session (``DHUMANDIFF_EXPORT_CACHE``, see
``dhumandiff/export/graph_cache.py``), since the quantisation tests export the same model many times; every
export still validates its graph against torch, cached or not (``tests/test_export_cache.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(autouse=True)
def _session_export_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHUMANDIFF_EXPORT_CACHE", str(tmp_path_factory.getbasetemp() / "export-cache"))
