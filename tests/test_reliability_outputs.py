"""No data loss: what dhumandiff writes never replaces what it was not asked to replace.

Each case failed before its fix: ``generate`` silently overwrote an existing ``--out`` (even one of its own input
photos, or ``/dev/null``-like nodes); ``export --overwrite`` deleted whatever folder it was pointed at; two exports
to one ``--out`` both reported success.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dhumandiff.cli.main import main
from dhumandiff.utils.atomic import OutputBusyError, atomic_dir

from training_fixtures import random_tiny

REPO = Path(__file__).resolve().parents[1]
FACE_A, FACE_B = REPO / "examples/face_a.png", REPO / "examples/face_b.png"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_tiny().save_pretrained(tmp_path_factory.mktemp("m") / "tiny-random")


def _gen(model_dir: Path, out: Path, *extra: str, face_a: Path = FACE_A) -> int:
    return main(["generate", "--model", str(model_dir), "--face-a", str(face_a), "--face-b", str(FACE_B),
                 "--prompt", "a man and a woman on the beach", "--out", str(out), "--steps", "1", *extra])


def test_generate_never_replaces_an_existing_file_unless_asked(model_dir, tmp_path, capsys):
    out = tmp_path / "portrait.png"
    out.write_bytes(b"someone's earlier portrait")
    assert _gen(model_dir, out) == 2
    assert out.read_bytes() == b"someone's earlier portrait"
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and "Traceback" not in err
    assert _gen(model_dir, out, "--overwrite") == 0
    assert Image.open(out).size == (64, 64)


def test_generate_never_writes_over_an_input_photo(model_dir, tmp_path, capsys):
    photo = tmp_path / "guest.png"
    photo.write_bytes(FACE_A.read_bytes())
    before = photo.read_bytes()
    for extra in ((), ("--overwrite",)):
        assert _gen(model_dir, photo, *extra, face_a=photo) == 1
        assert photo.read_bytes() == before
    assert "is one of the input photos" in capsys.readouterr().err
    link = tmp_path / "same-photo.png"
    link.symlink_to(photo)
    assert _gen(model_dir, link, "--overwrite", face_a=photo) == 1  # the same file under another name
    assert photo.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_generate_writes_only_regular_files(model_dir, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert _gen(model_dir, fifo, "--overwrite") == 1
    assert fifo.is_fifo(), "the FIFO must not be replaced by a PNG"
    assert "not a regular file" in capsys.readouterr().err


def _photo_folder(path: Path) -> Path:
    path.mkdir()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path / "wedding-001.jpg")
    return path


def test_export_overwrite_replaces_only_a_bundle(model_dir, tmp_path, capsys):
    photos = _photo_folder(tmp_path / "photos")
    args = ["export", "onnx", str(model_dir), "--out", str(photos), "--overwrite"]
    assert main(args) == 2
    assert sorted(p.name for p in photos.iterdir()) == ["wedding-001.jpg"], "the photos must be untouched"
    assert "not ours to replace" in capsys.readouterr().err
    bundle = tmp_path / "bundle"
    assert main(["export", "onnx", str(model_dir), "--out", str(bundle)]) == 0
    first = (bundle / "bundle.json").stat().st_mtime_ns
    assert main(["export", "onnx", str(model_dir), "--out", str(bundle), "--overwrite"]) == 0  # a bundle: replaced
    assert (bundle / "bundle.json").stat().st_mtime_ns != first


def test_two_writers_of_one_output_never_both_succeed(tmp_path):
    """A second writer of the same folder is refused at once while the first is writing (threads and processes)."""
    target = tmp_path / "bundle"
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with atomic_dir(target) as tmp:
            (tmp / "bundle.json").write_text("{}")
            inside.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(30)
    with pytest.raises(OutputBusyError, match="being written by another dhumandiff process"):
        with atomic_dir(target):
            pass
    code = ("import sys; from dhumandiff.utils.atomic import atomic_dir, OutputBusyError\n"
            f"try:\n    with atomic_dir({str(target)!r}): pass\n"
            "except OutputBusyError as e: print('busy'); sys.exit(0)\nsys.exit(1)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "busy", res.stderr
    release.set()
    t.join(30)
    assert (target / "bundle.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="already exists"):  # and the winner's output is not replaced
        with atomic_dir(target):
            pass
