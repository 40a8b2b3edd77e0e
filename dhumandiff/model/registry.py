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
# Names for the distilled student at a fixed step count: one consistency-distilled UNet serves all three.
# ``tiny-fast`` is the edge preset: the 4-step student decoded by the distilled tiny VAE decoder.
ALIASES = {"tiny-1step": ("tiny-lcm", {"steps": 1}), "tiny-2step": ("tiny-lcm", {"steps": 2}),
           "tiny-4step": ("tiny-lcm", {"steps": 4}),
           "tiny-fast": ("tiny-lcm", {"steps": 4, "vae_decoder": "tiny"})}


def model_overrides(name: str | None) -> dict:
    """Default settings an alias implies (e.g. ``tiny-2step`` -> 2 steps)."""
    return dict(ALIASES[name][1]) if name in ALIASES else {}


def embedded_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not ASSETS.is_dir():
        return []
    names = sorted(p.name for p in ASSETS.iterdir() if (p / "dhumandiff.json").is_file())
    return names + sorted(a for a, (target, _) in ALIASES.items() if target in names)


def resolve_model(name_or_path: str | None) -> Path:
    """A model name (embedded) or folder -> the folder, with a clear error when neither exists."""
    name = name_or_path or DEFAULT_MODEL
    name = ALIASES[name][0] if name in ALIASES else name
    if (ASSETS / name / "dhumandiff.json").is_file():
        return ASSETS / name
    path = Path(name).expanduser()
    if (path / "dhumandiff.json").is_file():
        return path
    shipped = ", ".join(embedded_models()) or "none (reinstall the package)"
    raise CheckpointError(f"model {name!r} not found: pass an embedded model ({shipped}) or a folder made by "
                          f"`dhumandiff train` / `dhumandiff convert official`")
