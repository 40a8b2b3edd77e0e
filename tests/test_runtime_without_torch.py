"""A runtime-only install (`pip install dhumandiff[onnx]`, no torch) generates a portrait from an ONNX bundle."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dhumandiff.export.bundle import export_bundle

from training_fixtures import random_tiny

REPO = Path(__file__).resolve().parents[1]
REAL_HOME = Path(os.path.expanduser("~"))


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    model = random_tiny()
    return export_bundle(model, tmp_path_factory.mktemp("b") / "tiny-onnx", "onnx", "fp32", source_model="random")


def test_fresh_venv_with_onnx_extra_and_no_torch_generates(onnx_bundle, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", "/root/.cache/pip")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "-e", f"{REPO}[onnx]"], capture_output=True,
                         text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    check = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env)
    assert check.stdout.strip() == "True", "the [onnx] extra must not install torch"
    out = tmp_path / "portrait.png"
    res = subprocess.run([str(venv / "bin" / "dhumandiff"), "generate", "--bundle", str(onnx_bundle),
                          "--face-a", str(REPO / "examples/face_a.png"), "--face-b", str(REPO / "examples/face_b.png"),
                          "--prompt", "a man and a woman on the beach", "--out", str(out), "--steps", "3"],
                         capture_output=True, text=True, timeout=600, env={**env, "HOME": str(tmp_path)})
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    from PIL import Image

    assert Image.open(out).size == (64, 64)
