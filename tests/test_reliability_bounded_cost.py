"""Bounded cost for every input: a photo within the pixel limits but of 16-40 MP (kilobytes on disk) is decoded,
oriented, converted and searched for a face on a bounded copy, so it costs about what an ordinary photo costs;
and every error line the CLI prints is one line with control characters escaped.

Cost is measured in a fresh subprocess (its own peak RSS, ``resource.getrusage``) through the real loader and
the real world face detector, exactly as ``dhumandiff generate --bundle`` runs them.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from dhumandiff.cli.main import printable
from dhumandiff.data.world import FACE_BACKGROUND_RGB

REPO = Path(__file__).resolve().parents[1]
FACE_A = REPO / "examples" / "face_a.png"

_PROBE = r"""
import json, resource, sys, time
from dhumandiff.contract.bundle import IdentitySpec
from dhumandiff.contract.faces.crop import FaceCropper
from dhumandiff.contract.images import load_image
from dhumandiff.errors import DHumanDiffError

spec = IdentitySpec(num_id_tokens=4, face_size=112, clip_size=64, clip_mean=(0.5, 0.5, 0.5),
                    clip_std=(0.5, 0.5, 0.5), arcface_mean=127.5, arcface_std=127.5, detector="world")
crop = FaceCropper(spec)
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    size, code = list(crop(load_image(sys.argv[1]), None, "face a").size), 0
except DHumanDiffError as e:
    size, code = None, e.exit_code
print(json.dumps({"seconds": time.perf_counter() - t0, "code": code, "crop": size,
                  "added_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024}))
"""


def _probe(photo: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(photo)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _flat_png(path: Path, width: int, height: int, rgb: tuple[int, int, int]) -> Path:
    """A flat-colour PNG written row by row (never held whole in memory): ~0.1 MB on disk for 40 MP."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row, z = b"\0" + bytes(rgb) * width, zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def ordinary() -> dict:
    return _probe(FACE_A)


def test_16mp_photo_costs_about_what_an_ordinary_one_does(tmp_path: Path, ordinary: dict) -> None:
    """A 4000x4000 face (60 KB on disk, within the kiosk's 16 MP limit) was decoded and searched at full size:
    ~1.7 GB and ~20 s here. Now a bounded copy: the same face is found and cropped, at a few hundred MB."""
    big = tmp_path / "face_16mp.png"
    Image.open(FACE_A).convert("RGB").resize((4000, 4000), Image.NEAREST).save(big)
    got = _probe(big)
    assert ordinary["code"] == 0 and got["code"] == 0 and got["crop"] == ordinary["crop"], got
    assert got["added_mb"] - ordinary["added_mb"] < 350, (got, ordinary)
    assert got["seconds"] < 15, got


def test_40mp_flat_photo_is_refused_in_bounded_time_and_memory(tmp_path: Path, ordinary: dict) -> None:
    """A 39.7 MP flat PNG (under the 40 MP limit): no face, exit 4, after a bounded amount of work (it took
    ~60 s and ~4.5 GB before)."""
    got = _probe(_flat_png(tmp_path / "flat_40mp.png", 7280, 5456, FACE_BACKGROUND_RGB))
    assert got["code"] == 4, got
    assert got["added_mb"] - ordinary["added_mb"] < 350, (got, ordinary)
    assert got["seconds"] < 15, got


# ------------------------------------------------------------------------------------------- error lines


@pytest.mark.parametrize("raw,shown", [
    ("face\x1b[31m\n.png", "face\\x1b[31m\\n.png"),
    ("tab\there\rand\x07bell", "tab\\there\\rand\\x07bell"),
    ("bidi \u202eevil\u2028next", "bidi \\u202eevil\\u2028next"),
    ("not utf-8 \udcff", "not utf-8 \\xff"),  # a file-name byte carried by Python's surrogateescape
    ("café 写真 👩\u200d👩 ok", "café 写真 👩\u200d👩 ok"),  # ordinary unicode stays as it is
])
def test_printable_escapes_control_characters_only(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_bounds_the_line() -> None:
    line = printable("x" * 100_000)
    assert len(line) < 2100 and line.endswith("(98000 more characters)")

