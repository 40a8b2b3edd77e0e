"""The conditioning recipe: how a model turns photos and a prompt into what the UNet sees.

Two recipes exist. ``official`` reproduces the public DHumanDiff inference code (annaoooo/DHumanDiff, ``src/``)
for checkpoints converted from that release; ``dhumandiff`` is this project's own, which the embedded tiny model
was trained with. They differ in seven places, each one field here, so the PyTorch reference, every exported
bundle and the torch-free sampler read the same choices from the model folder (``dhumandiff.json``) or the
bundle (``bundle.json``):

========================  ===============================================  =========================================
field                     official                                         dhumandiff
========================  ===============================================  =========================================
``text_layer``            CLIP-L re-encode with the fused person tokens:   the backbone's ``text_hidden_index``
                          last layer after the final LayerNorm (-1)
``uncond_text_layer``     penultimate (-2), as SDXL's ``encode_prompt``    the same as ``text_layer``
``negative_prompt``       "monochrome, lowres, bad anatomy, ..."           "" (empty)
``uncond_id_tokens``      the image encoder on an all-zero pixel tensor,   zeros
                          then the Resampler (``zero-image``)
``region_masks``          none in single mode (False)                      the layout's boxes gate each person
``cascade_mask``          ``official``: person 1's token-0 map counted     ``attention-mass``: softmax over all
                          twice (the official code's slip)                 tokens, both persons, top 10 %
``clip_input``            the whole photo (resize 224 + centre crop)       a tight crop around the face
========================  ===============================================  =========================================

``two-person`` is the official mask recipe with person 2's map where the official code reads person 1's again.
This module is torch-free: the runtimes import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from ..errors import SettingsError

#: The negative prompt the official inference code uses when none is given.
OFFICIAL_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
#: The official image size, sampler, steps and CFG (``scripts/run_generation.py`` and SDXL's pipeline defaults).
OFFICIAL_DEFAULTS: dict[str, Any] = {"image_size": 512, "sampler": "euler", "steps": 50, "guidance_scale": 5.0}

#: The text encoder graph's second output when the recipe's two prompts read different layers.
NEGATIVE_TEXT_OUTPUT = "negative_prompt_embeds"
UNCOND_ID_TOKENS = ("zero-image", "zeros")
CASCADE_MASKS = ("official", "two-person", "attention-mass")
CLIP_INPUTS = ("photo", "face-crop")
TEXT_LAYERS = (-1, -2)


@dataclass(frozen=True)
class Recipe:
    """One model's conditioning choices (see the module docstring for what each field means)."""

    name: str
    text_layer: int
    uncond_text_layer: int
    negative_prompt: str
    uncond_id_tokens: str
    region_masks: bool
    cascade_mask: str
    clip_input: str

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.uncond_id_tokens, UNCOND_ID_TOKENS, "uncond_id_tokens"),
                                     (self.cascade_mask, CASCADE_MASKS, "cascade_mask"),
                                     (self.clip_input, CLIP_INPUTS, "clip_input"),
                                     (self.text_layer, TEXT_LAYERS, "text_layer"),
                                     (self.uncond_text_layer, TEXT_LAYERS, "uncond_text_layer")):
            if value not in allowed or isinstance(value, bool):
                raise SettingsError(f"recipe {what} must be one of {', '.join(map(str, allowed))} (got {value!r})")
        if not isinstance(self.region_masks, bool) or not isinstance(self.negative_prompt, str):
            raise SettingsError("recipe region_masks must be true/false and negative_prompt a string")
        if len(self.negative_prompt) > 10_000:
            raise SettingsError("recipe negative_prompt is longer than 10,000 characters")

    @property
    def two_text_layers(self) -> bool:
        """Whether the conditional and unconditional prompts read different CLIP-L layers (the text encoder graph
        then has a second output)."""
        return self.text_layer != self.uncond_text_layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        if not isinstance(data, Mapping):
            raise SettingsError("recipe must be an object of its fields")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data))
        if unknown or missing:
            raise SettingsError(f"recipe has unknown fields {unknown} or lacks {missing}: re-convert or re-export "
                                f"with this version")
        return cls(**{k: data[k] for k in fields})

    def with_options(self, *, negative_prompt: str | None = None, region_masks: bool | None = None,
                     cascade_mask: str | None = None) -> "Recipe":
        """This recipe with the user's per-image departures (None keeps the recipe's own)."""
        changes: dict[str, Any] = {}
        if negative_prompt is not None:
            changes["negative_prompt"] = negative_prompt
        if region_masks is not None:
            changes["region_masks"] = region_masks
        if cascade_mask is not None:
            changes["cascade_mask"] = cascade_mask
        return replace(self, **changes) if changes else self


OFFICIAL = Recipe(name="official", text_layer=-1, uncond_text_layer=-2, negative_prompt=OFFICIAL_NEGATIVE_PROMPT,
                  uncond_id_tokens="zero-image", region_masks=False, cascade_mask="official", clip_input="photo")


def project_recipe(text_hidden_index: int) -> Recipe:
    """This project's recipe for a backbone whose prompt embedding is CLIP hidden state ``text_hidden_index``."""
    return Recipe(name="dhumandiff", text_layer=text_hidden_index, uncond_text_layer=text_hidden_index,
                  negative_prompt="", uncond_id_tokens="zeros", region_masks=True, cascade_mask="attention-mass",
                  clip_input="face-crop")


#: ``--recipe`` names.
RECIPE_NAMES = ("official", "dhumandiff")


def named_recipe(name: str, text_hidden_index: int) -> Recipe:
    """The recipe called ``name`` (``official`` / ``dhumandiff``) for a backbone."""
    if name == "official":
        return OFFICIAL
    if name == "dhumandiff":
        return project_recipe(text_hidden_index)
    raise SettingsError(f"unknown recipe {name!r}: use one of {', '.join(RECIPE_NAMES)}")
