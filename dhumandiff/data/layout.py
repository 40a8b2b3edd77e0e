"""Where things are in a PairHuman-format folder; configurable because the real release's layout is undocumented.

A folder may carry ``dataset.json`` with a ``layout`` object naming its sub-folders; without it the defaults
(``images/``, ``annotations/``, ``faces/``) apply. An image and its annotation share a file stem
(``images/000001.png`` <-> ``annotations/000001.json``); reference faces live in ``faces/<identity_id>/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dhumandiff.errors import AnnotationError

DATASET_FILE = "dataset.json"
IDENTITIES_FILE = "identities.json"
FORMAT_NAME = "pairhuman"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatasetLayout:
    """Sub-folder names of a dataset folder and the image extensions to look for (in order)."""

    images: str = "images"
    annotations: str = "annotations"
    faces: str = "faces"
    image_ext: tuple[str, ...] = (".png", ".jpg", ".jpeg")

    @classmethod
    def from_root(cls, root: str | os.PathLike) -> "DatasetLayout":
        """The layout declared in ``root/dataset.json``, or the defaults when the file is absent."""
        meta = read_dataset_meta(root)
        if meta is None:
            return cls()
        src = Path(root) / DATASET_FILE
        lay = meta.get("layout", {})
        if not isinstance(lay, dict):
            raise AnnotationError(f"{src}: field 'layout': expected an object, got {lay!r}")
        kwargs: dict[str, Any] = {}
        for key in ("images", "annotations", "faces"):
            if key in lay:
                v = lay[key]
                if not isinstance(v, str) or not _safe_relative(v):
                    raise AnnotationError(f"{src}: field 'layout.{key}': expected a relative folder name inside "
                                          f"the dataset, got {v!r}")
                kwargs[key] = v
        if "image_ext" in lay:
            v = lay["image_ext"]
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.startswith(".") for x in v):
                raise AnnotationError(f"{src}: field 'layout.image_ext': expected a list like [\".png\", \".jpg\"], "
                                      f"got {v!r}")
            kwargs["image_ext"] = tuple(x.lower() for x in v)
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_ext"] = list(self.image_ext)
        return d

    def annotation_files(self, root: str | os.PathLike) -> list[Path]:
        """Annotation files, sorted by name (the dataset's index order)."""
        folder = Path(root) / self.annotations
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith("."))

    def image_for(self, root: str | os.PathLike, stem: str) -> Path | None:
        """The image sharing ``stem`` with an annotation (first existing extension), or ``None``."""
        folder = Path(root) / self.images
        for ext in self.image_ext:
            for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
        return None

    def image_files(self, root: str | os.PathLike) -> list[Path]:
        folder = Path(root) / self.images
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in self.image_ext)

    def face_files(self, root: str | os.PathLike, identity_id: str) -> list[Path]:
        """Reference face photos of one identity, sorted naturally (``0.png, 1.png, ..., 10.png``)."""
        if not _safe_relative(identity_id):
            return []
        folder = Path(root) / self.faces / identity_id
        if not folder.is_dir():
            return []
        files = [p for p in folder.iterdir() if p.suffix.lower() in self.image_ext]
        return sorted(files, key=lambda p: (len(p.stem), p.stem))


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts and ":" not in name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def read_dataset_meta(root: str | os.PathLike) -> dict[str, Any] | None:
    """``dataset.json`` as a dict, ``None`` if the folder has none (plain real-data folders)."""
    path = Path(root) / DATASET_FILE
    if not path.exists():
        return None
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise AnnotationError(f"{path}: field '<root>': expected a JSON object, got {type(meta).__name__}")
    return meta


def read_identities(root: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """``identities.json`` (``{identity_id: {attributes..., "split": ...}}``), ``None`` if absent."""
    path = Path(root) / IDENTITIES_FILE
    if not path.exists():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: field '<root>': expected an object of identities, got {type(data).__name__}")
    for k, v in data.items():
        if not isinstance(v, dict):
            raise AnnotationError(f"{path}: field '{k}': expected an object of attributes, got {v!r}")
    return data
