"""A missing optional dependency ends in one line naming the extra to install, never a traceback."""

from __future__ import annotations

from blocked_imports import run_cli_without as _run


def test_export_onnx_without_the_onnx_extra(tmp_path):
    r = _run({"onnxruntime", "onnx"}, "export", "onnx", "tiny", "--out", str(tmp_path / "b"))
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert 'pip install "dhumandiff[onnx]"' in lines[0]
    assert not (tmp_path / "b").exists()


def test_missing_extra_names_each_optional_module():
    from dhumandiff.cli.main import missing_extra

    assert missing_extra("openvino.runtime") == "openvino"
    assert missing_extra("coremltools") == "coreml"
    assert missing_extra("fastapi") == "serve"
    assert missing_extra("numpy") is None
