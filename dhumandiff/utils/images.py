"""Reading user photos safely and writing results atomically (PIL + NumPy, torch-free).

Guests hand a kiosk whatever is on their phone: this turns every readable variant (greyscale, CMYK, RGBA,
16-bit, EXIF-rotated) into upright 8-bit RGB, and every unreadable one (missing, empty, truncated, not an
image, a decompression bomb) into one InputImageError that says what to do.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputImageError, SettingsError
from .atomic import atomic_path

MAX_PIXELS = 40_000_000  # 40 MP: above any phone photo; a larger header is treated as a decompression bomb


def load_rgb(source: str | os.PathLike | bytes | np.ndarray | Image.Image, name: str | None = None,
             max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any photo -> upright HxWx3 uint8 RGB, or InputImageError."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name or "array")
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, name or "image")
    if isinstance(source, (bytes, bytearray)):
        label = name or "uploaded image"
        if len(source) == 0:
            raise InputImageError(f"{label} is empty (0 bytes): upload the photo again")
        return _open(io.BytesIO(source), label, max_pixels)
    path = Path(source)
    label = name or str(path)
    if not path.exists():
        raise InputImageError(f"{label} does not exist; check the path")
    if path.is_dir():
        raise InputImageError(f"{label} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{label} is empty (0 bytes): copy the photo again")
    with open(path, "rb") as fh:
        return _open(io.BytesIO(fh.read()), label, max_pixels)


def _open(fh: io.BytesIO, label: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
            w, h = img.size
            if w * h > max_pixels:
                raise InputImageError(f"{label} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f} "
                                      f"MP limit: resize it before use")
            img.load()
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputImageError(f"{label} is too large to decode safely ({exc}); resize it before use") from None
    except UnidentifiedImageError:
        raise InputImageError(f"{label} is not an image PIL can read (JPEG, PNG, WebP, BMP, TIFF...): "
                              f"use a photo file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{label} is corrupt or truncated ({str(exc).splitlines()[0]}): copy the photo "
                              f"again") from None
    return _pil_to_rgb(img, label)


def _pil_to_rgb(img: Image.Image, label: str) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make a good photo unusable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputImageError(f"{label} has no pixels")
    return rgb


def _array_to_rgb(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise InputImageError(f"{label}: expected an HxWx3 image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float64) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def to_pil(image01: np.ndarray) -> Image.Image:
    """``[3,H,W]`` or ``[H,W,3]`` float in [0,1] -> PIL RGB."""
    arr = np.asarray(image01, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    return Image.fromarray((np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8))


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output image path that cannot be written, before any work is spent on the image."""
    path = Path(path)
    if path.is_dir():
        raise SettingsError(f"--out {path} is a folder; give a file name such as {path / 'portrait.png'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SettingsError(f"--out {path}: {parent} is a file, not a folder; choose another output path")
    return path


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PNG/JPEG so that a crash never leaves a half-written file at ``path``."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path
