"""Input photos in, generated image out: the one photo loader, the two encoders' preprocessing, the output pixels.

Users hand the CLI, the Python API and the kiosk whatever their phone or scanner made: EXIF-rotated JPEGs, CMYK,
16-bit PNGs, images with alpha, or a file that is not an image at all. :func:`load_image` (PIL) and
:func:`load_rgb` (NumPy) are two views of ONE decode: every door (the torch-free runtimes, the PyTorch
reference, the kiosk, evaluation, the face analyzers) turns the same input into the same pixels, or refuses it
with the same one-line :class:`~dhumandiff.errors.InputImageError` that says what to do.

Pixel rules (one set, whatever the source: a path, uploaded bytes, a PIL image or an array):

* orientation: the EXIF orientation is applied (a malformed EXIF block is ignored, not fatal);
* transparency (RGBA, LA, PA, palette with a transparent index, HxWx4 arrays): composited on white;
* integers wider than 8 bits (16-bit PNG/TIFF, 32-bit ``I``, uint16/int arrays): full scale 65535 when any value
  exceeds 255, else 255 (8-bit data stored wide), so the result does not depend on whether Pillow opens a 16-bit
  PNG as ``I`` or ``I;16``; rounded half up;
* floats (``F`` images, float arrays): values in 0..1 when the maximum is <= 1, else 0..255; rounded half up,
  clipped; NaN/Inf is refused (it is not a colour: a caller's bug, not a photo);
* everything else (greyscale, palette, CMYK, YCbCr...) through Pillow's conversion to RGB.

Limits: a file or upload whose header claims more than :data:`MAX_PIXELS` (or the caller's lower ``max_pixels``,
e.g. the kiosk's) is refused before it is decoded (decompression bombs); so is one whose text or ICC chunks
decompress past Pillow's ``PngImagePlugin.MAX_TEXT_CHUNK`` / ``MAX_TEXT_MEMORY`` (metadata bombs).

Bounded cost: the pixel limit bounds size, not cost, so a photo over :data:`WORK_PIXELS` (about a 1920x1080
frame) is brought under it right after decoding, by the smallest whole factor ``f``: a JPEG is decoded at 1/2,
1/4 or 1/8 scale by libjpeg itself (``Image.draft``), then any image is averaged over ``f x f`` blocks
(``Image.reduce``). The EXIF transpose, the colour conversion, the face detector and the crops then work on at
most :data:`WORK_PIXELS`, so a 40 MP photo costs what an ordinary one does. A photo at or under the bound is
untouched: its pixels are the full-resolution decode, as before.

Preprocessing rule (the PyTorch reference must do the same for parity): centre-crop to a square, resize with
PIL bicubic to the encoder size, then normalise in float32. Identity encoder: ``(x - arcface_mean) /
arcface_std`` on RGB 0..255. CLIP encoder: ``(x / 255 - mean) / std`` per channel.

Output pixels: two conversions, kept apart because callers pin their exact rounding: :func:`postprocess` for a
VAE decoder's output in [-1, 1] (the runtimes; diffusers' ``round``), :func:`image01_to_pil` for the PyTorch
reference sampler's image in [0, 1] (``+ 0.5`` then floor).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from dhumandiff.errors import InputImageError

#: Largest accepted input, in pixels: a face photo never needs more; larger is treated as a decompression bomb.
#: Callers may lower it (``max_pixels``), never raise it.
MAX_PIXELS = 40_000_000

#: Largest photo, in pixels, that anything after decoding works on: a larger one is reduced right after decoding
#: (module docstring, "Bounded cost"); ordinary photos (up to 1920x1080) are under it and keep every pixel.
WORK_PIXELS = 2_100_000

ImageLike = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Modes whose pixels are not intensities (palette indices, bits, 16-bit integers Image.reduce cannot average):
#: converted to one that averages before a large photo is reduced.
_BEFORE_REDUCE = {"1": "L", "P": "RGB", "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
#: EXIF orientation -> the transpose that shows the photo upright (the EXIF standard's table, as ImageOps uses).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_RECOPY = "re-copy or re-export the photo"
_REUPLOAD = "upload the photo again"


def load_image(source: ImageLike, name: str | None = None, max_pixels: int = MAX_PIXELS,
               work_pixels: int | None = WORK_PIXELS) -> Image.Image:
    """Any photo -> upright RGB PIL image (8 bits per channel), or :class:`InputImageError`.

    ``source``: a path, the bytes of an image file (an upload), a PIL image, or an HxW / HxWx3 / HxWx4 array.
    ``name`` is what a refusal calls a source that is not a file (``"face a"``, ``"photo a (me.jpg)"``); a file
    is always called by its path. ``max_pixels`` lowers :data:`MAX_PIXELS` (it cannot raise it). A photo over
    ``work_pixels`` comes back reduced by a whole factor to at most that many pixels (module docstring, "Bounded
    cost"); None keeps the full resolution.
    """
    limit = min(int(max_pixels), MAX_PIXELS)
    if isinstance(source, np.ndarray):
        label = name or "the image array"
        return to_rgb(_reduced(_array_to_image(source, label), work_pixels), label)
    if isinstance(source, Image.Image):  # already opened by the caller: its size is the caller's business
        return _decode(source, name or "the image", None, _RECOPY, work_pixels)
    if isinstance(source, (bytes, bytearray)):
        label = name or "the uploaded image"
        if len(source) == 0:
            raise InputImageError(f"{label} is empty (0 bytes); {_REUPLOAD}")
        return _decode(io.BytesIO(source), label, limit, _REUPLOAD, work_pixels)
    if not isinstance(source, (str, os.PathLike)):
        raise InputImageError(f"{name or 'the image'} is a {type(source).__name__}, not an image: pass a file path, "
                              f"the file's bytes, a PIL image or an HxWx3 RGB array")
    path = Path(source)
    label = f"input image {path}"
    if not path.exists():
        raise InputImageError(f"{label} does not exist; check the path")
    if path.is_dir():
        raise InputImageError(f"{label} is a folder; pass an image file (JPEG, PNG, WebP, ...)")
    try:
        if path.stat().st_size == 0:
            raise InputImageError(f"{label} is empty (0 bytes); {_RECOPY}")
        with open(path, "rb") as fh:
            return _decode(fh, label, limit, _RECOPY, work_pixels)
    except OSError as e:
        raise InputImageError(f"cannot read {label} ({e.strerror or e}); check the file and its permissions") from None


def load_rgb(source: ImageLike, name: str | None = None, max_pixels: int = MAX_PIXELS,
             work_pixels: int | None = WORK_PIXELS) -> np.ndarray:
    """:func:`load_image` as a writable, contiguous HxWx3 uint8 RGB array (the same pixels)."""
    return np.array(load_image(source, name, max_pixels, work_pixels), dtype=np.uint8)


def reduction_factor(width: int, height: int, work_pixels: int | None = WORK_PIXELS) -> int:
    """The smallest whole ``f`` with ``ceil(width / f) * ceil(height / f) <= work_pixels`` (1: keep the size)."""
    if work_pixels is None or width * height <= work_pixels:
        return 1
    f = max(2, math.ceil(math.sqrt(width * height / max(int(work_pixels), 1))))
    while -(-width // f) * -(-height // f) > work_pixels:
        f += 1
    return f


def _reduced(img: Image.Image, work_pixels: int | None) -> Image.Image:
    """``img`` averaged over ``f x f`` blocks (:func:`reduction_factor`); the same image when it is small enough."""
    f = reduction_factor(*img.size, work_pixels)
    if f == 1:
        return img
    if img.mode in _BEFORE_REDUCE:
        target = _BEFORE_REDUCE[img.mode]
        img = img.convert("RGBA" if img.mode == "P" and "transparency" in img.info else target)
    return img.reduce(f)


def _upright_method(img: Image.Image) -> Image.Transpose | None:
    """The transpose that the EXIF orientation asks for (None: upright already, or a malformed EXIF block, which
    must not make a good photo unusable). Read from the decoded file, before any reduced copy drops its tags."""
    try:
        return _UPRIGHT.get(int(img.getexif().get(0x0112, 1)))
    except Exception:
        return None


def _metadata_bomb(e: ValueError) -> bool:
    """Pillow's refusal of a PNG text / ICC chunk that decompresses past ``MAX_TEXT_CHUNK`` / ``MAX_TEXT_MEMORY``."""
    return "MAX_TEXT_CHUNK" in str(e) or "MAX_TEXT_MEMORY" in str(e)


def _decode(source: BinaryIO | Image.Image, label: str, max_pixels: int | None, retry: str,
            work_pixels: int | None = WORK_PIXELS) -> Image.Image:
    """Open (unless already a PIL image), check the size from the header (``max_pixels``; None: no limit), decode
    (a large JPEG at a reduced scale), reduce to ``work_pixels``, orient, convert to RGB: the one path every file,
    upload and PIL image takes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = source if isinstance(source, Image.Image) else Image.open(source)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise InputImageError(
                    f"{label} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:g} MP limit "
                    "(possible decompression bomb); resize it first")
            if w == 0 or h == 0:
                raise InputImageError(f"{label} has no pixels ({w}x{h}); pass a real photo")
            f = reduction_factor(w, h, work_pixels)
            if f > 1 and img is not source:  # a JPEG decodes at 1/2, 1/4 or 1/8 scale (other formats ignore it)
                img.draft(img.mode, (max(w // f, 1), max(h // f, 1)))
            img.load()
            method = _upright_method(img)
            img = _reduced(img, work_pixels)
    except InputImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        below = f" below {max_pixels / 1e6:g} MP" if max_pixels is not None else ""
        raise InputImageError(f"{label} is too large to decode safely (possible decompression bomb); resize it"
                              f"{below}") from None
    except UnidentifiedImageError:
        raise InputImageError(f"{label} is not an image file Pillow can read; pass a JPEG, PNG or WebP photo") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ValueError) and _metadata_bomb(e):
            raise InputImageError(f"{label} carries more text or colour-profile metadata than a photo does (over "
                                  "Pillow's PNG text limits; possible metadata bomb); save it again without the "
                                  "metadata") from None
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputImageError(f"{label} is corrupt or truncated ({detail}); {retry}") from None
    if method is not None:
        img = img.transpose(method)
    elif isinstance(img, ImageFile.ImageFile) or img is source:
        img = img.copy()  # an image of its own: never the caller's object, nor the decoder's file object
    return to_rgb(img, label)


def _to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    """Pixels of any numeric type -> uint8 by the module's rules (wide integers and floats scaled, half up)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
        if not np.isfinite(x).all():
            raise InputImageError(f"{label} holds NaN/Inf pixels: pass a valid image")
        top = 1.0 if float(x.max(initial=0.0)) <= 1.0 else 255.0
    elif arr.dtype.kind in "iu":
        x = arr.astype(np.float64)
        top = 65535.0 if float(x.max(initial=0.0)) > 255.0 else 255.0
    else:
        raise InputImageError(f"{label} has pixel type {arr.dtype}: pass uint8 (0..255) or float (0..1) pixels")
    return np.clip(x / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _array_to_image(arr: np.ndarray, label: str) -> Image.Image:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputImageError(f"{label} has shape {tuple(arr.shape)}: pass an HxW, HxWx3 or HxWx4 image array")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputImageError(f"{label} has no pixels (shape {tuple(arr.shape)}); pass a real photo")
    return Image.fromarray(np.ascontiguousarray(_to_uint8(arr, label)))


def to_rgb(img: Image.Image, name: str = "the image") -> Image.Image:
    """Any PIL mode -> RGB uint8: wide and float pixels scaled, alpha composited on white, the rest converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_MODES:
        grey = _to_uint8(np.asarray(img), name)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError):
        raise InputImageError(f"{name} has colour mode {mode}, which cannot be converted to RGB; save it as an RGB "
                              "JPEG or PNG") from None


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then bicubic-resize to ``size`` x ``size``."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def preprocess_face(img: Image.Image, size: int, mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """Identity-encoder input [1, 3, size, size] float32: ``(RGB 0..255 - mean) / std``."""
    x = np.asarray(square_resize(to_rgb(img), size), dtype=np.float32)
    return ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None].copy()


def preprocess_clip(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """CLIP image-encoder input [1, 3, size, size] float32: ``(RGB / 255 - mean) / std`` per channel."""
    x = np.asarray(square_resize(to_rgb(img), size), dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def preprocess_clip_photo(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """CLIP input [1, 3, size, size] float32 of a whole photo, as transformers' ``CLIPImageProcessor`` makes it
    (the official recipe's ``clip_input="photo"``): bicubic resize of the shorter side to ``size`` (the longer
    side ``int(size * long / short)``), centre crop, ``/ 255``, CLIP mean/std."""
    rgb = to_rgb(img)
    w, h = rgb.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = rgb.resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = np.asarray(resized, dtype=np.uint8)[top:top + size, left:left + size]
    x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def postprocess(sample: np.ndarray) -> Image.Image:
    """VAE decoder output [1, 3, H, W] in [-1, 1] -> RGB PIL image, diffusers' rounding: ``round((x/2+0.5)*255)``
    (NumPy's round half to even). What every runtime writes."""
    x = np.asarray(sample, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    x = np.clip(x / 2 + 0.5, 0.0, 1.0)
    return Image.fromarray((x.transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB")


def image01_to_pil(image01: np.ndarray) -> Image.Image:
    """The PyTorch reference sampler's image, ``[3,H,W]`` or ``[H,W,3]`` float in [0, 1] -> RGB PIL image,
    ``floor(x * 255 + 0.5)`` after clipping. What the reference path writes and evaluates."""
    arr = np.asarray(image01, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    return Image.fromarray((np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8))
