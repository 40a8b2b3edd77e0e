"""The embedded default and real people: a real photo ends in one clear line, never a silent cartoon.

The default (``tiny``) knows only its synthetic world. Real photos (scikit-image's astronaut, the group photo in
the insightface wheel) given to it are refused with one line that says so and points to the README's real-photo
section when its detector does not find exactly one face; when the user picks a face anyway the same line is a
warning. Upscaled and JPEG-compressed world photos are not mistaken for real ones.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from dhumandiff.checks.parity import world_faces
from dhumandiff.contract.faces.real_photo import looks_real
from dhumandiff.errors import FaceNotFoundError

insightface = pytest.importorskip("insightface")
GROUP = Path(os.path.dirname(insightface.__file__)) / "data" / "images" / "t1.jpg"


def _real_photos() -> dict[str, np.ndarray]:
    group = np.asarray(Image.open(GROUP).convert("RGB"))
    return {"astronaut": skdata.astronaut(), "group": group, "one person from the group": group[0:300, 400:750],
            "chelsea": skdata.chelsea()}


def test_real_photos_are_recognised_and_world_photos_are_not():
    for name, img in _real_photos().items():
        assert looks_real(img), name
    a, b, _ = world_faces(0)
    for face in (a, b):
        for size, resample in ((900, Image.BICUBIC), (4000, Image.NEAREST)):
            big = face.resize((size, size), resample)
            assert not looks_real(np.asarray(big)), (size, resample)
            buf = io.BytesIO()
            big.save(buf, "JPEG", quality=75)
            assert not looks_real(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def _cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    a, b, _ = world_faces(0)
    Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
    b.save(tmp_path / "world.png")
    cmd = [sys.executable, "-m", "dhumandiff.cli.main", "generate", "--face-a", str(tmp_path / "astronaut.png"),
           "--face-b", str(tmp_path / "world.png"), "--prompt", "a man and a woman on the beach", "--steps", "2",
           "--out", str(tmp_path / "out.png"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_default_refuses_a_real_photo_in_one_line(tmp_path):
    r = _cli(tmp_path)
    assert r.returncode == 4, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "looks like a real photo" in lines[0] and "Real photos" in lines[0] and "--face-index" not in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_default_warns_when_a_face_is_picked_in_a_real_photo():
    """The reference API (what ``generate --face-index-a 0`` runs): the same line as a warning, and a portrait."""
    from dhumandiff.model.generate import generate_portrait, load_model

    _, b, words = world_faces(0)
    with pytest.warns(UserWarning, match="looks like a real photo.*generating anyway"):
        out = generate_portrait(load_model("tiny"), skdata.astronaut(), b, "a man and a woman on the beach",
                                steps=2, face_index_a=0, person_words=words)
    assert out.image.size == (64, 64)


def test_the_default_s_bundle_says_the_same(tmp_path_factory):
    from kiosk_fixtures import kiosk_bundle

    from dhumandiff.runtimes.generator import load_bundle

    gen = load_bundle(kiosk_bundle(tmp_path_factory))
    a, b, words = world_faces(0)
    real = Image.fromarray(skdata.astronaut())
    with pytest.raises(FaceNotFoundError, match="looks like a real photo"):
        gen(real, b, "a man and a woman on the beach", steps=1, person_words=words)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen(real, b, "a man and a woman on the beach", steps=1, person_words=words, face_index_a=0)
    assert any("looks like a real photo" in str(w.message) for w in caught)
