"""Mapped weight pages handed back after a compile: real mmaps, a real OpenVINO compile, /proc/self/smaps."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from dhumandiff.runtimes.adapters.mapped_weights import ReleasedWhileLoading, mapped_regions, release_mapped
from dhumandiff.runtimes.adapters.openvino import OpenVINORunner
from dhumandiff.contract.bundle import ComponentSpec, TensorSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")

MB = 1 << 20


def resident_bytes(prefix: Path) -> int:
    """Resident bytes of this process's mappings of files under ``prefix`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            inside = len(head) == 6 and head[5].strip().startswith(str(prefix))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_release_drops_resident_pages_and_keeps_the_data(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, 16 * MB, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert view[:] == data  # touch every page
        assert resident_bytes(tmp_path) >= 15 * MB
        assert [r[2] for r in mapped_regions([tmp_path])] == [str(path)]
        assert release_mapped([tmp_path]) >= 16 * MB
        assert resident_bytes(tmp_path) < MB
        assert view[:] == data, "a released page reads back from the file unchanged"


def test_writable_private_mapping_is_never_released(tmp_path: Path) -> None:
    """A copy-on-write mapping may hold changes that exist nowhere else: dropping them would lose data."""
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(4 * MB))
    with path.open("r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as view:
        view[123] = 7
        assert mapped_regions([tmp_path]) == []
        assert release_mapped([tmp_path]) == 0
        assert view[123] == 7


def test_release_while_loading_runs_the_block_and_releases_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(3).integers(0, 255, 8 * MB, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        with ReleasedWhileLoading([tmp_path], interval=0.01):
            seen = bytes(view[i] for i in range(0, len(view), 512))  # pages read while others are released
        assert seen == data[::512]
        assert resident_bytes(tmp_path) < MB


def _matmul_ir(folder: Path, n: int = 1536) -> tuple[Path, np.ndarray]:
    """An IR whose .bin holds one n x n float32 weight (9 MB at 1536)."""
    import openvino as ov
    import openvino.opset13 as ops

    weight = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32) / n
    x = ops.parameter([1, n], np.float32, name="sample")
    y = ops.matmul(x, ops.constant(weight), False, False)
    y.output(0).get_tensor().set_names({"noise_pred"})
    folder.mkdir()
    ov.save_model(ov.Model([y], [x], "mm"), str(folder / "unet.xml"), compress_to_fp16=False)
    return folder / "unet.xml", weight


def test_openvino_runner_keeps_no_weight_pages_resident(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO keeps an IR's .bin mapped and resident after repacking it; the adapter hands those pages back,
    and the graph still computes the same numbers."""
    import openvino as ov

    monkeypatch.setenv("DHUMANDIFF_OPENVINO_CACHE", "off")
    n = 1536
    xml, weight = _matmul_ir(tmp_path / "bundle", n)
    spec = ComponentSpec("unet", "unet.xml", (), {}, {"sample": TensorSpec((1, n), "float32")},
                         {"noise_pred": TensorSpec((1, n), "float32")})
    runner = OpenVINORunner({"unet": spec}, xml.parent, precision="fp32")
    x = np.random.default_rng(2).standard_normal((1, n)).astype(np.float32)
    got = runner.run("unet", {"sample": x})["noise_pred"]
    np.testing.assert_allclose(got, x @ weight, rtol=1e-4, atol=1e-5)
    assert mapped_regions([xml.parent]), "OpenVINO did not map the weights (nothing to hand back)"
    assert resident_bytes(xml.parent) < MB
    # without the hand-back, the same compile keeps the whole weight file resident
    compiled = ov.Core().compile_model(ov.Core().read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert resident_bytes(xml.parent) > 0.8 * weight.nbytes
    np.testing.assert_allclose(compiled({"sample": x})[0], got, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.run("unet", {"sample": x})["noise_pred"], got, rtol=0, atol=0)
