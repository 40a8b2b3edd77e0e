"""The iOS / macOS sample (examples/ios) cannot run here (no Swift, no Core ML), so its logic is checked from
Python: the generated ``SchedulerTables.swift`` is what the generator writes today, its numbers are the NumPy
schedulers' (whole LCM / TCD trajectories replayed from the Swift tables), and the Swift sources use the bundle
contract's names, person words and default layout; every Swift file parses (tree-sitter's Swift grammar).
``swift build`` runs when a Swift toolchain is on PATH."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dhumandiff.errors import BundleError
from dhumandiff.contract import schedulers as S
from dhumandiff.runtimes import swift_tables as st
from dhumandiff.contract.bundle import COMPONENT_IO
from dhumandiff.utils.prompt import PERSON_WORDS
from dhumandiff.utils.regions import default_boxes

REPO = Path(__file__).resolve().parents[1]
IOS = REPO / "examples" / "ios"
KIT = IOS / "Sources" / "DHumanDiffKit"
TABLES = KIT / "SchedulerTables.swift"


@pytest.fixture(scope="module")
def committed() -> st.Tables:
    return st.parse_swift(TABLES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def config() -> dict:
    return st.load_scheduler_config(st.DEFAULT_SOURCE)[0]


def test_committed_swift_tables_are_what_the_generator_writes():
    assert TABLES.read_text(encoding="utf-8") == st.generate(st.DEFAULT_SOURCE), (
        "SchedulerTables.swift is stale: run `python -m dhumandiff.runtimes.swift_tables`")


def test_check_flag_spots_a_stale_file(tmp_path):
    assert st.main(["--check", "--out", str(TABLES)]) == 0
    stale = tmp_path / "SchedulerTables.swift"
    stale.write_text(TABLES.read_text(encoding="utf-8").replace("0.9999587", "0.9999588"), encoding="utf-8")
    assert st.main(["--check", "--out", str(stale)]) == 1


def test_swift_alphas_cumprod_are_the_numpy_ones(committed, config):
    numpy_alphas = S.from_config(config, sampler="lcm").alphas_cumprod
    assert committed.alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(committed.alphas_cumprod, numpy_alphas)  # every float32 reads back exactly


def test_tables_cover_lcm_and_tcd_at_1_2_4_steps(committed):
    assert sorted((t.sampler, len(t.timesteps)) for t in committed.steps) == [
        ("lcm", 1), ("lcm", 2), ("lcm", 4), ("tcd", 1), ("tcd", 2), ("tcd", 4)]


@pytest.mark.parametrize("sampler,steps", [(s, n) for s, _ in st.SAMPLERS for n in st.STEPS])
def test_swift_tables_replay_numpy_trajectories(committed, config, sampler, steps):
    """The Swift loop (float32 multiply-adds from the tables) follows the NumPy scheduler step for step, with a
    non-linear stand-in UNet and the same noise."""
    table = next(t for t in committed.steps if t.sampler == sampler and len(t.timesteps) == steps)
    sched = S.from_config(config, sampler=sampler)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(table.timesteps, sched.timesteps)
    kw = {"eta": table.eta} if sampler == "tcd" else {}
    rng = np.random.default_rng(steps)
    x_np = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    x_swift = x_np.copy()
    for i, t in enumerate(sched.timesteps):
        model = lambda x: np.tanh(0.7 * x + np.float32(t) / 1000).astype(np.float32)  # noqa: E731
        noise = rng.standard_normal(x_np.shape).astype(np.float32)
        x_np = sched.step(model(x_np), t, x_np, generator_noise=noise, **kw)
        a, b, c = np.float32(table.sample_scale[i]), np.float32(table.output_scale[i]), np.float32(table.noise_scale[i])
        x_swift = a * x_swift + b * model(x_swift) + c * noise  # Sampler.swift ConsistencySampler.step
        assert x_swift.dtype == np.float32
        np.testing.assert_allclose(x_swift, x_np, rtol=0, atol=2e-5, err_msg=f"{sampler} step {i} (t={t})")


def test_bundle_scheduler_section_gives_the_same_tables(committed):
    """A bundle records diffusers' resolved scheduler config; tables from it equal the committed ones."""
    pytest.importorskip("torch")
    from dhumandiff.export.manifest import scheduler_config
    from dhumandiff.model.generate import load_model

    resolved = scheduler_config(load_model("tiny-lcm"))
    assert resolved["_class_name"] == "LCMScheduler"
    fresh = st.build_tables(resolved)
    np.testing.assert_array_equal(fresh.alphas_cumprod, committed.alphas_cumprod)
    for a, b in zip(fresh.steps, committed.steps, strict=True):
        np.testing.assert_array_equal(a.timesteps, b.timesteps)
        for field in ("sample_scale", "output_scale", "noise_scale"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert {k: fresh.config[k] for k in committed.config} == committed.config


def test_a_non_linear_step_is_refused(config):
    with pytest.raises(BundleError, match="non-linear"):
        st.build_tables({**config, "clip_sample": True})


def test_generator_reads_bundles_and_model_folders(tmp_path):
    (tmp_path / "bundle.json").write_text('{"format": "dhumandiff-bundle", "model_name": "m", '
                                          '"scheduler": {"_class_name": "LCMScheduler"}}')
    cfg, desc = st.load_scheduler_config(tmp_path)
    assert cfg == {"_class_name": "LCMScheduler"} and desc == "the scheduler of m"
    with pytest.raises(BundleError, match="neither a bundle"):
        st.load_scheduler_config(tmp_path / "nothing")


def _swift(*names: str) -> str:
    return "\n".join((KIT / n).read_text(encoding="utf-8") for n in names)


def test_swift_pipeline_uses_the_bundle_contract_names():
    source = _swift("Pipeline.swift")
    for component, (inputs, outputs) in COMPONENT_IO.items():
        for name in (component, *inputs, *outputs):
            assert f'"{name}"' in source, f"Pipeline.swift never names {name!r} ({component})"
    manifest = _swift("BundleManifest.swift")
    for key in ("format_version", "image_size", "scaling_factor", "max_length", "pad_token_id", "num_id_tokens",
                "clip_mean", "arcface_std", "extra_files", "ip_scale"):
        assert f'"{key}"' in manifest, key


def test_swift_person_words_and_layout_match_python():
    source = _swift("PromptTokenizer.swift")
    block = re.search(r"personWords: \[String\] = \[(.*?)\]", source, re.S).group(1)
    assert tuple(re.findall(r'"(\w+)"', block)) == tuple(PERSON_WORDS)
    layout = _swift("Layout.swift")
    boxes = [[float(v) for v in re.findall(r"Float\(([\d.]+)\)", m)]
             for m in re.findall(r"person[AB]: \[(.*?)\]\.map", layout)]
    np.testing.assert_array_equal(np.asarray(boxes, np.float32), default_boxes())


def test_swift_sources_parse():
    """A syntax check of every Swift file with tree-sitter's Swift grammar (no types: that needs `swift build`)."""
    ts = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_swift")
    parser = ts.Parser(ts.Language(grammar.language()))

    def errors(node):
        if node.type == "ERROR" or node.is_missing:
            return [node]
        return [e for child in node.children for e in errors(child)]

    files = sorted(IOS.rglob("*.swift"))
    assert len(files) >= 10
    for f in files:
        src = f.read_bytes()
        bad = errors(parser.parse(src).root_node)
        lines = src.decode().splitlines()
        assert not bad, f"{f.relative_to(REPO)}: " + "; ".join(
            f"line {e.start_point[0] + 1}: {lines[e.start_point[0]].strip()[:80]!r}" for e in bad[:3])
    broken = parser.parse(b"func f( { let x = [1, 2\n}").root_node
    assert errors(broken), "the check must be able to fail"


@pytest.mark.skipif(shutil.which("swift") is None, reason="no Swift toolchain on PATH (Debian ships none); "
                                                          "on macOS run `swift build && swift test` in examples/ios")
def test_swift_package_builds(tmp_path):
    res = subprocess.run(["swift", "build", "--scratch-path", str(tmp_path / "build")], cwd=IOS,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
