"""Crash safety: a SIGKILLed export leaves no bundle a loader accepts, and never damages the bundle it was
replacing (``--overwrite``). Bundles, calibration sets, checkpoints and images are all built under a temporary
name and renamed into place (``dhumandiff.utils.atomic``).

The training counterpart (SIGKILL mid-training, then ``--resume`` from the last complete checkpoint) is
tests/test_training_resume.py::test_sigkill_midway_leaves_the_last_checkpoint_loadable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_fixtures import build_tiny_bundle

from dhumandiff.errors import BundleError
from dhumandiff.runtimes import load_bundle
from dhumandiff.utils.atomic import sha256_file

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


class _Export:
    """``dhumandiff export onnx tiny --out OUT`` in a subprocess, to be SIGKILLed once its temporary folder
    holds a graph (midway: graphs are written one by one, bundle.json last)."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.out = out
        self.stale = set(out.parent.glob(f".{out.name}.partial-*"))  # left by an earlier kill: not this export's
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dhumandiff.cli.main", "export", "onnx", "tiny",
                                      "--out", str(out), *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def partial(self) -> Path | None:
        return next((p for p in self.out.parent.glob(f".{self.out.name}.partial-*")
                     if p not in self.stale and any(p.glob("*.onnx"))), None)

    def kill_midway(self) -> Path:
        """SIGKILL as soon as a graph is written; returns the temporary folder left behind."""
        partial = None
        try:
            deadline = time.time() + 600
            while time.time() < deadline and self.proc.poll() is None:
                partial = self.partial()
                if partial is not None:
                    break
                time.sleep(0.02)
            assert partial is not None and self.proc.poll() is None, "the export ended before it could be killed"
            self.proc.send_signal(signal.SIGKILL)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL
        return partial


def test_sigkill_during_export_leaves_nothing_loadable_and_keeps_the_old_bundle(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "tiny"  # no bundle there before
    kept = tmp_path / "kept" / "tiny"  # a good bundle there, replaced with --overwrite
    fresh.parent.mkdir()
    kept.parent.mkdir()
    build_tiny_bundle(kept, "onnx")
    before = _tree(kept)
    exports = [_Export(fresh), _Export(kept, "--overwrite")]  # both run at once
    partial, partial2 = (e.kill_midway() for e in exports)

    # 1. no bundle before: none after the kill, and the leftover is refused by the loader
    assert not fresh.exists()
    assert partial.exists() and not (partial / "bundle.json").exists()
    with pytest.raises(BundleError, match="not a dhumandiff bundle"):
        load_bundle(partial)

    # 2. the previous bundle is untouched and still loads; the leftover is refused
    assert _tree(kept) == before, "the previous bundle must be intact"
    assert load_bundle(kept).manifest.model_name == "tiny-test"
    with pytest.raises(BundleError):
        load_bundle(partial2)
    # besides the hidden partial folder, only the killed writer's (released) lock file is left: hidden, empty
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted(["tiny", partial2.name, ".tiny.lock"])
