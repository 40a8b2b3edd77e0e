"""``--batch`` conversion: one output per checkpoint folder, a summary table, failures contained (non-zero exit at
the end), and a re-run that skips what is finished by the source's sha256 recorded in the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dhumandiff.cli.console import console
from dhumandiff.cli.main import main
from dhumandiff.export import batch as B
from dhumandiff.model.registry import ASSETS
from dhumandiff.contract.bundle import load_manifest

from model_fixtures import official_release


@pytest.fixture(autouse=True)
def _wide_table(monkeypatch):
    monkeypatch.setattr(console, "width", 200)  # the summary table's error column, unwrapped


def _models(root: Path) -> Path:
    """``a`` (the embedded tiny model) and ``broken`` (tiny without its unet/), the batch's two outcomes."""
    models = root / "models"
    shutil.copytree(ASSETS / "tiny", models / "a")
    shutil.copytree(ASSETS / "tiny", models / "broken")
    shutil.rmtree(models / "broken" / "unet")
    (models / "notes").mkdir()  # not a model folder: ignored
    return models


def test_export_batch_converts_skips_and_reports_failures(tmp_path, capsys):
    models, bundles = _models(tmp_path), tmp_path / "bundles"
    code = main(["export", "onnx", "--batch", str(models), "--out", str(bundles)])
    out, err = capsys.readouterr()
    assert code == 9, (out, err)  # the failure's own code (CheckpointError), after the whole batch ran
    assert "converted" in out and "failed" in out and "missing unet" in out, out
    assert "1 converted, 0 skipped, 1 failed" in out
    assert "1 of 2 failed (broken)" in err
    assert not (bundles / "broken").exists(), "a failed item leaves no output"
    manifest = load_manifest(bundles / "a", verify=True)  # the record does not disturb the bundle's checks
    record = json.loads((bundles / "a" / "bundle.json").read_text())[B.RECORD_KEY]
    assert record["sha256"] == B.source_digest([models / "a"])
    assert record["options"] == {"runtime": "onnx", "precision": "fp32", "dynamic": False}
    assert manifest.extra[B.RECORD_KEY] == record
    stamp = (bundles / "a" / "bundle.json").stat().st_mtime_ns

    # re-run: the finished bundle is skipped (not rewritten), the broken model fails again
    code = main(["export", "onnx", "--batch", str(models), "--out", str(bundles)])
    out, _ = capsys.readouterr()
    assert code == 9
    assert "0 converted, 1 skipped, 1 failed" in out
    assert (bundles / "a" / "bundle.json").stat().st_mtime_ns == stamp


def test_stale_and_foreign_outputs(tmp_path):
    """Resume decisions, without exporting: a changed source or changed options redo an item; an output folder
    the batch did not write is refused unless --overwrite."""
    src = tmp_path / "src" / "m"
    src.mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"1234")
    out_root = tmp_path / "out"
    calls = []

    def job(item, progress):
        calls.append(item.name)
        item.out.mkdir(parents=True, exist_ok=True)
        (item.out / "bundle.json").write_text(json.dumps({"format": "dhumandiff-bundle"}))
        progress(1, 1, "done")
        return item.out

    items = [B.BatchItem("m", src, out_root / "m")]
    opts = {"runtime": "onnx"}
    assert [r.status for r in B.run_batch(items, job, kind="bundle", options=opts).results] == ["converted"]
    assert [r.status for r in B.run_batch(items, job, kind="bundle", options=opts).results] == ["skipped"]
    assert [r.status for r in B.run_batch(items, job, kind="bundle", options={"runtime": "openvino"}
                                          ).results] == ["converted"]
    (src / "weights.bin").write_bytes(b"12345")
    assert [r.status for r in B.run_batch(items, job, kind="bundle", options={"runtime": "openvino"}
                                          ).results] == ["converted"]
    assert calls == ["m", "m", "m"]

    foreign = [B.BatchItem("f", src, out_root / "f")]
    (out_root / "f").mkdir()
    (out_root / "f" / "precious.txt").write_text("keep me")
    report = B.run_batch(foreign, job, kind="bundle", options=opts)
    assert report.results[0].status == "failed" and "--overwrite" in report.results[0].error
    assert report.results[0].exit_code == 2
    with pytest.raises(B.BatchError) as exc:
        report.raise_for_failures()
    assert exc.value.exit_code == 2
    assert B.run_batch(foreign, job, kind="bundle", options=opts, overwrite=True).results[0].status == "converted"


def test_any_exception_is_one_line_and_the_batch_goes_on(tmp_path):
    srcs = []
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "x").write_text(n)
        srcs.append(B.BatchItem(n, tmp_path / n, tmp_path / "out" / n))

    def job(item, progress):
        if item.name == "a":
            raise RuntimeError("boom\nsecond line of a long traceback-ish message")
        item.out.mkdir(parents=True)
        return item.out

    report = B.run_batch(srcs, job, kind="folder", options={})
    assert [r.status for r in report.results] == ["failed", "converted"]
    assert report.results[0].error == "RuntimeError: boom"
    assert json.loads((tmp_path / "out" / "b" / B.SIDECAR).read_text())["sha256"] == B.source_digest([tmp_path / "b"])


def test_digest_ignores_folder_name_and_hidden_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "w.bin").write_bytes(b"w")
    (b / ".DS_Store").write_bytes(b"junk")
    assert B.source_digest([a]) == B.source_digest([b])
    (b / "sub" / "w2.bin").write_bytes(b"")
    assert B.source_digest([a]) != B.source_digest([b])


def test_batch_needs_a_folder_with_models(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "onnx", "--batch", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "holds no model folder" in capsys.readouterr().err
    assert main(["export", "onnx", "--batch", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1


def test_convert_official_batch(tmp_path, capsys):
    sdxl, weights, _ = official_release(tmp_path / "release")
    releases = tmp_path / "releases"
    shutil.copytree(weights, releases / "r1")
    shutil.copytree(weights, releases / "r2")
    shutil.copytree(weights, releases / "bad")
    (releases / "bad" / "mapping.pt").unlink()
    out = tmp_path / "models"
    args = ["convert", "official", "--sdxl", str(sdxl), "--batch", str(releases), "--out", str(out)]
    assert main(args) == 9
    text = capsys.readouterr().out
    assert "2 converted, 0 skipped, 1 failed" in text and "mapping.pt not found" in text, text
    from dhumandiff.model.dhumandiff_model import DHumanDiff

    DHumanDiff.from_pretrained(out / "r2")  # a complete model folder (the record is a sidecar beside it)
    assert json.loads((out / "r1" / B.SIDECAR).read_text())["sha256"] == B.source_digest([releases / "r1"])
    assert main(args) == 9
    assert "0 converted, 2 skipped, 1 failed" in capsys.readouterr().out
    assert main(["convert", "official", "--sdxl", str(sdxl), "--out", str(out)]) == 1  # neither --weights nor --batch
