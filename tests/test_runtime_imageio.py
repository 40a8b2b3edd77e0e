"""Input photos: real files written to tmp_path, every refusal and every odd-but-valid format."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dhumandiff.errors import InputImageError
from dhumandiff.contract.images import (
    MAX_PIXELS,
    WORK_PIXELS,
    load_image,
    load_rgb,
    postprocess,
    preprocess_clip,
    preprocess_face,
    square_resize,
)
from dhumandiff.utils.images import save_image_atomic


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand, so headers can claim anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw_rows))
            + _chunk(b"IEND", b""))


def _refused(path: Path, pattern: str) -> None:
    with pytest.raises(InputImageError, match=pattern) as e:
        load_image(path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ refusals


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "face.jpg", r"face\.jpg does not exist; check the path")


def test_folder(tmp_path: Path) -> None:
    _refused(tmp_path, r"is a folder; pass an image file")


def test_zero_byte_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.png"
    f.write_bytes(b"")
    _refused(f, r"empty\.png is empty \(0 bytes\)")


def test_text_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.jpg"
    f.write_text("this is not a photo\n" * 10)
    _refused(f, r"notes\.jpg is not an image file Pillow can read; pass a JPEG, PNG or WebP photo")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    f = tmp_path / f"cut.{fmt.lower()}"
    noise = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(f, format=fmt)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _refused(f, r"is corrupt or truncated .*re-copy or re-export the photo")


def test_huge_image_header_is_refused_before_decoding(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"
    f.write_bytes(_png(10_000, 5_000, 8, 2, b"\0" * 16))  # claims 50 MP, holds almost nothing
    _refused(f, r"10000x5000 \(50 MP\), over the 40 MP limit \(possible decompression bomb\)")
    assert 10_000 * 5_000 > MAX_PIXELS


def test_pillow_bomb_threshold_is_also_reported(tmp_path: Path) -> None:
    f = tmp_path / "bigbomb.png"
    f.write_bytes(_png(30_000, 30_000, 8, 2, b"\0" * 16))  # 900 MP: Pillow itself refuses on open
    _refused(f, r"(too large to decode safely|over the 40 MP limit)")


def test_png_metadata_bombs_are_refused(tmp_path: Path) -> None:
    """Text / ICC chunks that decompress past Pillow's limits: one line naming the metadata, from a path and from
    uploaded bytes, never a traceback (the corpus of tests/badinput runs them through every door)."""
    from badinput.badinput_corpus import metadata_bombs

    for name, data in metadata_bombs(Path(__file__).parents[1].joinpath("examples", "face_a.png").read_bytes()).items():
        f = tmp_path / name
        f.write_bytes(data)
        _refused(f, r"carries more text or colour-profile metadata than a photo does")
        with pytest.raises(InputImageError, match=r"the uploaded image carries more text"):
            load_image(data)


# ---------------------------------------------------------------------------------- bounded cost: big photos


def _pattern(width: int, height: int) -> np.ndarray:
    """Smooth colour ramps (JPEG-friendly) with a sharp red block in the top-left corner (orientation marker)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], -1)
    img = img.astype(np.uint8)
    img[: height // 8, : width // 8] = [255, 0, 0]
    return img


def test_ordinary_photo_keeps_every_pixel(tmp_path: Path) -> None:
    """A 1920x1080 frame is under WORK_PIXELS: the full-resolution decode, pixel for pixel, as before."""
    f = tmp_path / "hd.png"
    arr = _pattern(1920, 1080)
    Image.fromarray(arr).save(f)
    assert 1920 * 1080 <= WORK_PIXELS
    np.testing.assert_array_equal(load_rgb(f), arr)


def test_large_photo_is_reduced_right_after_decoding(tmp_path: Path) -> None:
    """6 MP -> averaged over 2x2 blocks (1.5 MP); 39.7 MP -> 5x5 blocks (1.6 MP; 4x4 would leave 2.5 MP)."""
    f = tmp_path / "big.png"
    arr = _pattern(3000, 2000)
    Image.fromarray(arr).save(f)
    out = load_image(f)
    assert out.size == (1500, 1000) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.fromarray(arr).reduce(2)))
    np.testing.assert_array_equal(np.asarray(load_image(f.read_bytes())), np.asarray(out))  # an upload: the same
    assert load_image(f, work_pixels=None).size == (3000, 2000)  # a caller may ask for the full resolution
    assert load_image(Image.fromarray(arr)).size == (1500, 1000)  # every door is bounded
    assert load_image(arr).size == (1500, 1000)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (7280, 5456), (10, 20, 30)).save(huge)
    out = load_image(huge)
    assert out.size == (1456, 1092) and out.width * out.height <= WORK_PIXELS
    assert np.asarray(out)[0, 0].tolist() == [10, 20, 30]


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    """libjpeg decodes a 16 MP JPEG at 1/2 scale (Image.draft), then 2x2 blocks are averaged: the photo still
    matches its full decode, reduced."""
    f = tmp_path / "big.jpg"
    arr = _pattern(4000, 4000)
    Image.fromarray(arr).save(f, quality=95)
    out = np.asarray(load_image(f)).astype(int)
    assert out.shape == (1000, 1000, 3)
    full = np.asarray(Image.open(f).convert("RGB").reduce(4)).astype(int)
    assert np.abs(out - full).mean() < 2.0


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_exif_orientation_survives_the_reduction(tmp_path: Path, fmt: str) -> None:
    """The orientation is read from the decoded file (for TIFF it is a tag of the file, not of a reduced copy)."""
    f = tmp_path / f"rotated.{fmt.lower()}"
    stored = Image.fromarray(_pattern(2400, 1600)).rotate(90, expand=True)  # stored sideways: 1600x2400
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(f, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    out = np.asarray(load_image(f))
    assert out.shape == (800, 1200, 3)  # upright landscape, 2x2 blocks
    assert out[20, 20, 0] > 200 and out[20, 20, 1] < 60  # the red marker is back in the top-left corner


def test_large_palette_and_16bit_photos_are_reduced_by_value(tmp_path: Path) -> None:
    """Palette indices and 16-bit samples are averaged as colours, not as indices or raw integers."""
    pal = Image.new("P", (3000, 2000), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    f = tmp_path / "pal.png"
    pal.save(f, transparency=0)
    out = load_image(f)
    assert out.size == (1500, 1000) and np.asarray(out)[10, 10].tolist() == [0, 255, 0]
    g = tmp_path / "grey16.png"
    Image.fromarray(np.full((2000, 3000), 40000, np.uint16)).save(g)
    out = np.asarray(load_image(g))
    assert out.shape == (1000, 1500, 3) and out[5, 5].tolist() == [156, 156, 156]  # 40000 / 65535 * 255


# ---------------------------------------------------------------------------------------- odd but valid


def test_greyscale_loads_as_rgb(tmp_path: Path) -> None:
    f = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(f)
    img = load_image(f)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_cmyk_jpeg_loads_as_rgb(tmp_path: Path) -> None:
    f = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(f, quality=95)  # pure red in CMYK
    img = load_image(f)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[8, 8].tolist()
    assert r > 200 and g < 50 and b < 50


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    f = tmp_path / "alpha.png"
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[:, :4] = [255, 0, 0, 255]  # opaque red left
    arr[:, 4:] = [0, 0, 255, 0]  # fully transparent right
    Image.fromarray(arr, "RGBA").save(f)
    img = np.asarray(load_image(f))
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[0, 7].tolist() == [255, 255, 255]


def test_palette_with_transparency(tmp_path: Path) -> None:
    f = tmp_path / "pal.png"
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    img.save(f, transparency=0)
    out = load_image(f)
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [0, 255, 0]


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    f = tmp_path / "grey16.png"
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(f)
    assert Image.open(f).mode.startswith("I")
    img = np.asarray(load_image(f))
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert img[:, :, 0].tolist() == [[0, 128], [255, 4]]


def test_16bit_rgb_loads_as_8bit_rgb(tmp_path: Path) -> None:
    f = tmp_path / "rgb16.png"
    px = np.array([[[65535, 0, 32896], [257 * 10, 257 * 20, 257 * 30]]], dtype=">u2")  # 1 row, 2 pixels
    f.write_bytes(_png(2, 1, 16, 2, b"\0" + px.tobytes()))
    img = np.asarray(load_image(f))
    assert img.shape == (1, 2, 3)
    assert np.abs(img.astype(int) - np.array([[[255, 0, 128], [10, 20, 30]]])).max() <= 1


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    f = tmp_path / "rotated.jpg"
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = [255, 0, 0]  # left red
    arr[:, 20:] = [0, 0, 255]  # right blue
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(f, exif=exif, quality=95)
    out = np.asarray(load_image(f))
    assert out.shape == (40, 20, 3)  # upright: portrait
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the left (red) side is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_arrays_and_pil_images_are_accepted() -> None:
    assert load_image(np.zeros((4, 4), np.uint8)).mode == "RGB"
    assert load_image(np.zeros((4, 4, 4), np.uint8)).size == (4, 4)
    assert load_image(Image.new("LA", (3, 3))).mode == "RGB"
    with pytest.raises(InputImageError, match="HxW"):
        load_image(np.zeros((4,), np.uint8))


# ------------------------------------------------------------------------------------- pre/post-processing


def test_face_preprocessing() -> None:
    x = preprocess_face(Image.new("RGB", (200, 150), (255, 0, 128)), 112)
    assert x.shape == (1, 3, 112, 112) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 50, 50], [1.0, -1.0, (128 - 127.5) / 127.5], atol=1e-6)


def test_clip_preprocessing_uses_manifest_mean_std() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = preprocess_clip(Image.new("RGB", (64, 64), (255, 255, 255)), 32, mean, std)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - m) / s for m, s in zip(mean, std)], rtol=1e-6)


def test_square_resize_centre_crops() -> None:
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255  # white centre square
    out = np.asarray(square_resize(Image.fromarray(arr), 5))
    assert out.shape == (5, 5, 3) and out.min() == 255


def test_postprocess_matches_diffusers_rounding() -> None:
    x = np.array([-1.0, 0.0, 1.0, 2.0, -3.0], np.float32)
    sample = np.broadcast_to(x, (1, 3, 1, 5)).copy()
    img = np.asarray(postprocess(sample))
    assert img.shape == (1, 5, 3)
    assert img[0, :, 0].tolist() == [0, 128, 255, 255, 0]


def test_save_png_is_atomic(tmp_path: Path) -> None:
    out = save_image_atomic(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "sub" / "out.png")
    assert out.exists() and np.asarray(Image.open(out))[0, 0].tolist() == [1, 2, 3]
    assert [p.name for p in out.parent.iterdir()] == ["out.png"]
