"""Where models come from: the embedded defaults shipped in the package, or a folder on disk.

``tiny`` (and the distilled ``tiny-*`` students, when shipped) live under ``dhumandiff/assets/models``; anything
else is a path to a folder written by ``DHumanDiff.save_pretrained`` (``dhumandiff train``,
``dhumandiff convert official``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_MODEL = "tiny"


def embedded_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "dhumandiff.json").is_file())


def resolve_model(name_or_path: str | None) -> Path:
    """A model name (embedded) or folder -> the folder, with a clear error when neither exists."""
    name = name_or_path or DEFAULT_MODEL
    if (ASSETS / name / "dhumandiff.json").is_file():
        return ASSETS / name
    path = Path(name).expanduser()
    if (path / "dhumandiff.json").is_file():
        return path
    shipped = ", ".join(embedded_models()) or "none (reinstall the package)"
    raise CheckpointError(f"model {name!r} not found: pass an embedded model ({shipped}) or a folder made by "
                          f"`dhumandiff train` / `dhumandiff convert official`")
