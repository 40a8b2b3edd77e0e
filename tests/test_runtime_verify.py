"""``dhumandiff verify BUNDLE``: offline, torch-free check of a copied bundle (every file against its sha256)."""

from __future__ import annotations

import json

import pytest

from dhumandiff.cli.main import main
from dhumandiff.errors import BundleError
from dhumandiff.runtimes.verify import verify_bundle

from bundle_edits import hash_tokenizer
from runtime_fixtures import write_fake_bundle


def test_a_complete_bundle_verifies(tmp_path, capsys):
    write_fake_bundle(tmp_path / "b")
    hash_tokenizer(tmp_path / "b")
    report = verify_bundle(tmp_path / "b")
    assert report.files == 9  # six graphs + unet's external data + tokenizer + bundle.json
    assert report.bytes == sum(f.stat().st_size for f in (tmp_path / "b").iterdir())
    assert main(["verify", str(tmp_path / "b")]) == 0
    assert "every sha256 matches" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "onnx"


@pytest.mark.parametrize("damage,needle", [
    (lambda root: (root / "unet.onnx.data").write_bytes(b"\1" * 64), "sha256 mismatch for unet.onnx.data"),
    (lambda root: (root / "vae_decoder.onnx").unlink(), "vae_decoder.onnx is missing"),
    (lambda root: (root / "bundle.json").write_text("{"), "not valid JSON"),
])
def test_a_damaged_copy_is_named_in_one_line_with_exit_10(tmp_path, capsys, damage, needle):
    write_fake_bundle(tmp_path / "b")
    hash_tokenizer(tmp_path / "b")
    damage(tmp_path / "b")
    with pytest.raises(BundleError, match=needle):
        verify_bundle(tmp_path / "b")
    assert main(["verify", str(tmp_path / "b")]) == 10
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_a_tokenizer_without_a_digest_is_not_verified(tmp_path, capsys):
    """verify says every sha256 matches: a tokenizer bundle.json gives no digest for (the reader tolerates it in
    hand-made bundles; the exporter always writes one) could have been changed, so verify refuses it."""
    write_fake_bundle(tmp_path / "b")
    assert main(["verify", str(tmp_path / "b")]) == 10
    err = capsys.readouterr().err
    assert "bundle.json has no tokenizer.sha256, so a changed tokenizer.json would go unnoticed" in err
    assert len(err.strip().splitlines()) == 1
    hash_tokenizer(tmp_path / "b")
    assert main(["verify", str(tmp_path / "b")]) == 0
    (tmp_path / "b" / "tokenizer.json").write_text("{}")
    assert main(["verify", str(tmp_path / "b")]) == 10
    assert "sha256 mismatch for tokenizer.json (tokenizer)" in capsys.readouterr().err
