"""Input photos in, generated image out: robust loading, the two encoders' preprocessing, and safe saving.

Users hand the CLI whatever their phone or scanner made: EXIF-rotated JPEGs, CMYK, 16-bit PNGs, images with
alpha, or a file that is not an image at all. Everything here either returns a correctly oriented RGB uint8
image or raises :class:`~dhumandiff.errors.InputImageError` with one line that says what to do.

Preprocessing rule (the PyTorch reference must do the same for parity): centre-crop to a square, resize with
PIL bicubic to the encoder size, then normalise in float32. Identity encoder: ``(x - arcface_mean) /
arcface_std`` on RGB 0..255. CLIP encoder: ``(x / 255 - mean) / std`` per channel.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dhumandiff.errors import InputImageError
from dhumandiff.utils.atomic import atomic_path

#: Largest accepted input, in pixels: a face photo never needs more; larger is treated as a decompression bomb.
MAX_PIXELS = 40_000_000

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise InputImageError(f"input image {path} does not exist; check the path")
    if path.is_dir():
        raise InputImageError(f"input image {path} is a folder; pass an image file (JPEG, PNG, WebP, ...)")
    if path.stat().st_size == 0:
        raise InputImageError(f"input image {path} is empty (0 bytes); re-copy or re-export the photo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise InputImageError(
                f"input image {path} is not a readable image; pass a JPEG, PNG or WebP photo"
            ) from None
        raise InputImageError(
            f"input image {path} is too large to decode safely; resize it below {MAX_PIXELS // 1_000_000} MP"
        ) from None
    except OSError as e:
        raise InputImageError(f"cannot read input image {path} ({e}); check the file and its permissions") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise InputImageError(
            f"input image {path} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {MAX_PIXELS // 1_000_000} MP limit "
            "(possible decompression bomb); resize it first"
        )
    if w == 0 or h == 0:
        raise InputImageError(f"input image {path} has no pixels ({w}x{h}); pass a real photo")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InputImageError(
            f"input image {path} is truncated or corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "re-copy or re-export the photo"
        ) from None
    return img


def _wide_to_uint8(arr: np.ndarray, top: float | None = None) -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8. ``top`` is the full-scale value; guessed when None."""
    if top is None:
        if arr.dtype.kind == "f":
            top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        else:
            top = 65535.0 if int(arr.max(initial=0)) > 255 else 255.0
    x = np.nan_to_num(arr.astype(np.float64)) / top * 255.0
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB uint8: greyscale/palette/CMYK/YCbCr converted, alpha composited on white, 16-bit scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _wide_to_uint8(np.asarray(img), 65535.0 if mode.startswith("I;16") else None)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageLike) -> Image.Image:
    """Load a photo as RGB uint8, upright (EXIF orientation applied)."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise InputImageError(f"an image array must be HxW, HxWx3 or HxWx4 (got shape {arr.shape})")
        if arr.dtype != np.uint8:
            arr = _wide_to_uint8(arr)
        img = Image.fromarray(arr)
    else:
        img = _open(Path(source))
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a good photo unusable
        pass
    return to_rgb(img)


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


def postprocess(sample: np.ndarray) -> Image.Image:
    """VAE output [1, 3, H, W] in [-1, 1] -> RGB PIL image (diffusers' rounding: ``round((x/2+0.5)*255)``)."""
    x = np.asarray(sample, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    x = np.clip(x / 2 + 0.5, 0.0, 1.0)
    return Image.fromarray((x.transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB")


def save_png(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``img`` as PNG atomically (a crash never leaves a half-written file under the final name)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        img.save(tmp, format="PNG")
    return target
