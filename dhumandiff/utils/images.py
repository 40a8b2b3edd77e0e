"""Writing generated images: refusing an unusable output path early, then saving atomically (PIL, torch-free).

Reading photos is :mod:`dhumandiff.contract.images` (``load_rgb`` / ``load_image``: one loader, one set of
limits and refusals for every door); this module only writes files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..errors import SettingsError
from .atomic import atomic_path


def check_output_path(path: str | os.PathLike, overwrite: bool = False,
                      inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse an output image path before any work is spent on the image.

    Never written: a folder, anything that is not a regular file (a FIFO, a device node such as ``/dev/null``, a
    socket), one of the ``inputs`` (the guest's own photos), even with ``overwrite``. An existing regular file is
    replaced only with ``overwrite`` (``FileExistsError``: exit 2, "pass --overwrite").
    """
    path = Path(path)
    if path.is_dir():
        raise SettingsError(f"--out {path} is a folder; give a file name such as {path / 'portrait.png'}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise SettingsError(f"--out {path}: {parent} is a file, not a folder; choose another output path")
    if not (path.exists() or path.is_symlink()):
        return path
    try:
        mode = path.stat().st_mode
    except OSError:  # a dangling link: nothing to lose, the atomic rename replaces the link itself
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        raise SettingsError(f"--out {path} is not a regular file (a device, FIFO or socket); write the image to a "
                            "file such as portrait.png")
    for source in inputs:
        with contextlib.suppress(OSError):
            if Path(source).exists() and os.path.samefile(source, path):
                raise SettingsError(f"--out {path} is one of the input photos; choose another output file")
    if not overwrite:
        raise FileExistsError(f"--out {path} already exists; pass --overwrite to replace it")
    return path


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save as PNG (JPEG / WebP for those suffixes) so that a crash never leaves a half-written file at ``path``."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path
