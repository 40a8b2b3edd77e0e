"""Writers of the bad-input corpus (photos written by hand or by PIL from the two committed example faces) and
small bundle-editing helpers, shared by the badinput tests and their conftest."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FACE_A = REPO / "examples" / "face_a.png"
FACE_B = REPO / "examples" / "face_b.png"
PROMPT = "a man and a woman on the beach"
#: File names holding an ANSI colour escape and a newline (the photo exists / does not).
CONTROL_NAME = "face\x1b[31m\n.png"
CONTROL_MISSING = "missing\x1b[31m\n.png"


# ------------------------------------------------------------------------------------------------ photos


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand, so its header can claim anything (sizes, 16-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw_rows))
            + _chunk(b"IEND", b""))


def _rgb16_png(rgb8: np.ndarray) -> bytes:
    """A real 16-bit-per-channel RGB PNG of ``rgb8`` (PIL cannot write one): value * 257, big-endian."""
    h, w, _ = rgb8.shape
    px = (rgb8.astype(">u2") * 257).reshape(h, w * 3)
    rows = b"".join(b"\0" + px[y].tobytes() for y in range(h))
    return png_bytes(w, h, 16, 2, rows)


def with_chunks(png: bytes, chunks: bytes, after_image: bool = False) -> bytes:
    """``png`` with extra chunks inserted after IHDR (or, ``after_image``, just before IEND)."""
    at = png.rindex(b"IEND") - 4 if after_image else 8 + 25  # signature + the IHDR chunk
    return png[:at] + chunks + png[at:]


def metadata_bombs(png: bytes) -> dict[str, bytes]:
    """PNGs of the face whose text / ICC chunks decompress far past Pillow's limits (kilobytes on disk): one zTXt,
    iTXt or iCCP chunk of 8 MB (over ``MAX_TEXT_CHUNK``), and 70 zTXt chunks of 1 MB each after the image data
    (over ``MAX_TEXT_MEMORY``)."""
    big = zlib.compress(b"\0" * 8_000_000, 9)
    one_mb = zlib.compress(b"a" * 1_000_000, 9)
    return {
        "ztxt_bomb.png": with_chunks(png, _chunk(b"zTXt", b"Comment\0\0" + big)),
        "itxt_bomb.png": with_chunks(png, _chunk(b"iTXt", b"Comment\0\x01\0\0\0" + big)),
        "iccp_bomb.png": with_chunks(png, _chunk(b"iCCP", b"icc\0\0" + big)),
        "text_memory_bomb.png": with_chunks(png, b"".join(_chunk(b"zTXt", b"k%d\0\0" % i + one_mb)
                                                          for i in range(70)), after_image=True),
    }


def _three_faces() -> Image.Image:
    from dhumandiff.data.world import make_identities, render_face

    canvas = Image.new("RGB", (336, 112), (200, 200, 210))
    for i, ident in enumerate(make_identities(3, seed=5)):
        canvas.paste(render_face(ident, size=112), (112 * i, 0))
    return canvas


def _small_face(face: Image.Image, side: int = 16) -> Image.Image:
    """The face shrunk to ``side`` px on a 112 px plain background: found, but too small to carry an identity."""
    from dhumandiff.data.world import FACE_BACKGROUND_RGB

    canvas = Image.new("RGB", (112, 112), FACE_BACKGROUND_RGB)
    canvas.paste(face.resize((side, side), Image.BOX), (40, 40))
    return canvas


def build_corpus(root: Path) -> dict[str, Path]:
    """Write every photo case into ``root``; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    face = Image.open(FACE_A).convert("RGB")
    rgb = np.asarray(face)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        files[name] = root / name

    def save(name: str, img: Image.Image, **kw: Any) -> None:
        buf = io.BytesIO()
        img.save(buf, format=kw.pop("format", None) or Image.registered_extensions()[Path(name).suffix], **kw)
        put(name, buf.getvalue())

    # unreadable
    files["missing.png"] = root / "missing.png"
    (root / "a_folder.png").mkdir()
    files["a_folder.png"] = root / "a_folder.png"
    put("zero_bytes.png", b"")
    put("text.png", b"this is not a photo\n" * 20)
    put("random_bytes.jpg", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    png = FACE_A.read_bytes()
    put("truncated.png", png[: len(png) // 2])
    buf = io.BytesIO()
    face.save(buf, format="JPEG", quality=95)
    put("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])
    corrupt = bytearray(png)
    corrupt[200:260] = bytes(60)  # inside the first IDAT: the CRC and the zlib stream both break
    put("corrupt_crc.png", bytes(corrupt))
    put("bomb_header.png", png_bytes(10_000, 5_000, 8, 2, b"\0" * 16))  # claims 50 MP, holds nothing
    put("bomb_pillow.png", png_bytes(30_000, 30_000, 8, 2, b"\0" * 16))  # 900 MP: Pillow's own bomb limit
    for name, data in metadata_bombs(png).items():
        put(name, data)
    # within the pixel limits but 16 MP: kilobytes on disk, seconds and gigabytes of work unless bounded
    from dhumandiff.data.world import FACE_BACKGROUND_RGB

    save("flat_16mp.png", Image.new("RGB", (4000, 4000), FACE_BACKGROUND_RGB))
    big_face = face.resize((4000, 4000), Image.NEAREST)
    save("face_16mp.png", big_face)
    save("face_16mp.jpg", big_face, quality=95)
    put("layout_deep.json", b"[" * 30_000 + b"]" * 30_000)  # a --layout file nested far too deep
    (root / CONTROL_NAME).write_bytes(png)
    files[CONTROL_NAME] = root / CONTROL_NAME
    files[CONTROL_MISSING] = root / CONTROL_MISSING
    # faces the detector must refuse
    x = np.linspace(0, 255, 112, dtype=np.uint8)
    save("gradient.png", Image.fromarray(np.stack([np.tile(x, (112, 1))] * 3, -1)))
    save("three_faces.png", _three_faces())
    save("small_face.png", _small_face(face))
    # odd but valid: must load upright as 8-bit RGB
    save("grey.png", face.convert("L"))
    save("cmyk.jpg", face.convert("CMYK"), quality=95)
    put("rgb16.png", _rgb16_png(rgb))
    grey16 = (np.asarray(face.convert("L")).astype(np.uint16) * 257)
    save("grey16.png", Image.fromarray(grey16))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    rgba[:8, :8, 3] = 0  # a transparent corner: composited on white
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("palette.png", face.quantize(256))
    stored = face.rotate(90, expand=True)  # stored sideways; EXIF orientation 6 says "rotate 90 CW to display"
    exif = stored.getexif()
    exif[0x0112] = 6
    save("exif_rotated.jpg", stored, quality=97, exif=exif)
    save("face.jpg", face, quality=97)  # the same photo, upright, for comparison
    return files


def edit_manifest(bundle: Path, edit: Any) -> None:
    """Apply ``edit(dict)`` to bundle.json (which has no digest of its own: only the files it lists do)."""
    path = bundle / "bundle.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d, indent=2))


def rehash(bundle: Path) -> None:
    """Recompute every component digest after a deliberate change to a graph file."""
    from dhumandiff.contract.bundle import component_digests

    def fix(d: dict) -> None:
        for comp in d["components"].values():
            comp["sha256"] = component_digests(bundle, list(comp["sha256"]))

    edit_manifest(bundle, fix)


# ----------------------------------------------------------------------------------------------- the CLI


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    from dhumandiff.cli.main import main

    rc = main(args)
    return rc, capsys.readouterr().err


def check_cli_refusal(rc: int, err: str, code: int, needle: str, out_dir: Path) -> None:
    """Exit code, exactly one ``error:`` line matching ``needle``, nothing else but warnings, no output file."""
    assert "Traceback" not in err, err
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and re.search(needle, errors[0]), err
    assert all(ln.startswith(("error:", "warning:")) for ln in lines), err
    assert sorted(p.name for p in out_dir.iterdir()) == [], "no output (and no temp file) may be written"
