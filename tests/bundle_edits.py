"""Edits of a bundle.json dict / folder shared by the bundle-reader tests (manifest, properties, bad input, verify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def dynamic_axes(d: dict[str, Any]) -> None:
    """Name (make dynamic) the axes that follow from image_size, latent, identity and tokenizer sizes, so that no
    shape cross-check stands between those sizes and an allocation: only the reader's bounds do."""
    comps = d["components"]
    for comp, name in (("unet", "sample"), ("unet", "region_mask"), ("vae_decoder", "latent_sample")):
        comps[comp]["inputs"][name]["shape"][2:] = ["height", "width"]
    for comp, name in (("unet", "sample"), ("vae_decoder", "latent_sample")):
        comps[comp]["inputs"][name]["shape"][1] = "channels"
    comps["identity_encoder"]["inputs"]["face"]["shape"][2:] = ["side", "side"]
    comps["image_encoder"]["inputs"]["pixel_values"]["shape"][2:] = ["side", "side"]
    comps["text_encoder"]["inputs"]["input_ids"]["shape"][1] = "sequence"
    comps["unet"]["inputs"]["ip_tokens"]["shape"][1] = "tokens"


def hash_tokenizer(root: Path) -> None:
    """Add the tokenizer's sha256 to bundle.json, as the exporter writes it (the test fixtures leave it out), so
    that ``dhumandiff verify`` accepts the untouched bundle."""
    from dhumandiff.utils.atomic import sha256_file

    path = Path(root) / "bundle.json"
    d = json.loads(path.read_text())
    d["tokenizer"]["sha256"] = sha256_file(Path(root) / d["tokenizer"]["file"])
    path.write_text(json.dumps(d, indent=2))
